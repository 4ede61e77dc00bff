"""Scenario 6: the target fails every attempt for a while; the retry budget bounds the load.

Both facades call at a steady pace while the proxy resets every connection. The proxy counts
connections, and each attempt is one connection (``Connection: close``), so it counts every
attempt that left the client. Two configurations: the default one, where the breaker opens
too, and one with the breaker out of reach, where the retry budget alone bounds retries.
Afterwards the target comes back, and the clients must recover by themselves.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from commclient import (
    AsyncServiceClient,
    ServiceClientError,
    SyncServiceClient,
    testing,
)
from tests.fault_proxy import Fault, FaultProxy
from tests.reliability._results import Row, sized
from tests.reliability.conftest import config

pytestmark = [pytest.mark.facade_sync, pytest.mark.facade_async]

CLOSE = {"Connection": "close"}
PACE = 0.01  # seconds between the calls of each caller
CALLERS = 2  # threads, and as many tasks
RESET_TIMEOUT = 1.0


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.values = 0
        self.errors: dict[str, int] = {}
        self.foreign: list[BaseException] = []

    def add(self, value: object = None, error: BaseException | None = None) -> None:
        with self.lock:
            self.calls += 1
            if error is None:
                self.values += 1
            elif isinstance(error, ServiceClientError):
                name = type(error).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                self.foreign.append(error)


def _drive(
    sync_client: SyncServiceClient,
    async_client: AsyncServiceClient,
    seconds: float,
    tally: Tally,
) -> None:
    """Call from CALLERS threads and CALLERS tasks, one call per PACE each, for ``seconds``."""
    stop_at = time.monotonic() + seconds

    def sync_caller() -> None:
        while time.monotonic() < stop_at:
            try:
                tally.add(sync_client.get("/echo", headers=CLOSE))
            except BaseException as exc:
                tally.add(error=exc)
            time.sleep(PACE)

    async def async_callers() -> None:
        async def caller() -> None:
            while time.monotonic() < stop_at:
                try:
                    tally.add(await async_client.get("/echo", headers=CLOSE))
                except BaseException as exc:
                    tally.add(error=exc)
                await asyncio.sleep(PACE)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))

    threads = [threading.Thread(target=sync_caller) for _ in range(CALLERS)]
    threads.append(threading.Thread(target=asyncio.run, args=(async_callers(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize(
    ("variant", "overrides"),
    [
        ("default breaker and budget", {}),
        ("budget alone (breaker out of reach)", {"circuit_breaker_fail_max": 1_000_000}),
    ],
)
def test_total_outage_is_bounded_and_recovers(
    proxy: FaultProxy,
    names: tuple[str, str],
    row: Row,
    variant: str,
    overrides: dict[str, Any],
) -> None:
    seconds = sized(6.0, 60.0)
    settings = config(circuit_breaker_reset_timeout=RESET_TIMEOUT, **overrides)
    service, target = names
    sync_client = SyncServiceClient(
        proxy.url, service_name=service, target_service=target, config=settings
    )
    async_client = AsyncServiceClient(
        proxy.url, service_name=service, target_service=target, config=settings
    )
    tally = Tally()
    proxy.set_fault(Fault.RESET)
    started = (time.monotonic(), time.process_time())
    try:
        _drive(sync_client, async_client, seconds, tally)
        wall = time.monotonic() - started[0]
        cpu = time.process_time() - started[1]
        attempts = proxy.counts["reset"]

        # The target is back: nobody resets anything, the clients find out by themselves.
        proxy.clear()
        back_at = time.monotonic()
        recovered_after = None
        give_up = back_at + RESET_TIMEOUT + 30
        while time.monotonic() < give_up:
            try:
                sync_client.get("/echo", headers=CLOSE)
                asyncio.run(async_client.get("/echo", headers=CLOSE))
            except ServiceClientError:
                time.sleep(0.05)
                continue
            recovered_after = time.monotonic() - back_at
            break
        after = Tally()
        _drive(sync_client, async_client, 1.0, after)
    finally:
        sync_client.close()

    ratio = attempts / tally.calls
    row.scenario = "6"
    row.title = f"Target failing 100 %: {variant}"
    row.load = (
        f"{tally.calls:,} GET calls in {seconds:.0f} s from {CALLERS} threads and {CALLERS} "
        f"tasks, one call per {PACE * 1000:.0f} ms each"
    )
    row.faults = f"every connection reset for {seconds:.0f} s, then none"
    row.outcome = (
        f"{attempts:,} attempts for {tally.calls:,} calls ({ratio:.3f} per call); errors "
        f"{dict(sorted(tally.errors.items()))}, {len(tally.foreign)} other exceptions; CPU "
        f"{cpu / wall:.2f} of one core; recovered by itself "
        f"{'never' if recovered_after is None else f'{recovered_after:.2f} s'} after the "
        f"target came back, then {after.values}/{after.calls} calls succeeded"
    )
    row.lost = (
        f"{len(tally.foreign)} calls ended in something else than a value or a "
        f"ServiceClientError; {after.calls - after.values} failed after recovery"
    )
    row.figures = {
        "calls": tally.calls,
        "attempts": attempts,
        "attempts_per_call": round(ratio, 3),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "recovered_after_s": None if recovered_after is None else round(recovered_after, 3),
    }

    assert not tally.foreign, [repr(e) for e in tally.foreign[:5]]
    assert tally.values == 0
    assert tally.calls >= 100
    assert attempts <= 1.2 * tally.calls
    # Bounded CPU: paced callers that fail fast must not spin a core.
    assert cpu / wall < 1.0
    assert recovered_after is not None
    assert after.values == after.calls
    assert not after.foreign
    assert testing.breaker_state(service, target) == "closed"

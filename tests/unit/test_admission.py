"""Admission before the pool: callers wait in line, in order, inside their deadline, and
waiting in line (or a connect timeout the client itself was too busy to see) never
counts against the target."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, ServiceTimeoutError, testing
from commclient._admission import AsyncGate, connect_timeout_kind
from commclient._policy import FailureKind

BASE = "http://admission.test"
SERVICE, TARGET = "admission", "queued"


def test_a_connect_timeout_seen_late_is_the_clients_own() -> None:
    assert connect_timeout_kind(0.01, 3.0) is FailureKind.CONNECT_TIMEOUT
    assert connect_timeout_kind(1.0, 3.0) is FailureKind.CONNECT_TIMEOUT
    assert connect_timeout_kind(2.0, 3.0) is FailureKind.SATURATED
    assert connect_timeout_kind(0.3, 0.1) is FailureKind.SATURATED
    assert not FailureKind.SATURATED.blames_target
    assert FailureKind.CONNECT_TIMEOUT.blames_target


def test_the_gate_hands_a_freed_slot_to_the_oldest_waiter() -> None:
    async def main() -> list[int]:
        gate = AsyncGate(1)
        assert gate.try_enter()
        order: list[int] = []

        async def wait(i: int) -> None:
            assert await gate.enter(None)
            order.append(i)
            gate.leave()

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(wait(i)))
            await _until(lambda: gate.waiting == len(tasks))
        # A newcomer finds no free slot while others wait, even right after a leave.
        gate.leave()
        assert not gate.try_enter()
        await asyncio.gather(*tasks)
        assert gate.in_flight == 0
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_a_cancelled_or_expired_waiter_leaks_no_slot() -> None:
    async def main() -> None:
        gate = AsyncGate(1)
        assert gate.try_enter()
        cancelled = asyncio.create_task(gate.enter(None))
        await _until(lambda: gate.waiting == 1)
        assert not await gate.enter(0.01)  # expires in line
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        gate.leave()
        assert gate.in_flight == 0
        assert gate.try_enter()
        # Granted and cancelled before it ran: the slot goes on, not lost.
        granted = asyncio.create_task(gate.enter(None))
        await _until(lambda: gate.waiting == 1)
        gate.leave()
        granted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await granted
        assert gate.in_flight == 0

    asyncio.run(main())


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class _Server:
    """A respx route whose requests are held until released, recording arrival order."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()

    async def reply(self, request: Any) -> Any:
        import httpx

        self.arrived.append(request.url.params["n"])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return httpx.Response(200, json={"n": request.url.params["n"]})


def _run_with_server(
    config: ClientConfig, scenario: Callable[[Any, _Server], Awaitable[Any]]
) -> Any:
    import respx

    from commclient import AsyncServiceClient

    async def main() -> Any:
        server = _Server()
        with respx.mock(assert_all_called=False) as mock:
            mock.get(url__regex=re.escape(BASE) + r"/held.*").mock(side_effect=server.reply)
            async with AsyncServiceClient(
                BASE,
                service_name=SERVICE,
                target_service=TARGET,
                config=config,
                registry=CollectorRegistry(),
            ) as client:
                return await scenario(client, server)

    return asyncio.run(main())


@pytest.mark.facade_async
def test_callers_beyond_the_limit_are_served_first_come_first_served() -> None:
    async def scenario(client: Any, server: _Server) -> tuple[list[Any], _Server]:
        first = asyncio.create_task(client.get("/held", params={"n": "0"}))
        await _until(lambda: server.arrived == ["0"])
        queued = []
        for n in range(1, 8):
            queued.append(asyncio.create_task(client.get("/held", params={"n": str(n)})))
            await _until(lambda: client._gate.waiting == len(queued))
        server.release.set()
        return await asyncio.gather(first, *queued), server

    results, server = _run_with_server(ClientConfig(max_concurrency=1), scenario)
    assert [r["n"] for r in results] == [str(n) for n in range(8)]
    assert server.arrived == [str(n) for n in range(8)]
    assert server.most_in_flight == 1


@pytest.mark.facade_async
def test_the_default_limit_is_the_pool_size() -> None:
    async def scenario(client: Any, server: _Server) -> _Server:
        calls = [asyncio.create_task(client.get("/held", params={"n": str(n)})) for n in range(12)]
        await _until(lambda: len(server.arrived) == 5 and client._gate.waiting == 7)
        server.release.set()
        await asyncio.gather(*calls)
        return server

    server = _run_with_server(ClientConfig(max_connections=5), scenario)
    assert server.most_in_flight == 5


@pytest.mark.facade_async
@pytest.mark.parametrize("bound", ["deadline", "pool_timeout"])
def test_a_caller_whose_wait_in_line_runs_out_times_out_without_blaming_the_target(
    bound: str,
) -> None:
    config = ClientConfig(max_concurrency=1, circuit_breaker_fail_max=1, max_retries=3)
    if bound == "pool_timeout":
        config = ClientConfig(
            max_concurrency=1, circuit_breaker_fail_max=1, max_retries=3, pool_timeout=0.05
        )
    options = {"deadline": 0.05} if bound == "deadline" else {}

    async def scenario(client: Any, server: _Server) -> tuple[BaseException, _Server]:
        first = asyncio.create_task(client.get("/held", params={"n": "0"}))
        await _until(lambda: server.arrived == ["0"])
        with pytest.raises(ServiceTimeoutError) as info:
            await client.get("/held", params={"n": "1"}, **options)
        server.release.set()
        await first
        return info.value, server

    with testing.no_wait():
        error, server = _run_with_server(config, scenario)
    assert error.attempts == 1
    assert ("deadline" if bound == "deadline" else "pool_timeout") in str(error)
    assert server.arrived == ["0"]
    assert testing.breaker_state(SERVICE, TARGET) == "closed"


@pytest.mark.facade_async
def test_a_deadline_counts_the_wait_in_line() -> None:
    """Admitted with most of its deadline spent, the exchange gets only what is left."""
    deadline, held = 1.0, 0.6

    async def scenario(client: Any, server: _Server) -> float:
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(client.get("/held", params={"n": "0"}))
        await _until(lambda: server.arrived == ["0"])
        started = loop.time()
        second = asyncio.create_task(client.get("/held", params={"n": "1"}, deadline=deadline))
        await _until(lambda: client._gate.waiting == 1)
        await asyncio.sleep(held)
        # Frees the slot but "1" is held at the server: only its deadline ends it.
        first.cancel()
        with pytest.raises(ServiceTimeoutError):
            await second
        elapsed = loop.time() - started
        server.release.set()
        return elapsed

    config = ClientConfig(max_concurrency=1, circuit_breaker_fail_max=100)
    elapsed = _run_with_server(config, scenario)
    # A deadline that restarted after the wait in line would end at held + deadline.
    assert elapsed < deadline + held * 2 / 3, f"the call outlived its deadline: {elapsed:.3f} s"


@pytest.mark.facade_async
@pytest.mark.parametrize(("late", "breaker"), [(False, "open"), (True, "closed")])
def test_a_connect_timeout_the_client_saw_late_does_not_open_the_breaker(
    late: bool, breaker: str
) -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    async def reply(request: httpx.Request) -> httpx.Response:
        if late:
            # The loop was busy: the timeout is reported long after it was due.
            await asyncio.sleep(0.6)
        raise httpx.ConnectTimeout("connect timed out", request=request)

    async def main() -> None:
        with respx.mock() as mock, testing.no_wait():
            mock.get(f"{BASE}/x").mock(side_effect=reply)
            async with AsyncServiceClient(
                BASE,
                service_name=SERVICE,
                target_service=TARGET,
                config=ClientConfig(connect_timeout=0.1, circuit_breaker_fail_max=1),
                registry=CollectorRegistry(),
            ) as client:
                with pytest.raises(ServiceTimeoutError):
                    await client.get("/x")

    asyncio.run(main())
    assert testing.breaker_state(SERVICE, TARGET) == breaker

"""Scenario 1: many calls from both facades while the proxy faults 20 % of connections.

Every call sends ``Connection: close``, so each attempt opens a new connection and meets a
fresh draw of the proxy. The proxy notes the request line of each connection, which ties
every attempt to its call: a call may fail only if *every* one of its attempts was faulted.
"""

from __future__ import annotations

import re
import statistics
import uuid
from collections import defaultdict

import pytest

from commclient import AsyncServiceClient, ServiceClientError, SyncServiceClient
from tests.fault_proxy import Fault, FaultProxy
from tests.reliability._load import run_both
from tests.reliability._results import Row, sized
from tests.reliability.conftest import config

pytestmark = [pytest.mark.facade_sync, pytest.mark.facade_async]

FAULTS = (
    Fault.RESET,
    Fault.STALL,
    Fault.RESET_MID,
    Fault.TRUNCATE,
    Fault.BLACKHOLE,
    Fault.LATENCY,
)
HARMLESS = (Fault.NONE, Fault.LATENCY)
DEADLINE = 20.0
#: What a loaded machine may add to a deadline before the call is said to hang.
SLACK = 5.0
CLOSE = {"Connection": "close"}
KEY = re.compile(rb"key=([\w-]+)")


def test_calls_under_random_faults(proxy: FaultProxy, names: tuple[str, str], row: Row) -> None:
    total = sized(2_000, 10_000)
    run = uuid.uuid4().hex[:8]
    # A stalled or black-holed attempt costs the read timeout: short, but far above what a
    # healthy attempt takes even on a loaded machine (a healthy attempt that times out
    # would count as a call lost with an attempt let through).
    settings = config(
        timeout=2.0,
        connect_timeout=2.0,
        max_retries=5,
        deadline=DEADLINE,
        # The budget is scenario 6's subject; here every fault must be retried.
        retry_budget_ratio=1.0,
        retry_budget_max_tokens=100_000.0,
    )
    service, target = names
    sync_client = SyncServiceClient(
        proxy.url, service_name=service, target_service=target, config=settings
    )
    async_client = AsyncServiceClient(
        proxy.url, service_name=service, target_service=target, config=settings
    )
    proxy.random_faults(0.2, FAULTS, seed=1)

    def sync_call(key: str) -> object:
        return sync_client.get("/echo", params={"key": key}, headers=CLOSE)

    async def async_call(key: str) -> object:
        return await async_client.get("/echo", params={"key": key}, headers=CLOSE)

    sync_keys = [f"r{run}-s-{i}" for i in range(total // 2)]
    async_keys = [f"r{run}-a-{i}" for i in range(total - total // 2)]
    try:
        outcomes = run_both(sync_call, async_call, sync_keys, async_keys)
    finally:
        sync_client.close()
        proxy.clear()

    attempts: dict[str, list[Fault]] = defaultdict(list)
    for fault, first in proxy.connections:
        found = KEY.search(first)
        if found:
            attempts[found.group(1).decode()].append(fault)

    foreign = [o for o in outcomes if o.error is not None and not _is_client_error(o.error)]
    crossed = [o for o in outcomes if o.error is None and o.value["query"]["key"] != o.key]
    hung = [o for o in outcomes if o.elapsed > DEADLINE + SLACK]
    failed = [o for o in outcomes if o.error is not None]
    let_through_but_failed = [
        o for o in failed if any(fault in HARMLESS for fault in attempts[o.key])
    ]
    elapsed = sorted(o.elapsed for o in outcomes)
    p99 = statistics.quantiles(elapsed, n=100)[98]
    row.scenario = "1"
    row.title = "Random connection faults, both facades"
    row.load = (
        f"{total:,} GET calls: {len(sync_keys):,} from 8 threads (sync) and "
        f"{len(async_keys):,} from 16 tasks (async) at once; every attempt a new connection"
    )
    row.faults = (
        f"20 % of {len(proxy.connections):,} connections faulted at random ({_counts(proxy)})"
    )
    row.outcome = (
        f"{len(outcomes) - len(failed):,} values, {len(failed)} ServiceClientError "
        f"(each after every attempt was faulted), {len(foreign)} other exceptions, "
        f"{len(hung)} calls past the deadline (p99 {p99:.2f} s, "
        f"max {elapsed[-1]:.2f} s)"
    )
    row.lost = f"{len(let_through_but_failed)} calls failed although an attempt got through"
    row.figures = {
        "calls": len(outcomes),
        "values": len(outcomes) - len(failed),
        "client_errors": len(failed),
        "foreign_exceptions": len(foreign),
        "connections": len(proxy.connections),
        "faulted_connections": proxy.faulted,
        "max_elapsed_s": round(elapsed[-1], 3),
    }

    assert len(outcomes) == total
    assert not foreign, [(o.key, repr(o.error)) for o in foreign[:5]]
    assert not crossed, [(o.key, o.value["query"]) for o in crossed[:5]]
    assert not hung, [(o.key, o.elapsed, repr(o.error)) for o in hung[:5]]
    assert not let_through_but_failed, [
        (o.key, attempts[o.key], repr(o.error)) for o in let_through_but_failed[:5]
    ]
    # The proxy really did fault about a fifth of the connections.
    assert 0.1 < proxy.faulted / len(proxy.connections) < 0.3


def _is_client_error(error: BaseException) -> bool:
    return isinstance(error, ServiceClientError)


def _counts(proxy: FaultProxy) -> str:
    return ", ".join(
        f"{name} {count}" for name, count in sorted(proxy.counts.items()) if name != "none"
    )

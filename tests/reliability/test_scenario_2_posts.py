"""Scenario 2: POSTs to the example REST service while connections are reset after it answered.

The proxy forwards the request, lets the service act on it, and resets the connection the
moment the answer starts: the client cannot know whether the POST was applied. Without an
idempotency key it must not repeat it (at most once); with a key it repeats it until it
hears the answer, and the service applies it once (exactly once).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from commclient import AsyncServiceClient, ServiceConnectionError, SyncServiceClient
from tests.fault_proxy import Fault, FaultProxy
from tests.reliability._load import Outcome, run_both
from tests.reliability._results import Row, sized
from tests.reliability.conftest import config
from tests.reliability.rest_service import RestServiceProcess

pytestmark = [pytest.mark.facade_sync, pytest.mark.facade_async]

RESET_SHARE = 0.3
CLOSE = {"Connection": "close"}
PATH = "/api/job-executions/"


@pytest.fixture(scope="module")
def rest_service() -> Iterator[RestServiceProcess]:
    with RestServiceProcess() as service:
        yield service


@pytest.fixture
def rest_proxy(rest_service: RestServiceProcess) -> Iterator[FaultProxy]:
    with FaultProxy(rest_service.port, cut=0) as running:
        running.random_faults(RESET_SHARE, [Fault.RESET_MID], seed=2)
        yield running


def _post_all(
    proxy: FaultProxy, names: tuple[str, str], run: str, *, with_key: bool, total: int
) -> list[Outcome]:
    settings = config(
        max_retries=12,
        retry_budget_ratio=1.0,
        retry_budget_max_tokens=100_000.0,
        circuit_breaker_fail_max=100_000,
    )
    service, target = names
    sync_client = SyncServiceClient(
        proxy.url, service_name=service, target_service=target, config=settings
    )
    async_client = AsyncServiceClient(
        proxy.url, service_name=service, target_service=target, config=settings
    )

    def body(job_id: str) -> dict[str, object]:
        return {
            "job_id": job_id,
            "job_name": "reliability",
            "scheduled_at": None,
            "correlation_id": job_id,
        }

    def sync_call(job_id: str) -> object:
        key = f"key-{job_id}" if with_key else None
        return sync_client.post(PATH, json=body(job_id), idempotency_key=key, headers=CLOSE)

    async def async_call(job_id: str) -> object:
        key = f"key-{job_id}" if with_key else None
        return await async_client.post(PATH, json=body(job_id), idempotency_key=key, headers=CLOSE)

    tag = "keyed" if with_key else "plain"
    try:
        return run_both(
            sync_call,
            async_call,
            [f"{run}-{tag}-s-{i}" for i in range(total // 2)],
            [f"{run}-{tag}-a-{i}" for i in range(total - total // 2)],
            threads=4,
            tasks=8,
        )
    finally:
        sync_client.close()


def test_posts_under_resets_after_send(
    rest_service: RestServiceProcess,
    rest_proxy: FaultProxy,
    names: tuple[str, str],
    row: Row,
) -> None:
    total = sized(300, 2_000)
    run = uuid.uuid4().hex[:8]
    plain = _post_all(rest_proxy, names, run, with_key=False, total=total)
    keyed = _post_all(rest_proxy, names, run, with_key=True, total=total)
    records = [r for r in rest_service.get(PATH) if str(r.get("job_id", "")).startswith(run)]
    applied = Counter(r["job_id"] for r in records)
    ids = {r["job_id"]: r["id"] for r in records}

    plain_failed = [o for o in plain if o.error is not None]
    plain_wrong = [
        o
        for o in plain_failed
        if not isinstance(o.error, ServiceConnectionError) or o.error.attempts != 1
    ]
    plain_twice = [o.key for o in plain if applied[o.key] > 1]
    # The proxy resets only after the service answered: every POST was applied.
    plain_missing = [o.key for o in plain if applied[o.key] != 1]
    keyed_failed = [o for o in keyed if o.error is not None]
    keyed_not_once = [o.key for o in keyed if applied[o.key] != 1]
    keyed_other_id = [o.key for o in keyed if o.error is None and o.value["id"] != ids.get(o.key)]

    row.scenario = "2"
    row.title = "POSTs under resets after the request was sent"
    row.load = (
        f"{total:,} POSTs without an idempotency key, then {total:,} with one, "
        "half sync (4 threads), half async (8 tasks), to the example REST service"
    )
    row.faults = (
        f"{int(RESET_SHARE * 100)} % of connections reset the moment the service answered "
        f"({rest_proxy.counts['reset_mid_response']:,} of {len(rest_proxy.connections):,})"
    )
    row.outcome = (
        f"no key: {len(plain) - len(plain_failed):,} answered, {len(plain_failed):,} "
        f"ServiceConnectionError after 1 attempt, none applied twice; with key: "
        f"{len(keyed) - len(keyed_failed):,} answered, every one applied exactly once"
    )
    row.lost = (
        f"{len(plain_twice) + len(keyed_not_once)} POSTs applied twice or not at all; "
        f"{len(plain_failed)} unkeyed outcomes unknown to their caller (applied once each)"
    )
    row.figures = {
        "plain_calls": len(plain),
        "plain_errors": len(plain_failed),
        "keyed_calls": len(keyed),
        "keyed_errors": len(keyed_failed),
        "records": len(records),
    }

    assert not plain_wrong, [(o.key, repr(o.error)) for o in plain_wrong[:5]]
    assert not plain_twice, plain_twice[:5]
    assert not plain_missing, plain_missing[:5]
    assert plain_failed, "the proxy reset no connection: the scenario tested nothing"
    assert not keyed_failed, [(o.key, repr(o.error)) for o in keyed_failed[:5]]
    assert not keyed_not_once, [(k, applied[k]) for k in keyed_not_once[:5]]
    assert not keyed_other_id, keyed_other_id[:5]

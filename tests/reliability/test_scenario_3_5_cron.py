"""Scenarios 3 and 5: the migrated cron service against the example REST service (its own
process, behind the fault proxy).

3. The REST service is unreachable for a while during the runs: the breaker opens and rejects
   at once, closes after recovery, and every run's record reaches the service afterwards.
5. The scheduler is shut down in the middle of 20 running jobs: every run ends up recorded
   as completed or as failed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("apscheduler")

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, ServiceUnavailableError, testing
from cron_migration import MigrationExecutor, migrated_job, shutdown_gracefully
from examples.cron_service.client import CronRestClient
from tests.fault_proxy import Fault, FaultProxy
from tests.reliability._results import Row, sized
from tests.reliability.rest_service import RestServiceProcess

pytestmark = pytest.mark.facade_async

CONFIG = ClientConfig(
    timeout=5.0,
    max_retries=2,
    retry_min_wait=0.01,
    retry_max_wait=0.05,
    circuit_breaker_fail_max=3,
    circuit_breaker_reset_timeout=0.5,
)


@pytest.fixture(scope="module")
def rest_service() -> Iterator[RestServiceProcess]:
    with RestServiceProcess() as service:
        yield service


@pytest.fixture
def rest_proxy(rest_service: RestServiceProcess) -> Iterator[FaultProxy]:
    with FaultProxy(rest_service.port) as running:
        yield running


def _executions(service: RestServiceProcess, job_id: str) -> list[dict[str, Any]]:
    """The executions of the scheduler jobs whose ids start with ``job_id``."""
    return [
        e for e in service.get("/api/job-executions/") if str(e.get("job_id")).startswith(job_id)
    ]


async def _wait(condition: Any, seconds: float, what: str) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_rest_service_down_during_runs(
    rest_service: RestServiceProcess, rest_proxy: FaultProxy, row: Row
) -> None:
    outage = sized(5.0, 30.0)
    job_id = f"s3-{uuid.uuid4().hex[:8]}"
    service_name = f"cron-{job_id}"
    registry = CollectorRegistry()
    outcomes: list[str] = []
    states: set[str] = set()
    rejections: list[float] = []

    async def main() -> tuple[Any, str]:
        client = CronRestClient(
            rest_proxy.url,
            service_name=service_name,
            target_service="rest_service",
            config=CONFIG,
            registry=registry,
        )
        async with client:

            @migrated_job(timeout=10, recorder=client, registry=registry, name=job_id)
            async def job() -> str:
                # The job itself needs the service too: during the outage it fails.
                try:
                    await client.get_global_settings()
                except Exception:
                    outcomes.append("failed")
                    raise
                outcomes.append("completed")
                return "ok"

            scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
            scheduler.add_job(job, "interval", seconds=0.2, id=job_id, max_instances=5)
            scheduler.start()
            await _wait(lambda: len(outcomes) >= 5, 30, "runs before the outage")
            rest_proxy.set_fault(Fault.REFUSE)
            stop_at = time.monotonic() + outage
            while time.monotonic() < stop_at:
                states.add(testing.breaker_state(service_name, "rest_service"))
                started = time.perf_counter()
                try:
                    await client.get_global_settings()
                except ServiceUnavailableError:
                    rejections.append(time.perf_counter() - started)
                except Exception:
                    pass
                await asyncio.sleep(0.01)
            rest_proxy.clear()
            before = len(outcomes)
            await _wait(
                lambda: outcomes[before:].count("completed") >= 5, 60, "runs after recovery"
            )
            report = await shutdown_gracefully(scheduler, timeout=10, records_timeout=60)
            return report, testing.breaker_state(service_name, "rest_service")

    report, final_state = asyncio.run(main())
    executions = _executions(rest_service, job_id)
    by_status: dict[str, int] = {}
    for execution in executions:
        by_status[execution["status"]] = by_status.get(execution["status"], 0) + 1
    median_us = statistics.median(rejections) * 1e6 if rejections else float("nan")

    row.scenario = "3"
    row.title = "REST service down during cron runs"
    row.load = (
        f"{len(outcomes)} runs of a migrated job every 0.2 s (each reads the global settings "
        "and records its run: create, start, complete or fail)"
    )
    row.faults = f"REST service unreachable (connections refused) for {outage:.0f} s"
    row.outcome = (
        f"breaker states seen during the outage: {sorted(states)}; {len(rejections)} calls "
        f"rejected by the open breaker, median {median_us:.0f} us; breaker {final_state} after "
        f"recovery; records at the service: {by_status} for {outcomes.count('completed')} "
        f"completed and {outcomes.count('failed')} failed runs"
    )
    row.lost = (
        f"{len(outcomes) - len(executions)} run records missing, "
        f"{report.records_pending} still pending at shutdown"
    )
    row.figures = {
        "runs": len(outcomes),
        "records": len(executions),
        "rejections": len(rejections),
        "median_rejection_us": round(median_us, 1),
    }

    assert "open" in states
    assert rejections
    assert final_state == "closed"
    assert report.records_pending == 0
    assert outcomes.count("failed") > 0
    assert len(executions) == len(outcomes)
    assert by_status.get("completed", 0) == outcomes.count("completed")
    assert by_status.get("failed", 0) == outcomes.count("failed")


def test_shutdown_in_the_middle_of_20_runs(
    rest_service: RestServiceProcess, rest_proxy: FaultProxy, row: Row
) -> None:
    job_id = f"s5-{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()
    started: list[int] = []
    finished: list[int] = []

    async def main() -> Any:
        client = CronRestClient(
            rest_proxy.url,
            service_name=f"cron-{job_id}",
            target_service="rest_service",
            config=CONFIG,
            registry=registry,
        )
        async with client:

            @migrated_job(timeout=60, recorder=client, registry=registry, name=job_id)
            async def job(number: int) -> int:
                started.append(number)
                # Half the runs end within the shutdown's grace, half would take far longer.
                await asyncio.sleep(0.5 if number % 2 else 30)
                finished.append(number)
                return number

            scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
            for number in range(20):
                scheduler.add_job(job, args=[number], id=f"{job_id}-{number}")
            scheduler.start()
            await _wait(lambda: len(started) == 20, 60, "20 running jobs")
            return await shutdown_gracefully(scheduler, timeout=3, records_timeout=60)

    report = asyncio.run(main())
    executions = _executions(rest_service, job_id)
    by_status: dict[str, int] = {}
    for execution in executions:
        by_status[execution["status"]] = by_status.get(execution["status"], 0) + 1

    row.scenario = "5"
    row.title = "Scheduler shut down in the middle of 20 running jobs"
    row.load = "20 migrated jobs running at once: 10 end within 0.5 s, 10 would take 30 s"
    row.faults = "shutdown_gracefully(timeout=3) while all 20 run"
    row.outcome = (
        f"{report.finished} finished, {report.cancelled} cancelled; records at the service: "
        f"{by_status}"
    )
    row.lost = f"{20 - len(executions)} runs without a record, {report.records_pending} pending"
    row.figures = {"finished": report.finished, "cancelled": report.cancelled}

    assert len(started) == 20
    assert report.records_pending == 0
    assert len(executions) == 20
    assert by_status == {"completed": len(finished), "failed": 20 - len(finished)}
    assert len(finished) == 10

"""Run records through the example REST service: an outage in the middle of the runs, and
afterwards every run recorded once, completed, with its scheduled time and correlation id."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("fastapi")

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, correlation_id_ctx
from cron_migration import (
    MigrationExecutor,
    current_scheduled_run,
    migrated_job,
    shutdown_gracefully,
)
from examples.cron_service.client import CronRestClient
from examples.rest_service import create_app
from examples.serving import serve
from tests.unit.cron_support import runs, sample, wait_until_async

pytestmark = pytest.mark.facade_async

CONFIG = ClientConfig(
    timeout=5.0,
    max_retries=1,
    retry_min_wait=0.01,
    retry_max_wait=0.05,
    circuit_breaker_fail_max=3,
    circuit_breaker_reset_timeout=0.3,
)


def test_the_rest_service_down_for_part_of_the_runs_loses_no_record() -> None:
    app = create_app()
    registry = CollectorRegistry()
    bodies: list[tuple[str | None, Any]] = []

    with serve(app) as base_url:

        async def main() -> list[dict[str, Any]]:
            client = CronRestClient(
                base_url,
                service_name=f"cron-{uuid.uuid4().hex[:8]}",
                target_service="rest_service",
                config=CONFIG,
                registry=registry,
            )
            async with client:

                @migrated_job(timeout=10, recorder=client, registry=registry, name="tick")
                async def tick() -> int:
                    bodies.append((correlation_id_ctx.get(), current_scheduled_run()))
                    return len(bodies)

                scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
                scheduler.add_job(tick, "interval", seconds=0.1, id="tick", max_instances=5)
                scheduler.start()
                await wait_until_async(lambda: len(bodies) >= 3, what="runs before the outage")
                app.faults.configure(outage=True)
                outage_from = len(bodies)
                await wait_until_async(lambda: len(bodies) >= outage_from + 10, what="outage runs")
                # The records of those runs are waiting, not lost.
                assert sample(registry, "cron_run_records_pending") > 0
                app.faults.clear()
                await wait_until_async(lambda: len(bodies) >= outage_from + 15, what="later runs")
                report = await shutdown_gracefully(scheduler, timeout=10, records_timeout=60)
                assert report.records_pending == 0
                return await client.list_job_executions()

        executions = asyncio.run(main())

    assert len(executions) == len(bodies)
    assert {e["status"] for e in executions} == {"completed"}
    assert sorted(e["result"] for e in executions) == list(range(1, len(bodies) + 1))
    assert {e["correlation_id"] for e in executions} == {cid for cid, _ in bodies}
    scheduled = {run.scheduled_at.isoformat() for _, run in bodies}
    assert len(scheduled) == len(bodies)
    assert {e["job_id"] for e in executions} == {"tick"}
    assert len({e["scheduled_at"] for e in executions}) == len(bodies)
    assert runs(registry, "tick", "success") == len(bodies)
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 0

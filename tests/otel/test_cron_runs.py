"""A cron run's span says what became of the run, in the words of ``cron_job_runs_total``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from cron_migration import JobTimeoutError, migrated_job
from cron_migration._context import ScheduledRun, _run_target, _scheduled_run
from tests.unit.test_cron_lease import FakeAsyncRedis


def outcomes(spans: InMemorySpanExporter, job: str) -> list[tuple[object, object]]:
    return [
        (s.attributes.get("cron.outcome"), s.attributes.get("cron.lease"))  # type: ignore[union-attr]
        for s in spans.get_finished_spans()
        if s.name == f"cron run {job}"
    ]


def test_leased_runs_that_do_not_run_say_why(spans: InMemorySpanExporter) -> None:
    ran: list[int] = []

    @migrated_job(timeout=2, lease=FakeAsyncRedis(), registry=CollectorRegistry(), name="remind")
    async def remind() -> None:
        ran.append(1)

    async def run_at(slot: datetime) -> None:
        token = _scheduled_run.set(ScheduledRun("remind", slot, misfire_grace_time=5))
        target = _run_target.set(remind)
        try:
            await remind.run_async()
        finally:
            _run_target.reset(target)
            _scheduled_run.reset(token)

    slot = datetime.now(timezone.utc).replace(microsecond=0)
    asyncio.run(run_at(slot))
    asyncio.run(run_at(slot))  # the same slot again: another replica's, as far as Redis knows
    asyncio.run(run_at(slot - timedelta(seconds=60)))  # past what its lease covers
    assert ran == [1]
    assert outcomes(spans, "remind") == [
        ("success", "taken"),
        ("skipped_elsewhere", "not taken"),
        ("missed", "not taken"),
    ]


def test_a_run_that_times_out_says_timeout(spans: InMemorySpanExporter) -> None:
    @migrated_job(timeout=0.01, registry=CollectorRegistry(), name="stuck")
    async def stuck() -> None:
        await asyncio.Event().wait()

    with pytest.raises(JobTimeoutError):
        asyncio.run(stuck.run_async())
    assert outcomes(spans, "stuck") == [("timeout", None)]

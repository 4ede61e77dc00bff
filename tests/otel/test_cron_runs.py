"""A cron run's span says what became of the run, in the words of ``cron_job_runs_total``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from commclient import correlation_id_ctx
from cron_migration import JobTimeoutError, migrated_job
from cron_migration._context import ScheduledRun, _run_target, _scheduled_run
from cron_migration._metrics import CronMetrics
from cron_migration._records import RecordOutbox, RunRecord
from tests.unit.cron_support import FakeRecorder, wait_until_async
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


def test_a_runs_records_are_delivered_in_that_runs_context_not_the_next_runs(
    spans: InMemorySpanExporter,
) -> None:
    """A sync job's run opens its record in a thread without an event loop; the next
    async run's loop delivers it. The recorder's calls for that record (HTTP calls of the
    client, in production) carry that run's correlation id and trace, not those of the
    run whose loop happened to deliver them."""
    seen: dict[str, tuple[str | None, int]] = {}

    class Recorder(FakeRecorder):
        async def create_job_execution(self, **kwargs: Any) -> str:
            current = trace.get_current_span().get_span_context().trace_id
            seen[kwargs["correlation_id"]] = (correlation_id_ctx.get(), current)
            return await super().create_job_execution(**kwargs)

    outbox = RecordOutbox(Recorder(), CronMetrics(CollectorRegistry()))
    tracer = trace.get_tracer("tests")
    record_a = RunRecord("run-a", "job-a", "job_a", None, "correlation-a")
    record_b = RunRecord("run-b", "job-b", "job_b", None, "correlation-b")

    def open_in_a_thread_without_a_loop() -> int:
        token = correlation_id_ctx.set("correlation-a")
        try:
            with tracer.start_as_current_span("run a") as span:
                assert outbox.open(record_a)  # queued: no loop here to deliver it
                return span.get_span_context().trace_id
        finally:
            correlation_id_ctx.reset(token)

    trace_a = open_in_a_thread_without_a_loop()

    async def run_b() -> int:
        correlation_id_ctx.set("correlation-b")
        with tracer.start_as_current_span("run b") as span:
            assert outbox.open(record_b)  # this loop delivers both records
        await wait_until_async(lambda: len(seen) == 2, timeout=30, what="both deliveries")
        return span.get_span_context().trace_id

    trace_b = asyncio.run(asyncio.wait_for(run_b(), 30))
    assert seen["correlation-b"] == ("correlation-b", trace_b)
    assert seen["correlation-a"] == ("correlation-a", trace_a)

"""Every cron series exists at 0 before its first increment, so increase() sees the first one.

Prometheus' ``increase()`` needs two samples of a series: a child created by its first
increment goes from absent to 1, which ``increase()`` reads as no increase at all, so a job's
first failure would never fire the CronJobRunFailures alert.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, generate_latest

from cron_migration import MigrationExecutor, migrated_job, shutdown_gracefully, watch_missed_runs
from tests.unit.cron_support import runs, wait_until_async

pytestmark = pytest.mark.facade_async

OUTCOMES = ("success", "error", "timeout", "cancelled", "skipped_elsewhere", "skipped_no_lease")


def zero_series(registry: CollectorRegistry, job: str) -> dict[str, float | None]:
    found: dict[str, float | None] = {
        f"runs:{outcome}": registry.get_sample_value(
            "cron_job_runs_total", {"cron_job": job, "outcome": outcome}
        )
        for outcome in OUTCOMES
    }
    found["missed"] = registry.get_sample_value("cron_job_missed_total", {"cron_job": job})
    found["duration_count"] = registry.get_sample_value(
        "cron_job_duration_seconds_count", {"cron_job": job}
    )
    return found


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_decorated_job_exports_every_series_at_zero_before_it_runs(kind: str) -> None:
    registry = CollectorRegistry()
    if kind == "async":

        @migrated_job(timeout=5, registry=registry, name="send_reminders")
        async def job() -> None:
            raise RuntimeError("first failure")

    else:

        @migrated_job(timeout=5, registry=registry, name="send_reminders")
        def job() -> None:
            raise RuntimeError("first failure")

    assert set(zero_series(registry, "send_reminders").values()) == {0.0}
    exposition = generate_latest(registry).decode()
    assert 'cron_job_runs_total{cron_job="send_reminders",outcome="error"} 0.0' in exposition
    assert 'cron_job_missed_total{cron_job="send_reminders"} 0.0' in exposition

    with pytest.raises(RuntimeError, match="first failure"):
        job()
    assert runs(registry, "send_reminders", "error") == 1  # 0 -> 1: an increase of 1


def test_a_plain_job_registered_with_the_executor_exports_its_missed_series_at_zero() -> None:
    registry = CollectorRegistry()

    def before_start() -> None:
        """A legacy job, added before the scheduler starts."""

    def after_start() -> None:
        """A legacy job, added while it runs."""

    async def main() -> None:
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(registry=registry)})
        scheduler.add_job(before_start, "interval", hours=1, id="early", next_run_time=later)
        scheduler.start()
        scheduler.add_job(after_start, "interval", hours=1, id="late", next_run_time=later)
        await wait_until_async(
            lambda: registry.get_sample_value("cron_job_missed_total", {"cron_job": "late"}) == 0,
            what="the missed series of the job added after start",
        )
        await shutdown_gracefully(scheduler, timeout=1)

    asyncio.run(main())
    assert registry.get_sample_value("cron_job_missed_total", {"cron_job": "early"}) == 0
    assert registry.get_sample_value("cron_job_missed_total", {"cron_job": "late"}) == 0


def test_watching_a_scheduler_exports_the_missed_series_of_its_plain_jobs() -> None:
    registry = CollectorRegistry()

    def legacy() -> None:
        """A legacy job under another executor."""

    scheduler = AsyncIOScheduler()
    scheduler.add_job(legacy, "interval", hours=1, id="legacy")
    watch_missed_runs(scheduler, registry=registry)
    assert registry.get_sample_value("cron_job_missed_total", {"cron_job": "legacy"}) == 0


def test_a_job_added_without_an_id_is_labelled_by_its_name_not_a_random_id() -> None:
    registry = CollectorRegistry()

    @migrated_job(timeout=5, registry=registry, name="nightly_report")
    def nightly_report() -> None:
        """Added without id=: APScheduler draws a random one per process."""

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(registry=registry)})
        scheduler.add_job(nightly_report, "date")
        scheduler.start()
        try:
            await wait_until_async(
                lambda: bool(
                    registry.get_sample_value(
                        "cron_job_runs_total", {"cron_job": "nightly_report", "outcome": "success"}
                    )
                ),
                what="the run counted under the job's name",
            )
        finally:
            await shutdown_gracefully(scheduler, timeout=5)

    asyncio.run(main())
    labels = {
        sample.labels["cron_job"]
        for metric in registry.collect()
        for sample in metric.samples
        if "cron_job" in sample.labels
    }
    assert labels == {"nightly_report"}

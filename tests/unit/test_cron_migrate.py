"""migrate_scheduler: every job attribute carried over, the per-job switch, the report."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from cron_migration import (
    ASYNC_JOBS_ENV,
    MigrationExecutor,
    migrate_scheduler,
    migrated_job,
    shutdown_gracefully,
    watch_missed_runs,
)
from tests.unit.cron_support import wait_until_async

pytestmark = pytest.mark.facade_async

ATTRIBUTES = (
    "id",
    "name",
    "args",
    "kwargs",
    "misfire_grace_time",
    "coalesce",
    "max_instances",
    "next_run_time",
)


def report_row(a: int, b: str = "") -> None:
    """A legacy job."""


async def send_reminders(batch: int = 1) -> None:
    """An async job."""


def legacy_scheduler() -> BackgroundScheduler:
    old = BackgroundScheduler(
        timezone="Europe/Berlin", job_defaults={"misfire_grace_time": 42, "coalesce": False}
    )
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    old.add_job(
        report_row,
        IntervalTrigger(minutes=5),
        args=[1],
        kwargs={"b": "x"},
        id="report",
        name="Daily report",
        misfire_grace_time=7,
        coalesce=True,
        max_instances=3,
        next_run_time=soon,
    )
    old.add_job(send_reminders, CronTrigger(minute="*/2"), kwargs={"batch": 50}, id="reminders")
    old.add_job(report_row, DateTrigger(soon + timedelta(days=1)), args=[2], id="once")
    old.add_job(report_row, "interval", seconds=30, args=[3], id="paused", next_run_time=None)
    return old


def attributes(job: Job) -> dict[str, Any]:
    values = {name: getattr(job, name) for name in ATTRIBUTES}
    values["trigger"] = str(job.trigger)
    values["func"] = job.func
    return values


@pytest.mark.parametrize("old_started", [False, True])
def test_every_job_keeps_every_attribute(old_started: bool) -> None:
    old = legacy_scheduler()
    if old_started:
        old.start(paused=True)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        new, report = migrate_scheduler(old, async_jobs=[])
        new.start(paused=True)
        try:
            assert {job.job_id for job in report.jobs} == {"report", "reminders", "once", "paused"}
            assert new.timezone == old.timezone
            if not old_started:
                old.start(paused=True)  # only now do the old jobs get their run times
            before = [attributes(job) for job in old.get_jobs()]
            after = [attributes(job) for job in new.get_jobs()]
            return before, after
        finally:
            await shutdown_gracefully(new, timeout=1)

    try:
        before, after = asyncio.run(main())
    finally:
        old.shutdown(wait=False)
    assert len(before) == 4
    assert sorted(after, key=lambda a: a["id"]) == sorted(before, key=lambda a: a["id"])
    by_id = {a["id"]: a for a in after}
    assert by_id["paused"]["next_run_time"] is None
    assert by_id["reminders"]["misfire_grace_time"] == 42  # from the old job defaults
    assert by_id["reminders"]["coalesce"] is False
    assert by_id["report"]["coalesce"] is True


def test_the_old_scheduler_is_left_as_it_was() -> None:
    old = legacy_scheduler()
    jobs_before = [(job.id, job.func, job.executor) for job in old.get_jobs()]
    migrate_scheduler(old, async_jobs=["reminders"])
    assert [(job.id, job.func, job.executor) for job in old.get_jobs()] == jobs_before
    assert not old.running


def where_jobs_run(async_jobs: Any) -> dict[str, str]:
    """Run two async jobs on a migrated scheduler; name the thread each ran in."""
    seen: dict[str, str] = {}

    async def first() -> None:
        seen["first"] = threading.current_thread().name

    async def second() -> None:
        seen["second"] = threading.current_thread().name

    old = BackgroundScheduler()
    old.add_job(first, "interval", seconds=0.05, id="first")
    old.add_job(second, "interval", seconds=0.05, id="second")

    async def main() -> None:
        new, _ = migrate_scheduler(old, async_jobs=async_jobs)
        new.start()
        await wait_until_async(lambda: len(seen) == 2, what="both jobs")
        await shutdown_gracefully(new, timeout=5)

    asyncio.run(main())
    return seen


def test_the_per_job_switch_chooses_the_loop_and_can_be_flipped_back() -> None:
    main_thread = threading.main_thread().name
    assert where_jobs_run({"first"}) == {"first": main_thread, "second": "compat-bridge"}
    assert where_jobs_run({"second"}) == {"first": "compat-bridge", "second": main_thread}
    assert where_jobs_run(["*"]) == {"first": main_thread, "second": main_thread}


def test_the_switch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ASYNC_JOBS_ENV, " second , ")
    main_thread = threading.main_thread().name
    assert where_jobs_run(None) == {"first": "compat-bridge", "second": main_thread}


def test_a_misspelt_job_id_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    old = legacy_scheduler()
    with pytest.raises(ValueError, match=r"async_jobs names jobs .* 'reminder'; its jobs are"):
        migrate_scheduler(old, async_jobs={"reminder"})
    monkeypatch.setenv(ASYNC_JOBS_ENV, "nope")
    with pytest.raises(ValueError, match=rf"\${ASYNC_JOBS_ENV} names jobs .* 'nope'"):
        migrate_scheduler(old)
    with pytest.raises(TypeError, match="not a string"):
        migrate_scheduler(old, async_jobs="reminders")


def test_a_mapping_swaps_in_an_async_replacement() -> None:
    ran = asyncio.Event()

    async def report_async(a: int, b: str = "") -> None:
        ran.set()

    old = BackgroundScheduler()
    old.add_job(report_row, "interval", seconds=0.05, args=[1], id="report")

    async def main() -> Any:
        new, report = migrate_scheduler(old, async_jobs={"report": report_async})
        assert new.get_job("report").func is report_async
        new.start()
        await asyncio.wait_for(ran.wait(), 30)
        await shutdown_gracefully(new, timeout=5)
        return report

    report = asyncio.run(main())
    (job,) = report.jobs
    assert job.kind == "async"
    assert any("replaced by" in change and "report_row" in change for change in job.changes)
    with pytest.raises(TypeError, match="must be an async function"):
        migrate_scheduler(old, async_jobs={"report": report_row})


class ListJobStore(BaseJobStore):  # type: ignore[misc]
    """A job store that is not the memory store (as a SQL or Redis store would be)."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[Job] = []

    def lookup_job(self, job_id: str) -> Job | None:
        return next((job for job in self.jobs if job.id == job_id), None)

    def get_due_jobs(self, now: datetime) -> list[Job]:
        return []

    def get_next_run_time(self) -> datetime | None:
        return None

    def get_all_jobs(self) -> list[Job]:
        return list(self.jobs)

    def add_job(self, job: Job) -> None:
        self.jobs.append(job)

    def update_job(self, job: Job) -> None:
        """Nothing to update."""

    def remove_job(self, job_id: str) -> None:
        self.jobs = [job for job in self.jobs if job.id != job_id]

    def remove_all_jobs(self) -> None:
        self.jobs = []


async def on_event_async(event: Any) -> None:
    """Never awaited by APScheduler 3."""


def on_event(event: Any) -> None:
    """A plain listener."""


def test_the_report_names_what_cannot_move_as_is() -> None:
    old = BackgroundScheduler()
    old.add_jobstore(ListJobStore(), "sql")
    old.add_listener(on_event_async)
    old.add_listener(on_event)
    old.add_job(send_reminders, "interval", seconds=30, id="reminders")
    old.add_job(migrated_job(send_reminders), "interval", seconds=30, id="wrapped")
    old.add_job(report_row, "interval", seconds=30, args=[1], id="report")
    new, report = migrate_scheduler(old, async_jobs=["reminders"])
    subjects = {problem.subject: problem.message for problem in report.problems}
    assert set(subjects) == {"reminders", "listener on_event_async"}
    assert "never run" in subjects["reminders"]
    assert "never runs" in subjects["listener on_event_async"]
    assert not report.ok
    assert any("on_event copied" in note for note in report.notes)
    assert new._jobstores["sql"] is old._jobstores["sql"]  # attached as it is
    text = report.render()
    assert "job store 'sql': ListJobStore attached as it is (nothing copied)" in text
    assert "CANNOT MOVE AS IS: reminders" in text
    assert "3 job(s), 2 problem(s)" in text
    assert [callback for callback, _ in new._listeners].count(on_event) == 1
    assert on_event_async not in [callback for callback, _ in new._listeners]


def count_missed(registry: CollectorRegistry, job: str) -> float:
    return registry.get_sample_value("cron_job_missed_total", {"cron_job": job}) or 0.0


@pytest.mark.parametrize("executor", ["migration", "asyncio"])
def test_missed_runs_are_counted(executor: str) -> None:
    registry = CollectorRegistry()

    @migrated_job(registry=registry, name="late_job")
    async def late() -> None:
        """Scheduled in the past, beyond its grace time."""

    def bare() -> None:
        """The same, undecorated."""

    async def main() -> None:
        if executor == "migration":
            scheduler = AsyncIOScheduler(
                executors={"default": MigrationExecutor(registry=registry)}
            )
        else:
            scheduler = AsyncIOScheduler()
            watch_missed_runs(scheduler, registry=registry)
            watch_missed_runs(scheduler, registry=registry)  # a second call changes nothing
        past = datetime.now(timezone.utc) - timedelta(seconds=30)
        for job, job_id in ((late, "late"), (bare, "bare")):
            scheduler.add_job(
                job,
                "interval",
                hours=1,
                id=job_id,
                next_run_time=past,
                misfire_grace_time=1,
            )
        scheduler.start()
        await wait_until_async(
            lambda: count_missed(registry, "late") >= 1 and count_missed(registry, "bare") >= 1,
            what="the missed runs",
        )
        await shutdown_gracefully(scheduler, timeout=1)

    asyncio.run(main())
    assert count_missed(registry, "late") == 1  # labelled by job id
    assert count_missed(registry, "bare") == 1


def legacy_scheduler_factory() -> BackgroundScheduler:
    return BackgroundScheduler()


@pytest.mark.parametrize(
    ("old", "message"),
    [
        (legacy_scheduler_factory, r"got the function legacy_scheduler_factory; call it"),
        (BackgroundScheduler, r"got the class BackgroundScheduler; pass an instance"),
        (None, r"got NoneType None"),
    ],
    ids=["factory", "class", "none"],
)
def test_what_is_not_a_scheduler_is_refused_by_name(old: Any, message: str) -> None:
    # It failed with "'function' object has no attribute '_executors'".
    with pytest.raises(TypeError, match=rf"takes an APScheduler 3 scheduler .*{message}"):
        migrate_scheduler(old)


def test_the_other_scheduler_functions_refuse_what_is_not_their_scheduler() -> None:
    from cron_migration import monitor_event_loop_lag, shutdown_gracefully, watch_missed_runs

    # Both failed with "'NoneType' object has no attribute 'add_listener'".
    with pytest.raises(TypeError, match=r"watch_missed_runs\(\) takes an APScheduler 3 .*None"):
        watch_missed_runs(None)
    with pytest.raises(TypeError, match=r"monitor_event_loop_lag\(\) takes an AsyncIOScheduler"):
        monitor_event_loop_lag(BackgroundScheduler())
    with pytest.raises(
        TypeError, match=r"shutdown_gracefully\(\) takes an AsyncIOScheduler, got the"
    ):
        asyncio.run(shutdown_gracefully(AsyncIOScheduler))  # type: ignore[arg-type]

"""migrate_scheduler carries every store, executor and pool size; the switch is a rule."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from compat import blocking_limit, set_blocking_limit
from cron_migration import (
    MigrationExecutor,
    current_scheduled_run,
    migrate_scheduler,
    shutdown_gracefully,
)
from tests.unit.cron_support import wait_until_async

pytestmark = pytest.mark.facade_async

# What the persisted job saw, by test: a persisted job is referenced by module:name.
PERSISTED_RUNS: list[str] = []


def persisted_job(label: str) -> None:
    """A job whose reference lives in a SQLAlchemy job store."""
    PERSISTED_RUNS.append(label)


def noop() -> None:
    """A legacy job."""


@pytest.fixture(autouse=True)
def restore_blocking_limit() -> Iterator[None]:
    before = blocking_limit()
    yield
    set_blocking_limit(before)


def legacy_with_aliases() -> BackgroundScheduler:
    old = BackgroundScheduler(
        jobstores={"default": MemoryJobStore(), "volatile": MemoryJobStore()},
        executors={
            "default": ThreadPoolExecutor(20),
            "processpool": ProcessPoolExecutor(2),
            "slow": ThreadPoolExecutor(1),
        },
    )
    old.add_job(noop, "interval", minutes=5, id="in_volatile", jobstore="volatile")
    old.add_job(noop, "interval", minutes=5, id="in_processes", executor="processpool")
    old.add_job(noop, "interval", minutes=5, id="one_at_a_time", executor="slow")
    return old


def test_every_store_and_executor_alias_and_pool_size_is_carried() -> None:
    set_blocking_limit(16)
    old = legacy_with_aliases()
    new, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
    assert report.ok, report.render()
    assert set(new._jobstores) == {"volatile"}  # "default" is made at start, as before
    assert isinstance(new._jobstores["volatile"], MemoryJobStore)
    by_alias = {executor.alias: executor for executor in report.executors}
    assert {alias: e.max_workers for alias, e in by_alias.items()} == {
        "default": 20,
        "processpool": 2,
        "slow": 1,
    }
    assert isinstance(new._executors["default"], MigrationExecutor)
    assert new._executors["default"].slots.size == 20
    assert new._executors["slow"].slots.size == 1
    assert isinstance(new._executors["processpool"], ProcessPoolExecutor)
    assert new._executors["processpool"]._pool._max_workers == 2
    # The old pools' 21 threads: compat's worker pool no longer caps them at 16.
    assert blocking_limit() == 21
    assert any("raised from 16 to 21" in note for note in report.notes)
    jobs = {job.job_id: job for job in report.jobs}
    assert jobs["in_volatile"].jobstore == "volatile"
    assert "child process" in jobs["in_processes"].path
    stores = {store.alias: store for store in report.stores}
    assert stores["volatile"].how == "copied"
    assert stores["volatile"].job_ids == ("in_volatile",)
    text = report.render()
    assert "executor 'default': ThreadPoolExecutor(20) -> MigrationExecutor, at most 20" in text
    assert "job store 'volatile': MemoryJobStore, 1 job(s) copied" in text

    async def main() -> None:
        new.start(paused=True)
        try:
            # What failed before: the aliases exist on the new scheduler.
            new.add_job(noop, "interval", minutes=1, id="later", jobstore="volatile")
            new.add_job(noop, "interval", minutes=1, id="later_pp", executor="processpool")
            assert new.get_job("in_volatile", jobstore="volatile") is not None
            assert new.get_job("one_at_a_time").executor == "slow"
        finally:
            await shutdown_gracefully(new, timeout=1)

    asyncio.run(main())


def test_an_executor_of_one_thread_still_runs_one_job_at_a_time() -> None:
    first_started = threading.Event()
    second_started = threading.Event()
    overlapped: list[bool] = []

    def first() -> None:
        first_started.set()
        # Only a second run allowed at the same time could start while this one waits.
        overlapped.append(second_started.wait(0.5))

    def second() -> None:
        second_started.set()

    old = BackgroundScheduler(executors={"slow": ThreadPoolExecutor(1)})
    now = datetime.now(timezone.utc)
    old.add_job(first, "date", run_date=now, id="first", executor="slow")
    old.add_job(second, "date", run_date=now, id="second", executor="slow")

    async def main() -> None:
        new, _ = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
        new.start()
        await wait_until_async(second_started.is_set, what="the second run")
        await shutdown_gracefully(new, timeout=5)

    asyncio.run(main())
    assert overlapped in ([False], [])  # [] when the second ran first: no overlap either
    assert first_started.is_set()


def test_a_sqlalchemy_store_is_attached_with_its_persisted_jobs(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    # The service's first life persisted a job, then stopped.
    first_life = BackgroundScheduler(jobstores={"db": SQLAlchemyJobStore(url=url)})
    first_life.start(paused=True)
    first_life.add_job(
        persisted_job, "interval", hours=1, args=["sql"], id="persisted", jobstore="db"
    )
    first_life.shutdown(wait=False)
    # Its next life: the legacy scheduler as the service builds it, never started.
    store = SQLAlchemyJobStore(url=url)
    old = BackgroundScheduler(jobstores={"db": store})
    old.add_job(noop, "interval", minutes=5, id="pending", jobstore="db", replace_existing=True)
    PERSISTED_RUNS.clear()

    async def main() -> Any:
        new, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
        assert new._jobstores["db"] is store
        new.start()
        try:
            new.modify_job("persisted", jobstore="db", next_run_time=datetime.now(timezone.utc))
            await wait_until_async(lambda: PERSISTED_RUNS == ["sql"], what="the persisted job")
            assert {job.id for job in new.get_jobs()} == {"persisted", "pending"}
        finally:
            await shutdown_gracefully(new, timeout=5)
        return report

    report = asyncio.run(main())
    assert report.ok, report.render()
    (db,) = [entry for entry in report.stores if entry.alias == "db"]
    assert db.how == "attached"
    assert sorted(db.job_ids) == ["pending", "persisted"]
    assert {job.job_id for job in report.jobs} == {"persisted", "pending"}
    text = report.render()
    assert "SQLAlchemyJobStore attached as it is (nothing copied); 2 job(s) run from it" in text
    assert "copied into" not in text.split("job store 'db'")[1].splitlines()[0]


def test_a_persistent_store_of_a_running_old_scheduler_is_a_problem(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    old = BackgroundScheduler(
        jobstores={"db": SQLAlchemyJobStore(url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")}
    )
    old.start(paused=True)
    try:
        old.add_job(persisted_job, "interval", hours=1, args=["x"], id="persisted", jobstore="db")
        _, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
    finally:
        old.shutdown(wait=False)
    assert not report.ok
    (problem,) = report.problems
    assert problem.subject == "job store 'db'"
    assert "shut it down" in problem.message


def test_async_jobs_added_after_the_migration_run_on_the_scheduler_loop() -> None:
    seen: dict[str, str] = {}

    async def legacy_async() -> None:
        seen["legacy"] = threading.current_thread().name

    async def added_later() -> None:
        seen["added"] = threading.current_thread().name

    async def decorated_later() -> None:
        seen["decorated"] = threading.current_thread().name

    async def switched_off() -> None:
        seen["off"] = threading.current_thread().name

    old = BackgroundScheduler()
    old.add_job(legacy_async, "interval", seconds=0.05, id="legacy")

    async def main() -> None:
        new, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
        new.add_job(added_later, "interval", seconds=0.05, id="added")
        new.scheduled_job("interval", seconds=0.05, id="decorated")(decorated_later)
        report.switch.switch_off("off")
        new.add_job(switched_off, "interval", seconds=0.05, id="off")
        new.start()
        await wait_until_async(lambda: len(seen) == 4, what="every job")
        await shutdown_gracefully(new, timeout=5)

    asyncio.run(main())
    main_thread = threading.main_thread().name
    assert seen == {
        "legacy": "compat-bridge",  # present at migration, not switched on: as before
        "added": main_thread,
        "decorated": main_thread,
        "off": "compat-bridge",
    }


# The legacy module's scheduler, which a "manager" job drives.
legacy_scheduler = BackgroundScheduler()


def manager() -> None:
    """Adds a job on the module's scheduler: after a migration, the old one."""
    legacy_scheduler.add_job(noop, "interval", minutes=1, id="managed", replace_existing=True)


def test_a_job_driving_the_old_scheduler_is_reported_and_a_run_reaches_its_own() -> None:
    legacy_scheduler.add_job(manager, "interval", minutes=5, id="manager")
    try:
        _, report = migrate_scheduler(legacy_scheduler, async_jobs=[], lag_monitor=False)
    finally:
        legacy_scheduler.remove_all_jobs()
    (problem,) = report.problems
    assert problem.subject == "manager"
    assert "legacy_scheduler.add_job on line" in problem.message
    assert "current_scheduled_run().scheduler" in problem.message

    seen: list[Any] = []

    async def reschedules_itself() -> None:
        run = current_scheduled_run()
        assert run is not None
        seen.append(run.scheduler)

    async def main() -> Any:
        new, _ = migrate_scheduler(BackgroundScheduler(), lag_monitor=False)
        new.add_job(reschedules_itself, "date", run_date=datetime.now(timezone.utc), id="self")
        new.start()
        await wait_until_async(lambda: bool(seen), what="the run")
        await shutdown_gracefully(new, timeout=5)
        return new

    new = asyncio.run(main())
    assert seen == [new]


class Maintenance:
    """Jobs as methods of an object that keeps the scheduler."""

    def __init__(self, scheduler: BackgroundScheduler) -> None:
        self.scheduler = scheduler

    def pause_reports(self) -> None:
        self.scheduler.pause_job("report")

    def harmless(self) -> None:
        """Never touches a scheduler."""


def drives_through_the_module() -> None:
    """Reaches the old scheduler as an attribute of this test module."""
    tests_module.legacy_scheduler.modify_job("manager", max_instances=2)


import tests.unit.test_cron_migrate_carry as tests_module  # noqa: E402


def cleanup(days: int) -> None:
    """A legacy job taking an argument, registered through a lambda."""


def test_a_lambda_job_registered_on_the_old_scheduler_is_not_a_use_of_it() -> None:
    """The registration line holds the lambda: only the lambda's own code counts."""
    legacy_scheduler.add_job(lambda: cleanup(days=30), "cron", hour=3, id="cleanup")
    legacy_scheduler.add_job(lambda: legacy_scheduler.pause_job("cleanup"), "cron", id="pause")
    try:
        _, report = migrate_scheduler(legacy_scheduler, async_jobs=[], lag_monitor=False)
    finally:
        legacy_scheduler.remove_all_jobs()
    assert [(p.subject, p.message.count("legacy_scheduler.")) for p in report.problems] == [
        ("pause", 1)
    ]
    assert "legacy_scheduler.pause_job on line" in report.problems[0].message


def test_uses_through_self_and_a_module_attribute_are_reported() -> None:
    old = BackgroundScheduler()
    maintenance = Maintenance(old)
    old.add_job(maintenance.pause_reports, "interval", minutes=5, id="pause")
    old.add_job(maintenance.harmless, "interval", minutes=5, id="harmless")
    _, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
    assert [
        (p.subject, "self.scheduler.pause_job on line" in p.message) for p in report.problems
    ] == [("pause", True)]
    legacy_scheduler.add_job(drives_through_the_module, "interval", minutes=5, id="module")
    try:
        _, report = migrate_scheduler(legacy_scheduler, async_jobs=[], lag_monitor=False)
    finally:
        legacy_scheduler.remove_all_jobs()
    (problem,) = report.problems
    assert "tests_module.legacy_scheduler.modify_job on line" in problem.message


def test_a_job_on_the_carried_process_pool_runs_in_a_child_process() -> None:
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

    old = BackgroundScheduler(executors={"processpool": ProcessPoolExecutor(1)})
    now = datetime.now(timezone.utc)
    old.add_job(
        os.getpid,
        "date",
        run_date=now,
        id="pid",
        executor="processpool",
        misfire_grace_time=None,  # a spawned child on a loaded machine starts late
    )
    events: list[Any] = []

    async def main() -> None:
        new, _ = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
        new.add_listener(events.append, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        new.start()
        try:
            await wait_until_async(lambda: bool(events), what="the run in the process pool")
        finally:
            await shutdown_gracefully(new, timeout=30)

    asyncio.run(main())
    (event,) = events
    assert event.code == EVENT_JOB_EXECUTED, event.exception
    assert event.retval != os.getpid()


def test_under_an_election_thread_executors_check_it_and_a_process_pool_is_a_problem() -> None:
    from cron_migration import LeaderElection

    election = LeaderElection("redis://127.0.0.1:1/0")  # never started: only wired here
    new, report = migrate_scheduler(
        legacy_with_aliases(), async_jobs=[], lag_monitor=False, leader=election
    )
    assert new._executors["default"].leader is election
    assert new._executors["slow"].leader is election
    assert not report.ok
    assert [problem.subject for problem in report.problems] == ["in_processes"]
    assert "does not check the leader election" in report.problems[0].message


def build_legacy_with_a_manager() -> BackgroundScheduler:
    """The factory layout: the manager job reaches the scheduler through its closure."""
    scheduler = BackgroundScheduler()

    def manager() -> None:
        scheduler.add_job(noop, "interval", minutes=1, id="managed", replace_existing=True)

    scheduler.add_job(manager, "interval", minutes=5, id="manager")
    return scheduler


def test_a_job_driving_the_old_scheduler_through_a_closure_is_reported() -> None:
    _, report = migrate_scheduler(build_legacy_with_a_manager(), async_jobs=[], lag_monitor=False)
    assert [(p.subject, "scheduler.add_job on line" in p.message) for p in report.problems] == [
        ("manager", True)
    ]


def test_async_jobs_an_old_asyncio_scheduler_awaited_on_its_loop_stay_on_the_loop() -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    seen: dict[str, str] = {}

    async def on_the_loop() -> None:
        seen["loop"] = threading.current_thread().name

    async def main() -> Any:
        old = AsyncIOScheduler()
        old.add_job(on_the_loop, "interval", seconds=0.05, id="loop")
        new, report = migrate_scheduler(old, lag_monitor=False)
        new.start()
        await wait_until_async(lambda: bool(seen), what="the run")
        await shutdown_gracefully(new, timeout=5)
        return report

    report = asyncio.run(main())
    assert seen == {"loop": threading.main_thread().name}
    assert report.switch.off == frozenset()
    (job,) = report.jobs
    assert job.path == "the scheduler's event loop (awaited)"


def test_a_job_the_code_adds_again_to_its_persistent_store_is_one_job(tmp_path: Path) -> None:
    """The usual persistent-store layout: every start adds the job with replace_existing."""
    pytest.importorskip("sqlalchemy")
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"

    def service_scheduler() -> BackgroundScheduler:
        scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=url)})
        scheduler.add_job(
            persisted_job, "interval", hours=1, args=["x"], id="nightly", replace_existing=True
        )
        return scheduler

    first_life = service_scheduler()
    first_life.start(paused=True)
    first_life.shutdown(wait=False)

    async def replacement(label: str) -> None:
        """The async version of the job."""

    _, report = migrate_scheduler(
        service_scheduler(), async_jobs={"nightly": replacement}, lag_monitor=False
    )
    assert [job.job_id for job in report.jobs] == ["nightly"]
    assert [store.job_ids for store in report.stores] == [("nightly",)]
    assert "1 job(s) run from it" in report.render()


def test_a_running_old_scheduler_with_memory_jobs_is_a_problem() -> None:
    """A legacy module that starts its scheduler at import: both would run every job."""
    old = BackgroundScheduler()
    old.add_job(noop, "interval", minutes=5, id="reminders")
    old.start()
    try:
        _, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
    finally:
        old.shutdown(wait=False)
    assert not report.ok
    (problem,) = report.problems
    assert problem.subject == "the old scheduler"
    assert "runs each of its 1 job(s) too" in problem.message
    assert "old.shutdown()" in problem.message


# A module-level scheduler whose job is registered by its decorator.
decorated_scheduler = BackgroundScheduler()


@decorated_scheduler.scheduled_job("interval", minutes=5, id="report")
def decorated_report() -> None:
    """Its source starts with the decorator, which is not the job's code."""


def test_a_job_registered_by_the_old_schedulers_decorator_is_not_a_use_of_it() -> None:
    _, report = migrate_scheduler(decorated_scheduler, async_jobs=[], lag_monitor=False)
    assert report.ok, report.render()


class InstrumentedThreadPool(ThreadPoolExecutor):  # type: ignore[misc]
    """A team's own executor: counts its submissions."""

    submitted = 0

    def _do_submit_job(self, job: Any, run_times: Any) -> None:
        InstrumentedThreadPool.submitted += 1
        super()._do_submit_job(job, run_times)


def test_a_subclass_of_a_pool_executor_is_a_problem_not_silently_replaced() -> None:
    old = BackgroundScheduler(executors={"default": InstrumentedThreadPool(5)})
    old.add_job(noop, "interval", minutes=5, id="job")
    _, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
    (problem,) = report.problems
    assert problem.subject == "executor 'default'"
    assert "InstrumentedThreadPool" in problem.message
    (executor,) = report.executors
    assert (executor.new, executor.max_workers) == ("MigrationExecutor", 5)


def manage(scheduler: Any, every: int) -> None:
    """Gets the scheduler to drive as an argument."""
    scheduler.reschedule_job("report", trigger="interval", minutes=every)


def test_a_job_given_the_old_scheduler_as_an_argument_is_reported() -> None:
    import functools

    old = BackgroundScheduler()
    old.add_job(manage, "interval", minutes=5, args=[old, 5], id="positional")
    old.add_job(manage, "interval", minutes=5, kwargs={"scheduler": old, "every": 5}, id="kw")
    old.add_job(functools.partial(manage, old), "interval", minutes=5, args=[5], id="partial")
    old.add_job(manage, "interval", minutes=5, args=[None, 5], id="other")
    _, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
    assert sorted((p.subject, "old scheduler" in p.message) for p in report.problems) == [
        ("kw", True),
        ("partial", True),
        ("positional", True),
    ]


def pause_failing_job(event: Any) -> None:
    """A listener of the legacy module: pauses a job that failed, on the module's scheduler."""
    legacy_scheduler.pause_job(event.job_id)


def test_a_listener_driving_the_old_scheduler_is_reported() -> None:
    from apscheduler.events import EVENT_JOB_ERROR

    legacy_scheduler.add_listener(pause_failing_job, EVENT_JOB_ERROR)
    try:
        _, report = migrate_scheduler(legacy_scheduler, async_jobs=[], lag_monitor=False)
    finally:
        legacy_scheduler.remove_listener(pause_failing_job)
    (problem,) = report.problems
    assert problem.subject == "listener pause_failing_job"
    assert "legacy_scheduler.pause_job on line" in problem.message


def test_a_persisted_job_that_cannot_be_restored_is_a_problem_and_stays_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose function was renamed since it was persisted: plan must not delete it."""
    pytest.importorskip("sqlalchemy")
    import importlib
    import sqlite3
    import sys

    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    (tmp_path / "renamed_jobs.py").write_text("def nightly() -> None:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("renamed_jobs")
    database = tmp_path / "jobs.sqlite"
    first_life = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(f"sqlite:///{database}")}
    )
    first_life.start(paused=True)
    first_life.add_job(module.nightly, "interval", hours=1, id="nightly")
    first_life.add_job(persisted_job, "interval", hours=1, args=["kept"], id="kept")
    first_life.shutdown(wait=False)
    (tmp_path / "renamed_jobs.py").unlink()
    del sys.modules["renamed_jobs"]

    old = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(f"sqlite:///{database}")})
    _, report = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
    (problem,) = report.problems
    assert problem.subject == "nightly"
    assert "cannot be restored" in problem.message
    assert "renamed_jobs:nightly" in problem.message
    assert [store.job_ids for store in report.stores] == [("kept",)]
    rows = sqlite3.connect(database).execute("select id from apscheduler_jobs").fetchall()
    assert sorted(rows) == [("kept",), ("nightly",)]


def test_a_function_a_persistent_store_cannot_reference_is_a_problem(tmp_path: Path) -> None:
    """The store keeps "module:name"; a closure or a wrapper made at run time has none."""
    pytest.importorskip("sqlalchemy")
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    old = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")}
    )
    old.add_job(persisted_job, "interval", hours=1, args=["x"], id="nightly")

    async def nightly_async(label: str) -> None:
        """An async version made where the service is built: a closure."""

    new, report = migrate_scheduler(old, async_jobs={"nightly": nightly_async}, lag_monitor=False)
    (problem,) = report.problems
    assert problem.subject == "nightly"
    assert "cannot be stored" in problem.message

    async def main() -> None:
        with pytest.raises(ValueError, match="cannot be serialized"):
            new.start()

    asyncio.run(main())

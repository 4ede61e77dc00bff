"""A hung sync job hurts only itself; a run waiting for a worker honours its misfire grace
time and its timeout. Real AsyncIOSchedulers with MigrationExecutor, compat's real pool."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from prometheus_client import CollectorRegistry

from compat import blocking_limit, set_blocking_limit
from cron_migration import MigrationExecutor, migrated_job, shutdown_gracefully
from cron_migration._worker import job_thread_limit, threads_alive
from tests.unit.cron_support import FakeRecorder, runs, sample, wait_until, wait_until_async

pytestmark = pytest.mark.facade_async


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test: lets the hung threads return."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def pool_size() -> Iterator[Any]:
    previous = blocking_limit()
    yield set_blocking_limit
    set_blocking_limit(previous)


def five_more_runs(entered: dict[str, int]) -> tuple[Callable[[], bool], float, str]:
    """What :func:`wait_until` waits for: five more runs of the healthy job from now."""
    then = entered["healthy"]
    return (lambda: entered["healthy"] >= then + 5, 30.0, "the healthy job to go on")


@pytest.mark.parametrize("kind", ["asyncio", "background"])
@pytest.mark.parametrize("max_instances", [1, 100])
def test_a_hung_job_stops_only_itself_a_healthy_one_keeps_its_cadence(
    kind: str, max_instances: int, release: threading.Event
) -> None:
    registry = CollectorRegistry()
    entered = {"hung": 0, "healthy": 0}
    skipped: list[JobEvent] = []
    # Threads are counted per job id, process-wide.
    hung_id = f"hung-{kind}-{max_instances}"

    @migrated_job(timeout=0.15, registry=registry)
    def hung() -> None:
        entered["hung"] += 1
        release.wait(120)  # an upstream that never answers

    @migrated_job(timeout=5, registry=registry)
    def healthy() -> None:
        entered["healthy"] += 1

    def hung_runs_due() -> int:
        return int(runs(registry, hung_id, "timeout")) + len(skipped)

    def add_jobs(scheduler: BaseScheduler) -> None:
        scheduler.add_listener(skipped.append, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_job(hung, "interval", seconds=0.05, id=hung_id, max_instances=max_instances)
        scheduler.add_job(healthy, "interval", seconds=0.1, id=f"healthy-{hung_id}")

    # Far more hung runs than compat's pool has threads (16): before, each timed-out run
    # left its thread uncounted and the next one took another, until none was left.
    many_hung_runs_due = (lambda: hung_runs_due() >= 40, 30.0, "40 hung runs due")

    def check_threads() -> None:
        assert entered["hung"] == min(max_instances, job_thread_limit())
        assert threads_alive(hung_id) == entered["hung"]

    if kind == "asyncio":

        async def main() -> None:
            scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
            add_jobs(scheduler)
            scheduler.start()
            await wait_until_async(*many_hung_runs_due)
            await wait_until_async(*five_more_runs(entered))
            check_threads()
            await shutdown_gracefully(scheduler, timeout=0, records_timeout=0)

        asyncio.run(main())
    else:
        scheduler = BackgroundScheduler(executors={"default": MigrationExecutor()})
        add_jobs(scheduler)
        scheduler.start()
        try:
            wait_until(*many_hung_runs_due)
            wait_until(*five_more_runs(entered))
            check_threads()
        finally:
            scheduler.shutdown(wait=False)
    # Each timed-out run whose thread works on is counted as abandoned.
    abandoned = sample(registry, "cron_job_abandoned_runs_total", {"cron_job": hung_id})
    assert abandoned == entered["hung"]


@pytest.mark.parametrize("kind", ["asyncio", "background"])
def test_an_async_job_stuck_in_run_blocking_stops_only_itself(
    kind: str, release: threading.Event
) -> None:
    """A half-migrated async job awaiting a blocking call that hangs: cancelling it at its
    timeout cannot stop the thread, so its coroutine works on. Before, its run ended
    anyway, max_instances=1 let the next one start, and each stuck run held one more of
    compat's 16 threads until the healthy sync job had none."""
    from compat import run_blocking

    registry = CollectorRegistry()
    entered = {"stuck": 0, "healthy": 0}
    skipped: list[JobEvent] = []
    stuck_id = f"stuck-in-run-blocking-{kind}"

    def upstream() -> None:
        entered["stuck"] += 1
        release.wait(120)  # an upstream that never answers

    @migrated_job(timeout=0.15, registry=registry)
    async def stuck() -> None:
        await run_blocking(upstream)

    @migrated_job(timeout=5, registry=registry)
    def healthy() -> None:
        entered["healthy"] += 1

    def add_jobs(scheduler: BaseScheduler) -> None:
        scheduler.add_listener(skipped.append, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_job(stuck, "interval", seconds=0.05, id=stuck_id, max_instances=1)
        scheduler.add_job(healthy, "interval", seconds=0.1, id=f"healthy-{stuck_id}")

    # Far more stuck runs due than compat's pool has threads (16).
    many_due = (lambda: len(skipped) >= 40, 30.0, "40 runs of the stuck job due")

    if kind == "asyncio":

        async def main() -> None:
            scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
            add_jobs(scheduler)
            scheduler.start()
            await wait_until_async(*many_due)
            await wait_until_async(*five_more_runs(entered))
            await shutdown_gracefully(scheduler, timeout=0, records_timeout=0)

        asyncio.run(main())
    else:
        scheduler = BackgroundScheduler(executors={"default": MigrationExecutor()})
        add_jobs(scheduler)
        scheduler.start()
        try:
            wait_until(*many_due)
            wait_until(*five_more_runs(entered))
        finally:
            scheduler.shutdown(wait=False)
    # One stuck run at a time: it holds the job's only instance until its thread returns.
    assert entered["stuck"] == 1
    assert runs(registry, stuck_id, "timeout") == 1
    abandoned = sample(registry, "cron_job_abandoned_runs_total", {"cron_job": stuck_id})
    assert abandoned == 1


def test_runs_waiting_for_a_worker_honour_their_misfire_grace_and_timeout(
    release: threading.Event, pool_size: Any
) -> None:
    pool_size(1)
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    entered: list[str] = []
    missed: list[JobEvent] = []
    blocker_started = threading.Event()

    def blocker() -> None:
        entered.append("blocker")
        blocker_started.set()
        release.wait(120)

    @migrated_job(registry=registry, recorder=recorder)
    def graced() -> None:
        entered.append("graced")

    @migrated_job(timeout=0.2, registry=registry, recorder=recorder)
    def timed() -> None:
        entered.append("timed")

    def sentinel() -> None:
        entered.append("sentinel")

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_listener(missed.append, EVENT_JOB_MISSED)
        scheduler.start()
        now = datetime.now(timezone.utc)
        scheduler.add_job(blocker, "date", run_date=now, id="blocker")
        await asyncio.to_thread(blocker_started.wait, 30)
        due = datetime.now(timezone.utc)
        scheduler.add_job(graced, "date", run_date=due, id="graced", misfire_grace_time=1)
        scheduler.add_job(timed, "date", run_date=due, id="timed")
        # Both wait for the one worker; the timed one times out while waiting.
        await wait_until_async(lambda: runs(registry, "timed", "timeout") == 1, what="timeout")
        await wait_until_async(
            lambda: datetime.now(timezone.utc) - due > timedelta(seconds=1.2),
            what="the graced run to be later than its grace",
        )
        scheduler.add_job(sentinel, "date", run_date=datetime.now(timezone.utc), id="sentinel")
        release.set()  # the worker is free: the queued runs get it in turn
        await wait_until_async(lambda: "sentinel" in entered, what="the sentinel run")
        await shutdown_gracefully(scheduler, timeout=5, records_timeout=20)

    asyncio.run(main())
    # Neither queued run started late: one was past its grace, one recorded as timed out.
    assert entered == ["blocker", "sentinel"]
    assert [event.job_id for event in missed] == ["graced"]
    assert sample(registry, "cron_job_missed_total", {"cron_job": "graced"}) == 1
    assert runs(registry, "graced", "success") == runs(registry, "graced", "error") == 0
    errors = {e.job_name: e.error or "" for e in recorder.by_status("failed")}
    assert errors["graced"].startswith("missed")
    assert "timeout" in errors["timed"]
    # Neither queued run was marked as started: it never was.
    assert {op for op, _ in recorder.calls} == {"create", "fail"}


def test_two_jobs_sharing_a_function_are_two_series() -> None:
    registry = CollectorRegistry()
    done = {"a": 0, "b": 0}

    @migrated_job(registry=registry, name="sync_tenant")
    async def sync_tenant(tenant: str) -> None:
        done[tenant] += 1

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(sync_tenant, "interval", seconds=0.05, id="tenant-a", args=["a"])
        scheduler.add_job(sync_tenant, "interval", seconds=0.05, id="tenant-b", args=["b"])
        scheduler.start()
        await wait_until_async(lambda: min(done.values()) >= 2, what="runs of both")
        await shutdown_gracefully(scheduler, timeout=5, records_timeout=0)

    asyncio.run(main())
    assert runs(registry, "tenant-a", "success") == done["a"]
    assert runs(registry, "tenant-b", "success") == done["b"]
    assert runs(registry, "sync_tenant", "success") == 0


def test_under_another_executor_a_hung_job_holds_at_most_its_share(
    release: threading.Event,
) -> None:
    """The legacy thread pool releases a run's instance when the timed-out call returns, so
    max_instances=1 does not count the abandoned threads there (the README says so); the
    job's share of compat's pool still caps them, and a healthy job goes on."""
    registry = CollectorRegistry()
    entered = {"hung": 0, "healthy": 0}
    hung_id = "hung-under-a-thread-pool"

    @migrated_job(timeout=0.15, registry=registry, name=hung_id)
    def hung() -> None:
        entered["hung"] += 1
        release.wait(120)

    @migrated_job(timeout=5, registry=registry)
    def healthy() -> None:
        entered["healthy"] += 1

    scheduler = BackgroundScheduler()  # its own ThreadPoolExecutor
    scheduler.add_job(hung, "interval", seconds=0.05, id=hung_id, max_instances=1)
    scheduler.add_job(healthy, "interval", seconds=0.1, id="healthy-beside-a-thread-pool")
    scheduler.start()
    try:
        wait_until(lambda: runs(registry, hung_id, "timeout") >= 40, what="40 timed-out runs")
        wait_until(*five_more_runs(entered))
    finally:
        scheduler.shutdown(wait=False)
    assert entered["hung"] == job_thread_limit()
    assert threads_alive(hung_id) == job_thread_limit()


def test_an_async_run_that_unwinds_at_its_timeout_is_not_reported_as_still_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    started: list[int] = []

    @migrated_job(timeout=0.05, registry=registry)
    async def slow() -> None:
        started.append(1)
        await asyncio.sleep(30)  # cancelled at the timeout, and unwinds at once

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(slow, "interval", seconds=0.1, id="unwinds", max_instances=1)
        scheduler.start()
        await wait_until_async(lambda: runs(registry, "unwinds", "timeout") >= 3)
        await shutdown_gracefully(scheduler, timeout=5, records_timeout=0)

    with caplog.at_level("WARNING"):
        asyncio.run(main())
    assert len(started) >= 3  # its instance was released each time
    assert not [r for r in caplog.records if "still work" in r.getMessage()]

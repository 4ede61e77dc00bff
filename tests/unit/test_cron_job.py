"""@migrated_job under the three APScheduler 3 schedulers: real schedulers, short intervals."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from prometheus_client import CollectorRegistry

from commclient import correlation_id_ctx
from cron_migration import (
    JobTimeoutError,
    MigrationExecutor,
    current_scheduled_run,
    migrated_job,
)
from tests.unit.cron_support import runs, wait_until

pytestmark = pytest.mark.facade_async  # compat's bridge needs anyio (the async extra)

INTERVAL = 0.1
RUNS_WANTED = 3


class Log:
    """What the jobs saw, per job: thread, loop, correlation id, scheduled run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, list[dict[str, Any]]] = {"async_job": [], "sync_job": []}

    def add(self, job: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:
            self.entries[job].append(
                {
                    "thread": threading.current_thread(),
                    "loop": loop,
                    "correlation_id": correlation_id_ctx.get(),
                    "scheduled": current_scheduled_run(),
                }
            )

    def enough(self) -> bool:
        with self.lock:
            return all(len(entries) >= RUNS_WANTED for entries in self.entries.values())


def make_jobs(registry: CollectorRegistry, log: Log) -> tuple[Any, Any]:
    @migrated_job(timeout=10, registry=registry)
    async def async_job(tag: str) -> str:
        await asyncio.sleep(0.001)
        log.add("async_job")
        return f"async {tag}"

    @migrated_job(timeout=10, registry=registry)
    def sync_job(tag: str) -> str:
        time.sleep(0.001)
        log.add("sync_job")
        return f"sync {tag}"

    return async_job, sync_job


def add_jobs(scheduler: BaseScheduler, jobs: tuple[Any, Any], executor: str) -> None:
    for job in jobs:
        scheduler.add_job(
            job, "interval", seconds=INTERVAL, args=["x"], id=job.name, executor=executor
        )


def collect_events(scheduler: BaseScheduler) -> list[JobExecutionEvent]:
    events: list[JobExecutionEvent] = []
    scheduler.add_listener(events.append, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    return events


def run_thread_scheduler(kind: str, executor: str, log: Log, jobs: tuple[Any, Any]) -> list[Any]:
    scheduler: BaseScheduler
    scheduler = BlockingScheduler() if kind == "blocking" else BackgroundScheduler()
    if executor == "migration":
        scheduler.add_executor(MigrationExecutor(), "migration")
    events = collect_events(scheduler)
    add_jobs(scheduler, jobs, "default" if executor == "default" else "migration")
    if kind == "blocking":

        def stop_when_done() -> None:
            wait_until(log.enough, what="runs of both jobs")
            scheduler.shutdown(wait=True)

        stopper = threading.Thread(target=stop_when_done)
        stopper.start()
        scheduler.start()  # returns once stop_when_done shuts it down
        stopper.join()
    else:
        scheduler.start()
        try:
            wait_until(log.enough, what="runs of both jobs")
        finally:
            scheduler.shutdown(wait=True)
    return events


def run_asyncio_scheduler(executor: str, log: Log, jobs: tuple[Any, Any]) -> list[Any]:
    async def main() -> list[Any]:
        scheduler = AsyncIOScheduler()
        if executor == "migration":
            scheduler.add_executor(MigrationExecutor(), "migration")
        events = collect_events(scheduler)
        add_jobs(scheduler, jobs, "default" if executor == "default" else "migration")
        scheduler.start()
        deadline = time.monotonic() + 30
        while not log.enough():
            assert time.monotonic() < deadline, "the jobs did not run"
            await asyncio.sleep(0.01)
        scheduler.pause()
        await asyncio.sleep(0.2)  # let the runs in progress end
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)
        return events

    return asyncio.run(main())


@pytest.mark.parametrize("executor", ["default", "migration"])
@pytest.mark.parametrize("kind", ["blocking", "background", "asyncio"])
def test_the_same_decorated_jobs_run_under_every_scheduler(kind: str, executor: str) -> None:
    registry = CollectorRegistry()
    log = Log()
    jobs = make_jobs(registry, log)
    outer = correlation_id_ctx.set("the test's own id")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind == "asyncio":
            events = run_asyncio_scheduler(executor, log, jobs)
        else:
            events = run_thread_scheduler(kind, executor, log, jobs)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert correlation_id_ctx.get() == "the test's own id"
    correlation_id_ctx.reset(outer)

    errors = [e for e in events if e.code == EVENT_JOB_ERROR]
    assert errors == []
    by_job: dict[str, list[Any]] = {"async_job": [], "sync_job": []}
    for event in events:
        by_job[event.job_id].append(event.retval)
    assert set(by_job["async_job"]) == {"async x"}
    assert set(by_job["sync_job"]) == {"sync x"}

    for job, entries in log.entries.items():
        ids = [entry["correlation_id"] for entry in entries]
        assert None not in ids
        assert len(set(ids)) == len(ids), f"{job}: a correlation id was reused"
        assert "the test's own id" not in ids
        # Every run the body made was counted once as a success.
        assert runs(registry, job, "success") >= len(entries)
        if executor == "migration":
            scheduled = [entry["scheduled"] for entry in entries]
            assert all(s is not None and s.job_id == job for s in scheduled)
            assert len({s.scheduled_at for s in scheduled}) == len(scheduled)
    for entry in log.entries["sync_job"]:
        assert entry["loop"] is None, "a sync job ran on an event loop thread"
    async_loops = {entry["loop"] for entry in log.entries["async_job"]}
    assert None not in async_loops
    if kind == "asyncio" and executor == "default":
        # Awaited on the scheduler's own loop, in the main thread.
        assert {entry["thread"] for entry in log.entries["async_job"]} == {threading.main_thread()}


def test_a_bare_coroutine_job_under_a_thread_scheduler_is_never_awaited() -> None:
    """The trap the decorator exists for; if APScheduler ever fixed it, this would say so."""
    ran = threading.Event()

    async def bare() -> None:
        ran.set()

    scheduler = BackgroundScheduler()
    events = collect_events(scheduler)
    scheduler.add_job(bare, "interval", seconds=INTERVAL, id="bare")
    scheduler.start()
    try:
        wait_until(lambda: len(events) >= 2, what="two runs")
    finally:
        scheduler.shutdown(wait=True)
    assert not ran.is_set()
    results = [event.retval for event in events]
    assert all(inspect.iscoroutine(result) for result in results)
    assert {inspect.getcoroutinestate(result) for result in results} == {inspect.CORO_CREATED}
    for result in results:
        result.close()


def run_once(job: Callable[..., Any], *args: Any) -> Any:
    """Run a decorated job as a thread scheduler would: plainly, in a thread without a loop."""
    return job(*args)


def test_called_without_a_loop_it_runs_and_returns_the_result() -> None:
    registry = CollectorRegistry()

    @migrated_job(registry=registry)
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert run_once(add, 2, 3) == 5
    assert runs(registry, "add", "success") == 1


def test_a_job_keyword_named_timeout_reaches_the_job_not_the_bridge() -> None:
    # compat.run_sync keeps a ``timeout`` keyword of its own; a job's keyword of that name
    # must reach the job, as it does when a scheduler passes the job's kwargs.
    registry = CollectorRegistry()

    @migrated_job(registry=registry)
    async def poll(*, timeout: float) -> float:
        await asyncio.sleep(0)
        return timeout

    assert job_kwargs_call(poll, timeout=7.5) == 7.5
    assert runs(registry, "poll", "success") == 1


def job_kwargs_call(job: Callable[..., Any], **kwargs: Any) -> Any:
    """Run a decorated job with keyword arguments, in a thread without a loop."""
    return job(**kwargs)


def test_called_on_a_loop_it_returns_an_awaitable_run() -> None:
    registry = CollectorRegistry()

    @migrated_job(registry=registry)
    def blocking(seconds: float) -> str:
        time.sleep(seconds)
        return threading.current_thread().name

    async def main() -> str:
        return str(await blocking(0.01))

    assert asyncio.run(main()) != threading.current_thread().name
    assert runs(registry, "blocking", "success") == 1


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_run_over_its_timeout_fails_and_is_counted(kind: str) -> None:
    registry = CollectorRegistry()
    released = threading.Event()

    if kind == "async":

        @migrated_job(timeout=0.2, registry=registry, name="slow")
        async def slow() -> None:
            await asyncio.sleep(30)

    else:

        @migrated_job(timeout=0.2, registry=registry, name="slow")
        def slow() -> None:
            released.wait(30)

    with pytest.raises(JobTimeoutError, match=r"'slow' did not finish within its timeout of 0\.2s"):
        run_once(slow)
    released.set()
    assert runs(registry, "slow", "timeout") == 1
    assert runs(registry, "slow", "success") == 0
    count = registry.get_sample_value("cron_job_duration_seconds_count", {"cron_job": "slow"})
    assert count == 1


def test_a_failing_job_raises_to_the_scheduler_and_counts_an_error() -> None:
    registry = CollectorRegistry()

    @migrated_job(registry=registry)
    def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        run_once(broken)
    assert runs(registry, "broken", "error") == 1


def test_a_cancelled_run_counts_as_cancelled() -> None:
    registry = CollectorRegistry()
    started = asyncio.Event()

    @migrated_job(registry=registry)
    async def forever() -> None:
        started.set()
        await asyncio.sleep(30)

    async def main() -> None:
        task = asyncio.ensure_future(forever())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert runs(registry, "forever", "cancelled") == 1


def test_decorating_methods_binds_the_instance() -> None:
    registry = CollectorRegistry()

    class Service:
        def __init__(self) -> None:
            self.calls = 0

        @migrated_job(registry=registry, name="service_tick")
        async def tick(self, step: int) -> int:
            self.calls += step
            return self.calls

    service = Service()
    assert run_once(service.tick, 2) == 2
    assert run_once(service.tick, 3) == 5


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"timeout": 0}, ValueError, "timeout must be a number of seconds > 0"),
        ({"timeout": "60"}, ValueError, "timeout must be"),
        ({"timeout": True}, ValueError, "timeout must be"),
        ({"name": ""}, ValueError, "name must be a non-empty string"),
        ({"lease": "redis://localhost:1/0"}, ValueError, "a lease needs a timeout"),
        ({"lease": "localhost:6379", "timeout": 5}, ValueError, "is not a Redis URL"),
        ({"lease": "http://redis:6379/0", "timeout": 5}, ValueError, "is not a Redis URL"),
        (
            {"lease": "redis://:s3cret@redis:63a9/0", "timeout": 5},
            ValueError,
            r"'redis://redis:63a9/0' is not a usable Redis URL: Port could not be cast",
        ),
        ({"timeout": -1}, ValueError, "timeout must be a number of seconds > 0, got -1"),
        ({"timeout": float("nan")}, ValueError, "timeout must be"),
        ({"timeout": float("inf")}, ValueError, "timeout must be"),
        ({"record_capacity": 0}, ValueError, "record capacity must be an integer >= 1"),
        ({"lease_clock_skew": -1, "lease": "redis://h/0", "timeout": 5}, ValueError, "clock_skew"),
        ({"lease": 42, "timeout": 5}, TypeError, "a Redis URL or a Redis client"),
        ({"recorder": object()}, TypeError, "does not implement RunRecorder"),
        ({"on_redis_error": "retry", "lease": "redis://h/0", "timeout": 5}, ValueError, "'run'"),
    ],
)
def test_bad_options_are_refused_by_name(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    def job() -> None:
        """A job."""

    with pytest.raises(error, match=message):
        migrated_job(**options)(job)


def test_a_sync_recorder_is_refused() -> None:
    class SyncRecorder:
        def create_job_execution(self, **kwargs: Any) -> str:
            return "1"

        start_job_execution = complete_job_execution = fail_job_execution = create_job_execution

    with pytest.raises(TypeError, match="must be async"):
        migrated_job(recorder=SyncRecorder())(lambda: None)


def test_decorating_twice_is_refused() -> None:
    job = migrated_job(lambda: None)
    with pytest.raises(TypeError, match="already decorated"):
        migrated_job(job)


def test_the_job_keeps_its_function_names_for_apscheduler() -> None:
    from apscheduler.util import get_callable_name, obj_to_ref

    job = migrated_job(timeout=5)(module_level_job)
    assert get_callable_name(job) == "module_level_job"
    assert obj_to_ref(job) == f"{__name__}:module_level_job"


def module_level_job() -> None:
    """A job defined at module level."""

"""cron_migration against careless callers and hostile jobs, recorders and process models."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timezone
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from cron_migration import MigrationExecutor, flush_run_records, migrated_job, shutdown_gracefully
from tests.unit.cron_support import FakeRecorder, runs, sample, wait_until, wait_until_async

pytestmark = pytest.mark.facade_async

INTERRUPTS = [KeyboardInterrupt, SystemExit]


def interrupting_job(kind: str, error: type[BaseException], **options: Any) -> Any:
    if kind == "async":

        @migrated_job(name="interrupting", **options)
        async def job() -> None:
            await asyncio.sleep(0)
            raise error("from the job")

    else:

        @migrated_job(name="interrupting", **options)
        def job() -> None:
            raise error("from the job")

    return job


@pytest.mark.parametrize("error", INTERRUPTS)
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_keyboard_interrupt_and_system_exit_reach_a_caller_without_a_loop(
    kind: str, error: type[BaseException]
) -> None:
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    job = interrupting_job(kind, error, registry=registry, recorder=recorder)

    with pytest.raises(error, match="from the job"):
        job()  # as a thread scheduler calls it: the run is on compat's loop
    assert runs(registry, "interrupting", "error") == 1

    # compat's loop, shared by the whole process, is still serving.
    @migrated_job(registry=registry)
    async def after() -> str:
        return "still running"

    assert after() == "still running"
    from compat import run_sync

    assert run_sync(flush_run_records, 10) == 0
    (failed,) = recorder.by_status("failed")
    assert failed.error == f"{error.__name__}: from the job"


@pytest.mark.parametrize("error", INTERRUPTS)
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_keyboard_interrupt_and_system_exit_reach_the_awaiting_coroutine(
    kind: str, error: type[BaseException]
) -> None:
    registry = CollectorRegistry()
    job = interrupting_job(kind, error, registry=registry)

    async def main() -> BaseException | None:
        try:
            await job()
        except error as caught:  # here, not out of the loop from another task
            return caught
        return None

    caught = asyncio.run(main())
    assert isinstance(caught, error)
    assert str(caught) == "from the job"
    assert runs(registry, "interrupting", "error") == 1


@pytest.mark.parametrize("error", INTERRUPTS)
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_an_interrupt_from_a_job_is_a_recorded_failure_and_the_asyncio_scheduler_goes_on(
    kind: str, error: type[BaseException]
) -> None:
    # As under the legacy scheduler, whose thread pool reports it as the run's error.
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    job = interrupting_job(kind, error, registry=registry, recorder=recorder)
    events: list[JobExecutionEvent] = []

    async def main() -> bool:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(registry=registry)})
        scheduler.add_listener(events.append, EVENT_JOB_ERROR)
        scheduler.add_job(job, "interval", seconds=0.05, id="interrupting")
        scheduler.start()
        await wait_until_async(lambda: len(events) >= 3, what="three interrupted runs")
        still_running = bool(scheduler.running)
        await shutdown_gracefully(scheduler, timeout=5, records_timeout=20)
        return still_running

    assert asyncio.run(main()) is True
    assert {type(event.exception) for event in events} == {error}
    assert runs(registry, "interrupting", "error") >= 3
    failed = recorder.by_status("failed")
    assert len(failed) >= 3
    assert {execution.error for execution in failed} == {f"{error.__name__}: from the job"}


@pytest.mark.parametrize("error", INTERRUPTS)
def test_an_interrupt_under_a_thread_scheduler_is_reported_and_compat_keeps_serving(
    error: type[BaseException],
) -> None:
    registry = CollectorRegistry()
    job = interrupting_job("async", error, registry=registry)
    events: list[JobExecutionEvent] = []
    scheduler = BackgroundScheduler(executors={"default": MigrationExecutor(registry=registry)})
    scheduler.add_listener(events.append, EVENT_JOB_ERROR)
    scheduler.add_job(job, "interval", seconds=0.05, id="interrupting")
    scheduler.start()
    try:
        wait_until(lambda: len(events) >= 2, what="two interrupted runs")
    finally:
        scheduler.shutdown(wait=True)
    assert {type(event.exception) for event in events} == {error}
    assert runs(registry, "interrupting", "error") >= 2

    @migrated_job(registry=registry)
    async def after() -> str:
        return "still running"

    assert after() == "still running"


def in_a_child(work: Any) -> str:
    """Run ``work()`` in a forked child; return what it returned (a str) through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, str(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        return pipe.read()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_opens_its_own_lease_connection_and_owns_its_leases() -> None:
    redis = pytest.importorskip("redis")
    from datetime import datetime, timezone

    from cron_migration import Lease
    from tests.redis_server import RedisServer, require_redis_server

    require_redis_server()
    with RedisServer() as server:
        lease = Lease(server.url)
        loop = asyncio.new_event_loop()  # a loop that lives on, as a service's would
        try:
            first = datetime(2026, 6, 1, 7, 30, tzinfo=timezone.utc)
            until = time.time() + 60
            loop.run_until_complete(lease.acquire(lease.key("remind", first), until, "parent-run"))
            checker = redis.Redis.from_url(server.url)

            def child() -> str:
                second = datetime(2026, 6, 1, 7, 31, tzinfo=timezone.utc)
                loop.run_until_complete(
                    lease.acquire(lease.key("remind", second), until, "child-run")
                )
                owner = checker.get(lease.key("remind", second)).decode()
                # Its own connection: the parent's, the checker's and the child's.
                return f"{owner}|{len(checker.client_list())}|{os.getpid()}"

            owner, connections, child_pid = in_a_child(child).split("|")
            assert owner.split(":")[-2] == child_pid, owner
            assert int(connections) == 3
            parent_owner = checker.get(lease.key("remind", first)).decode()
            assert parent_owner.split(":")[-2] == str(os.getpid())
            checker.close()
        finally:
            loop.run_until_complete(lease.aclose())
            loop.close()


def test_a_job_decorated_twice_through_a_method_or_a_partial_is_refused() -> None:
    import functools

    class Service:
        @migrated_job(registry=CollectorRegistry(), name="tick")
        async def tick(self, step: int) -> int:
            return step

    with pytest.raises(TypeError, match="already decorated"):
        migrated_job(Service().tick)
    with pytest.raises(TypeError, match="already decorated"):
        migrated_job(functools.partial(Service.tick, Service()))


def test_options_given_positionally_or_misspelt_are_named() -> None:
    with pytest.raises(TypeError, match=r"got 60; its options are keyword-only"):
        migrated_job(60)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="timout"):
        migrated_job(timout=60)  # type: ignore[call-overload]


def test_lease_options_beside_a_ready_lease_are_refused_not_ignored() -> None:
    from cron_migration import Lease

    lease = Lease("redis://localhost:6379/0")
    with pytest.raises(ValueError, match="set them on the Lease"):
        migrated_job(timeout=5, lease=lease, on_redis_error="run")(lambda: None)
    with pytest.raises(ValueError, match="set them on the Lease"):
        migrated_job(timeout=5, lease=lease, lease_clock_skew=5)(lambda: None)
    with pytest.raises(ValueError, match="'run' or 'skip', got 'skp'"):
        migrated_job(timeout=5, on_redis_error="skp")(lambda: None)  # type: ignore[arg-type]


class HangingRecorder(FakeRecorder):
    """Never answers create, as a service that accepts the connection and stalls."""

    async def create_job_execution(self, **kwargs: Any) -> str:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_a_hanging_recorder_holds_up_neither_the_jobs_nor_the_shutdown() -> None:
    registry = CollectorRegistry()
    recorder = HangingRecorder()
    ran: list[int] = []

    @migrated_job(recorder=recorder, registry=registry)
    async def tick() -> None:
        ran.append(1)

    async def main() -> Any:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(registry=registry)})
        scheduler.add_job(tick, "interval", seconds=0.05, id="tick")
        scheduler.start()
        await wait_until_async(lambda: len(ran) >= 5, what="runs while the recorder hangs")
        return await shutdown_gracefully(scheduler, timeout=5, records_timeout=0.5)

    report = asyncio.run(main())
    assert report.cancelled == 0
    assert report.records_pending == len(ran)  # none delivered, each one counted
    assert sample(registry, "cron_run_records_pending") == len(ran)
    assert runs(registry, "tick", "success") == len(ran)


class AsyncCallable:
    """A job object whose __call__ is async: a coroutine function by its method."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        await asyncio.sleep(0)
        self.calls += 1
        return "awaited"


async def _remind() -> str:
    await asyncio.sleep(0)
    return "awaited"


@pytest.mark.filterwarnings("error::RuntimeWarning")  # "coroutine ... was never awaited"
@pytest.mark.parametrize("where", ["no loop", "loop"])
@pytest.mark.parametrize(
    "make",
    [AsyncCallable, lambda: lambda: _remind()],
    ids=["async __call__", "returns a coroutine"],
)
def test_a_job_whose_work_is_a_coroutine_is_awaited_whatever_its_shape(
    make: Any, where: str
) -> None:
    registry = CollectorRegistry()
    job = migrated_job(registry=registry, name="shaped")(make())

    async def on_a_loop() -> Any:
        return await job()

    result = job() if where == "no loop" else asyncio.run(on_a_loop())
    assert result == "awaited"
    assert runs(registry, "shaped", "success") == 1


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_the_executor_awaits_undecorated_jobs_whose_work_is_a_coroutine() -> None:
    from apscheduler.events import EVENT_JOB_EXECUTED

    events: list[JobExecutionEvent] = []

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_listener(events.append, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        now = datetime.now(timezone.utc)
        scheduler.add_job(AsyncCallable(), "interval", hours=1, id="object", next_run_time=now)
        scheduler.add_job(lambda: _remind(), "interval", hours=1, id="lambda", next_run_time=now)
        scheduler.start()
        await wait_until_async(lambda: len(events) >= 2, what="both runs")
        # These jobs record nothing; a recorder another test left hanging must not hold us.
        await shutdown_gracefully(scheduler, timeout=5, records_timeout=0)

    asyncio.run(main())
    assert {(event.job_id, event.retval) for event in events} == {
        ("object", "awaited"),
        ("lambda", "awaited"),
    }

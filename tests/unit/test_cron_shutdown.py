"""shutdown_gracefully: runs in progress finish or are cancelled, and every run is accounted for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")


from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from cron_migration import MigrationExecutor, migrated_job, run_until_signal, shutdown_gracefully
from tests.unit.cron_support import FakeRecorder, runs, wait_until, wait_until_async

pytestmark = pytest.mark.facade_async


@pytest.mark.parametrize("executor", ["migration", "asyncio"])
def test_shutdown_in_the_middle_of_runs_accounts_for_every_run(executor: str) -> None:
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    started: dict[str, int] = {"quick": 0, "slow": 0, "legacy": 0}
    release_legacy = threading.Event()

    @migrated_job(recorder=recorder, registry=registry)
    async def quick() -> str:
        started["quick"] += 1
        await asyncio.sleep(0.3)
        return "quick done"

    @migrated_job(recorder=recorder, registry=registry)
    async def slow() -> str:
        started["slow"] += 1
        await asyncio.sleep(60)
        return "never"

    @migrated_job(recorder=recorder, registry=registry)
    def legacy() -> str:
        started["legacy"] += 1
        release_legacy.wait(60)
        return "legacy done"

    async def main() -> Any:
        executors = {"default": MigrationExecutor()} if executor == "migration" else {}
        scheduler = AsyncIOScheduler(executors=executors)
        for job in (quick, slow, legacy):
            scheduler.add_job(job, "interval", seconds=0.1, id=job.name, max_instances=1)
        scheduler.start()
        await wait_until_async(lambda: all(started.values()), what="every job to start")
        report = await shutdown_gracefully(scheduler, timeout=1.0, records_timeout=3)
        assert not scheduler.running
        before = dict(started)
        await asyncio.sleep(0.3)
        assert started == before, "a run started after shutdown_gracefully()"
        return report

    try:
        report = asyncio.run(main())
    finally:
        release_legacy.set()
    # slow cancelled, legacy's thread abandoned: quick finished within the timeout
    assert (report.cancelled, report.abandoned) == (1, 1)
    assert report.finished >= 1
    assert report.records_pending == 0

    # Every run that started is recorded, and its record says how it ended.
    assert len(recorder.executions) == sum(started.values())
    by_job: dict[str, set[str]] = {}
    for execution in recorder.executions.values():
        by_job.setdefault(execution.job_name, set()).add(execution.status)
    assert by_job == {"quick": {"completed"}, "slow": {"failed"}, "legacy": {"failed"}}
    errors = {e.job_name: e.error or "" for e in recorder.by_status("failed")}
    assert errors["slow"].startswith("cancelled")
    # Not "cancelled": a thread cannot be, and the function may still have its effect.
    assert errors["legacy"].startswith("abandoned")
    assert "outcome is unknown" in errors["legacy"]
    assert runs(registry, "slow", "cancelled") == 1
    assert runs(registry, "legacy", "abandoned") == 1
    assert runs(registry, "legacy", "cancelled") == 0
    assert runs(registry, "quick", "success") == started["quick"]


def test_an_abandoned_run_that_returns_while_records_are_delivered_is_recorded_as_it_ended() -> (
    None
):
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    started = threading.Event()
    release = threading.Event()

    @migrated_job(recorder=recorder, registry=registry)
    def legacy() -> str:
        started.set()
        release.wait(60)
        return "legacy done"

    def release_once_abandoned() -> None:
        wait_until(lambda: runs(registry, "legacy", "abandoned") == 1, what="the abandonment")
        release.set()

    async def main() -> Any:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(legacy, "date", id="legacy")
        scheduler.start()
        await asyncio.to_thread(started.wait, 30)
        releaser = threading.Thread(target=release_once_abandoned)
        releaser.start()
        report = await shutdown_gracefully(scheduler, timeout=0.1, records_timeout=30)
        releaser.join()
        return report

    try:
        report = asyncio.run(main())
    finally:
        release.set()
    assert report.abandoned == 1
    assert report.records_pending == 0
    (execution,) = recorder.executions.values()
    assert (execution.status, execution.result) == ("completed", "legacy done")


def test_a_scheduler_that_is_not_running_only_flushes_records() -> None:
    async def main() -> Any:
        return await shutdown_gracefully(AsyncIOScheduler(), timeout=1)

    report = asyncio.run(main())
    assert (report.finished, report.cancelled, report.records_pending) == (0, 0, 0)


def test_a_thread_scheduler_is_refused_by_name() -> None:
    async def main() -> None:
        await shutdown_gracefully(BackgroundScheduler(), timeout=1)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="AsyncIOScheduler, got BackgroundScheduler"):
        asyncio.run(main())


def test_run_until_signal_refuses_what_it_cannot_run_by_name() -> None:
    with pytest.raises(TypeError, match="AsyncIOScheduler, got BackgroundScheduler"):
        run_until_signal(BackgroundScheduler())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace must be a number of seconds"):
        run_until_signal(AsyncIOScheduler(), grace=-1)
    with pytest.raises(ValueError, match="records_timeout must be a number of seconds"):
        run_until_signal(AsyncIOScheduler(), records_timeout=float("nan"))
    errors: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            run_until_signal(AsyncIOScheduler())
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert "main thread" in str(errors[0])


@pytest.mark.parametrize("timeout", [-1, "30", float("nan"), True])
def test_a_bad_timeout_is_refused(timeout: Any) -> None:
    async def main() -> None:
        await shutdown_gracefully(AsyncIOScheduler(), timeout=timeout)

    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        asyncio.run(main())


def test_it_must_run_on_the_schedulers_loop() -> None:
    async def start() -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler()
        scheduler.start()
        return scheduler

    loop = asyncio.new_event_loop()
    try:
        scheduler = loop.run_until_complete(start())

        async def elsewhere() -> None:
            await shutdown_gracefully(scheduler, timeout=1)

        with pytest.raises(RuntimeError, match="on the scheduler's event loop"):
            asyncio.run(elsewhere())
        loop.run_until_complete(shutdown_gracefully(scheduler, timeout=1))
    finally:
        loop.close()


def test_a_run_on_the_legacy_async_path_is_cancelled_and_recorded_as_failed() -> None:
    """An async job left off the switch runs on compat's loop: shutdown still reaches it."""
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    started = threading.Event()
    finished: list[str] = []

    @migrated_job(recorder=recorder, registry=registry)
    async def slow() -> str:
        started.set()
        await asyncio.sleep(30)
        finished.append("the run went on after shutdown")
        return "never"

    async def main() -> Any:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(async_jobs=[])})
        scheduler.add_job(slow, "interval", seconds=0.1, id="slow", max_instances=1)
        scheduler.start()
        await wait_until_async(started.is_set, what="the run to start")
        return await shutdown_gracefully(scheduler, timeout=0.2, records_timeout=20)

    report = asyncio.run(main())
    assert report.cancelled == 1
    assert report.records_pending == 0
    (execution,) = recorder.executions.values()
    assert execution.status == "failed"
    assert execution.error is not None
    assert execution.error.startswith("cancelled")
    assert runs(registry, "slow", "cancelled") == 1
    assert finished == []


def test_a_job_that_swallows_its_cancellation_is_still_accounted_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cron_migration._shutdown

    monkeypatch.setattr(cron_migration._shutdown, "CANCEL_GRACE", 0.2)
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    started = asyncio.Event()
    release = asyncio.Event()

    @migrated_job(recorder=recorder, registry=registry)
    async def stubborn() -> str:
        started.set()
        while True:
            try:
                await release.wait()
                return "done at last"
            except asyncio.CancelledError:
                continue  # a job that swallows its cancellation

    async def main() -> Any:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(stubborn, "interval", hours=1, id="stubborn", next_run_time=None)
        scheduler.start()
        scheduler.modify_job("stubborn", next_run_time=datetime.now(timezone.utc))
        await started.wait()
        # The abandoned body is awaited until shortly before the records' time is up.
        report = await shutdown_gracefully(scheduler, timeout=0.1, records_timeout=1)
        release.set()  # the abandoned body ends; its run is already accounted for
        await asyncio.sleep(0.05)
        return report

    report = asyncio.run(main())
    # It did not stop when cancelled: abandoned (its outcome unknown), not "cancelled".
    assert (report.abandoned, report.cancelled, report.records_pending) == (1, 0, 0)
    (execution,) = recorder.executions.values()
    assert execution.status == "failed"
    assert execution.error is not None
    assert execution.error.startswith("abandoned")
    assert runs(registry, "stubborn", "abandoned") == 1
    assert runs(registry, "stubborn", "cancelled") == 0
    assert runs(registry, "stubborn", "success") == 0


def held_in_a_child_process(directory: str) -> None:
    """A process-pool job: says it started (with its pid), runs until released."""
    import os
    import time
    from pathlib import Path

    folder = Path(directory)
    (folder / "started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (folder / "done").write_text("done")


def process_is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("released", [True, False])
def test_runs_on_a_carried_process_pool_are_waited_for_or_ended(
    tmp_path: Any, released: bool
) -> None:
    from apscheduler.executors.pool import ProcessPoolExecutor

    from cron_migration import migrate_scheduler

    old = BackgroundScheduler(executors={"processpool": ProcessPoolExecutor(1)})
    old.add_job(
        held_in_a_child_process,
        "date",
        run_date=datetime.now(timezone.utc),
        args=[str(tmp_path)],
        executor="processpool",
        id="held",
        misfire_grace_time=None,  # a spawned child on a loaded machine starts late
    )

    async def main() -> Any:
        new, _ = migrate_scheduler(old, async_jobs=[], lag_monitor=False)
        new.start()
        started = tmp_path / "started"
        # The child writes its pid after creating the file: wait for the pid, not the file.
        await wait_until_async(
            lambda: started.exists() and bool(started.read_text()), what="the run in the child"
        )
        shutdown = asyncio.ensure_future(shutdown_gracefully(new, timeout=60 if released else 0))
        if released:
            (tmp_path / "release").write_text("")
        report = await shutdown
        return report, (tmp_path / "done").exists()

    report, done = asyncio.run(main())
    if released:
        assert (report.finished, report.cancelled, done) == (1, 0, True)
    else:
        assert (report.finished, report.cancelled, done) == (0, 1, False)
        assert process_is_gone(int((tmp_path / "started").read_text()))


def test_run_until_signal_returns_though_a_coroutine_ignores_its_cancellation() -> None:
    """A job that swallows CancelledError (a retry loop around ``await``, a library
    doing so): before, run_until_signal's loop waited for it to end, forever, so the
    process outlived its termination grace period until it was killed."""
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    started = threading.Event()
    stop_ignoring = threading.Event()  # set by the watchdog only if the call hangs

    @migrated_job(recorder=recorder, registry=registry)
    async def stubborn() -> None:
        started.set()
        while not stop_ignoring.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    def signal_once_started() -> None:
        started.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)

    watchdog = threading.Timer(60, stop_ignoring.set)
    watchdog.start()
    signaller = threading.Thread(target=signal_once_started)
    signaller.start()
    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
    scheduler.add_job(stubborn, "date", id="stubborn")
    try:
        report = run_until_signal(scheduler, grace=0.2, records_timeout=1)
        returned_while_it_worked = not stop_ignoring.is_set()
    finally:
        watchdog.cancel()
        stop_ignoring.set()
        signaller.join()
    assert returned_while_it_worked
    assert (report.abandoned, report.cancelled, report.records_pending) == (1, 0, 0)
    assert runs(registry, "stubborn", "abandoned") == 1
    (execution,) = recorder.executions.values()
    # It never ended: not "cancelled", which would say it stopped.
    assert execution.status == "failed"
    assert execution.error is not None
    assert execution.error.startswith("abandoned")
    assert "outcome is unknown" in execution.error


def test_an_abandoned_run_is_not_logged_as_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    """A sync run whose thread works on after a shutdown was logged at ERROR as "cancelled"
    beside the warning that it was abandoned: the log said it stopped, which it did not."""
    started = threading.Event()
    release = threading.Event()

    @migrated_job(registry=CollectorRegistry())
    def legacy() -> None:
        started.set()
        release.wait(60)

    async def main() -> Any:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(legacy, "date", id="abandoned-legacy")
        scheduler.start()
        await asyncio.to_thread(started.wait, 30)
        return await shutdown_gracefully(scheduler, timeout=0.1, records_timeout=0)

    try:
        with caplog.at_level("WARNING"):
            report = asyncio.run(main())
    finally:
        release.set()
    assert report.abandoned == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("abandoned, not stopped" in m for m in messages)
    assert not [m for m in messages if "abandoned-legacy was cancelled" in m]


def test_a_system_exit_in_a_jobs_sub_task_does_not_stop_run_until_signal() -> None:
    """An async job gathering legacy calls, one of which calls sys.exit(): asyncio re-raises
    a SystemExit that ends a task out of the loop itself, so before, the service stopped
    at the job's first run instead of recording its failure and going on."""
    from compat import run_blocking

    registry = CollectorRegistry()
    recorder = FakeRecorder()
    healthy_runs = [0]

    def legacy_fatal() -> None:
        sys.exit(2)

    @migrated_job(recorder=recorder, registry=registry)
    async def fan_out() -> None:
        await asyncio.gather(run_blocking(legacy_fatal), asyncio.sleep(0.01))

    @migrated_job(registry=registry)
    async def healthy() -> None:
        healthy_runs[0] += 1

    def signal_after_failures() -> None:
        wait_until(lambda: runs(registry, "fan-out", "error") >= 2, what="two failed runs")
        ran = healthy_runs[0]
        wait_until(lambda: healthy_runs[0] >= ran + 3, what="the healthy job to go on")
        os.kill(os.getpid(), signal.SIGTERM)

    signaller = threading.Thread(target=signal_after_failures)
    signaller.start()
    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
    scheduler.add_job(fan_out, "interval", seconds=0.05, id="fan-out")
    scheduler.add_job(healthy, "interval", seconds=0.05, id="healthy-beside-fan-out")
    try:
        report = run_until_signal(scheduler, grace=1, records_timeout=1)
    finally:
        signaller.join()
    assert report.records_pending == 0
    failed = recorder.by_status("failed")
    assert len(failed) >= 2
    assert {execution.error for execution in failed} == {"SystemExit: 2"}


def test_a_system_exit_in_a_jobs_sub_task_during_the_grace_does_not_cut_the_shutdown() -> None:
    """After SIGTERM, a run finishing within its grace whose sub-task calls sys.exit():
    before, run_until_signal took it for a second signal and stopped at once (the runs'
    grace and the records' time cut short); it is that run's failure."""
    from apscheduler.schedulers.base import STATE_PAUSED

    from compat import run_blocking

    registry = CollectorRegistry()
    recorder = FakeRecorder()
    started = threading.Event()
    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})

    def legacy_fatal() -> None:
        sys.exit(2)

    @migrated_job(recorder=recorder, registry=registry)
    async def finishing() -> None:
        started.set()
        await wait_until_async(
            lambda: scheduler.state == STATE_PAUSED, what="the shutdown to begin"
        )
        await asyncio.gather(run_blocking(legacy_fatal), asyncio.sleep(0.01))

    def signal_once_started() -> None:
        started.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)

    signaller = threading.Thread(target=signal_once_started)
    signaller.start()
    scheduler.add_job(finishing, "date", id="finishing")
    try:
        report = run_until_signal(scheduler, grace=30, records_timeout=10)
    finally:
        signaller.join()
    assert (report.finished, report.cancelled, report.records_pending) == (1, 0, 0)
    (execution,) = recorder.executions.values()
    assert (execution.status, execution.error) == ("failed", "SystemExit: 2")


def test_a_second_signal_stops_run_until_signal_at_once() -> None:
    """SIGINT twice: the second gets its usual effect (KeyboardInterrupt) though a run
    still has most of its grace."""
    started = threading.Event()
    release = threading.Event()

    @migrated_job(registry=CollectorRegistry())
    async def long_run() -> None:
        started.set()
        await asyncio.to_thread(release.wait, 60)

    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})

    def signal_twice() -> None:
        from apscheduler.schedulers.base import STATE_PAUSED

        started.wait(30)
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: scheduler.state == STATE_PAUSED, what="the shutdown to begin")
        os.kill(os.getpid(), signal.SIGINT)

    signaller = threading.Thread(target=signal_twice)
    signaller.start()
    scheduler.add_job(long_run, "date", id="long-run")
    try:
        with pytest.raises(KeyboardInterrupt):
            run_until_signal(scheduler, grace=60, records_timeout=1)
    finally:
        release.set()
        signaller.join()


def test_run_until_signal_returns_though_a_job_waits_on_a_thread_of_the_loops_executor() -> None:
    """A job awaiting ``asyncio.to_thread`` of a call that hangs: before, closing the loop
    waited for the default executor's threads (the bound around it could not interrupt a
    join made in the loop's thread on Python before 3.13), so run_until_signal did not
    return until the call did."""
    started = threading.Event()
    release = threading.Event()

    @migrated_job(registry=CollectorRegistry())
    async def waits_on_a_thread() -> None:
        started.set()
        await asyncio.to_thread(release.wait, 60)

    def signal_once_started() -> None:
        started.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)

    watchdog = threading.Timer(20, release.set)  # only if it does not return
    watchdog.start()
    signaller = threading.Thread(target=signal_once_started)
    signaller.start()
    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
    scheduler.add_job(waits_on_a_thread, "date", id="waits-on-a-thread")
    try:
        report = run_until_signal(scheduler, grace=0.2, records_timeout=0.5)
        returned_while_it_worked = not release.is_set()
    finally:
        watchdog.cancel()
        release.set()
        signaller.join()
    assert returned_while_it_worked
    assert report.records_pending == 0

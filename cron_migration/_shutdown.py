"""shutdown_gracefully: let running jobs finish, stop the rest, and record every run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, SchedulerEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.executors.pool import ProcessPoolExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ._context import check_seconds, mark_internal_listener
from ._executor import MigrationExecutor, require_scheduler
from ._job import MigratedJob
from ._lease import Lease
from ._records import give_up_abandoned_runs, wait_for_run_records
from ._worker import abandoned_threads

logger = logging.getLogger("cron_migration")

#: Seconds cancelled runs get to unwind (and queue their failure records).
CANCEL_GRACE = 5.0
#: Seconds, after the runs, for the run records still buffered to reach the recorder.
DEFAULT_RECORDS_TIMEOUT = 10.0
#: Seconds at the end of the records' time kept for recording abandoned runs as such.
ABANDONED_RECORDS_RESERVE = 1.0
#: run_until_signal's defaults: within Kubernetes' 30 s termination grace period.
DEFAULT_SIGNAL_GRACE = 25.0
DEFAULT_SIGNAL_RECORDS_TIMEOUT = 4.0
#: Seconds run_until_signal's loop gives tasks left at its end (and each of its other
#: closing steps) before leaving them behind.
LOOP_CLOSE_GRACE = 0.5


@dataclass(frozen=True)
class ShutdownReport:
    """What :func:`shutdown_gracefully` found running and what became of it."""

    finished: int  # runs that ended by themselves within the timeout
    cancelled: int  # coroutine runs cancelled at the timeout (recorded as cancelled)
    records_pending: int  # runs whose records were still undelivered at the end
    # Sync runs whose thread still worked at the timeout (a thread cannot be stopped),
    # and coroutine runs that did not unwind when cancelled: recorded as abandoned, the
    # outcome unknown (or the real outcome, if the run ended while the records were being
    # delivered).
    abandoned: int = 0


async def shutdown_gracefully(
    scheduler: AsyncIOScheduler,
    timeout: float = 30.0,
    *,
    records_timeout: float = DEFAULT_RECORDS_TIMEOUT,
) -> ShutdownReport:
    """Stop ``scheduler`` without losing a run, and record what became of each.

    No run starts after the call; runs in progress get ``timeout`` seconds to finish.
    Then coroutine runs are cancelled (recorded as cancelled); a sync run's thread
    cannot be stopped: it is abandoned, and runs on in a daemon thread that never holds
    up the process exit. The scheduler shuts down and the buffered run records get
    ``records_timeout`` seconds to be delivered; an abandoned run whose thread returns
    meanwhile is recorded with its real outcome, the others as abandoned (outcome
    unknown) before the time is up. Takes at most ``timeout + records_timeout`` seconds
    (plus up to 5 s for coroutines that do not end when cancelled). Call it on the
    scheduler's loop. APScheduler's own ``shutdown()`` cannot wait for coroutine jobs;
    this does. Runs on a process pool are waited for too, and at the timeout the pool's
    worker processes are terminated.
    """
    require_scheduler(scheduler, "shutdown_gracefully()", asyncio_only=True)
    timeout = check_seconds("timeout", timeout, allow_zero=True)
    records_timeout = check_seconds("records_timeout", records_timeout, allow_zero=True)
    if not scheduler.running:
        pending = await _deliver_records(records_timeout, timeout)
        return ShutdownReport(finished=0, cancelled=0, records_pending=pending)
    loop = asyncio.get_running_loop()
    if scheduler._eventloop is not loop:
        raise RuntimeError("shutdown_gracefully() must be awaited on the scheduler's event loop")
    scheduler.pause()  # _process_jobs submits nothing while paused
    leases = _leases_of(scheduler)
    process_runs = _process_pool_runs(scheduler)
    runs = _in_flight(scheduler) | set(process_runs)
    done: set[Any] = set()
    pending_runs: set[Any] = set()
    if runs:
        done, pending_runs = await asyncio.wait(runs, timeout=timeout)
    abandoned_before = abandoned_threads()
    for run in pending_runs:
        run.cancel()
    if pending_runs:
        logger.warning(
            "shutdown: %d run(s) still running after %gs given up", len(pending_runs), timeout
        )
        await asyncio.wait(pending_runs, timeout=CANCEL_GRACE)
        # A child process's run cannot be cancelled: its process is ended.
        await _end_processes({process_runs[run] for run in pending_runs if run in process_runs})
    abandoned = min(len(pending_runs), abandoned_threads() - abandoned_before)
    if abandoned:
        logger.warning(
            "shutdown: %d sync run(s) abandoned: their threads cannot be stopped and work "
            "on; they will not hold up the process exit",
            abandoned,
        )
    # AsyncIOScheduler.shutdown() only schedules the shutdown on the loop: wait for it.
    stopped = asyncio.Event()

    def on_shutdown(event: SchedulerEvent) -> None:
        stopped.set()

    mark_internal_listener(on_shutdown)
    scheduler.add_listener(on_shutdown, EVENT_SCHEDULER_SHUTDOWN)
    scheduler.shutdown(wait=False)
    await stopped.wait()
    scheduler.remove_listener(on_shutdown)
    for lease in leases:
        await lease.aclose()  # the Redis connections it opened on this loop
    pending = await _deliver_records(records_timeout, timeout)
    return ShutdownReport(
        finished=len(done),
        cancelled=len(pending_runs) - abandoned,
        records_pending=pending,
        abandoned=abandoned,
    )


async def _deliver_records(records_timeout: float, timeout: float) -> int:
    """Deliver the buffered records; abandoned runs get until shortly before the end to
    return, then are recorded as abandoned. Returns the runs still undelivered."""
    started = time.monotonic()
    deadline = started + records_timeout
    # Time kept for delivering the abandoned runs' records once given up.
    reserve = min(ABANDONED_RECORDS_RESERVE, records_timeout / 2)
    await wait_for_run_records(deadline - reserve, abandoned_too=True)
    give_up_abandoned_runs(f"its thread was still running {timeout:g}s into the shutdown")
    pending = await wait_for_run_records(deadline)
    if pending:
        logger.error(
            "shutdown: the records of %d run(s) were not delivered within %gs",
            pending,
            time.monotonic() - started,
        )
    return pending


def run_until_signal(
    scheduler: AsyncIOScheduler,
    grace: float = DEFAULT_SIGNAL_GRACE,
    *,
    records_timeout: float = DEFAULT_SIGNAL_RECORDS_TIMEOUT,
    signals: Collection[int] = (signal.SIGTERM, signal.SIGINT),
) -> ShutdownReport:
    """Run ``scheduler`` until SIGTERM or SIGINT, then :func:`shutdown_gracefully`.

    For a service's main thread: runs an event loop (as ``asyncio.run``), starts the
    scheduler on it, and on the first of ``signals`` gives runs in progress ``grace``
    seconds and their records ``records_timeout`` more (the defaults end within
    Kubernetes' 30 s), then returns the report. A second signal during the shutdown gets
    its usual effect (stop at once). Threads of abandoned sync runs are daemon threads:
    the process can exit as soon as this returns.
    """
    if not isinstance(scheduler, AsyncIOScheduler):
        raise TypeError(
            f"run_until_signal() runs an AsyncIOScheduler, got {type(scheduler).__name__}"
        )
    grace = check_seconds("grace", grace, allow_zero=True)
    records_timeout = check_seconds("records_timeout", records_timeout, allow_zero=True)
    if scheduler.running:
        raise RuntimeError("run_until_signal() starts the scheduler itself: do not start it")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_until_signal() must run in the main thread (signal handlers)")
    loop = asyncio.new_event_loop()
    # The loop's default executor (asyncio.to_thread) is ours, so that closing the loop
    # can stop waiting for its threads: the loop's own shutdown_default_executor joins
    # them in the loop's thread, which no bound can interrupt (Python before 3.13).
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
    loop.set_default_executor(executor)
    caught: list[int] = []
    try:
        asyncio.set_event_loop(loop)
        serving = loop.create_task(
            _serve_until_signal(scheduler, grace, records_timeout, tuple(signals), caught)
        )
        while True:
            try:
                return loop.run_until_complete(serving)
            except (KeyboardInterrupt, SystemExit) as exc:
                # asyncio re-raises these out of the loop when a task ends with one: a
                # job's sub-task (asyncio.gather over a legacy call that calls sys.exit)
                # would stop the service. That is a job's failure (its run records it):
                # the loop goes on, during the shutdown too. A second signal stops it.
                if len(caught) > 1 or serving.done():
                    raise
                logger.error(
                    "a task on the scheduler's loop raised %r; the scheduler goes on "
                    "(stopping the service is a signal's business)",
                    exc,
                )
    finally:
        try:
            _close_loop(loop, executor)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _close_loop(
    loop: asyncio.AbstractEventLoop, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    """What ``asyncio.run`` does on its way out, each step bounded.

    ``asyncio.run`` waits for every task left to end once cancelled, and for the threads
    of the loop's default ``executor``: a coroutine that ignores its cancellation, or a
    call in ``asyncio.to_thread`` that hangs, would keep the process past its termination
    grace period. Such a task or thread is left behind, and logged.
    """
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=LOOP_CLOSE_GRACE))
    left = [task for task in tasks if not task.done()]
    if left:
        logger.warning(
            "shutdown: %d task(s) did not end %gs after being cancelled (%s); left behind",
            len(left),
            LOOP_CLOSE_GRACE,
            ", ".join(sorted(task.get_name() for task in left)),
        )
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.error("task %s ended with %r", task.get_name(), task.exception())
    loop.run_until_complete(_bounded(loop.shutdown_asyncgens(), LOOP_CLOSE_GRACE))
    closing = threading.Thread(target=executor.shutdown, name="asyncio-executor-shutdown")
    closing.daemon = True
    closing.start()
    closing.join(LOOP_CLOSE_GRACE)
    if closing.is_alive():
        logger.warning(
            "shutdown: threads of the loop's executor (asyncio.to_thread) still work %gs "
            "later; left behind",
            LOOP_CLOSE_GRACE,
        )


async def _bounded(step: Coroutine[Any, Any, None], seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(step, seconds)


async def _serve_until_signal(
    scheduler: AsyncIOScheduler,
    grace: float,
    records_timeout: float,
    signals: tuple[int, ...],
    caught: list[int],
) -> ShutdownReport:
    loop = asyncio.get_running_loop()
    received = asyncio.Event()

    def on_signal(signum: int, frame: object) -> None:
        caught.append(signum)
        if len(caught) == 1:
            loop.call_soon_threadsafe(received.set)
            return
        # A second signal: its usual effect, as if this handler had never been set (a
        # KeyboardInterrupt, or the end of the process). Told apart from a job's own
        # KeyboardInterrupt or SystemExit by ``caught``.
        handler = previous.get(signum)
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        signal.raise_signal(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in signals}
    try:
        scheduler.start()
        await received.wait()
        logger.warning(
            "received %s: stopping the scheduler; runs get %gs, then records %gs",
            signal.Signals(caught[0]).name if caught else "a signal",
            grace,
            records_timeout,
        )
        return await shutdown_gracefully(scheduler, grace, records_timeout=records_timeout)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _in_flight(scheduler: AsyncIOScheduler) -> set[asyncio.Future[Any]]:
    runs: set[asyncio.Future[Any]] = set()
    for executor in scheduler._executors.values():
        if isinstance(executor, MigrationExecutor):
            runs.update(run for run in executor.in_flight if isinstance(run, asyncio.Future))
        elif isinstance(executor, AsyncIOExecutor):
            # AsyncIOExecutor keeps its running jobs' futures there; it has no public view.
            runs.update(getattr(executor, "_pending_futures", ()))
    return runs


def _process_pool_runs(
    scheduler: AsyncIOScheduler,
) -> dict[asyncio.Future[Any], concurrent.futures.ProcessPoolExecutor]:
    """The runs queued or running in the scheduler's process pools, with their pool."""
    runs: dict[asyncio.Future[Any], concurrent.futures.ProcessPoolExecutor] = {}
    for executor in scheduler._executors.values():
        pool = getattr(executor, "_pool", None)
        if isinstance(executor, ProcessPoolExecutor) and isinstance(
            pool, concurrent.futures.ProcessPoolExecutor
        ):
            # The pool keeps its unfinished work items there; it has no public view.
            for item in list(getattr(pool, "_pending_work_items", {}).values()):
                runs[asyncio.wrap_future(item.future)] = pool
    return runs


async def _end_processes(pools: set[concurrent.futures.ProcessPoolExecutor]) -> None:
    """Terminate the worker processes of ``pools`` and wait until they are gone."""
    for pool in pools:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.to_thread(process.join, CANCEL_GRACE)


def _leases_of(scheduler: AsyncIOScheduler) -> list[Lease]:
    leases: dict[int, Lease] = {}
    for job in scheduler.get_jobs():
        target = getattr(job.func, "__func__", job.func)
        if isinstance(target, MigratedJob) and target.lease is not None:
            leases[id(target.lease)] = target.lease
    return list(leases.values())

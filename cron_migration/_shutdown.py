"""shutdown_gracefully: let running jobs finish, cancel the rest, and record every run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, SchedulerEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.executors.pool import ProcessPoolExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ._context import check_seconds, mark_internal_listener
from ._executor import MigrationExecutor
from ._job import MigratedJob
from ._lease import Lease
from ._records import flush_run_records

logger = logging.getLogger("cron_migration")

#: Seconds cancelled runs get to unwind (and queue their failure records).
CANCEL_GRACE = 5.0
#: Seconds, after the runs, for the run records still buffered to reach the recorder.
DEFAULT_RECORDS_TIMEOUT = 10.0


@dataclass(frozen=True)
class ShutdownReport:
    """What :func:`shutdown_gracefully` found running and what became of it."""

    finished: int  # runs that ended by themselves within the timeout
    cancelled: int  # runs cancelled at the timeout (recorded as failed)
    records_pending: int  # runs whose records were still undelivered at the end


async def shutdown_gracefully(
    scheduler: AsyncIOScheduler,
    timeout: float = 30.0,
    *,
    records_timeout: float = DEFAULT_RECORDS_TIMEOUT,
) -> ShutdownReport:
    """Stop ``scheduler`` without losing a run.

    No run starts after the call; runs in progress get ``timeout`` seconds to finish,
    then are cancelled (a migrated job records a cancelled run as failed); then the
    scheduler shuts down and buffered run records get ``records_timeout`` seconds to be
    delivered. Call it on the scheduler's loop. APScheduler's own ``shutdown()`` cannot
    wait for coroutine jobs; this does. Runs on a process pool are waited for too, and
    at the timeout the pool's worker processes are terminated.
    """
    if not isinstance(scheduler, AsyncIOScheduler):
        raise TypeError(
            f"shutdown_gracefully() stops an AsyncIOScheduler, got {type(scheduler).__name__}"
        )
    timeout = check_seconds("timeout", timeout, allow_zero=True)
    records_timeout = check_seconds("records_timeout", records_timeout, allow_zero=True)
    if not scheduler.running:
        pending = await flush_run_records(records_timeout)
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
    for run in pending_runs:
        run.cancel()
    if pending_runs:
        logger.warning(
            "shutdown: %d run(s) still running after %gs cancelled", len(pending_runs), timeout
        )
        await asyncio.wait(pending_runs, timeout=CANCEL_GRACE)
        # A child process's run cannot be cancelled: its process is ended.
        await _end_processes({process_runs[run] for run in pending_runs if run in process_runs})
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
    started = time.monotonic()
    pending = await flush_run_records(records_timeout)
    if pending:
        logger.error(
            "shutdown: the records of %d run(s) were not delivered within %gs",
            pending,
            time.monotonic() - started,
        )
    return ShutdownReport(finished=len(done), cancelled=len(pending_runs), records_pending=pending)


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

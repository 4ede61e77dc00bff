"""shutdown_gracefully: let running jobs finish, cancel the rest, and record every run."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, SchedulerEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ._context import check_seconds, mark_internal_listener
from ._executor import MigrationExecutor, require_scheduler
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
    wait for coroutine jobs; this does.
    """
    require_scheduler(scheduler, "shutdown_gracefully()", asyncio_only=True)
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
    runs = _in_flight(scheduler)
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


def _leases_of(scheduler: AsyncIOScheduler) -> list[Lease]:
    leases: dict[int, Lease] = {}
    for job in scheduler.get_jobs():
        target = getattr(job.func, "__func__", job.func)
        if isinstance(target, MigratedJob) and target.lease is not None:
            leases[id(target.lease)] = target.lease
    return list(leases.values())

"""MigrationExecutor: runs every kind of job correctly and tells each run its scheduled time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import traceback
from collections.abc import Callable, Collection
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ADDED,
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from prometheus_client import CollectorRegistry

from ._context import _run_guard, _run_target, _scheduled_run, mark_internal_listener
from ._job import (
    Escaped,
    MigratedJob,
    await_escaping,
    awaited,
    call_escaping,
    is_async_callable,
    refuse_unkeyable_leases,
    watch_added_leases,
)
from ._leader import LeaderElection
from ._metrics import CronMetrics
from ._routing import LoopSwitch, RunSlots
from ._slots import scheduled_run_of, stable_job_id
from ._worker import (
    MissedWhileQueued,
    RunThreads,
    misfire_window,
    run_job_thread,
    tracking_threads,
)

_Run = asyncio.Future[Any] | concurrent.futures.Future[Any]


class MigrationExecutor(BaseExecutor):  # type: ignore[misc]
    """An APScheduler 3 executor for migrated and legacy jobs alike.

    Under ``AsyncIOScheduler`` every run is a task on the scheduler's loop: async jobs
    are awaited there, sync jobs run in compat's bounded worker pool. Under the thread
    schedulers every run is a task on compat's background loop, so coroutine jobs are
    awaited there instead of being left un-awaited. Either way each run knows its job id
    and scheduled run time (:func:`current_scheduled_run`), which a lease needs.

    ``async_jobs``: ids of the async jobs that run on the scheduler's loop, or a
    :class:`LoopSwitch` (a rule: on the loop unless switched off, for jobs added later
    too); the other async jobs run as under the legacy scheduler, on compat's background
    loop (None: all on the scheduler's loop). This is the per-job switch of an incremental
    migration. ``max_workers``: at most this many runs at once (None: no limit), as a
    legacy thread pool of that size allowed. ``leader``: a :class:`LeaderElection`; the
    executor campaigns while it runs and runs a job only while Redis confirms this replica
    leads (standby replicas skip every run). Starting refuses a leased job whose trigger a
    lease cannot key (see :class:`Lease`).
    """

    def __init__(
        self,
        async_jobs: Collection[str] | LoopSwitch | None = None,
        *,
        registry: CollectorRegistry | None = None,
        max_workers: int | None = None,
        leader: LeaderElection | None = None,
    ) -> None:
        super().__init__()
        if leader is not None and not isinstance(leader, LeaderElection):
            raise TypeError(f"leader must be a LeaderElection, got {leader!r}")
        self.leader = leader
        self._campaign: concurrent.futures.Future[None] | None = None
        if isinstance(async_jobs, str):
            raise TypeError(
                f"async_jobs must be a collection of job ids, not a string: {async_jobs!r}"
            )
        self.async_jobs: Collection[str] | LoopSwitch | None = (
            async_jobs
            if async_jobs is None or isinstance(async_jobs, LoopSwitch)
            else frozenset(async_jobs)
        )
        self.slots = RunSlots(max_workers)
        self._registry = registry
        self._metrics = CronMetrics(registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bridge_loop: asyncio.AbstractEventLoop | None = None
        # Added by the scheduler's thread, removed by the thread that ends the run.
        self._in_flight_lock = threading.Lock()
        self._in_flight: set[_Run] = set()

    def start(self, scheduler: Any, alias: str) -> None:
        """Start with ``scheduler`` (APScheduler calls it); watch its missed runs."""
        refuse_unkeyable_leases(scheduler.get_jobs())
        super().start(scheduler, alias)
        # AsyncIOScheduler sets its loop before it starts its executors.
        self._loop = getattr(scheduler, "_eventloop", None)
        watch_missed_runs(scheduler, registry=self._registry)
        watch_added_leases(scheduler)
        if self.leader is not None:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.leader.start)
            else:
                from compat import bridge_portal

                self._campaign = bridge_portal().start_task_soon(self.leader.campaign)

    def on_async_path(self, job_id: str) -> bool:
        """Whether an async job ``job_id`` runs on the scheduler's loop (the per-job switch)."""
        return self.async_jobs is None or job_id in self.async_jobs

    @property
    def in_flight(self) -> set[Any]:
        """The runs submitted and not finished yet (tasks or futures)."""
        with self._in_flight_lock:
            return set(self._in_flight)

    def shutdown(self, wait: bool = True) -> None:
        """Cancel the runs on the loop; ``wait`` for the threads' runs (APScheduler calls it)."""
        if self.leader is not None:  # it resigns: a standby takes over at its next attempt
            if self._campaign is not None:
                self._campaign.cancel()
            elif self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.leader.stop)  # after its start
        if self._loop is not None:
            # A loop task cannot be waited for from a sync method on its own loop:
            # shutdown_gracefully() waits before it shuts the scheduler down.
            for run in self.in_flight:
                run.cancel()
            return
        runs = [run for run in self.in_flight if isinstance(run, concurrent.futures.Future)]
        if wait:
            concurrent.futures.wait(runs)
        else:
            for run in runs:
                run.cancel()

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        run: _Run
        threads = RunThreads()
        if self._loop is not None:
            run = self._loop.create_task(
                self._run_in_slot(job, run_times, threads), name=f"cron job {job.id}"
            )
        else:
            # Handed over without waiting for compat's loop: the scheduler calls this
            # holding the executor's lock, which a run ending on that loop takes.
            run = asyncio.run_coroutine_threadsafe(
                self._run_in_slot(job, run_times, threads), self._compat_loop()
            )
        with self._in_flight_lock:
            self._in_flight.add(run)
        run.add_done_callback(self._make_done_callback(job.id, threads))

    def _compat_loop(self) -> asyncio.AbstractEventLoop:
        """compat's loop, where runs go under a thread scheduler (asked once per loop)."""
        loop = self._bridge_loop
        if loop is None or loop.is_closed() or not loop.is_running():
            from compat import bridge_portal

            loop = self._bridge_loop = bridge_portal().call(asyncio.get_running_loop)
        return loop

    def _make_done_callback(self, job_id: str, threads: RunThreads) -> Callable[[Any], None]:
        def done(run: Any) -> None:
            with self._in_flight_lock:
                self._in_flight.discard(run)
            if threads.alive:
                self._logger.warning(
                    "job %s: its run ended with %d worker thread(s) or cancelled "
                    "coroutine(s) still working (abandoned, not stopped); they count "
                    "against its max_instances until they return",
                    job_id,
                    threads.alive,
                )
            # A thread the run stopped waiting for is still an instance of the job.
            still_working = threads.alive
            threads.when_all_returned(functools.partial(self._release_instance, job_id))
            if run.cancelled():
                if not still_working:  # else abandoned, as logged above: not stopped
                    self._logger.error("the run of job %s was cancelled", job_id)
                return
            error = run.exception()
            if error is not None:
                self._logger.error(
                    "Error running job %s",
                    job_id,
                    exc_info=(type(error), error, error.__traceback__),
                )
                return
            for event in run.result():
                self._scheduler._dispatch_event(event)

        return done

    def _release_instance(self, job_id: str) -> None:
        with self._lock:
            self._instances[job_id] -= 1
            if self._instances[job_id] == 0:
                del self._instances[job_id]

    async def _run_in_slot(
        self, job: Job, run_times: list[datetime], threads: RunThreads
    ) -> list[JobExecutionEvent]:
        """:meth:`_run` once a slot is free: late runs count as missed, as in a full pool."""
        async with self.slots:
            return await self._run(job, run_times, threads)

    async def _run(
        self, job: Job, run_times: list[datetime], threads: RunThreads
    ) -> list[JobExecutionEvent]:
        """What APScheduler's run_job does, with each call told its scheduled run time."""
        events = []
        with tracking_threads(threads):
            for run_time in run_times:
                if job.misfire_grace_time is not None:
                    late = datetime.now(timezone.utc) - run_time
                    if late > timedelta(seconds=job.misfire_grace_time):
                        events.append(self._missed(job, run_time, late))
                        continue
                fencing_token = None
                if self.leader is not None:
                    fencing_token = await self.leader.confirm()
                    if fencing_token is None:
                        self._logger.debug('Job "%s" at %s: standby, not run', job, run_time)
                        continue
                self._logger.info('Running job "%s" (scheduled at %s)', job, run_time)
                events.append(await self._run_once(job, run_time, fencing_token))
        return events

    def _missed(self, job: Job, run_time: datetime, late: timedelta) -> JobExecutionEvent:
        self._logger.warning('Run time of job "%s" was missed by %s', job, late)
        return JobExecutionEvent(EVENT_JOB_MISSED, job.id, job._jobstore_alias, run_time)

    async def _run_once(
        self, job: Job, run_time: datetime, fencing_token: int | None
    ) -> JobExecutionEvent:
        token = _scheduled_run.set(scheduled_run_of(job, run_time, fencing_token, self._scheduler))
        target_token = _run_target.set(_called_job(job.func))
        # A run that waits for a worker thread starts only while this replica still leads.
        guard_token = _run_guard.set(
            None
            if self.leader is None or fencing_token is None
            else functools.partial(self.leader.check_leads, fencing_token)
        )
        try:
            with misfire_window(run_time, job.misfire_grace_time):
                result = await self._call(job)
        except asyncio.CancelledError:
            raise
        except MissedWhileQueued as missed:
            return self._missed(job, run_time, missed.late)
        except BaseException as caught:
            exc, tb = caught, caught.__traceback__
            if isinstance(caught, Escaped):
                exc, tb = caught.error, caught.error.__traceback__
            # KeyboardInterrupt and SystemExit too: raised by a job, they are its failure,
            # as under the legacy scheduler; stopping the process is a signal's business
            # (run_until_signal), which never reaches a job as an exception.
            self._logger.error('Job "%s" raised an exception', job, exc_info=exc)
            return JobExecutionEvent(
                EVENT_JOB_ERROR,
                job.id,
                job._jobstore_alias,
                run_time,
                exception=exc,
                traceback="".join(traceback.format_tb(tb)),
            )
        finally:
            _run_guard.reset(guard_token)
            _run_target.reset(target_token)
            _scheduled_run.reset(token)
        self._logger.info('Job "%s" executed successfully', job)
        return JobExecutionEvent(
            EVENT_JOB_EXECUTED, job.id, job._jobstore_alias, run_time, retval=result
        )

    async def _call(self, job: Job) -> Any:
        func, args, kwargs = job.func, tuple(job.args), dict(job.kwargs)
        target = getattr(func, "__func__", func)
        if isinstance(target, MigratedJob):
            if func is not target:  # a bound method: its instance is the first argument
                args = (func.__self__, *args)
            if not target.is_async or self._loop is None or self.on_async_path(job.id):
                return await target.run_async(*args, **kwargs)
            # The legacy path: as under a thread scheduler, through compat's loop.
            return await _on_compat_loop(target.run_async, args, kwargs)
        if is_async_callable(func):
            if self._loop is None or self.on_async_path(job.id):
                return await func(*args, **kwargs)
            return await _on_compat_loop(func, args, kwargs)
        label = stable_job_id(job.id, job.name)
        threaded = await run_job_thread(label, call_escaping, (func, args, kwargs), self._metrics)
        return await awaited(threaded)


def _called_job(func: Callable[..., Any]) -> object:
    """The function behind partials and bound methods: the one whose run this is."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__func__", func)


async def _on_compat_loop(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Await ``func`` on compat's loop, as under a thread scheduler; cancellable from here.

    Cancelling this cancels the run there and waits until it has unwound, so that a
    migrated job has recorded itself as cancelled before its run counts as ended.
    """
    from compat import bridge_portal

    there: list[asyncio.Task[Any]] = []

    async def run_there() -> Any:
        task = asyncio.current_task()
        assert task is not None
        there.append(task)
        return await await_escaping(func, args, kwargs)

    future = bridge_portal().start_task_soon(run_there)
    run = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(run)
    except asyncio.CancelledError:
        # Cancelling the portal's future would mark it done at once, before the run
        # there has unwound; cancel the task itself and wait for the future it settles.
        if there:
            there[0].get_loop().call_soon_threadsafe(there[0].cancel)
        else:
            future.cancel()
        await asyncio.wait({run})
        raise


def require_scheduler(scheduler: object, feature: str, *, asyncio_only: bool = False) -> None:
    """Refuse what is not an APScheduler 3 scheduler (an ``AsyncIOScheduler`` with
    ``asyncio_only``), saying what to pass instead: a factory or a class is a common slip."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.schedulers.base import BaseScheduler

    if isinstance(scheduler, AsyncIOScheduler if asyncio_only else BaseScheduler):
        return
    wanted = (
        "an AsyncIOScheduler"
        if asyncio_only
        else "an APScheduler 3 scheduler (BlockingScheduler, BackgroundScheduler, ...)"
    )
    if isinstance(scheduler, type):
        given = f"the class {scheduler.__qualname__}; pass an instance"
    elif callable(scheduler):
        name = getattr(scheduler, "__qualname__", repr(scheduler))
        given = f"the function {name}; call it and pass the scheduler it returns"
    else:
        given = f"{type(scheduler).__name__} {scheduler!r}"
    raise TypeError(f"{feature} takes {wanted}, got {given}")


def watch_missed_runs(scheduler: Any, *, registry: CollectorRegistry | None = None) -> None:
    """Count ``cron_job_missed_total{job}`` for every run ``scheduler`` skips as missed.

    :class:`MigrationExecutor` calls it when it starts; call it for schedulers that use
    other executors. Calling it again for the same scheduler changes nothing. The series
    of every job the scheduler has or gets exists at 0 from then on.
    """
    require_scheduler(scheduler, "watch_missed_runs()")
    if getattr(scheduler, "_cron_migration_watches_missed_runs", False):
        return
    metrics = CronMetrics(registry)
    # The registry each job id's series live in (a migrated job's own), kept from when the
    # job was added: a date job is gone from the scheduler by the time its run is missed.
    metrics_of: dict[str, CronMetrics] = {}

    labels: dict[str, str] = {}  # job id -> its label (stable_job_id)

    def declare(job_id: str) -> None:
        job = scheduler.get_job(job_id)
        target = getattr(getattr(job, "func", None), "__func__", getattr(job, "func", None))
        name = target.name if isinstance(target, MigratedJob) else getattr(job, "name", job_id)
        label = labels[job_id] = stable_job_id(job_id, str(name))
        if isinstance(target, MigratedJob):
            metrics_of[job_id] = target._metrics
            target._metrics.declare_job(label)  # its series are labelled by job id
        else:
            metrics.declare_missed(label)

    def on_event(event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            label = labels.get(event.job_id, event.job_id)
            metrics_of.get(event.job_id, metrics).missed.labels(label).inc()
        else:
            declare(event.job_id)

    mark_internal_listener(on_event)
    scheduler.add_listener(on_event, EVENT_JOB_MISSED | EVENT_JOB_ADDED)
    scheduler._cron_migration_watches_missed_runs = True
    for job in scheduler.get_jobs():
        declare(job.id)

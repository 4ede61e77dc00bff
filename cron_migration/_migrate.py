"""migrate_scheduler: an AsyncIOScheduler carrying a legacy scheduler's jobs, and a report."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.util import get_callable_name, undefined
from prometheus_client import CollectorRegistry

from ._context import INTERNAL_LISTENER
from ._executor import MigrationExecutor
from ._job import MigratedJob, is_async_callable, leased_job_refusal
from ._lag import EventLoopLagMonitor, monitor_event_loop_lag
from ._leader import LeaderElection

#: Comma-separated ids of the jobs that run on the loop (``*``: all), read when
#: ``migrate_scheduler`` gets no ``async_jobs``.
ASYNC_JOBS_ENV = "CRON_MIGRATION_ASYNC_JOBS"
# The job attributes carried over one by one; next_run_time is handled on its own.
_JOB_ATTRIBUTES = ("misfire_grace_time", "coalesce", "max_instances")

AsyncJobs = Collection[str] | Mapping[str, Callable[..., Any]] | None


@dataclass(frozen=True)
class JobMigration:
    """How one job moves: what it is, what ran it, what runs it now."""

    job_id: str
    name: str
    func: str
    kind: str  # "sync" or "async"
    old_executor: str
    path: str  # where its function runs on the new scheduler
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MigrationProblem:
    """Something that cannot move as is; ``subject`` is a job id, a listener or a store."""

    subject: str
    message: str


@dataclass
class MigrationReport:
    """What :func:`migrate_scheduler` did, and what it could not carry over as is."""

    jobs: list[JobMigration] = field(default_factory=list)
    problems: list[MigrationProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lag_monitor: EventLoopLagMonitor | None = None

    @property
    def ok(self) -> bool:
        """True when nothing needs attention before the new scheduler replaces the old."""
        return not self.problems

    def render(self) -> str:
        lines = []
        for job in self.jobs:
            lines.append(f"job {job.job_id!r} ({job.name}): {job.kind} {job.func}")
            lines.append(f"    executor: {job.old_executor}")
            lines.append(f"    runs on:  {job.path}")
            lines.extend(f"    change:   {change}" for change in job.changes)
        if not self.jobs:
            lines.append("no jobs")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.extend(f"CANNOT MOVE AS IS: {p.subject}: {p.message}" for p in self.problems)
        verdict = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        lines.append(f"{len(self.jobs)} job(s), {verdict}")
        return "\n".join(lines)


def resolve_async_jobs(
    async_jobs: AsyncJobs, job_ids: Collection[str]
) -> tuple[frozenset[str], dict[str, Callable[..., Any]]]:
    """The ids on the async path and the async replacements, checked against ``job_ids``."""
    if async_jobs is None:
        raw = os.environ.get(ASYNC_JOBS_ENV, "")
        async_jobs = [part.strip() for part in raw.split(",") if part.strip()]
        source = f"${ASYNC_JOBS_ENV}"
    else:
        source = "async_jobs"
    if isinstance(async_jobs, str):
        raise TypeError(f"async_jobs must be a collection of job ids, not a string: {async_jobs!r}")
    replacements: dict[str, Callable[..., Any]] = {}
    if isinstance(async_jobs, Mapping):
        for job_id, replacement in async_jobs.items():
            if not callable(replacement) or not is_async_callable(replacement):
                raise TypeError(
                    f"async_jobs[{job_id!r}] must be an async function to run instead of the "
                    f"job's function, got {replacement!r}"
                )
            replacements[job_id] = replacement
    ids = set(async_jobs)
    if "*" in ids:
        ids = (ids - {"*"}) | set(job_ids)
    unknown = sorted(ids - set(job_ids))
    if unknown:
        raise ValueError(
            f"{source} names jobs the scheduler does not have: {', '.join(map(repr, unknown))}; "
            f"its jobs are {', '.join(map(repr, sorted(job_ids))) or '(none)'}"
        )
    return frozenset(ids), replacements


def migrate_scheduler(
    old: Any,
    async_jobs: AsyncJobs = None,
    *,
    registry: CollectorRegistry | None = None,
    lag_monitor: bool = True,
    leader: LeaderElection | None = None,
) -> tuple[AsyncIOScheduler, MigrationReport]:
    """Build an ``AsyncIOScheduler`` carrying every job of ``old``; report what changes.

    ``old`` is left as it is (started or not), so going back is not starting the new one.
    Every job keeps its id, trigger, args, kwargs, name, misfire_grace_time, coalesce,
    max_instances and next_run_time, and runs through a :class:`MigrationExecutor`.
    ``async_jobs`` is the per-job switch: the ids of the async jobs that run on the new
    scheduler's loop (``"*"`` for all), or a mapping of job id to an async function that
    replaces the job's function. Other async jobs run on compat's background loop, as a
    legacy scheduler with a portal would; sync jobs run in compat's worker pool either
    way. Without ``async_jobs``, the ids come from ``$CRON_MIGRATION_ASYNC_JOBS``
    (comma-separated). ``leader``: a :class:`LeaderElection`, so that one replica at a
    time runs the jobs. A leased job whose trigger a lease cannot key is a problem of the
    report, and the new scheduler refuses to start with it. Start the new scheduler on a
    running loop.
    """
    jobs: list[Job] = list(old.get_jobs())
    on_loop, replacements = resolve_async_jobs(async_jobs, [job.id for job in jobs])
    report = MigrationReport()
    executor = MigrationExecutor(async_jobs=on_loop, registry=registry, leader=leader)
    new = AsyncIOScheduler(
        timezone=old.timezone,
        job_defaults=dict(old._job_defaults),
        jobstore_retry_interval=old.jobstore_retry_interval,
        executors={"default": executor},
    )
    _report_stores(old, report)
    _copy_listeners(old, new, report)
    for job in jobs:
        func = replacements.get(job.id, job.func)
        options: dict[str, Any] = {
            attribute: getattr(job, attribute, undefined) for attribute in _JOB_ATTRIBUTES
        }
        # A job of a scheduler that never started has no next_run_time yet: its trigger
        # gives it one when the new scheduler starts, as the old one would have done.
        options["next_run_time"] = getattr(job, "next_run_time", undefined)
        added = new.add_job(
            func,
            trigger=job.trigger,
            args=job.args,
            kwargs=job.kwargs,
            id=job.id,
            name=job.name,
            executor="default",
            **options,
        )
        report.jobs.append(_describe(old, job, func, on_loop, report))
        refusal = leased_job_refusal(added)
        if refusal is not None:
            # The new scheduler refuses to start with it (MigrationExecutor.start).
            report.problems.append(MigrationProblem(job.id, f"cannot be leased: {refusal}"))
    if lag_monitor:
        report.lag_monitor = monitor_event_loop_lag(new, EventLoopLagMonitor(registry=registry))
    return new, report


def _executor_of(old: Any, alias: str) -> Any:
    executor = old._executors.get(alias)
    if executor is None and alias == "default":
        # Not started yet: the default executor is made at start.
        return "AsyncIOExecutor" if isinstance(old, AsyncIOScheduler) else "ThreadPoolExecutor"
    return executor


def _describe(
    old: Any, job: Job, func: Callable[..., Any], on_loop: frozenset[str], report: MigrationReport
) -> JobMigration:
    executor = _executor_of(old, job.executor)
    if executor is None:
        executor_name = "missing"
    else:
        executor_name = executor if isinstance(executor, str) else type(executor).__name__
    # A MigratedJob is awaited under any executor; a bare coroutine function is not.
    was_async = is_async_callable(job.func) and not isinstance(job.func, MigratedJob)
    is_async = is_async_callable(func)
    changes = []
    if func is not job.func:
        changes.append(
            f"function replaced by {get_callable_name(func)} (was {get_callable_name(job.func)}); "
            "drop it from async_jobs to go back"
        )
    if is_async:
        path = (
            "the scheduler's event loop (awaited)"
            if job.id in on_loop
            else "compat's background loop (awaited), as before the migration"
        )
    else:
        path = "compat's bounded worker pool (a thread; the loop never blocks)"
        if job.id in on_loop:
            changes.append("sync function: it runs in a worker thread on the async path too")
    if executor is None:
        report.problems.append(
            MigrationProblem(job.id, f"its executor {job.executor!r} does not exist")
        )
    elif executor_name in ("ThreadPoolExecutor", "ProcessPoolExecutor") or isinstance(
        executor, ThreadPoolExecutor | ProcessPoolExecutor
    ):
        if was_async:
            report.problems.append(
                MigrationProblem(
                    job.id,
                    f"coroutine job on {executor_name}: the old scheduler calls it without "
                    "awaiting it, so it has never run; the new one awaits it",
                )
            )
        if isinstance(executor, ProcessPoolExecutor):
            changes.append("ran in a separate process; now runs in this process")
    elif not isinstance(executor, AsyncIOExecutor | MigrationExecutor) and executor_name not in (
        "AsyncIOExecutor",
    ):
        changes.append(f"executor {executor_name} replaced by MigrationExecutor")
    return JobMigration(
        job_id=job.id,
        name=job.name,
        func=get_callable_name(job.func),
        kind="async" if is_async else "sync",
        old_executor=f"{job.executor!r}: {executor_name}",
        path=path,
        changes=tuple(changes),
    )


def _report_stores(old: Any, report: MigrationReport) -> None:
    for alias, store in old._jobstores.items():
        if not isinstance(store, MemoryJobStore):
            report.problems.append(
                MigrationProblem(
                    f"job store {alias!r}",
                    f"{type(store).__name__} is not moved: its jobs are copied into the new "
                    "scheduler's memory store; add the store to the new scheduler yourself "
                    "and stop the old one before starting the new",
                )
            )


def _copy_listeners(old: Any, new: AsyncIOScheduler, report: MigrationReport) -> None:
    for callback, mask in list(old._listeners):
        name = get_callable_name(callback)
        if getattr(callback, INTERNAL_LISTENER, False):
            continue  # cron_migration's own, bound to the old scheduler
        if is_async_callable(callback):
            report.problems.append(
                MigrationProblem(
                    f"listener {name}",
                    "async listener: APScheduler 3 calls listeners without awaiting them, "
                    "so it never runs; not copied",
                )
            )
            continue
        new.add_listener(callback, mask)
        report.notes.append(
            f"listener {name} copied; it now runs on the event loop thread and must not block"
        )

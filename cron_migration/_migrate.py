"""migrate_scheduler: an AsyncIOScheduler carrying a legacy scheduler's jobs, and a report.

What carries over, and what the report guarantees:

- every job store alias: a memory store's jobs are copied into a new memory store of the
  same alias; any other store (SQLAlchemy, Redis, MongoDB, ...) is attached to the new
  scheduler as it is, so its persisted jobs run under the new scheduler (nothing is
  copied; the report says so and lists them);
- every executor alias: thread pools, asyncio executors and migration executors become
  a :class:`MigrationExecutor` of the same alias that runs at most as many runs at once
  as the old thread pool had threads; process pools stay process pools of the same size;
  an executor of another type is replaced and reported as a problem;
- the time zone, job defaults, listeners and each job's attributes;
- the report lists every difference; ``ok`` is false when something did not carry over.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import pickle
import textwrap
import types
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.util import get_callable_name, obj_to_ref, undefined
from prometheus_client import CollectorRegistry

from ._context import INTERNAL_LISTENER
from ._executor import MigrationExecutor, _called_job, require_scheduler
from ._job import MigratedJob, is_async_callable, leased_job_refusal
from ._lag import EventLoopLagMonitor, monitor_event_loop_lag
from ._leader import LeaderElection
from ._routing import LoopSwitch

#: Comma-separated ids of the jobs that run on the loop (``*``: all), read when
#: ``migrate_scheduler`` gets no ``async_jobs``.
ASYNC_JOBS_ENV = "CRON_MIGRATION_ASYNC_JOBS"
"""The variable read when ``async_jobs`` is not given: job ids, comma-separated, or ``*``."""
# The job attributes carried over one by one; next_run_time is handled on its own.
_JOB_ATTRIBUTES = ("misfire_grace_time", "coalesce", "max_instances")
# The scheduler methods that change jobs: a job calling them on the old scheduler
# changes a scheduler that no longer runs.
_SCHEDULER_METHODS = frozenset(
    {
        "add_job",
        "scheduled_job",
        "reschedule_job",
        "modify_job",
        "remove_job",
        "remove_all_jobs",
        "pause_job",
        "resume_job",
        "get_job",
        "get_jobs",
        "pause",
        "resume",
        "shutdown",
    }
)

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
    jobstore: str = "default"


@dataclass(frozen=True)
class StoreMigration:
    """How one job store alias moves: ``how`` is ``"copied"`` or ``"attached"``."""

    alias: str
    store: str  # the old store's type
    how: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class ExecutorMigration:
    """How one executor alias moves, with the number of runs it allows at once."""

    alias: str
    old: str
    new: str
    max_workers: int | None


@dataclass(frozen=True)
class MigrationProblem:
    """Something that cannot move as is; ``subject`` is a job id, a listener or a store."""

    subject: str
    message: str


@dataclass
class MigrationReport:
    """What :func:`migrate_scheduler` did, and what it could not carry over as is.

    ``switch`` is the per-job switch of the new scheduler (a :class:`LoopSwitch`).
    """

    jobs: list[JobMigration] = field(default_factory=list)
    stores: list[StoreMigration] = field(default_factory=list)
    executors: list[ExecutorMigration] = field(default_factory=list)
    problems: list[MigrationProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lag_monitor: EventLoopLagMonitor | None = None
    switch: LoopSwitch = field(default_factory=LoopSwitch)

    @property
    def ok(self) -> bool:
        """True when everything carried over and nothing needs attention first."""
        return not self.problems

    def render(self) -> str:
        """The report as text: per job, what it is and where it runs, then the problems."""
        lines = []
        for store in self.stores:
            ids = ", ".join(store.job_ids) or "none"
            if store.how == "copied":
                lines.append(
                    f"job store {store.alias!r}: {store.store}, "
                    f"{len(store.job_ids)} job(s) copied into a new memory store: {ids}"
                )
            else:
                lines.append(
                    f"job store {store.alias!r}: {store.store} attached as it is (nothing "
                    f"copied); {len(store.job_ids)} job(s) run from it: {ids}"
                )
        for executor in self.executors:
            limit = (
                "no limit on runs at once"
                if executor.max_workers is None
                else f"at most {executor.max_workers} run(s) at once"
            )
            lines.append(f"executor {executor.alias!r}: {executor.old} -> {executor.new}, {limit}")
        for job in self.jobs:
            lines.append(f"job {job.job_id!r} ({job.name}): {job.kind} {job.func}")
            lines.append(f"    store:    {job.jobstore!r}")
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


@dataclass
class _OldJob:
    job: Job
    store: str
    replace_existing: bool
    persisted: bool  # lives in an attached store: comes along with it, not re-added


def migrate_scheduler(
    old: Any,
    async_jobs: AsyncJobs = None,
    *,
    registry: CollectorRegistry | None = None,
    lag_monitor: bool = True,
    leader: LeaderElection | None = None,
) -> tuple[AsyncIOScheduler, MigrationReport]:
    """Build an ``AsyncIOScheduler`` carrying every job, store and executor of ``old``.

    ``old`` is left as it is (started or not), so going back is not starting the new one;
    a persistent store is shared by both, so never run both. Every job keeps its id,
    trigger, args, kwargs, name, misfire_grace_time, coalesce, max_instances,
    next_run_time, job store and executor alias.

    ``async_jobs`` is the per-job switch for the async jobs the scheduler has now: the
    ids that run on the new scheduler's loop (``"*"`` for all), or a mapping of job id to
    an async function that replaces the job's function. The async jobs it does not name
    run on compat's background loop, as a legacy scheduler with a portal would, except
    those an ``AsyncIOScheduler`` ``old`` awaited on its loop: they stay on the loop. Async
    jobs added to the new scheduler later run on its loop: the switch is a rule, "on the
    loop unless switched off" (``report.switch.switch_off(job_id)``). Sync jobs run in
    compat's bounded worker pool either way. Without ``async_jobs``, the ids come from
    ``$CRON_MIGRATION_ASYNC_JOBS`` (comma-separated). ``leader``: a :class:`LeaderElection`,
    so that one replica at a time runs the jobs (every carried thread-pool executor checks
    it; a job on another executor is a problem of the report). A leased job whose trigger a
    lease cannot key is a problem of the report, and the new scheduler refuses to start with
    it. Start the new scheduler on a running loop.
    """
    require_scheduler(old, "migrate_scheduler()")
    report = MigrationReport()
    old_executors = _old_executors(old)
    new_executors = _carry_executors(old_executors, report, registry, leader)
    new = AsyncIOScheduler(
        timezone=old.timezone,
        job_defaults=dict(old._job_defaults),
        jobstore_retry_interval=old.jobstore_retry_interval,
        executors=new_executors,
    )
    old_jobs = _carry_stores(old, new, report)
    on_loop, replacements = resolve_async_jobs(async_jobs, [entry.job.id for entry in old_jobs])
    for entry in old_jobs:
        if entry.persisted and entry.job.id in replacements:
            raise ValueError(
                f"async_jobs[{entry.job.id!r}]: the job is persisted in the job store "
                f"{entry.store!r}, which is attached as it is; replace its function with "
                "modify_job(func=...) on the new scheduler instead"
            )
    for job_id in sorted(
        entry.job.id
        for entry in old_jobs
        if is_async_callable(replacements.get(entry.job.id, entry.job.func))
        and entry.job.id not in on_loop
        and not _awaited_on_old_loop(old, old_executors.get(entry.job.executor), entry.job.id)
    ):
        report.switch.switch_off(job_id)
    for executor in new_executors.values():
        if isinstance(executor, MigrationExecutor):
            executor.async_jobs = report.switch
    _copy_listeners(old, new, report)
    for entry in old_jobs:
        job = entry.job
        func = replacements.get(job.id, job.func)
        if entry.persisted:
            added = entry.job
        else:
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
                executor=job.executor,
                jobstore=entry.store,
                replace_existing=entry.replace_existing,
                **options,
            )
        report.jobs.append(_describe(old, old_executors, new, entry, func, report))
        if not entry.persisted:
            unstorable = _unstorable(new._jobstores.get(entry.store), func, job)
            if unstorable is not None:
                report.problems.append(
                    MigrationProblem(
                        job.id,
                        f"cannot be stored in the job store {entry.store!r} ({unstorable}): "
                        "the new scheduler would fail to start; give it a module-level "
                        "function (and picklable arguments)",
                    )
                )
        refusal = leased_job_refusal(added)
        if refusal is not None:
            # The new scheduler refuses to start with it (MigrationExecutor.start).
            report.problems.append(MigrationProblem(job.id, f"cannot be leased: {refusal}"))
        if leader is not None and not isinstance(
            new_executors.get(job.executor), MigrationExecutor
        ):
            report.problems.append(
                MigrationProblem(
                    job.id,
                    f"runs on the executor {job.executor!r}, which does not check the leader "
                    "election: every replica would run it; move it to a thread-pool executor",
                )
            )
    if lag_monitor:
        report.lag_monitor = monitor_event_loop_lag(new, EventLoopLagMonitor(registry=registry))
    return new, report


def _awaited_on_old_loop(old: Any, executor: BaseExecutor | None, job_id: str) -> bool:
    """Whether ``old`` awaited the async job on its own loop: it stays on the loop."""
    if not isinstance(old, AsyncIOScheduler):
        return False
    if isinstance(executor, MigrationExecutor):
        return executor.on_async_path(job_id)
    return isinstance(executor, AsyncIOExecutor)


def _old_executors(old: Any) -> dict[str, BaseExecutor]:
    executors = dict(old._executors)
    if "default" not in executors:
        # Not started yet: the default executor is made at start.
        executors["default"] = old._create_default_executor()
    return executors


# The executor types carried with their limits; a subclass loses what it adds.
_CARRIED_EXECUTORS: tuple[type[BaseExecutor], ...] = (
    MigrationExecutor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    AsyncIOExecutor,
)


def _pool_size(executor: BaseExecutor) -> int:
    return int(executor._pool._max_workers)


def _carry_executors(
    old_executors: Mapping[str, BaseExecutor],
    report: MigrationReport,
    registry: CollectorRegistry | None,
    leader: LeaderElection | None = None,
) -> dict[str, BaseExecutor]:
    """A new executor for each alias of ``old``, same limits; compat's pool made big enough."""
    new: dict[str, BaseExecutor] = {}
    threads = 0
    for alias, executor in sorted(old_executors.items()):
        kind = type(executor).__name__
        size: int | None
        base = next((b for b in _CARRIED_EXECUTORS if isinstance(executor, b)), None)
        if base is not None and type(executor) is not base:
            report.problems.append(
                MigrationProblem(
                    f"executor {alias!r}",
                    f"{kind} is a subclass of {base.__name__}: it is carried as a "
                    f"{base.__name__} would be, without what {kind} adds",
                )
            )
        if isinstance(executor, ProcessPoolExecutor):
            processes = _pool_size(executor)
            new[alias] = ProcessPoolExecutor(processes, pool_kwargs=dict(executor.pool_kwargs))
            report.executors.append(
                ExecutorMigration(
                    alias, f"{kind}({processes})", f"ProcessPoolExecutor({processes})", processes
                )
            )
            report.notes.append(
                f"executor {alias!r} stays a process pool: its jobs run in child processes as "
                "before, without MigrationExecutor (no scheduled-run context, so no lease)"
            )
            continue
        if isinstance(executor, ThreadPoolExecutor):
            size = _pool_size(executor)
            old_name = f"{kind}({size})"
            threads += size
        elif isinstance(executor, MigrationExecutor):
            size, old_name = executor.slots.size, kind
        elif isinstance(executor, AsyncIOExecutor):
            size, old_name = None, kind
        else:
            size, old_name = None, kind
            report.problems.append(
                MigrationProblem(
                    f"executor {alias!r}",
                    f"{kind} is not carried over: its jobs run through MigrationExecutor "
                    "with no limit on runs at once; check that they run correctly there",
                )
            )
        new[alias] = MigrationExecutor(registry=registry, max_workers=size, leader=leader)
        report.executors.append(ExecutorMigration(alias, old_name, "MigrationExecutor", size))
    if threads:
        from compat import blocking_limit, set_blocking_limit

        if blocking_limit() < threads:
            report.notes.append(
                f"compat's worker pool raised from {blocking_limit()} to {threads} threads, "
                "the old thread pools' total, so that as many sync runs as before run at once"
            )
            set_blocking_limit(threads)
    return new


def _old_stores(old: Any) -> dict[str, BaseJobStore]:
    stores = dict(old._jobstores)
    if "default" not in stores:
        stores["default"] = MemoryJobStore()  # made at start, as the old one would
    return stores


def _carry_stores(old: Any, new: AsyncIOScheduler, report: MigrationReport) -> list[_OldJob]:
    """Copy the memory stores' jobs, attach the other stores; every job of ``old``."""
    old_jobs: list[_OldJob] = []
    started = old.state != STATE_STOPPED
    for alias, store in sorted(_old_stores(old).items()):
        persistent = not isinstance(store, MemoryJobStore)
        job_ids: list[str] = []
        if persistent:
            if started:
                report.problems.append(
                    MigrationProblem(
                        f"job store {alias!r}",
                        f"the old scheduler is running and uses this {type(store).__name__}: "
                        "shut it down (old.shutdown()) before starting the new scheduler, or "
                        "both run the store's jobs",
                    )
                )
            unrestorable: list[_Unrestorable] = []
            try:
                persisted = _persisted_jobs(store, new, alias, unrestorable)
            except Exception as exc:
                report.problems.append(
                    MigrationProblem(
                        f"job store {alias!r}",
                        f"{type(store).__name__} attached as it is, but its jobs could not be "
                        f"read ({exc!r}); the report cannot list them",
                    )
                )
                persisted = []
            report.problems.extend(
                MigrationProblem(
                    failed.id,
                    f"persisted in the job store {alias!r}, it cannot be restored "
                    f"({failed.error}): APScheduler deletes such a job from its store when a "
                    "scheduler reads it at start; make its function importable again (or "
                    "remove the job) before starting the new scheduler",
                )
                for failed in unrestorable
            )
            for job in persisted:
                old_jobs.append(_OldJob(job, alias, False, persisted=True))
                job_ids.append(job.id)
            new.add_jobstore(store, alias)
        elif alias != "default":
            new.add_jobstore(MemoryJobStore(), alias)
        if not persistent:
            for job in store.get_all_jobs():  # a started scheduler's jobs
                old_jobs.append(_OldJob(job, alias, False, persisted=False))
                job_ids.append(job.id)
        for job, pending_alias, replace_existing in list(old._pending_jobs):
            if pending_alias != alias:
                continue
            if job.id in job_ids:
                # The code adds a persisted job again at each start: one job, the added one.
                old_jobs[:] = [
                    e
                    for e in old_jobs
                    if not (e.persisted and e.store == alias and e.job.id == job.id)
                ]
                job_ids.remove(job.id)
                if not replace_existing:
                    report.problems.append(
                        MigrationProblem(
                            job.id,
                            f"added again to the job store {alias!r}, which already holds it, "
                            "without replace_existing=True: starting the scheduler raises "
                            "ConflictingIdError",
                        )
                    )
            old_jobs.append(_OldJob(job, alias, replace_existing, persisted=False))
            job_ids.append(job.id)
        how = "attached" if persistent else "copied"
        report.stores.append(StoreMigration(alias, type(store).__name__, how, tuple(job_ids)))
    copied = [entry for entry in old_jobs if not entry.persisted]
    if started and copied:
        report.problems.append(
            MigrationProblem(
                "the old scheduler",
                f"it is running, and runs each of its {len(copied)} job(s) too (copied, not "
                "moved): shut it down (old.shutdown()) before starting the new scheduler",
            )
        )
    return old_jobs


@dataclass
class _Unrestorable:
    """A persisted job its store cannot rebuild (its function is gone), left in the store."""

    id: str
    error: Exception
    next_run_time: None = None  # what a store sorting its jobs reads


def _persisted_jobs(
    store: BaseJobStore, new: AsyncIOScheduler, alias: str, unrestorable: list[_Unrestorable]
) -> list[Job]:
    """The jobs of ``store``, read without deleting those that cannot be restored.

    APScheduler's persistent stores delete a job they fail to rebuild as they read it;
    reading for a report (``plan`` included) must not change the store, so those jobs are
    collected in ``unrestorable`` instead.
    """
    if store._scheduler is None:
        # Never started: its jobs can only be read once it is bound; the new scheduler
        # binds it again when it starts.
        store.start(new, alias)
    reconstitute = getattr(store, "_reconstitute_job", None)
    if reconstitute is None:
        return list(store.get_all_jobs())

    # The id of the job being rebuilt, read from the state APScheduler has already
    # unpickled when it hands it to Job.__setstate__ (this module never unpickles).
    ids: list[str] = []
    setstate = Job.__setstate__

    def recording_setstate(job: Job, state: dict[str, Any]) -> None:
        ids.append(str(state.get("id", "(a persisted job)")))
        setstate(job, state)

    def tolerant(job_state: Any) -> Any:
        ids.clear()
        try:
            return reconstitute(job_state)
        except Exception as exc:
            failed = _Unrestorable(ids[-1] if ids else "(a persisted job)", exc)
            unrestorable.append(failed)
            return failed

    store._reconstitute_job = tolerant
    Job.__setstate__ = recording_setstate
    try:
        jobs = list(store.get_all_jobs())
    finally:
        Job.__setstate__ = setstate
        del store._reconstitute_job
    return [job for job in jobs if not isinstance(job, _Unrestorable)]


def _unstorable(store: BaseJobStore | None, func: Callable[..., Any], job: Job) -> str | None:
    """Why a persistent ``store`` cannot hold the job with ``func``, if it cannot.

    It stores the function as its "module:name" reference and pickles the arguments:
    serialising them here tells whether it can (nothing is ever unpickled).
    """
    if store is None or isinstance(store, MemoryJobStore):
        return None
    try:
        obj_to_ref(func)
        pickle.dumps((job.args, job.kwargs))
    except Exception as exc:
        return str(exc)
    return None


def _describe(
    old: Any,
    old_executors: Mapping[str, BaseExecutor],
    new: AsyncIOScheduler,
    entry: _OldJob,
    func: Callable[..., Any],
    report: MigrationReport,
) -> JobMigration:
    job = entry.job
    old_executor = old_executors.get(job.executor)
    new_executor = new._executors.get(job.executor)
    executor_name = "missing" if old_executor is None else type(old_executor).__name__
    # A MigratedJob is awaited under any executor; a bare coroutine function is not.
    was_async = is_async_callable(job.func) and not isinstance(job.func, MigratedJob)
    is_async = is_async_callable(func)
    changes = []
    if func is not job.func:
        changes.append(
            f"function replaced by {get_callable_name(func)} (was {get_callable_name(job.func)}); "
            "drop it from async_jobs to go back"
        )
    if isinstance(new_executor, ProcessPoolExecutor):
        path = "a child process of the process pool, as before the migration"
        if isinstance(_called_job(func), MigratedJob) or is_async:
            report.problems.append(
                MigrationProblem(
                    job.id,
                    f"{'a @migrated_job' if not is_async else 'an async'} function on the "
                    f"process pool {job.executor!r}: a process pool calls it plainly in a "
                    "child process; give it a thread pool or the default executor",
                )
            )
    elif is_async:
        path = (
            "the scheduler's event loop (awaited)"
            if job.id in report.switch
            else "compat's background loop (awaited), as before the migration"
        )
    else:
        path = "compat's bounded worker pool (a thread; the loop never blocks)"
        if job.id in report.switch and func is not job.func:
            changes.append("sync function: it runs in a worker thread on the async path too")
    if old_executor is None:
        report.problems.append(
            MigrationProblem(job.id, f"its executor {job.executor!r} does not exist")
        )
    elif isinstance(old_executor, ThreadPoolExecutor | ProcessPoolExecutor) and was_async:
        report.problems.append(
            MigrationProblem(
                job.id,
                f"coroutine job on {executor_name}: the old scheduler calls it without "
                "awaiting it, so it has never run; the new one awaits it",
            )
        )
    for where in _old_scheduler_arguments(old, job, func):
        report.problems.append(
            MigrationProblem(
                job.id,
                f"it is given the old scheduler as an argument ({where}): after the migration "
                "that scheduler never runs, so what the job changes there is lost; use the "
                "scheduler running the job, current_scheduled_run().scheduler",
            )
        )
    for use in _old_scheduler_uses(old, func):
        report.problems.append(
            MigrationProblem(
                job.id,
                f"its code uses the old scheduler ({use}): after the migration that scheduler "
                "never runs, so the change is lost; use the scheduler running the job, "
                "current_scheduled_run().scheduler",
            )
        )
    return JobMigration(
        job_id=job.id,
        name=job.name,
        func=get_callable_name(job.func),
        kind="async" if is_async else "sync",
        old_executor=f"{job.executor!r}: {executor_name}",
        path=path,
        changes=tuple(changes),
        jobstore=entry.store,
    )


def _old_scheduler_arguments(old: Any, job: Job, func: Callable[..., Any]) -> list[str]:
    """Where the job's arguments (its own, or a partial's) hold ``old``."""
    found = [f"args[{i}]" for i, value in enumerate(job.args) if value is old]
    found += [f"kwargs[{name!r}]" for name, value in job.kwargs.items() if value is old]
    partial: Any = func
    while isinstance(partial, functools.partial):
        found += [f"a partial's args[{i}]" for i, v in enumerate(partial.args) if v is old]
        found += [
            f"a partial's kwargs[{name!r}]"
            for name, value in partial.keywords.items()
            if value is old
        ]
        partial = partial.func
    return found


def _code_of(func: Callable[..., Any]) -> Any:
    """The plain function whose source is the job's code."""
    target: Any = _called_job(func)
    if isinstance(target, MigratedJob):
        target = _called_job(target.func)
    return inspect.unwrap(target) if callable(target) else target


def _old_scheduler_uses(old: Any, func: Callable[..., Any]) -> list[str]:
    """Where the job's own code uses ``old`` by a global or closure name, a module or ``self``.

    Best effort, from the function's source: names bound elsewhere are not followed.
    """
    code = _code_of(func)
    module_globals = getattr(code, "__globals__", None)
    if not isinstance(module_globals, dict):
        return []
    names = {name for name, value in module_globals.items() if value is old}
    # A job defined in the function that builds the scheduler reaches it through its closure.
    names |= {
        name
        for name, cell in zip(code.__code__.co_freevars, code.__closure__ or (), strict=True)
        if _cell_value(cell) is old
    }
    modules = {
        name: {attribute for attribute, value in vars(value).items() if value is old}
        for name, value in module_globals.items()
        if isinstance(value, types.ModuleType)
    }
    bound: Any = func
    while isinstance(bound, functools.partial):
        bound = bound.func
    instance = getattr(bound, "__self__", None)
    attributes = (
        {name for name, value in vars(instance).items() if value is old}
        if hasattr(instance, "__dict__")
        else set()
    )
    try:
        source = textwrap.dedent(inspect.getsource(code))
        first_line = inspect.getsourcelines(code)[1]
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return []
    # The source of a lambda is its whole line (often the add_job that registers it): only
    # the lambdas' code counts, and only the names the function's code refers to.
    roots = (
        [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
        if code.__name__ == "<lambda>"
        else [tree]
    )
    referenced = _names_in(code.__code__)
    uses = []
    for node, via in (use for root in roots for use in _attribute_uses(root)):
        if node.attr not in referenced:
            continue
        if (isinstance(via, ast.Name) and via.id in names) or (
            isinstance(via, ast.Attribute)
            and isinstance(via.value, ast.Name)
            and (
                via.attr in modules.get(via.value.id, ())
                or (via.value.id == "self" and via.attr in attributes)
            )
        ):
            uses.append(f"{ast.unparse(node)} on line {first_line + node.lineno - 1}")
    return list(dict.fromkeys(uses))


def _names_in(code: types.CodeType) -> set[str]:
    """The global, attribute and closure names ``code`` and the code nested in it use."""
    names = {*code.co_names, *code.co_freevars}
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_in(constant)
    return names


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a variable not bound yet
        return None


def _attribute_uses(tree: ast.AST) -> Iterator[tuple[ast.Attribute, ast.expr]]:
    """Each ``<object>.<scheduler method>`` in ``tree``, with the object."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _SCHEDULER_METHODS:
            yield node, node.value


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
        for use in _old_scheduler_uses(old, callback):
            report.problems.append(
                MigrationProblem(
                    f"listener {name}",
                    f"its code uses the old scheduler ({use}): after the migration that "
                    "scheduler never runs, so the change is lost; use the new scheduler",
                )
            )

"""``@migrated_job``: one job function, correct under every APScheduler 3 scheduler.

APScheduler 3 decides how to call a job from ``iscoroutinefunction(job.func)``, and only
``AsyncIOExecutor`` asks: it awaits coroutine functions on the loop and runs everything
else in the loop's default thread pool. The thread-pool executors of
``BlockingScheduler`` and ``BackgroundScheduler`` call every job plainly, so a coroutine
job there returns a coroutine nobody awaits.

A :class:`MigratedJob` therefore answers that question by where it is asked: it is a
coroutine function to code running on an event loop (``AsyncIOExecutor`` submits from
the loop thread) and a plain function everywhere else. Called on a loop it returns the
run as a coroutine; called in a thread without a loop it runs the same coroutine on
compat's background loop and blocks until it is done. The run itself is one piece of
async code whatever the scheduler: an async job is awaited, a sync job runs in compat's
bounded worker pool (``compat.set_blocking_limit``), so the loop never blocks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import traceback
import types
import uuid
from collections.abc import Callable
from typing import Any, overload

from prometheus_client import CollectorRegistry

from commclient import correlation_id_ctx
from commclient._tracing import RunSpan, active_tracer

from ._context import (
    ScheduledRun,
    _run_guard,
    _run_target,
    check_seconds,
    current_scheduled_run,
    mark_internal_listener,
)
from ._lease import DEFAULT_CLOCK_SKEW, Lease, LeaseDecision, OnRedisError
from ._metrics import CronMetrics
from ._records import (
    DEFAULT_RECORD_CAPACITY,
    DEFAULT_RECORD_MAX_AGE,
    RecordOutbox,
    RunRecord,
    check_capacity,
    check_recorder,
)
from ._slots import UnstableArgumentError, call_digest, lease_refusal, stable_job_id, utc_text
from ._worker import (
    MissedWhileQueued,
    _misfire,
    count_until_unwound,
    run_job_thread,
    tracking_threads,
)

logger = logging.getLogger("cron_migration")


class ScheduledRunUnknownError(RuntimeError):
    """A lease needs the scheduled run time, and the scheduler did not provide it."""


class LeaseRefusedError(ValueError):
    """A lease cannot key this job's slots identically on every replica (see the message)."""


def lease_covers_until(scheduled: ScheduledRun, timeout: float) -> float:
    """The last moment (epoch seconds) a run of this slot may start; the lease covers it.

    The slot's end plus its ``misfire_grace_time``; plus the job's ``timeout`` when the
    grace is unlimited (``None``), so that a lease can still end.
    """
    ends = scheduled.slot_ends_at or scheduled.scheduled_at
    grace = scheduled.misfire_grace_time
    return ends.timestamp() + (timeout if grace is None else grace)


class JobTimeoutError(TimeoutError):
    """A run took longer than the job's ``timeout``."""

    def __init__(self, job_name: str, timeout: float) -> None:
        super().__init__(f"job {job_name!r} did not finish within its timeout of {timeout:g}s")
        self.job_name = job_name
        self.timeout = timeout


def _coroutine_marks() -> dict[str, object]:
    """The attributes by which ``asyncio`` and ``inspect`` recognise a coroutine function."""
    marks: dict[str, object] = {}
    asyncio_mark = getattr(asyncio.coroutines, "_is_coroutine", None)  # Python < 3.14
    if asyncio_mark is not None:
        marks["_is_coroutine"] = asyncio_mark
    mark_function = getattr(inspect, "markcoroutinefunction", None)  # Python >= 3.12
    if mark_function is not None:

        def probe() -> None:
            """Only carries the mark."""

        marks.update(vars(mark_function(probe)))
    return marks


_COROUTINE_MARKS = _coroutine_marks()


def loop_is_running() -> bool:
    """Whether the calling thread is running an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def is_async_callable(func: Callable[..., Any]) -> bool:
    """Whether ``func`` (through partials, bound methods and MigratedJobs) is async."""
    while isinstance(func, functools.partial):
        func = func.func
    func = getattr(func, "__func__", func)
    if isinstance(func, MigratedJob):
        return func.is_async
    if inspect.iscoroutinefunction(func):
        return True
    # An object whose __call__ is async (not a class: calling it makes an instance).
    call = getattr(func, "__call__", None)  # noqa: B004
    return not isinstance(func, type) and inspect.iscoroutinefunction(call)


class MigratedJob:
    """A job function wrapped by :func:`migrated_job`; call it as the function itself."""

    func: Callable[..., Any]
    is_async: bool
    name: str
    timeout: float | None
    lease: Lease | None

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        timeout: float | None,
        lease: Lease | None,
        recorder: RecordOutbox | None,
        name: str,
        metrics: CronMetrics,
    ) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self.is_async = is_async_callable(func)
        self.name = name
        self.timeout = timeout
        self.lease = lease
        self._outbox = recorder
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"<migrated job {self.name!r} of {self.func!r}>"

    def __getattr__(self, name: str) -> Any:
        # The coroutine-function marks, answered per calling thread (see the module doc).
        if name in _COROUTINE_MARKS:
            return _COROUTINE_MARKS[name] if loop_is_running() else None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Decorating a method: bind it like a function would be bound.
        return self if instance is None else types.MethodType(self, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """On a loop: the run as a coroutine. Elsewhere: run it, return its result."""
        if loop_is_running():
            return self.run_async(*args, **kwargs)
        from compat import run_sync

        # Bound first: run_sync keeps a ``timeout`` keyword of its own.
        return run_sync(functools.partial(self.run_async, *args, **kwargs))

    async def run_async(self, *args: Any, **kwargs: Any) -> Any:
        """One run: correlation id, lease, records, timeout and metrics around the job."""
        scheduled = current_scheduled_run()
        job_id = lease_id = self.name  # called by another job, or outside any scheduled run
        is_scheduled_run = scheduled is not None and _run_target.get() is self
        if scheduled is not None and is_scheduled_run:
            job_id = stable_job_id(scheduled.job_id, self.name)
            lease_id = scheduled.lease_id or job_id
        scheduled_at = scheduled.scheduled_at if scheduled is not None else None
        run_id = uuid.uuid4().hex
        correlation_id = uuid.uuid4().hex
        token = correlation_id_ctx.set(correlation_id)
        target_token = _run_target.set(None)  # jobs this one calls are not the scheduled run
        # Only the scheduled run itself may be late; a job it calls runs when called.
        misfire_token = None if is_scheduled_run else _misfire.set(None)
        tracer = active_tracer()
        span = None
        if tracer is not None:
            span = RunSpan(
                tracer,
                f"cron run {job_id}",
                {
                    "cron.job_id": job_id,
                    "cron.scheduled_at": "" if scheduled_at is None else utc_text(scheduled_at),
                    "cron.run_id": run_id,
                    "commclient.correlation_id": correlation_id,
                },
            )
            span.__enter__()
        exc_info: tuple[Any, ...] = (None, None, None)
        try:
            if self.lease is not None:
                if scheduled is None:
                    # An error, not a skip: it is how the job is set up, not a Redis outage,
                    # and only an error fires the failing-runs alert.
                    self._metrics.count_run(job_id, "error")
                    raise ScheduledRunUnknownError(
                        f"job {self.name!r} has a lease but its scheduled run time is unknown: "
                        "run it under a scheduler whose executor is "
                        "cron_migration.MigrationExecutor (migrate_scheduler installs it); "
                        "running without it could run the same slot on every replica"
                    )
                skipped = await self._take_lease(job_id, lease_id, scheduled, args, kwargs, run_id)
                if span is not None:
                    span.span.set_attribute("cron.lease", "not taken" if skipped else "taken")
                if skipped is not None:
                    if span is not None:
                        span.outcome(skipped)
                    return None
            record = RunRecord(run_id, job_id, self.name, scheduled_at, correlation_id)
            return await self._run_recorded(record, args, kwargs, span)
        except BaseException as error:
            exc_info = (type(error), error, error.__traceback__)
            raise
        finally:
            if span is not None:
                span.__exit__(*exc_info)
            if misfire_token is not None:
                _misfire.reset(misfire_token)
            _run_target.reset(target_token)
            correlation_id_ctx.reset(token)

    async def _take_lease(
        self,
        job_id: str,
        lease_id: str,
        scheduled: ScheduledRun,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_id: str,
    ) -> str | None:
        """``None`` when this replica runs this call in this slot, else the outcome it
        counted (``skipped_elsewhere``, ``skipped_no_lease``, ``missed``).

        ``lease_id``: the job as every replica names it (see ``lease_id_of``).
        """
        lease = self.lease
        assert lease is not None
        assert self.timeout is not None
        if scheduled.lease_refusal is not None:
            self._metrics.count_run(job_id, "error")
            raise LeaseRefusedError(f"job {job_id!r} cannot be leased: {scheduled.lease_refusal}")
        try:
            digest = call_digest(self._call_arguments(args), kwargs)
        except UnstableArgumentError as exc:
            self._metrics.count_run(job_id, "error")
            raise UnstableArgumentError(f"job {self.name!r}: an argument: {exc}") from None
        until = lease_covers_until(scheduled, self.timeout)
        key = lease.key(lease_id, scheduled.slot or scheduled.scheduled_at, digest)
        if time.time() <= until:
            decision = await lease.acquire(key, until, run_id)
        else:
            decision = None
        if decision is LeaseDecision.HELD_ELSEWHERE:
            self._metrics.count_run(job_id, "skipped_elsewhere")
            return "skipped_elsewhere"
        if decision is LeaseDecision.REDIS_UNAVAILABLE:
            if lease.on_redis_error == "skip":
                self._metrics.count_run(job_id, "skipped_no_lease")
                return "skipped_no_lease"
            return None
        late = time.time() - until
        if late > 0:
            # Past the moment the slot could still start, the lease of a replica that ran
            # it may be gone: starting now could run the slot a second time.
            self._metrics.missed.labels(job_id).inc()
            logger.warning(
                "job %s: slot %s not run: %.3fs past the last moment it may start "
                "(slot end + misfire_grace_time, or + timeout without one), which the "
                "lease covers",
                self.name,
                scheduled.slot or utc_text(scheduled.scheduled_at),
                late,
            )
            return "missed"
        return None

    def _call_arguments(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """The arguments that tell calls apart: a method's own instance is not one of them."""
        name = getattr(self.func, "__name__", None)
        if args and name and inspect.getattr_static(type(args[0]), name, None) is self:
            return args[1:]
        return args

    async def _run_recorded(
        self,
        record: RunRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        span: RunSpan | None = None,
    ) -> Any:
        outbox = self._outbox
        if outbox is not None:
            outbox.open(record)
        job_id = record.job_id
        started = time.perf_counter()
        outcome = "error"
        with tracking_threads() as threads:
            try:
                result = await self._invoke(job_id, args, kwargs, self._on_start(record))
            except JobTimeoutError as exc:
                outcome = "timeout"
                if outbox is not None:
                    outbox.fail(record, str(exc), "")
                raise
            except MissedWhileQueued as exc:
                outcome = "missed"
                if outbox is not None:
                    outbox.fail(record, f"missed: {exc}", "")
                raise
            except asyncio.CancelledError:
                thread = threads.latest()
                if thread is None:
                    outcome = "cancelled"
                    if outbox is not None:
                        outbox.fail(
                            record, "cancelled: the run was cancelled before it finished", ""
                        )
                else:
                    # A thread cannot be cancelled, a coroutine may not unwind: what became
                    # of the run is not known yet.
                    outcome = "abandoned"
                    if outbox is not None:
                        outbox.hold(record, thread)
                raise
            except BaseException as exc:
                if outbox is not None:
                    outbox.fail(record, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                raise
            else:
                outcome = "success"
                if outbox is not None:
                    outbox.complete(record, result)
                return result
            finally:
                if span is not None:
                    span.outcome(outcome)
                if outcome != "missed":  # counted in cron_job_missed_total instead
                    self._metrics.duration.labels(job_id).observe(time.perf_counter() - started)
                    self._metrics.count_run(job_id, outcome)

    def _on_start(self, record: RunRecord) -> Callable[[], None]:
        """What marks ``record`` started: when its function really starts, not when queued."""
        outbox = self._outbox
        if outbox is None:
            return lambda: None
        if self.is_async:
            outbox.start(record)
            return lambda: None
        loop = asyncio.get_running_loop()
        return functools.partial(_call_soon, loop, outbox.start, record)

    async def _invoke(
        self,
        job_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_start: Callable[[], None],
    ) -> Any:
        work = asyncio.ensure_future(self._call_func(job_id, args, kwargs, on_start))
        # A thread the run stops waiting for is counted by run_job_thread; a coroutine
        # still unwinding from its cancellation is counted here.
        unwinding = job_id if self.is_async else None
        try:
            done, _ = await asyncio.wait({work}, timeout=self.timeout)
        except asyncio.CancelledError:
            await _stop(work, unwinding, self._metrics)
            raise
        if not done:
            # Not started yet (waiting for a worker): it never will. Started: a coroutine
            # is cancelled, a thread is abandoned (see run_job_thread).
            await _stop(work, unwinding, self._metrics)
            assert self.timeout is not None
            raise JobTimeoutError(self.name, self.timeout)
        try:
            return work.result()
        except Escaped as escaped:
            raise escaped.error from None

    async def _call_func(
        self,
        job_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_start: Callable[[], None],
    ) -> Any:
        """The job function itself, in its own task (so that a timeout can leave it)."""
        if not self.is_async:
            result = await run_job_thread(
                job_id,
                call_escaping,
                (self.func, args, kwargs),
                self._metrics,
                on_start=on_start,
            )
            return await awaited(result)
        return await await_escaping(self.func, args, kwargs)


def _call_soon(loop: asyncio.AbstractEventLoop, func: Callable[..., None], *args: Any) -> None:
    loop.call_soon_threadsafe(func, *args)


#: Seconds a cancelled coroutine run gets to unwind before it counts as still working.
UNWIND_GRACE = 0.1


async def _stop(work: asyncio.Future[Any], unwinding: str | None, metrics: CronMetrics) -> None:
    """Cancel ``work``: a run still waiting for a worker never starts; a coroutine is
    cancelled, and if it has not unwound within :data:`UNWIND_GRACE` counts (as job
    ``unwinding``) until it has; a thread it started runs on, abandoned (see
    run_job_thread)."""
    work.cancel()
    work.add_done_callback(_log_stopped_end)
    if unwinding is not None:
        await asyncio.wait({work}, timeout=UNWIND_GRACE)
        count_until_unwound(unwinding, work, metrics)


def _log_stopped_end(work: asyncio.Future[Any]) -> None:
    if not work.cancelled() and work.exception() is not None:
        logger.warning("a stopped run ended with %r", work.exception())


class Escaped(Exception):
    """Carries a KeyboardInterrupt or SystemExit out of a task as an ordinary exception.

    asyncio re-raises those two out of the loop itself when a task ends with one: the
    loop (compat's, shared by every bridge, or the scheduler's) would end instead of the
    exception reaching the run's caller, which re-raises the original.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def call_escaping(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)`` in a worker thread, KeyboardInterrupt/SystemExit wrapped.

    A run that may no longer start (see ``_run_guard``) raises instead of calling ``func``.
    """
    guard = _run_guard.get()
    if guard is not None:
        guard()
    try:
        return func(*args, **kwargs)
    except Exception:
        raise
    except BaseException as exc:
        raise Escaped(exc) from None


async def await_escaping(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``await func(*args, **kwargs)``, KeyboardInterrupt/SystemExit wrapped."""
    try:
        return await func(*args, **kwargs)
    except (Exception, asyncio.CancelledError, GeneratorExit):
        # GeneratorExit: the coroutine is being closed (a loop left it behind), not a job's
        # failure; wrapped, close() would fail with "coroutine ignored GeneratorExit".
        raise
    except BaseException as exc:
        raise Escaped(exc) from None


async def awaited(result: Any) -> Any:
    """``result``, awaited if it is awaitable.

    A sync callable may return the real work (``lambda: fetch()``): left un-awaited, the
    run would count as a success that never happened.
    """
    if inspect.isawaitable(result):
        return await await_escaping(lambda: result, (), {})
    return result


@overload
def migrated_job(
    func: Callable[..., Any],
    *,
    timeout: float | None = None,
    lease: str | Any | None = None,
    recorder: Any | None = None,
    name: str | None = None,
    registry: CollectorRegistry | None = None,
    lease_clock_skew: float = DEFAULT_CLOCK_SKEW,
    on_redis_error: OnRedisError = "skip",
    record_capacity: int = DEFAULT_RECORD_CAPACITY,
    record_max_age: float = DEFAULT_RECORD_MAX_AGE,
) -> MigratedJob: ...


@overload
def migrated_job(
    func: None = None,
    *,
    timeout: float | None = None,
    lease: str | Any | None = None,
    recorder: Any | None = None,
    name: str | None = None,
    registry: CollectorRegistry | None = None,
    lease_clock_skew: float = DEFAULT_CLOCK_SKEW,
    on_redis_error: OnRedisError = "skip",
    record_capacity: int = DEFAULT_RECORD_CAPACITY,
    record_max_age: float = DEFAULT_RECORD_MAX_AGE,
) -> Callable[[Callable[..., Any]], MigratedJob]: ...


def migrated_job(
    func: Callable[..., Any] | None = None,
    *,
    timeout: float | None = None,
    lease: str | Any | None = None,
    recorder: Any | None = None,
    name: str | None = None,
    registry: CollectorRegistry | None = None,
    lease_clock_skew: float = DEFAULT_CLOCK_SKEW,
    on_redis_error: OnRedisError = "skip",
    record_capacity: int = DEFAULT_RECORD_CAPACITY,
    record_max_age: float = DEFAULT_RECORD_MAX_AGE,
) -> MigratedJob | Callable[[Callable[..., Any]], MigratedJob]:
    """Make a job run correctly under any APScheduler 3 scheduler, recorded and measured.

    ``timeout``: seconds a run may take, waiting for a worker thread included; then it
    fails with :class:`JobTimeoutError` (a run still waiting never starts; an async job
    is cancelled; a sync job's thread cannot be stopped and runs on, abandoned: it still
    counts against its share of the worker pool until it returns, and under a
    :class:`MigrationExecutor` against the job's ``max_instances`` too). ``lease``: a
    Redis URL or client, or a :class:`Lease`, to run each call in each slot on one
    replica only; needs ``timeout``. The lease lasts until the slot can
    no longer start (its end plus ``misfire_grace_time``, or plus ``timeout`` when the
    grace is unlimited) plus ``lease_clock_skew`` seconds. ``on_redis_error``: with a
    lease, ``"skip"`` or ``"run"`` a slot when Redis is unreachable. ``recorder``: a
    :class:`RunRecorder`; records are buffered (at most ``record_capacity`` runs) and
    retried until delivered; an operation the recorder keeps rejecting for
    ``record_max_age`` seconds while it accepts others is given up. ``name``: the
    recorded job name, and the ``cron_job`` label of the metrics when the job runs outside
    a scheduler (a scheduled run's label is its job id); default: the function's name.
    ``registry``: the Prometheus registry (default: the global one).
    """
    decorate = functools.partial(
        _decorate,
        timeout=timeout,
        lease=lease,
        recorder=recorder,
        name=name,
        registry=registry,
        lease_clock_skew=lease_clock_skew,
        on_redis_error=on_redis_error,
        record_capacity=record_capacity,
        record_max_age=record_max_age,
    )
    return decorate if func is None else decorate(func)


def _decorate(
    func: Callable[..., Any],
    *,
    timeout: float | None,
    lease: str | Any | None,
    recorder: Any | None,
    name: str | None,
    registry: CollectorRegistry | None,
    lease_clock_skew: float,
    on_redis_error: OnRedisError,
    record_capacity: int,
    record_max_age: float,
) -> MigratedJob:
    if not callable(func):
        raise TypeError(
            f"@migrated_job decorates a function, got {func!r}; its options are "
            "keyword-only: @migrated_job(timeout=60)"
        )
    inner = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    if isinstance(getattr(inner, "__func__", inner), MigratedJob):
        # Its runs would be counted, recorded and leased twice, the second lease
        # finding the slot taken by the first.
        raise TypeError(f"{func!r} is already decorated with @migrated_job")
    if on_redis_error not in ("run", "skip"):
        raise ValueError(f"on_redis_error must be 'run' or 'skip', got {on_redis_error!r}")
    if isinstance(lease, Lease) and (
        lease_clock_skew != DEFAULT_CLOCK_SKEW or on_redis_error != "skip"
    ):
        raise ValueError(
            "lease_clock_skew and on_redis_error configure a lease made from a URL or "
            "client; set them on the Lease you pass instead"
        )
    if timeout is not None:
        timeout = check_seconds("timeout", timeout)
    check_capacity(record_capacity)  # refused even without a recorder: a wrong option
    record_max_age = check_seconds("record_max_age", record_max_age)
    if name is None:
        name = getattr(func, "__name__", None) or repr(func)
    elif not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    metrics = CronMetrics(registry)
    if lease is not None and not isinstance(lease, Lease):
        lease = Lease(lease, clock_skew=lease_clock_skew, on_redis_error=on_redis_error)
    if lease is not None and timeout is None:
        raise ValueError(
            f"job {name!r}: a lease needs a timeout; a leased run must end while its "
            "replica is known to hold the slot"
        )
    outbox = None
    if recorder is not None:
        outbox = RecordOutbox(
            check_recorder(recorder), metrics, capacity=record_capacity, max_age=record_max_age
        )
    # APScheduler names a callable object after its class (default job names, logs) and
    # references it as module:class-qualname (persistent job stores): a class per job
    # function that carries the function's names makes both come out as the function's.
    job_class = type(
        getattr(func, "__name__", MigratedJob.__name__),
        (MigratedJob,),
        {
            "__qualname__": getattr(func, "__qualname__", MigratedJob.__qualname__),
            "__module__": getattr(func, "__module__", MigratedJob.__module__),
        },
    )
    job: MigratedJob = job_class(
        func, timeout=timeout, lease=lease, recorder=outbox, name=name, metrics=metrics
    )
    metrics.declare_job(name)
    return job


def leased_job_refusal(job: Any) -> str | None:
    """Why the scheduler job ``job`` (a leased migrated job) cannot be leased; else None."""
    target = getattr(job.func, "__func__", job.func)
    while isinstance(target, functools.partial):
        target = target.func
    if not isinstance(target, MigratedJob) or target.lease is None:
        return None
    return lease_refusal(job.trigger)


def refuse_unkeyable_leases(jobs: Any) -> None:
    """Raise LeaseRefusedError naming every leased job whose slots a lease cannot key."""
    refused = [(job.id, leased_job_refusal(job)) for job in jobs]
    reasons = [f"job {job_id!r}: {reason}" for job_id, reason in refused if reason is not None]
    if reasons:
        raise LeaseRefusedError(
            "a lease cannot key these jobs' slots identically on every replica: "
            + "; ".join(reasons)
        )


def watch_added_leases(scheduler: Any) -> None:
    """Log, when it is added or changed (rescheduled), a leased job every run will refuse."""

    def on_added(event: Any) -> None:
        job = scheduler.get_job(event.job_id)
        reason = None if job is None else leased_job_refusal(job)
        if reason is not None:
            logger.error("job %r cannot be leased, every run will fail: %s", event.job_id, reason)

    from apscheduler.events import EVENT_JOB_ADDED, EVENT_JOB_MODIFIED

    mark_internal_listener(on_added)
    scheduler.add_listener(on_added, EVENT_JOB_ADDED | EVENT_JOB_MODIFIED)

"""Where sync job functions run: compat's worker pool, a bounded share of it per job.

A thread cannot be stopped. A sync run that times out, or that a shutdown gives up,
leaves its thread working; if nothing counted that thread, a job hanging on a dead
upstream would start a new hung thread every interval until compat's whole pool was
held and every other sync job stopped. So a job's threads count until they return:

- against its share of the pool: one job id holds at most :func:`job_thread_limit`
  threads (a quarter of ``compat.blocking_limit()``, at least one); its further runs
  wait for one of its own threads to return, never for another job's;
- against its ``max_instances`` (:class:`MigrationExecutor` releases a run's instance
  when the run's last thread returns, not when the run stopped waiting for it).

A run waiting for a worker is not running yet: it can still be given up (its timeout,
a shutdown) without ever starting, and when it gets a worker later than its
``misfire_grace_time`` allows it is skipped as missed instead of starting late.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from typing import Any

from ._metrics import CronMetrics

logger = logging.getLogger("cron_migration")

#: A job holds at most this fraction of compat's worker pool (``compat.blocking_limit()``).
JOB_SHARE_OF_POOL = 4


def job_thread_limit() -> int:
    """Threads one job may hold at once: a quarter of compat's pool, at least one."""
    from compat import blocking_limit

    return max(1, blocking_limit() // JOB_SHARE_OF_POOL)


class MissedWhileQueued(Exception):
    """A run got its worker later than its misfire grace time allows: it did not start."""

    def __init__(self, job_id: str, late: timedelta, grace: float) -> None:
        super().__init__(
            f"run of job {job_id!r} waited for a worker thread until {late} after its "
            f"scheduled time, past its misfire grace time of {grace:g}s: skipped as missed"
        )
        self.late = late


class _JobShare:
    """The threads of one job id alive now, and the runs waiting for one (any loop)."""

    def __init__(self) -> None:
        self.alive = 0
        self.waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def acquire(self, job_id: str) -> None:
        loop = asyncio.get_running_loop()
        with _shares_lock:
            if self.alive < job_thread_limit() and not self.waiters:
                self.alive += 1
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self.waiters.append((loop, waiter))
        logger.debug("job %s: waiting for one of its own threads to return", job_id)
        try:
            await waiter  # set once a thread was handed over to this run
        except asyncio.CancelledError:
            with _shares_lock:
                if (loop, waiter) in self.waiters:
                    self.waiters.remove((loop, waiter))
                    raise
            # Handed over just as the run was given up: hand it on.
            self.release()
            raise

    def release(self) -> None:
        """A thread returned: hand its place to the first run waiting, if any (any thread)."""
        with _shares_lock:
            while self.waiters:
                loop, waiter = self.waiters.popleft()
                try:
                    loop.call_soon_threadsafe(_hand_over, waiter, self)
                except RuntimeError:  # that loop is closed: its waiter is gone with it
                    continue
                return
            self.alive -= 1


def _hand_over(waiter: asyncio.Future[None], share: _JobShare) -> None:
    # Cancelled since it was picked: its run, finding itself no longer waiting, hands the
    # place on (see acquire).
    if not waiter.done():
        waiter.set_result(None)


_shares_lock = threading.Lock()
_shares: dict[str, _JobShare] = {}


def _share_of(job_id: str) -> _JobShare:
    with _shares_lock:
        share = _shares.get(job_id)
        if share is None:
            share = _shares[job_id] = _JobShare()
        return share


def threads_alive(job_id: str) -> int:
    """Threads of ``job_id`` not returned yet, abandoned ones included."""
    with _shares_lock:
        share = _shares.get(job_id)
        return 0 if share is None else share.alive


def _forget_after_fork() -> None:
    # The parent's threads and waiting runs do not exist in the child.
    global _shares_lock
    _shares_lock = threading.Lock()
    _shares.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


#: What a run leaves working when it stops waiting: a worker thread, or a coroutine that
#: has not unwound from its cancellation yet (one awaiting ``compat.run_blocking``).
Work = concurrent.futures.Future[Any] | asyncio.Future[Any]


class RunThreads:
    """The worker threads (and unwinding coroutines) one run started, not returned yet.

    Runs nest (the executor's run of a migrated job, the job's own run): a thread counts
    in every enclosing run, so each knows whether something it started still works.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alive: set[Work] = set()
        self._when_all_returned: list[Callable[[], None]] = []
        self._parent: RunThreads | None = None

    def add(self, thread: Work) -> None:
        with self._lock:
            self._alive.add(thread)
        thread.add_done_callback(self._returned)
        if self._parent is not None:
            self._parent.add(thread)

    @property
    def alive(self) -> int:
        with self._lock:
            return len(self._alive)

    def latest(self) -> Work | None:
        """A thread still working, if any."""
        with self._lock:
            return next(iter(self._alive), None)

    def when_all_returned(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in whichever thread) once no thread of the run works any more."""
        with self._lock:
            if self._alive:
                self._when_all_returned.append(callback)
                return
        callback()

    def _returned(self, thread: Work) -> None:
        with self._lock:
            self._alive.discard(thread)
            callbacks = [] if self._alive else self._when_all_returned
            if not self._alive:
                self._when_all_returned = []
        for callback in callbacks:
            callback()


_run_threads: ContextVar[RunThreads | None] = ContextVar("cron_migration_run_threads", default=None)


def count_until_unwound(job_id: str, work: asyncio.Future[Any], metrics: CronMetrics) -> None:
    """A cancelled coroutine run that has not unwound: it counts until it has.

    Cancelling a coroutine only asks it to stop: one awaiting ``compat.run_blocking``
    (whose thread cannot be stopped) or ignoring the cancellation works on. Counted in
    the enclosing runs, it holds its job's instance (``max_instances``) until it ends,
    as an abandoned thread does, so a job stuck that way cannot start a new stuck run
    every interval until compat's pool is held.
    """
    global _abandoned_threads
    runs = _run_threads.get()
    if runs is None or work.done():
        return
    runs.add(work)
    _abandoned_threads += 1
    metrics.abandoned.labels(job_id).inc()
    logger.warning(
        "job %s: its cancelled run still works (a coroutine that has not unwound, e.g. "
        "awaiting a blocking call); it counts against the job's max_instances until it ends",
        job_id,
    )
    started = time.monotonic()
    work.add_done_callback(lambda done: _log_abandoned_end(job_id, started, done))


@contextlib.contextmanager
def tracking_threads(threads: RunThreads | None = None) -> Iterator[RunThreads]:
    """Collect, in the yielded :class:`RunThreads`, the threads the code inside starts."""
    if threads is None:
        threads = RunThreads()
    threads._parent = _run_threads.get()
    token = _run_threads.set(threads)
    try:
        yield threads
    finally:
        _run_threads.reset(token)


# Set by the executor around a scheduled run: when it was due and how late it may start.
_misfire: ContextVar[tuple[datetime, float] | None] = ContextVar(
    "cron_migration_misfire", default=None
)


@contextlib.contextmanager
def misfire_window(scheduled_at: datetime, grace: float | None) -> Iterator[None]:
    token = _misfire.set(None if grace is None else (scheduled_at, grace))
    try:
        yield
    finally:
        _misfire.reset(token)


async def run_job_thread(
    job_id: str,
    call: Callable[..., Any],
    args: tuple[Any, ...],
    metrics: CronMetrics,
    *,
    on_start: Callable[[], None] | None = None,
) -> Any:
    """``call(*args)`` in a worker thread within ``job_id``'s share of compat's pool.

    Cancelled while waiting for a worker, the call never starts. Cancelled once started,
    it returns at once; the thread, logged and counted as abandoned, keeps its places
    until it returns. A worker obtained past the misfire grace time raises
    :class:`MissedWhileQueued` instead of starting. ``on_start`` runs just before.
    """
    from compat._run import start_detached

    global _abandoned_threads
    share = _share_of(job_id)
    await share.acquire(job_id)
    try:
        thread = await start_detached(
            _checked_start(job_id, call, _misfire.get(), on_start),
            args,
            thread_name=f"cron job {job_id}",
        )
    except BaseException:
        share.release()
        raise
    started = time.monotonic()
    thread.add_done_callback(lambda _: share.release())
    runs = _run_threads.get()
    if runs is not None:
        runs.add(thread)
    try:
        return await asyncio.shield(asyncio.wrap_future(thread))
    except asyncio.CancelledError:
        if not thread.done():
            _abandoned_threads += 1
            metrics.abandoned.labels(job_id).inc()
            logger.warning(
                "job %s: stopped waiting for its run; its worker thread runs on until the "
                "function returns, and counts against the job's max_instances and its "
                "share of the worker pool until then",
                job_id,
            )
            thread.add_done_callback(lambda done: _log_abandoned_end(job_id, started, done))
        raise


_abandoned_threads = 0


def abandoned_threads() -> int:
    """Worker threads abandoned in this process so far (their run stopped waiting)."""
    return _abandoned_threads


def _checked_start(
    job_id: str,
    call: Callable[..., Any],
    misfire: tuple[datetime, float] | None,
    on_start: Callable[[], None] | None,
) -> Callable[..., Any]:
    def start(*args: Any) -> Any:
        if misfire is not None:
            scheduled_at, grace = misfire
            late = datetime.now(timezone.utc) - scheduled_at
            if late > timedelta(seconds=grace):
                raise MissedWhileQueued(job_id, late, grace)
        if on_start is not None:
            on_start()
        return call(*args)

    return start


def _log_abandoned_end(job_id: str, started: float, thread: Work) -> None:
    error = None if thread.cancelled() else thread.exception()
    logger.warning(
        "job %s: an abandoned run's thread returned after %.1fs%s",
        job_id,
        time.monotonic() - started,
        "" if error is None else f", raising {error!r}",
    )

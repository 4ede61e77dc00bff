"""Run records: the recorder protocol and the buffer that delivers records to it.

A recorder failure must neither fail the job nor lose its record. So a run never calls
the recorder itself: it appends its record operations (create, start, then complete or
fail) to a :class:`RecordOutbox`, which delivers them, retrying with backoff while the
recorder fails. Operations of one run keep their order (the execution id that ``create``
returned is used by the later ones); runs are delivered concurrently, so a record the
recorder keeps rejecting delays no other run, and is given up after an age limit. The
outbox is bounded in runs; a run that finds it full is not recorded. Every record given
up is counted (``cron_run_records_dropped_total{reason}``) and logged with its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from commclient._errors import ClientClosedError

from ._context import check_seconds
from ._metrics import CronMetrics
from ._worker import Work

logger = logging.getLogger("cron_migration")

#: Runs an outbox holds at most before new runs go unrecorded.
DEFAULT_RECORD_CAPACITY = 10_000
#: First and longest pause between delivery attempts while the recorder fails.
DEFAULT_RETRY_INITIAL = 0.2
DEFAULT_RETRY_MAX = 10.0
#: Characters of one run's result, error or traceback kept in its record (a job's
#: result can be any size; the buffer may hold DEFAULT_RECORD_CAPACITY runs).
MAX_RECORDED_CHARACTERS = 16_384
#: Seconds one recorder call may take before it counts as failed and is retried.
DEFAULT_CALL_TIMEOUT = 30.0
#: Seconds an operation may keep failing, while the recorder accepts others, before
#: it is given up: with the last call's timeout, given up within 90 s.
DEFAULT_RECORD_MAX_AGE = 60.0
#: Seconds between two tries while every run waits out its backoff: how soon a
#: recorder's recovery is noticed.
DEFAULT_PROBE_INTERVAL = 0.5
#: Recorder calls in flight at once (operations of different runs).
DEFAULT_DELIVERY_CONCURRENCY = 16
#: Seconds after which an unanswered call stops counting against that concurrency, and
#: the recorder is treated as hanging (one call per probe interval) until a call succeeds;
#: longer for a recorder whose answers take longer (see RecordOutbox).
DEFAULT_STALL_AFTER = 1.0
#: A call unanswered for this many times the slowest of the recent answers is presumed
#: lost (not only slow), and so many recent answers are kept for it.
STALL_FACTOR = 2.0
RECENT_ANSWERS = 32
#: Times of successful calls kept for the age limit's accounting.
RECENT_SUCCESSES = 4096
# 4xx answers other than these mean the recorder will never accept the operation.
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


@runtime_checkable
class RunRecorder(Protocol):
    """Where job runs are recorded, e.g. the REST service's job-executions API.

    Every call carries an idempotency key derived from the run id: a call retried after
    a lost answer must not record twice.
    """

    async def create_job_execution(
        self,
        *,
        job_id: str,
        job_name: str,
        scheduled_at: datetime | None,
        correlation_id: str,
        idempotency_key: str,
    ) -> str:
        """Record a new run; return the recorder's execution id."""

    async def start_job_execution(self, execution_id: str, *, idempotency_key: str) -> None:
        """The run started."""

    async def complete_job_execution(
        self, execution_id: str, *, result: Any, idempotency_key: str
    ) -> None:
        """The run succeeded with ``result``."""

    async def fail_job_execution(
        self, execution_id: str, *, error: str, traceback: str, idempotency_key: str
    ) -> None:
        """The run failed (error, timeout or cancellation)."""


_RECORDER_METHODS = (
    "create_job_execution",
    "start_job_execution",
    "complete_job_execution",
    "fail_job_execution",
)


def check_recorder(recorder: object) -> RunRecorder:
    """Return ``recorder`` if it implements :class:`RunRecorder` with async methods."""
    missing = [name for name in _RECORDER_METHODS if not callable(getattr(recorder, name, None))]
    if missing:
        raise TypeError(
            f"recorder {recorder!r} does not implement RunRecorder: missing {', '.join(missing)}"
        )
    not_async = [
        name
        for name in _RECORDER_METHODS
        if not inspect.iscoroutinefunction(getattr(recorder, name))
    ]
    if not_async:
        raise TypeError(
            f"recorder {recorder!r}: RunRecorder methods must be async, "
            f"{', '.join(not_async)} {'is' if len(not_async) == 1 else 'are'} not"
        )
    assert isinstance(recorder, RunRecorder)
    return recorder


def check_capacity(capacity: object) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"record capacity must be an integer >= 1, got {capacity!r}")


@dataclass(eq=False)
class RunRecord:
    """What the outbox knows about one run."""

    run_id: str
    job_id: str
    job_name: str
    scheduled_at: datetime | None
    correlation_id: str
    execution_id: str | None = None
    dropped: bool = False
    # The context of the run that opened it (its correlation id, its span): its delivery
    # runs in it, whichever run's loop delivers it.
    context: contextvars.Context | None = field(default=None, repr=False)


@dataclass(eq=False)
class _Operation:
    kind: str  # create, start, complete, fail
    record: RunRecord
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.kind in ("complete", "fail")

    @property
    def idempotency_key(self) -> str:
        return f"{self.record.run_id}:{self.kind}"


def is_permanent_failure(exc: BaseException) -> bool:
    """Retrying the same operation cannot succeed: a 4xx answer (not 408/425/429), the
    recorder refusing its arguments (TypeError, ValueError) before anything was sent, or
    a closed client refusing to be used at all. Any other ``RuntimeError`` may pass: a
    client busy on another event loop is free once that loop closes, a thread that could
    not be started may be had on the next try."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return 400 <= status < 500 and status not in _RETRYABLE_CLIENT_STATUSES
    return isinstance(exc, TypeError | ValueError | ClientClosedError)


def recordable(result: Any) -> Any:
    """``result`` if JSON can carry it, else its ``repr``: a record must not fail on it.

    Longer than :data:`MAX_RECORDED_CHARACTERS` once encoded, it is cut (see
    :func:`shortened`): the buffer is bounded in runs, so each run must be bounded too.
    """
    try:
        encoded = json.dumps(result)
    except (TypeError, ValueError):
        return shortened(repr(result))
    return result if len(encoded) <= MAX_RECORDED_CHARACTERS else shortened(encoded)


def shortened(text: str) -> str:
    """``text``, cut to :data:`MAX_RECORDED_CHARACTERS` with a note saying so."""
    if len(text) <= MAX_RECORDED_CHARACTERS:
        return text
    return f"{text[:MAX_RECORDED_CHARACTERS]}... [cut: {len(text)} characters in all]"


class RecordOutbox:
    """Buffers one recorder's operations and delivers them, each run's in order.

    Operations are appended from any thread (each run appends from the loop it runs
    on, an abandoned run's thread when it returns). Delivery runs on one loop, the
    worker loop (the loop of the first run that found none running): one task per run
    with undelivered operations, so runs are delivered concurrently (at most
    ``concurrency`` calls at once) and one run the recorder keeps rejecting holds up
    only itself.

    While the recorder fails, each run retries with backoff (``retry_initial`` doubling
    to ``retry_max``), and a probe lets one waiting run try again every
    ``probe_interval`` seconds: whatever the backoff reached, a recovery is noticed
    within about that, and the first operation that gets through wakes every waiting
    run at once. An operation still failing ``max_age`` seconds after its first
    failure, while the recorder accepted other operations meanwhile, is given up
    (counted as ``expired``): it is this record the recorder refuses, not an outage,
    which the records of every run wait out (bounded by ``capacity``).
    """

    def __init__(
        self,
        recorder: RunRecorder,
        metrics: CronMetrics,
        *,
        capacity: int = DEFAULT_RECORD_CAPACITY,
        retry_initial: float = DEFAULT_RETRY_INITIAL,
        retry_max: float = DEFAULT_RETRY_MAX,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        max_age: float = DEFAULT_RECORD_MAX_AGE,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        concurrency: int = DEFAULT_DELIVERY_CONCURRENCY,
        stall_after: float = DEFAULT_STALL_AFTER,
    ) -> None:
        check_capacity(capacity)
        self.recorder = recorder
        self.capacity = capacity
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.call_timeout = call_timeout
        self.max_age = check_seconds("record_max_age", max_age)
        self.probe_interval = probe_interval
        self.concurrency = concurrency
        self.stall_after = stall_after
        self._metrics = metrics
        self._reset()
        _outboxes.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # Undelivered operations per run, runs in the order they were opened. A run
        # stays until its final operation is delivered (or it is given up).
        self._runs: dict[RunRecord, deque[_Operation]] = {}
        # Abandoned runs (their thread works on) and the outcome each waits for.
        self._held: dict[RunRecord, Work] = {}
        self._open_runs = 0
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        # On the worker loop only:
        self._tasks: dict[RunRecord, asyncio.Task[None]] = {}
        self._sending: asyncio.Semaphore | None = None
        self._pausing: deque[asyncio.Future[None]] = deque()
        # Calls unanswered past their stall limit, the longest-hanging first: with no run
        # waiting its turn, the probe has one of them sent again.
        self._hung: deque[asyncio.Future[None]] = deque()
        self._prober: asyncio.Task[None] | None = None
        self._last_attempt = 0.0
        # When a call first went unanswered past its stall limit (no later call answered
        # meanwhile), since the last success.
        self._stalled_since: float | None = None
        self._answered: asyncio.Future[None] | None = None
        self._answered_call_started = 0.0  # when the latest call answered was made
        # How long the recent successful calls took: how slow this recorder answers.
        self._answer_times: deque[float] = deque(maxlen=RECENT_ANSWERS)
        # Calls that succeeded so far, and when the latest of them did: the age limit
        # counts an operation's failing time from the first success of another after it.
        self._successes = 0
        self._success_times: deque[float] = deque(maxlen=RECENT_SUCCESSES)

    @property
    def pending_runs(self) -> int:
        """Runs accepted whose records are not all delivered yet."""
        return self._open_runs

    @property
    def pending_operations(self) -> int:
        with self._lock:
            return sum(len(operations) for operations in self._runs.values())

    # -- appending (any thread) --------------------------------------------------------

    def open(self, record: RunRecord) -> bool:
        """Queue the ``create`` of a new run; False (counted, logged) when full."""
        record.context = contextvars.copy_context()
        with self._lock:
            if self._open_runs >= self.capacity:
                record.dropped = True
            else:
                self._open_runs += 1
                self._runs[record] = deque([_Operation("create", record)])
        if record.dropped:
            self._count_dropped(
                record, "buffer_full", f"the record buffer is full ({self.capacity} runs)"
            )
            return False
        self._metrics.records_pending.inc()
        self._kick()
        return True

    def start(self, record: RunRecord) -> None:
        self._append(_Operation("start", record))

    def complete(self, record: RunRecord, result: Any) -> None:
        self._append(_Operation("complete", record, {"result": recordable(result)}))

    def fail(self, record: RunRecord, error: str, traceback: str) -> None:
        payload = {"error": shortened(error), "traceback": shortened(traceback)}
        self._append(_Operation("fail", record, payload))

    def hold(self, record: RunRecord, thread: Work) -> None:
        """The run was abandoned while ``thread`` (or a cancelled coroutine) works on: its
        outcome is recorded when it ends, or as unknown by :meth:`give_up_held` (at
        shutdown)."""
        with self._lock:
            if record.dropped or record not in self._runs:
                return
            self._held[record] = thread
        thread.add_done_callback(lambda done: self._settle(record, done))

    def _settle(self, record: RunRecord, thread: Work) -> None:
        """An abandoned run's thread returned (in that thread): record what it did."""
        with self._lock:
            still_held = self._held.pop(record, None) is not None
        if thread.cancelled():  # a coroutine that unwound from its cancellation
            if still_held:
                self.fail(record, "cancelled: the run was cancelled before it finished", "")
            return
        error = thread.exception()
        error = getattr(error, "error", error)  # a KeyboardInterrupt/SystemExit it carried
        if not still_held:
            logger.warning(
                "job %s (run %s, correlation id %s): its abandoned thread returned after "
                "the run was recorded as abandoned; it %s",
                record.job_id,
                record.run_id,
                record.correlation_id,
                "succeeded" if error is None else f"raised {error!r}",
            )
            return
        if error is None:
            self.complete(record, thread.result())
        else:
            note = "(returned after its run was abandoned) "
            self.fail(record, f"{note}{type(error).__name__}: {error}", "")

    def give_up_held(self, why: str) -> int:
        """Record every abandoned run still working as failed, outcome unknown."""
        with self._lock:
            held = list(self._held)
            self._held.clear()
        for record in held:
            self.fail(record, f"abandoned: {why}; its outcome is unknown", "")
        return len(held)

    def _append(self, operation: _Operation) -> None:
        with self._lock:
            operations = self._runs.get(operation.record)
            if operation.record.dropped or operations is None:
                return
            operations.append(operation)
        self._kick()

    def _count_dropped(self, record: RunRecord, reason: str, why: str) -> None:
        self._metrics.records_dropped.labels(reason).inc()
        logger.error(
            "run record of job %s (run %s, scheduled at %s, correlation id %s) dropped: %s",
            record.job_id,
            record.run_id,
            record.scheduled_at,
            record.correlation_id,
            why,
        )

    # -- delivering (on the worker loop) -----------------------------------------------

    def _kick(self) -> None:
        """Have the worker loop deliver what is pending; make this loop it if it has none."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            worker_loop = self._worker_loop
            if worker_loop is None or worker_loop.is_closed() or not worker_loop.is_running():
                if loop is None:
                    return  # flush_run_records() or the next run on a loop delivers it
                worker_loop = self._worker_loop = loop
                self._tasks = {}  # the tasks of a loop that stopped run no more
                self._sending = None
                self._pausing = deque()
                self._hung = deque()
                self._prober = None
                self._stalled_since = None
                self._answered = None
        if worker_loop is loop:
            self._spawn()
        else:
            # Closed meanwhile: the next kick picks another loop.
            with contextlib.suppress(RuntimeError):
                worker_loop.call_soon_threadsafe(self._spawn)

    def _spawn(self) -> None:
        """A delivery task for every run with undelivered operations and none running."""
        with self._lock:
            waiting = [record for record, operations in self._runs.items() if operations]
        for record in waiting:
            task = self._tasks.get(record)
            if task is None or task.done():
                # In the run's context, not in that of the run whose kick got here.
                context = (record.context or contextvars.Context()).copy()
                self._tasks[record] = context.run(
                    asyncio.get_running_loop().create_task,
                    self._deliver_run(record),
                    name="cron_migration-records",
                )

    async def _deliver_run(self, record: RunRecord) -> None:
        # Asked here, not on the way out: a task destroyed with a loop closed under it
        # runs its cleanup with no loop running, where asking would raise.
        task = asyncio.current_task()
        if self._sending is None:
            self._sending = asyncio.Semaphore(self.concurrency)
        delay = self.retry_initial
        failing_since: float | None = None
        # Time this operation kept failing while the recorder accepted other operations:
        # an interval between two of its failures counts from the first success in it (not
        # from the recorder's recovery after an outage, nor from this operation's attempt).
        rejected_for = 0.0
        successes_then = 0  # the outbox's successes at this operation's latest failure
        attempts = 0
        resend = False  # a hung call given up: sent again at once
        # How long its call must hang before the probe may have it sent again: doubled at
        # each such resend, so that a recorder slower than that (and not known to be,
        # its first answers) still gets a call through.
        probe_after = 0.0
        try:
            while True:
                with self._lock:
                    operations = self._runs.get(record)
                    if not operations:
                        return
                    operation = operations[0]
                attempted = time.monotonic()
                successes_at_attempt = self._successes
                error = await self._attempt(operation, picked=resend, probe_after=probe_after)
                resend = isinstance(error, _Superseded)
                if isinstance(error, _Superseded) and error.hung_for is not None:
                    probe_after = min(2 * error.hung_for, self.call_timeout)
                if error is None:
                    probe_after = 0.0
                    self._delivered(operation)
                    delay, failing_since, attempts, rejected_for = self.retry_initial, None, 0, 0.0
                    continue
                attempts += 1
                if failing_since is None:
                    failing_since = attempted
                    successes_then = successes_at_attempt
                failed_at = time.monotonic()
                if self._successes > successes_then:
                    # The recorder answered others since: this one failed while it did.
                    rejected_for += failed_at - self._first_success_since(successes_then)
                successes_then = self._successes
                if is_permanent_failure(error):
                    self._give_up(
                        record, "refused", f"the recorder refused {operation.kind}: {error!r}"
                    )
                    return
                if rejected_for >= self.max_age:
                    self._give_up(
                        record,
                        "expired",
                        f"the recorder kept rejecting {operation.kind} for "
                        f"{time.monotonic() - failing_since:.0f}s ({attempts} attempts) while "
                        f"it accepted other records; last error: {error!r}",
                    )
                    return
                log = logger.warning if attempts == 1 else logger.debug
                log(
                    "recording %s of job %s (run %s) failed, attempt %d; retrying: %r",
                    operation.kind,
                    record.job_id,
                    record.run_id,
                    attempts,
                    error,
                )
                if isinstance(error, _Superseded):
                    continue  # the recorder answers others again: this one at once
                await self._pause(delay)
                delay = min(delay * 2, self.retry_max)
        finally:
            if self._tasks.get(record) is task:
                del self._tasks[record]

    async def _attempt(
        self, operation: _Operation, *, picked: bool, probe_after: float
    ) -> Exception | None:
        """Send ``operation``; its error, or None once delivered.

        A call still unanswered after :meth:`_stall_limit` seconds gives its place among
        the ``concurrency`` calls back (it is still awaited, up to ``call_timeout``): calls
        that hang (a recorder whose connections go nowhere) must not hold every place,
        or no call could show the recorder's recovery until they time out. Until a call
        succeeds again, only the probe's pick tries (see :meth:`_wait_turn`). Past that
        limit, a call made after this one being answered shows this one lost: it is sent
        again at once; with no call left to try (every run's hangs), the probe has the
        longest-hanging one sent again, a run's next time once it hung ``probe_after``.
        """
        # Held here: a new worker loop (or a forked child) replaces the outbox's, and this
        # call's place is given back to the one it took it from.
        sending = self._sending
        assert sending is not None
        while True:
            if self._stalled_since is not None and not picked:
                await self._wait_turn()
                picked = True
            await sending.acquire()
            if self._stalled_since is None or picked:
                break
            sending.release()  # calls began hanging while this one waited its place
        holding = True
        self._last_attempt = started = time.monotonic()
        call = asyncio.ensure_future(self._send_within_timeout(operation))
        try:
            done, _ = await asyncio.wait({call}, timeout=self._stall_limit())
            if not done:
                sending.release()
                holding = False
                while not call.done():
                    # The limit again: answers meanwhile may show the recorder slower.
                    unanswered_for = time.monotonic() - started
                    limit = self._stall_limit()
                    overdue = unanswered_for >= limit
                    if overdue and self._answered_call_started > started:
                        # A call made after this one was answered, and this one is out
                        # for longer than the recorder takes: it is lost (a connection
                        # going nowhere); the same idempotency key, sent again at once,
                        # cannot record twice. The recorder answers: no stall.
                        call.cancel()
                        return _Superseded("a hanging call, sent again")
                    if overdue and self._stalled_since is None:
                        self._stalled_since = started
                        logger.warning(
                            "the recorder has not answered a call for %.3gs: until one "
                            "succeeds, one call is tried every %gs",
                            limit,
                            self.probe_interval,
                        )
                    if overdue and unanswered_for >= probe_after:
                        if await self._hanging_until_picked(call):
                            # No other call is left to show the recorder's recovery
                            # (every run's hangs): this one tries a fresh call.
                            call.cancel()
                            return _Superseded(
                                "a hanging call, sent again as the probe",
                                hung_for=time.monotonic() - started,
                            )
                    else:
                        await asyncio.wait(
                            {call, self._answered_future()},
                            timeout=(probe_after if overdue else limit) - unanswered_for,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
            call.result()
            self._answer_times.append(time.monotonic() - started)
            self._answered_call_started = max(self._answered_call_started, started)
            if self._answered is not None and not self._answered.done():
                self._answered.set_result(None)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as exc:
            return exc
        finally:
            if holding:
                sending.release()
        return None

    async def _hanging_until_picked(self, call: asyncio.Future[None]) -> bool:
        """Wait for ``call``, a later call answered, or the probe picking this one to be
        sent again (True)."""
        turn = asyncio.get_running_loop().create_future()
        hung = self._hung
        hung.append(turn)
        self._start_prober()
        try:
            await asyncio.wait(
                {call, self._answered_future(), turn}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if turn in hung:
                hung.remove(turn)
        return turn.done() and not call.done()

    def _first_success_since(self, successes: int) -> float:
        """When the first call after the outbox's ``successes``-th succeeded (the oldest
        time kept, if so many succeeded since that it is forgotten: counting less)."""
        times = self._success_times
        return times[-min(self._successes - successes, len(times))]

    def _stall_limit(self) -> float:
        """Seconds a call may go unanswered before it counts as hanging: ``stall_after``,
        or twice the slowest of the recent answers if that is longer (a recorder slow but
        answering is not hanging), never more than ``call_timeout``."""
        slowest = max(self._answer_times, default=0.0)
        return min(max(self.stall_after, STALL_FACTOR * slowest), self.call_timeout)

    def _answered_future(self) -> asyncio.Future[None]:
        """Set when the recorder next answers a call."""
        if self._answered is None or self._answered.done():
            self._answered = asyncio.get_running_loop().create_future()
        return self._answered

    async def _wait_turn(self) -> None:
        """Wait until the probe picks this run or a call succeeds."""
        waiter = asyncio.get_running_loop().create_future()
        self._pausing.append(waiter)
        self._start_prober()
        try:
            await waiter
        finally:
            if waiter in self._pausing:
                self._pausing.remove(waiter)

    def _start_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe())

    def _delivered(self, operation: _Operation) -> None:
        self._successes += 1
        self._success_times.append(time.monotonic())
        self._stalled_since = None
        # The recorder answers again: every run waiting out a backoff tries now.
        while self._pausing:
            waiter = self._pausing.popleft()
            if not waiter.done():
                waiter.set_result(None)
        record = operation.record
        with self._lock:
            operations = self._runs.get(record)
            if operations and operations[0] is operation:
                operations.popleft()
            if not operation.final or record not in self._runs:
                return
            del self._runs[record]
            self._open_runs -= 1
        self._metrics.records_pending.dec()

    async def _pause(self, delay: float) -> None:
        """Wait ``delay``, less when the recorder answers again or the probe picks us."""
        # At least a moment, even when woken at once: a run the recorder keeps rejecting,
        # woken by every success of the others, must not retry in a tight loop.
        first = min(delay, self.probe_interval)
        await asyncio.sleep(first)
        if delay <= first:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._pausing.append(waiter)
        self._start_prober()
        try:
            await asyncio.wait({waiter}, timeout=delay - first)
        finally:
            if waiter in self._pausing:
                self._pausing.remove(waiter)
            waiter.cancel()

    async def _probe(self) -> None:
        """While runs wait out their backoff, let the longest-waiting one try now and then;
        with none waiting but calls hanging, have the longest-hanging one sent again."""
        while self._pausing or self._hung:
            await asyncio.sleep(self.probe_interval)
            if time.monotonic() - self._last_attempt < self.probe_interval:
                continue  # something was tried meanwhile: no need to ask again
            for waiting in (self._pausing, self._hung):
                if _pick(waiting):
                    break

    async def _send_within_timeout(self, operation: _Operation) -> None:
        # The send's coroutine is made inside the task: a task cancelled before it starts
        # (its loop closing) would otherwise leave a coroutine that was never awaited.
        await asyncio.wait_for(self._send(operation), self.call_timeout)

    async def _send(self, operation: _Operation) -> None:
        record = operation.record
        key = operation.idempotency_key
        if operation.kind == "create":
            execution_id = await self.recorder.create_job_execution(
                job_id=record.job_id,
                job_name=record.job_name,
                scheduled_at=record.scheduled_at,
                correlation_id=record.correlation_id,
                idempotency_key=key,
            )
            if not isinstance(execution_id, str) or not execution_id:
                # Not retryable: the recorder answered, but not with an id.
                raise _BadExecutionId(f"create_job_execution returned {execution_id!r}")
            record.execution_id = execution_id
            return
        assert record.execution_id is not None
        if operation.kind == "start":
            await self.recorder.start_job_execution(record.execution_id, idempotency_key=key)
        elif operation.kind == "complete":
            await self.recorder.complete_job_execution(
                record.execution_id, idempotency_key=key, **operation.payload
            )
        else:
            await self.recorder.fail_job_execution(
                record.execution_id, idempotency_key=key, **operation.payload
            )

    def _give_up(self, record: RunRecord, reason: str, why: str) -> None:
        """Drop the rest of ``record``'s run: it cannot be delivered."""
        with self._lock:
            record.dropped = True
            self._held.pop(record, None)
            if self._runs.pop(record, None) is None:
                return
            self._open_runs -= 1
        self._metrics.records_pending.dec()
        self._count_dropped(record, reason, why)

    async def flush(self, deadline: float, *, abandoned_too: bool = False) -> int:
        """Wait until everything is delivered or ``deadline`` (monotonic) passes.

        ``abandoned_too``: wait for abandoned runs to return and be delivered as well.
        Returns the number of runs still pending.
        """
        while True:
            self._kick()
            with self._lock:
                waiting = bool(self._held) if abandoned_too else False
            pending = self.pending_operations or waiting
            if not pending or time.monotonic() >= deadline:
                return self._open_runs if pending else 0
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


def _pick(waiting: deque[asyncio.Future[None]]) -> bool:
    """Wake the first of ``waiting`` still waiting; whether there was one."""
    while waiting:
        waiter = waiting.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False


class _Superseded(Exception):
    """A hanging call given up because a later one was answered, or picked by the probe
    (``hung_for``: how long it hung): sent again at once."""

    def __init__(self, message: str, *, hung_for: float | None = None) -> None:
        super().__init__(message)
        self.hung_for = hung_for


class _BadExecutionId(Exception):
    status_code = 400  # the recorder's answer is unusable however often it is asked


_outboxes: weakref.WeakSet[RecordOutbox] = weakref.WeakSet()


def _forget_after_fork() -> None:
    # The child has neither the delivery tasks nor their loop, and the buffered operations
    # belong to the parent's runs, which the parent delivers itself.
    for outbox in list(_outboxes):
        if outbox._open_runs:  # nor does the child's gauge count them
            outbox._metrics.records_pending.dec(outbox._open_runs)
        outbox._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def give_up_abandoned_runs(why: str) -> int:
    """Record every abandoned run whose thread still works as failed, outcome unknown."""
    return sum(outbox.give_up_held(why) for outbox in list(_outboxes))


async def flush_run_records(timeout: float = 10.0) -> int:
    """Wait up to ``timeout`` seconds for every buffered run record to be delivered.

    Returns the number of runs whose records are still pending (0 when all arrived).
    From synchronous code: ``compat.run_sync(flush_run_records, 10)``.
    """
    return await wait_for_run_records(time.monotonic() + timeout)


async def wait_for_run_records(deadline: float, *, abandoned_too: bool = False) -> int:
    """:func:`flush_run_records` until ``deadline`` (monotonic) for every outbox."""
    pending = 0
    for outbox in list(_outboxes):
        pending += await outbox.flush(deadline, abandoned_too=abandoned_too)
    return pending

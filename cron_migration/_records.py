"""Run records: the recorder protocol and the buffer that delivers records to it.

A recorder failure must neither fail the job nor lose its record. So a run never calls
the recorder itself: it appends its record operations (create, start, then complete or
fail) to a :class:`RecordOutbox`, and one delivery task per outbox sends them in order,
retrying with backoff while the recorder fails. Operations of one run keep their order,
and the execution id that ``create`` returned is used by the later ones. The outbox is
bounded in runs; a run that finds it full is not recorded, and is counted and logged.
"""

from __future__ import annotations

import asyncio
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

from ._metrics import CronMetrics

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
    """Retrying the same operation cannot succeed: a 4xx answer (not 408/425/429), or the
    recorder refusing its arguments (TypeError, ValueError) before anything was sent."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return 400 <= status < 500 and status not in _RETRYABLE_CLIENT_STATUSES
    return isinstance(exc, TypeError | ValueError)


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
    """Buffers one recorder's operations and delivers them in order, retrying failures.

    Operations are appended from any thread (each run appends from the loop it runs
    on); the delivery task runs on the loop of the run that found no delivery task
    running, and ends when the buffer is empty.
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
    ) -> None:
        check_capacity(capacity)
        self.recorder = recorder
        self.capacity = capacity
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.call_timeout = call_timeout
        self._metrics = metrics
        self._lock = threading.Lock()
        self._operations: deque[_Operation] = deque()
        self._open_runs = 0  # runs accepted whose final operation is not delivered yet
        self._worker: asyncio.Task[None] | None = None
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        _outboxes.add(self)

    @property
    def pending_runs(self) -> int:
        """Runs accepted whose records are not all delivered yet."""
        return self._open_runs

    @property
    def pending_operations(self) -> int:
        return len(self._operations)

    # -- appending (on the run's loop) -------------------------------------------------

    def open(self, record: RunRecord) -> bool:
        """Queue the ``create`` of a new run; False (counted, logged) when full."""
        with self._lock:
            if self._open_runs >= self.capacity:
                record.dropped = True
            else:
                self._open_runs += 1
                self._operations.append(_Operation("create", record))
        if record.dropped:
            self._count_dropped(record, f"the record buffer is full ({self.capacity} runs)")
            return False
        self._metrics.records_pending.inc()
        self._ensure_worker()
        return True

    def start(self, record: RunRecord) -> None:
        self._append(_Operation("start", record))

    def complete(self, record: RunRecord, result: Any) -> None:
        self._append(_Operation("complete", record, {"result": recordable(result)}))

    def fail(self, record: RunRecord, error: str, traceback: str) -> None:
        payload = {"error": shortened(error), "traceback": shortened(traceback)}
        self._append(_Operation("fail", record, payload))

    def _append(self, operation: _Operation) -> None:
        with self._lock:
            if operation.record.dropped:
                return
            self._operations.append(operation)
        self._ensure_worker()

    def _count_dropped(self, record: RunRecord, why: str) -> None:
        self._metrics.records_dropped.inc()
        logger.error(
            "run record of job %s (run %s, scheduled at %s, correlation id %s) dropped: %s",
            record.job_id,
            record.run_id,
            record.scheduled_at,
            record.correlation_id,
            why,
        )

    # -- delivering --------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        """Make sure a delivery task is running; start one on the current loop if not."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # flush_run_records() or the next run on a loop starts it
        with self._lock:
            worker = self._worker
            if worker is not None and not worker.done():
                worker_loop = self._worker_loop
                if worker_loop is not None and not worker_loop.is_closed():
                    return
            if not self._operations:
                return
            self._worker_loop = loop
            self._worker = loop.create_task(self._deliver(), name="cron_migration-records")

    async def _deliver(self) -> None:
        delay = self.retry_initial
        attempts = 0
        while True:
            with self._lock:
                if not self._operations:
                    self._worker = None
                    return
                operation = self._operations[0]
            try:
                await asyncio.wait_for(self._send(operation), self.call_timeout)
            except asyncio.CancelledError:
                with self._lock:
                    if self._worker is asyncio.current_task():
                        self._worker = None
                raise
            except Exception as exc:
                attempts += 1
                if is_permanent_failure(exc):
                    self._give_up(operation, exc)
                    attempts = 0
                    continue
                logger.warning(
                    "recording %s of job %s (run %s) failed, attempt %d; retrying in %.1fs: %r",
                    operation.kind,
                    operation.record.job_id,
                    operation.record.run_id,
                    attempts,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            attempts = 0
            delay = self.retry_initial
            with self._lock:
                self._operations.popleft()
                if operation.final:
                    self._open_runs -= 1
            if operation.final:
                self._metrics.records_pending.dec()

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

    def _give_up(self, operation: _Operation, exc: BaseException) -> None:
        """Drop the run of ``operation``: the recorder refuses it for good."""
        record = operation.record
        with self._lock:
            record.dropped = True
            self._operations = deque(op for op in self._operations if op.record is not record)
            self._open_runs -= 1
        self._metrics.records_pending.dec()
        self._count_dropped(record, f"the recorder refused {operation.kind}: {exc!r}")

    async def flush(self, deadline: float) -> int:
        """Wait until everything is delivered or ``deadline`` (monotonic) passes.

        Returns the number of runs still pending.
        """
        while True:
            self._ensure_worker()
            if not self._operations or time.monotonic() >= deadline:
                return self._open_runs if self._operations else 0
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


class _BadExecutionId(Exception):
    status_code = 400  # the recorder's answer is unusable however often it is asked


_outboxes: weakref.WeakSet[RecordOutbox] = weakref.WeakSet()


def _forget_after_fork() -> None:
    # The child has neither the delivery task nor its loop, and the buffered operations
    # belong to the parent's runs, which the parent delivers itself.
    for outbox in list(_outboxes):
        outbox._lock = threading.Lock()
        outbox._operations.clear()
        if outbox._open_runs:  # nor does the child's gauge count them
            outbox._metrics.records_pending.dec(outbox._open_runs)
        outbox._open_runs = 0
        outbox._worker = None
        outbox._worker_loop = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


async def flush_run_records(timeout: float = 10.0) -> int:
    """Wait up to ``timeout`` seconds for every buffered run record to be delivered.

    Returns the number of runs whose records are still pending (0 when all arrived).
    From synchronous code: ``compat.run_sync(flush_run_records, 10)``.
    """
    deadline = time.monotonic() + timeout
    pending = 0
    for outbox in list(_outboxes):
        pending += await outbox.flush(deadline)
    return pending

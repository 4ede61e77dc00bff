"""Helpers for the cron_migration tests: a recorder that can fail, metric readers, waiting."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry


def runs(registry: CollectorRegistry, job: str, outcome: str) -> float:
    return (
        registry.get_sample_value("cron_job_runs_total", {"cron_job": job, "outcome": outcome})
        or 0.0
    )


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` (in a thread without a loop) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


async def wait_until_async(
    condition: Callable[[], bool], timeout: float = 30.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


class RecorderDown(ConnectionError):
    """The fake recorder's outage."""


@dataclass
class Execution:
    id: str
    job_id: str
    job_name: str
    scheduled_at: datetime | None
    correlation_id: str
    status: str = "created"
    result: Any = None
    error: str | None = None
    traceback: str | None = None


@dataclass
class FakeRecorder:
    """A RunRecorder keeping executions in memory, honouring idempotency keys.

    ``down`` makes every call fail; ``calls`` lists (operation, idempotency key) in order.
    """

    down: bool = False
    executions: dict[str, Execution] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    failures: int = 0
    _answers: dict[str, Any] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, operation: str, key: str) -> bool:
        with self._lock:
            if self.down:
                self.failures += 1
                raise RecorderDown(f"recorder down during {operation}")
            self.calls.append((operation, key))
            return key in self._answers

    async def create_job_execution(
        self,
        *,
        job_id: str,
        job_name: str,
        scheduled_at: datetime | None,
        correlation_id: str,
        idempotency_key: str,
    ) -> str:
        if self._enter("create", idempotency_key):
            return str(self._answers[idempotency_key])
        execution = Execution(str(next(self._ids)), job_id, job_name, scheduled_at, correlation_id)
        self.executions[execution.id] = execution
        self._answers[idempotency_key] = execution.id
        return execution.id

    async def start_job_execution(self, execution_id: str, *, idempotency_key: str) -> None:
        if not self._enter("start", idempotency_key):
            self._answers[idempotency_key] = None
            self._transition(execution_id, "created", "running")

    async def complete_job_execution(
        self, execution_id: str, *, result: Any, idempotency_key: str
    ) -> None:
        if not self._enter("complete", idempotency_key):
            self._answers[idempotency_key] = None
            self._transition(execution_id, "running", "completed").result = result

    async def fail_job_execution(
        self, execution_id: str, *, error: str, traceback: str, idempotency_key: str
    ) -> None:
        if not self._enter("fail", idempotency_key):
            self._answers[idempotency_key] = None
            # As the REST service: a run that fails before it started goes straight there.
            execution = self._transition(execution_id, ("created", "running"), "failed")
            execution.error = error
            execution.traceback = traceback

    def _transition(
        self, execution_id: str, before: str | tuple[str, ...], after: str
    ) -> Execution:
        execution = self.executions[execution_id]
        if execution.status not in ((before,) if isinstance(before, str) else before):
            raise AssertionError(
                f"execution {execution_id}: {after} while {execution.status}, not {before}"
            )
        execution.status = after
        return execution

    def by_status(self, status: str) -> list[Execution]:
        return [e for e in self.executions.values() if e.status == status]

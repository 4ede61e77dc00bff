"""Deadlines for the async cache's Redis calls: one timer for all calls in flight.

``asyncio.timeout`` schedules and cancels a timer per call, which costs several
microseconds on every cache hit. Here each call only registers itself in a set; one
timer, ticking a few times per timeout while calls are in flight, cancels the tasks whose
deadline passed. The cancellation is told apart from the caller's own exactly as
``asyncio.timeout`` does: the expired call is marked, and on Python 3.11+ the task is
uncancelled only if nobody else asked to cancel it meanwhile. A call therefore ends
between ``timeout`` and ``timeout * (1 + TICKS_FRACTION)`` seconds.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

TICKS_FRACTION = 0.25


class Call:
    """One Redis call in flight."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False
        self.cancelling = _cancelling(task)


class Deadlines:
    """The calls in flight on one event loop, and the timer that expires them."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tick = timeout * TICKS_FRACTION
        self._calls: set[Call] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> Call:
        """Register the current task's call; pair with :meth:`finish` in a ``finally``."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Used from a new event loop: the old loop's calls and timer are gone with it.
            self._loop, self._timer = loop, None
            self._calls = set()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - cache calls always run in a task
            raise RuntimeError("the cache must be used from a task")
        call = Call(task, loop.time() + self.timeout)
        self._calls.add(call)
        if self._timer is None:
            self._timer = loop.call_later(self._tick, self._expire)
        return call

    def finish(self, call: Call) -> None:
        self._calls.discard(call)

    def timed_out(self, call: Call) -> bool:
        """After a ``CancelledError``: True if it was this deadline's, and absorbed."""
        return call.expired and _uncancel(call)

    def settle(self, call: Call) -> None:
        """After a call that returned although it expired (its cancellation was lost)."""
        if call.expired:
            _uncancel(call)

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        for call in list(self._calls):
            if not call.expired and call.deadline <= now:
                call.expired = True
                call.task.cancel()
        if self._calls:
            self._timer = loop.call_later(self._tick, self._expire)


if sys.version_info >= (3, 11):

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return task.cancelling()

    def _uncancel(call: Call) -> bool:
        # As asyncio.timeout: ours only if no other cancellation is pending.
        return call.task.uncancel() <= call.cancelling

else:

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return 0

    def _uncancel(call: Call) -> bool:
        return True  # Python 3.10 keeps no count of cancellation requests

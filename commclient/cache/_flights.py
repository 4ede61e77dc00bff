"""Single flight: concurrent misses of one key in this process share one load.

One implementation per world, shared by the Redis and the in-memory caches of that
world: :class:`ThreadFlights` for blocking code, :class:`TaskFlights` for asyncio. A
load is joined only by callers that saw the same ``epoch`` (the local tier's
invalidation count): a load that began before an invalidation applied here may carry
the old data, so later callers start their own instead of joining it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Hashable
from functools import partial
from typing import Any


class _ThreadFlight:
    __slots__ = ("done", "epoch", "error", "value")

    def __init__(self, epoch: int) -> None:
        self.done = threading.Event()
        self.epoch = epoch
        self.value: Any = None
        self.error: BaseException | None = None


class ThreadFlights:
    """The loads in flight, one per key, that concurrent threads share."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _ThreadFlight] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    def join(self, key: Hashable, epoch: int, load: Callable[[], Any]) -> Any:
        """Wait for the load of ``key`` in flight, or run ``load``; its value or error."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None or flight.epoch != epoch
            if flight is None or leader:
                flight = _ThreadFlight(epoch)
                self._flights[key] = flight
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = load()
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()
        return flight.value


class _TaskFlight:
    __slots__ = ("epoch", "task")

    def __init__(self, task: asyncio.Task[Any], epoch: int) -> None:
        self.task = task
        self.epoch = epoch


class TaskFlights:
    """The loads in flight, one task per key, that concurrent callers share."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _TaskFlight] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    async def join(
        self, key: Hashable, epoch: int, load: Callable[[], Coroutine[Any, Any, Any]]
    ) -> Any:
        """Wait for the load of ``key`` in flight, or start ``load``; its value or error.

        The load runs in its own task, so a caller's cancellation does not cancel it
        for the others.
        """
        flight = self._flights.get(key)
        if flight is None or flight.epoch != epoch:
            task = asyncio.get_running_loop().create_task(load())
            flight = _TaskFlight(task, epoch)
            self._flights[key] = flight
            task.add_done_callback(partial(self._done, key, flight))
        return await asyncio.shield(flight.task)

    def _done(self, key: Hashable, flight: _TaskFlight, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not task.cancelled():
            # Retrieved here so that a load whose callers were all cancelled does not
            # log "exception was never retrieved".
            task.exception()

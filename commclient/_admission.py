"""Admission before the connection pool: a client's own queue, first come first served.

httpcore scans every queued request against every connection whenever one is freed, so
a pool with a thousand waiters spends the event loop on that scan: connects to a healthy
target then time out and are blamed on it. Callers wait here instead, in order, and the
pool never holds more requests than connections. Waiting in line is this client's own
load: a wait that ends the call raises ``ServiceTimeoutError`` but never counts against
the target (no breaker failure, no retry).
"""

from __future__ import annotations

import asyncio
from collections import deque

from ._core import TransportFailure
from ._policy import FailureKind

#: A connect timeout observed this much later than it was due (as a fraction of the
#: connect timeout, and at least ``_LATE_SECONDS``) means the client's event loop was too
#: busy to see the handshake complete: the lateness is the client's, not the target's. A
#: blackholed target is seen on time and keeps counting against its breaker. (httpx's
#: connect timeout covers the name lookup; urllib3's starts after a lookup of any length,
#: so the sync facade does not use this rule.)
_LATE_FRACTION = 0.5
_LATE_SECONDS = 0.25


class AsyncGate:
    """At most ``limit`` attempts in flight; the others wait in FIFO order.

    A freed slot is handed to the oldest waiter directly, so a newcomer cannot take it
    ahead of the line. Bound to the event loop it is first used in (its waiters are
    futures of that loop); a client makes a new gate with each new pool.
    """

    __slots__ = ("_free", "_waiters", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        # Invariant: while a slot is free, nobody waits (stale entries included).
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def in_flight(self) -> int:
        return self.limit - self._free

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def try_enter(self) -> bool:
        """Take a slot if one is free and nobody is waiting; never blocks."""
        if self._free:
            self._free -= 1
            return True
        return False

    async def enter(self, timeout: float | None) -> bool:
        """Wait in line for a slot; ``False`` when ``timeout`` seconds passed first."""
        if self._free:
            self._free -= 1
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        expiry = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            # Cancelled: a slot already handed over goes on to the next in line; an
            # entry still waiting is cancelled with the await and skipped by leave().
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.leave()
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    def leave(self) -> None:
        """Give the slot back: to the oldest waiter still waiting, else to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._free += 1


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def queue_timeout(waited: float, by_deadline: bool) -> TransportFailure:
    """The outcome of an attempt that never got its turn: a local failure, never the target's."""
    if by_deadline:
        return TransportFailure(
            FailureKind.DEADLINE,
            TimeoutError(f"the call's deadline passed after {waited:.3f} s waiting in line"),
        )
    return TransportFailure(
        FailureKind.POOL_TIMEOUT,
        TimeoutError(f"no connection free after {waited:.3f} s (pool_timeout)"),
    )


def connect_timeout_kind(late_by: float, connect_timeout: float) -> FailureKind:
    """``CONNECT_TIMEOUT``, or ``SATURATED`` when it was seen ``late_by`` seconds late."""
    if late_by > max(_LATE_SECONDS, connect_timeout * _LATE_FRACTION):
        return FailureKind.SATURATED
    return FailureKind.CONNECT_TIMEOUT

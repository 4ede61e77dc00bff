"""httpcore's connection pool, assigning requests at a cost that does not grow with it.

``AsyncConnectionPool._assign_requests_to_connections`` runs whenever a request enters
or leaves the pool. httpcore's version checks every connection each time (whether it
expired, whether its idle socket is readable: a system call), counts the connections
again for every idle one (quadratic in the pool's size), and hands the first idle
connection to every request queued, including a connection already handed to a
request that has not started on it yet: all but one of them then find it taken
(``ConnectionNotAvailable``) and go through the pool again. With a hundred connections
that bookkeeping, not the calls, fills the event loop, and a client with many callers
serves fewer calls per second than one with a few.

:func:`install` replaces it on one pool by :func:`assign`, which decides as httpcore
does (same connections reused, created, closed) but:

- checks a connection for expiry and server disconnection when it is about to be
  handed out, and sweeps the whole pool for expired, closed and surplus idle
  connections at most every :data:`SWEEP_SECONDS` (and at once when the pool is full
  and nothing is free), so an idle connection is closed at most that much later than
  its keep-alive expiry;
- never hands an idle connection to a request while another request it was handed to
  has not started on it (that promise checked only when its connection comes up as a
  candidate, and every promise at each sweep, never all of them at each assignment);
- looks for a free connection from after the one it found last, where the one freed
  first usually is, rather than from the first connection of the pool each time;
- closes, when it sweeps, a busy connection that no request in the pool holds (opened
  for a request cancelled before it started on it), which httpcore keeps for good.

:func:`give_back` takes out of a pool a request whose response's close a cancellation
cut off (httpcore's shield does not hold against a task's ``cancel()``), which would
otherwise hold its connection for good.

Pools of other classes, or of an httpcore that lacks the attributes this relies on,
are left as they are.
"""

from __future__ import annotations

import time
import types
import weakref
from collections.abc import Container
from typing import Any

#: The longest a pool goes without checking every connection.
SWEEP_SECONDS = 0.25

_POOL_ATTRIBUTES = (
    "_assign_requests_to_connections",
    "_connections",
    "_requests",
    "_max_connections",
    "_max_keepalive_connections",
    "create_connection",
)


def install(pool: Any) -> bool:
    """Have ``pool`` (an ``httpcore.AsyncConnectionPool``) assign with :func:`assign`;
    ``False`` when it is not one this module knows."""
    try:
        import httpcore
    except ImportError:  # pragma: no cover - httpx depends on httpcore
        return False
    if type(pool) is not httpcore.AsyncConnectionPool or not all(
        hasattr(pool, name) for name in _POOL_ATTRIBUTES
    ):
        return False
    target: Any = pool  # attributes httpcore's class does not declare
    target._next_sweep = 0.0
    target._scan_from = 0
    target._promised = {}
    target._assign_requests_to_connections = types.MethodType(assign, target)
    return True


def assign(pool: Any) -> list[Any]:
    """Assign the queued requests of ``pool`` to connections; the connections to close."""
    closing: list[Any] = []
    connections: list[Any] = pool._connections
    now = time.monotonic()
    if now >= pool._next_sweep:
        _sweep(pool, closing, now)
    queued = [request for request in pool._requests if request.connection is None]
    if not queued:
        return closing
    promised: dict[int, tuple[Any, weakref.ref[Any]]] = pool._promised
    swept = False
    for request in queued:
        origin = request.request.url.origin
        connection = _available(pool, origin, closing)
        if connection is None and len(connections) >= pool._max_connections and not swept:
            # Full: what the last sweep left may since have closed or expired. Once per
            # assignment: nothing is released meanwhile.
            _sweep(pool, closing, time.monotonic())
            swept = True
            connection = _available(pool, origin, closing)
        if connection is None:
            if len(connections) < pool._max_connections:
                connection = pool.create_connection(origin)
                connections.append(connection)
            else:
                idle = next((c for c in connections if c.is_idle() and not _taken(pool, c)), None)
                if idle is None:
                    # Full, and no connection free or idle for any origin (an HTTP/1.1
                    # connection is available only when idle): every request queued after
                    # this one waits as well, for a connection to be released.
                    break
                connections.remove(idle)
                closing.append(idle)
                connection = pool.create_connection(origin)
                connections.append(connection)
        if connection.is_idle():
            # The request held weakly: a promise outlives it until its connection comes
            # up again or a sweep runs, which an idle client never does.
            promised[id(connection)] = (connection, weakref.ref(request))
        request.assign_to_connection(connection)
    return closing


def _taken(pool: Any, connection: Any) -> bool:
    """Whether the idle ``connection`` was handed to a request that has not started on it
    yet; an ended promise is dropped when found."""
    promised: dict[int, tuple[Any, weakref.ref[Any]]] = pool._promised
    entry = promised.get(id(connection))
    if entry is None:
        return False
    # The pool's list of requests, scanned in C by identity first.
    if _holds(*entry, pool._requests):
        return True
    del promised[id(connection)]
    return False


def _holds(connection: Any, promisee: weakref.ref[Any], waiting: Container[Any]) -> bool:
    """Whether a promise of ``connection`` to a request still holds: it ends when the
    request started (the connection is busy), left the pool or was given another."""
    request = promisee()
    return (
        request is not None
        and request.connection is connection
        and connection.is_idle()
        and request in waiting
    )


def _available(pool: Any, origin: Any, closing: list[Any]) -> Any:
    """The first connection that can take a request for ``origin`` now, checked first.

    The search starts after the connection found last: requests end about in the order
    they started, so the connection freed first is the one handed out longest ago, found
    there at once rather than behind every busy connection of a full pool.
    """
    connections: list[Any] = pool._connections
    start = pool._scan_from % len(connections) if connections else 0
    for offset, connection in enumerate(connections[start:] + connections[:start]):
        if not connection.is_available() or _taken(pool, connection):
            continue
        if not connection.can_handle_request(origin):
            continue
        if connection.is_closed():
            connections.remove(connection)
        elif connection.has_expired():
            connections.remove(connection)
            closing.append(connection)
        else:
            pool._scan_from = start + offset + 1
            return connection
    return None


def _sweep(pool: Any, closing: list[Any], now: float) -> None:
    """httpcore's clean-up: drop closed connections, close expired and surplus idle ones,
    and close the busy ones no request in the pool holds.

    A busy connection belongs to the request it was handed to until that request leaves
    the pool. One left without it is never going to be used again: a connection opened
    for a queued request that was cancelled before it started on it (httpcore marks a
    connection whose opening was interrupted as failed, but not one never begun), or one
    whose exchange a cancellation cut off mid-way. httpcore keeps those for good, each in
    the place of a connection, until a pool of them makes every later request wait out
    its pool timeout.
    """
    connections: list[Any] = pool._connections
    held = {id(request.connection) for request in pool._requests}
    for connection in list(connections):
        if connection.is_closed():
            connections.remove(connection)
        elif (
            connection.has_expired()
            or (connection.is_idle() and len(connections) > pool._max_keepalive_connections)
            or (not connection.is_idle() and id(connection) not in held)
        ):
            connections.remove(connection)
            closing.append(connection)
    pool._next_sweep = now + SWEEP_SECONDS
    # Promises ended since the last sweep whose connection never came up again.
    waiting = set(pool._requests)  # hashed by identity, as httpcore's requests compare
    promised: dict[int, tuple[Any, weakref.ref[Any]]] = pool._promised
    for key, entry in list(promised.items()):
        if not _holds(*entry, waiting):
            del promised[key]


def give_back(pool: Any, request: Any) -> list[Any] | None:
    """Take ``request``, whose response's close was cut off by a cancellation, out of
    ``pool``; the connections to close (its own, in a state no one knows, unless it went
    back idle or another request holds it; any the reassignment frees), or ``None`` when
    the request is not in the pool (closed before the cancellation) or the pool is not an
    httpcore this knows."""
    requests = getattr(pool, "_requests", None)
    if (
        not isinstance(requests, list)
        or request not in requests
        or not hasattr(pool, "_close_connections")
    ):
        return None
    requests.remove(request)
    connection = request.connection
    closing: list[Any] = []
    if (
        connection is not None
        and not connection.is_idle()
        and connection in pool._connections
        and all(other.connection is not connection for other in requests)
    ):
        pool._connections.remove(connection)
        closing.append(connection)
    closing.extend(pool._assign_requests_to_connections())
    return closing

"""How the async client's httpcore pool hands connections to requests: never one idle
connection to two requests, each connection checked when handed out rather than every
connection each time, and an idle socket's readability read with one ``poll``."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import AsyncServiceClient
from commclient import _pool as pool_assignment
from tests.forking import in_forked_child, needs_fork

pytestmark = pytest.mark.facade_async

ORIGIN_URL = "http://pool.test/"


class FakeConnection:
    """A connection of the pool's interface whose state a test sets."""

    def __init__(self, state: str = "idle", *, expired: bool = False) -> None:
        self.state = state
        self.expired = expired
        self.expiry_checks = 0
        self.idle_checks = 0

    def can_handle_request(self, origin: Any) -> bool:
        return True

    def is_available(self) -> bool:
        return self.state == "idle"

    def is_idle(self) -> bool:
        self.idle_checks += 1
        return self.state == "idle"

    def is_closed(self) -> bool:
        return self.state == "closed"

    def has_expired(self) -> bool:
        self.expiry_checks += 1
        return self.expired


def _pool(connections: list[FakeConnection], max_connections: int = 10) -> Any:
    import httpcore

    pool = httpcore.AsyncConnectionPool(max_connections=max_connections)
    assert pool_assignment.install(pool)
    pool._connections.extend(connections)
    return pool


def _assign(pool: Any) -> list[Any]:
    """One assignment, run as the pool runs it: inside the event loop (it sets events)."""

    async def main() -> list[Any]:
        closing: list[Any] = pool._assign_requests_to_connections()
        return closing

    return asyncio.run(main())


def _queue(pool: Any, count: int) -> list[Any]:
    import httpcore
    from httpcore._async.connection_pool import AsyncPoolRequest

    requests = [AsyncPoolRequest(httpcore.Request("GET", ORIGIN_URL)) for _ in range(count)]
    pool._requests.extend(requests)
    return requests


def _held(pool: Any, connection: FakeConnection) -> None:
    """A request in the pool that started on ``connection``."""
    (request,) = _queue(pool, 1)
    request.connection = connection


def test_requests_queued_together_get_different_idle_connections() -> None:
    first, second = FakeConnection(), FakeConnection()
    pool = _pool([first, second])
    requests = _queue(pool, 2)
    assert _assign(pool) == []
    # httpcore's own assignment hands ``first`` to both: one of them then finds it taken.
    assert [r.connection for r in requests] == [first, second]


def test_an_idle_connection_promised_to_a_request_is_not_handed_to_another() -> None:
    only = FakeConnection()
    pool = _pool([only], max_connections=1)
    (early,) = _queue(pool, 1)
    _assign(pool)
    assert early.connection is only
    (late,) = _queue(pool, 1)
    _assign(pool)
    # ``early`` has not started on it yet: ``late`` waits for a connection instead.
    assert late.connection is None
    pool._requests.remove(early)
    _assign(pool)
    assert late.connection is only


def test_outstanding_promises_are_not_rechecked_at_every_assignment() -> None:
    """With a hundred exchanges in flight, dozens of requests are handed a connection
    within one turn of the event loop before any starts on it; every promise was checked
    again (its request searched in the pool's list) at every assignment, a cost growing
    with the square of the calls in flight."""
    connections = [FakeConnection() for _ in range(60)]
    pool = _pool(connections, max_connections=100)
    pool._next_sweep = float("inf")
    _queue(pool, 50)
    _assign(pool)
    assert len(pool._promised) == 50
    for connection in connections:
        connection.idle_checks = 0
    (late,) = _queue(pool, 1)
    _assign(pool)
    assert late.connection is connections[50]
    assert [c.idle_checks for c in connections[:50]] == [0] * 50


def test_a_sweep_drops_the_promises_that_ended() -> None:
    connections = [FakeConnection() for _ in range(3)]
    pool = _pool(connections)
    pool._next_sweep = float("inf")
    left, _started, waiting = _queue(pool, 3)
    _assign(pool)
    pool._requests.remove(left)  # cancelled before it started on its connection
    connections[1].state = "active"  # ``started`` began its exchange
    pool._next_sweep = 0.0
    _assign(pool)
    promised = {key: (connection, ref()) for key, (connection, ref) in pool._promised.items()}
    assert promised == {id(connections[2]): (connections[2], waiting)}


def test_the_search_for_a_free_connection_starts_after_the_last_one_found() -> None:
    connections = [FakeConnection() for _ in range(3)]
    pool = _pool(connections)
    handed = []
    for _ in range(4):
        (request,) = _queue(pool, 1)
        _assign(pool)
        handed.append(request.connection)
        pool._requests.remove(request)  # served: its connection is idle again
    # Round the pool, not the first connection again and again (found behind every
    # busy connection of a full pool).
    assert handed == [connections[0], connections[1], connections[2], connections[0]]


def test_only_the_connection_handed_out_is_checked_between_sweeps() -> None:
    connections = [FakeConnection() for _ in range(50)]
    pool = _pool(connections, max_connections=100)
    pool._next_sweep = float("inf")  # the last sweep is recent
    requests = _queue(pool, 1)
    _assign(pool)
    assert requests[0].connection is connections[0]
    assert [c.expiry_checks for c in connections] == [1] + [0] * 49


def test_a_sweep_checks_every_connection_when_due() -> None:
    stale = FakeConnection(expired=True)
    gone = FakeConnection("closed")
    busy = FakeConnection("active")
    orphan = FakeConnection("active")
    pool = _pool([stale, gone, busy, orphan])
    _held(pool, busy)
    # ``orphan``, busy with no request in the pool holding it, is never used again.
    assert _assign(pool) == [stale, orphan]
    assert pool._connections == [busy]
    assert pool._next_sweep > 0


def test_an_expired_connection_is_closed_not_handed_out() -> None:
    stale, fresh = FakeConnection(expired=True), FakeConnection()
    pool = _pool([stale, fresh])
    pool._next_sweep = float("inf")
    (request,) = _queue(pool, 1)
    assert _assign(pool) == [stale]
    assert request.connection is fresh
    assert pool._connections == [fresh]


def test_a_full_pool_sweeps_before_a_request_waits() -> None:
    gone = FakeConnection("closed")
    busy = FakeConnection("active")
    pool = _pool([gone, busy], max_connections=2)
    _held(pool, busy)
    pool._next_sweep = float("inf")
    (request,) = _queue(pool, 1)
    _assign(pool)
    # The closed connection no longer holds a place: a new one was made for the request.
    assert gone not in pool._connections
    assert request.connection is not None
    assert request.connection not in (gone, busy)


def test_a_full_pool_is_swept_once_however_many_requests_wait() -> None:
    """With callers beyond the pool (``max_concurrency`` above ``max_connections``),
    every request waiting behind a full pool swept it again, each sweep checking every
    connection (a system call each) and every request: one release cost the square of
    the queue, and a thousand callers on one connection ran into their pool timeout."""
    only = FakeConnection()
    pool = _pool([only], max_connections=1)
    pool._next_sweep = float("inf")
    requests = _queue(pool, 100)
    _assign(pool)
    assert requests[0].connection is only
    assert all(request.connection is None for request in requests[1:])
    # Checked when handed out, then once by the sweep of the full pool.
    assert only.expiry_checks == 2


def test_a_full_pool_replaces_an_idle_connection_it_cannot_use() -> None:
    class OtherOrigin(FakeConnection):
        def can_handle_request(self, origin: Any) -> bool:
            return False

    elsewhere = OtherOrigin()
    pool = _pool([elsewhere], max_connections=1)
    (request,) = _queue(pool, 1)
    assert _assign(pool) == [elsewhere]
    assert request.connection is not None
    assert pool._connections == [request.connection]


def test_other_pools_are_left_as_they_are() -> None:
    class Pool:
        def _assign_requests_to_connections(self) -> list[Any]:
            return []

    other = Pool()
    assert not pool_assignment.install(other)
    assert not pool_assignment.install(None)
    assert "_next_sweep" not in vars(other)


def test_the_client_pool_assigns_with_it() -> None:
    async def main() -> Any:
        client = AsyncServiceClient(
            ORIGIN_URL,
            service_name="pool",
            target_service="assignment",
            registry=CollectorRegistry(),
        )
        async with client:
            transport = await client._open()
            return transport._transport._pool._assign_requests_to_connections

    method = asyncio.run(main())
    assert method.__func__ is pool_assignment.assign


def test_an_idle_socket_is_readable_once_the_server_closes_it() -> None:
    from commclient._async import _ConnectingStream

    class Inner:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.asked: list[str] = []

        def get_extra_info(self, info: str) -> Any:
            self.asked.append(info)
            return self.sock if info == "socket" else None

    ours, theirs = socket.socketpair()
    inner = Inner(ours)
    stream = _ConnectingStream(inner, None)
    try:
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("is_readable") is False
        theirs.close()
        assert stream.get_extra_info("is_readable") is True
        # The socket was looked up once, not at every check.
        assert inner.asked == ["socket"]
        ours.close()
        assert stream.get_extra_info("is_readable") is True
    finally:
        ours.close()
        theirs.close()


async def _closing_server() -> tuple[asyncio.Server, str]:
    """A loopback server that answers every request with ``Connection: close``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


def test_a_request_cancelled_after_it_was_handed_a_new_connection_leaves_none_behind() -> None:
    """httpcore opens the connection of a queued request when another one is released;
    a request cancelled before it starts on that connection left it in the pool, never
    opened and never closed, taking its place for good: with one connection, every later
    call then waited out its pool timeout."""
    import httpcore

    async def main() -> bytes:
        server, url = await _closing_server()
        pool = httpcore.AsyncConnectionPool(max_connections=1)
        assert pool_assignment.install(pool)
        async with server, pool:
            host = [(b"Host", b"127.0.0.1")]
            first = await pool.handle_async_request(httpcore.Request("GET", url, headers=host))
            started = asyncio.Event()

            async def queued() -> None:
                started.set()
                await pool.request("GET", url, headers=host)

            second = asyncio.create_task(queued())
            await started.wait()
            await asyncio.sleep(0)  # the second request now waits in the pool's queue
            assert len(pool._requests) == 2
            # Releasing the first connection (closed by the server) opens a new one for
            # the second request, which is cancelled before it could start on it.
            await first.aread()
            await first.aclose()
            assert pool._requests[0].connection is not None
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            timeouts = {"pool": 5.0, "connect": 5.0, "read": 5.0}
            response = await pool.request(
                "GET", url, headers=host, extensions={"timeout": timeouts}
            )
            return response.content

    assert asyncio.run(main()) == b"{}"


def test_a_promise_does_not_keep_its_request_alive() -> None:
    """A promise outlives its request until its connection comes up again or a sweep
    runs, which an idle client never does: each kept the request, body included (with a
    hundred connections, a hundred uploads held for as long as the client sat idle)."""
    import gc
    import weakref

    connections = [FakeConnection()]
    pool = _pool(connections)
    pool._next_sweep = float("inf")
    (request,) = _queue(pool, 1)
    _assign(pool)
    assert id(connections[0]) in pool._promised
    pool._requests.remove(request)  # its exchange ended
    gone = weakref.ref(request)
    del request
    gc.collect()
    assert gone() is None
    (late,) = _queue(pool, 1)
    _assign(pool)
    assert late.connection is connections[0]


@needs_fork
def test_a_forked_child_keeps_none_of_the_parents_connection_closes() -> None:
    """A close cut off by a cancellation finishes in a task of the parent's loop, kept
    until it ends: in a forked child that loop never runs, and the task would stay."""
    from commclient import _async

    loop = asyncio.new_event_loop()
    closing = loop.create_future()
    _async._closing.add(closing)
    try:
        assert in_forked_child(lambda: len(_async._closing)) == 0
    finally:
        _async._closing.discard(closing)
        loop.close()

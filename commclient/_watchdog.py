"""The sync facade's deadline over a whole attempt: a watchdog that cuts the socket.

requests bounds each connect and each read, never an exchange: a server that sends
its headers a byte at a time, or a chain of redirects, outlives any deadline. One
daemon thread per process keeps the deadlines of the attempts in flight; when one
passes, it shuts down the socket of that attempt's connection, so that the blocked
read returns at once and the facade reports a timeout. The watch covers the connection
from its first step: the name lookup, the TCP connect (its timeout is what remains of the
deadline after the lookup) and the TLS handshake (cut through a duplicate of the socket,
since the TLS layer owns the original while it shakes hands).

Name resolution (``getaddrinfo``) has no socket to cut: while a deadline runs, new
connections resolve names with :mod:`._resolver` and stop waiting when the deadline passes
(the lookup itself finishes in the background).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any

from ._resolver import is_address, resolver


class Watch:
    """The deadline of one attempt, and the connection it is using."""

    __slots__ = ("at", "connected", "connection", "done", "fired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.connection: Any = None
        self.done = False
        self.fired = False
        #: The connection was established: a cut from now on interrupts the exchange, and
        #: before, the lookup, the connect or the handshake (no request was sent).
        self.connected = False


class _Watchdog:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start over (in a forked child, where the thread and the lock's owner are gone)."""
        self.lock = threading.Lock()
        self._wakeup = threading.Condition(self.lock)
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self, seconds: float) -> Watch:
        watch = Watch(time.monotonic() + seconds)
        with self.lock:
            heapq.heappush(self._heap, (watch.at, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="commclient-deadline-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is watch:
                self._wakeup.notify()
        return watch

    def attach(self, watch: Watch | None, connection: Any) -> None:
        """``connection`` is about to send the request of ``watch``'s attempt."""
        with self.lock:
            connection._commclient_watch = watch
            if watch is None:
                return
            watch.connection = connection
            if connection.sock is not None:
                watch.connected = True
            if watch.fired:
                _cut(connection)

    def finish(self, watch: Watch) -> None:
        with self.lock:
            watch.done = True
            if watch.connection is not None and watch.connection._commclient_watch is watch:
                watch.connection._commclient_watch = None
            watch.connection = None

    def _run(self) -> None:
        # A daemon thread: at interpreter exit it simply stops; it holds nothing to flush.
        with self.lock:
            while True:
                heap = self._heap
                while heap and heap[0][2].done:
                    heapq.heappop(heap)
                if not heap:
                    self._wakeup.wait()
                    continue
                delay = heap[0][0] - time.monotonic()
                if delay > 0:
                    self._wakeup.wait(delay)
                    continue
                watch = heapq.heappop(heap)[2]
                watch.fired = True
                connection = watch.connection
                # Only while the connection still serves this attempt: once back in the
                # pool it may already carry another thread's request.
                if connection is not None and connection._commclient_watch is watch:
                    _cut(connection)

    def guard_handshake(self, connection: Any, sock: socket.socket) -> None:
        """``sock`` is connected; keep a duplicate to cut while TLS wraps the original."""
        with self.lock:
            if connection._commclient_watch is None:
                return
            connection._commclient_handshake = sock.dup()
            if connection._commclient_watch.fired:
                _cut(connection)

    def connected(self, connection: Any, established: bool) -> None:
        """The connection is established (or failed): its handshake needs no guard."""
        with self.lock:
            watch = connection._commclient_watch
            if watch is not None and established:
                watch.connected = True
            duplicate, connection._commclient_handshake = connection._commclient_handshake, None
        if duplicate is not None:
            duplicate.close()


def _cut(connection: Any) -> None:
    for sock in (connection._commclient_handshake, getattr(connection, "sock", None)):
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


watchdog = _Watchdog()
os.register_at_fork(after_in_child=watchdog.reset)
_current = threading.local()


class _NoWatch:
    fired = False
    expired = False
    connected = True

    def __enter__(self) -> _NoWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_WATCH = _NoWatch()


class _AttemptWatch:
    __slots__ = ("watch",)

    def __init__(self, seconds: float) -> None:
        self.watch = watchdog.start(seconds)

    @property
    def fired(self) -> bool:
        return self.watch.fired

    @property
    def expired(self) -> bool:
        """The deadline has passed, whether or not the watchdog has acted on it yet."""
        return self.watch.fired or time.monotonic() >= self.watch.at

    @property
    def connected(self) -> bool:
        return self.watch.connected

    def __enter__(self) -> _AttemptWatch:
        _current.watch = self.watch
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.watch = None
        watchdog.finish(self.watch)


def attempt_watch(seconds: float | None) -> _AttemptWatch | _NoWatch:
    """Within the block, this thread's requests are cut off after ``seconds``."""
    return _NO_WATCH if seconds is None else _AttemptWatch(seconds)


_adapter_class: Any = None


def watched_adapter(requests: Any, max_connections: int) -> Any:
    """A requests ``HTTPAdapter`` whose connections report to the watchdog."""
    global _adapter_class
    if _adapter_class is None:
        _adapter_class = _make_adapter_class(requests)
    return _adapter_class(pool_connections=1, pool_maxsize=max_connections, max_retries=0)


def _make_adapter_class(requests: Any) -> Any:
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    def new_conn(self: Any) -> socket.socket:
        watch = getattr(_current, "watch", None)
        host = self._dns_host
        if watch is None:
            return super(type(self), self)._new_conn()  # type: ignore[no-any-return]
        if is_address(host):
            sock = super(type(self), self)._new_conn()
            watchdog.guard_handshake(self, sock)
            return sock  # type: ignore[no-any-return]
        try:
            addresses = resolver.resolve(host, self.port, watch.at)
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, str(exc)) from None
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        # Connect to what was resolved, trying each address in turn as create_connection
        # does, within what the lookup left of the deadline.
        error: Exception | None = None
        timeout = self.timeout
        try:
            for *_, address in addresses:
                self._dns_host = address[0]
                remaining = watch.at - time.monotonic()
                if remaining <= 0:
                    raise ConnectTimeoutError(self, f"connecting to {host} outlived the deadline")
                if not isinstance(timeout, (int, float)) or remaining < timeout:
                    self.timeout = remaining
                try:
                    sock = super(type(self), self)._new_conn()
                    watchdog.guard_handshake(self, sock)
                    return sock  # type: ignore[no-any-return]
                except NewConnectionError as exc:
                    error = exc
        finally:
            self._dns_host = host
            self.timeout = timeout
        raise error or NewConnectionError(self, f"{host} resolved to no address")

    def connect(self: Any) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watchdog.attach(watch, self)
        established = False
        try:
            super(type(self), self).connect()
            established = True
        except TimeoutError as exc:
            # The TCP connect raises urllib3's own ConnectTimeoutError: a socket timeout
            # here is the TLS handshake (or a proxy's tunnel), which urllib3 would report
            # as a read timeout although nothing was sent yet.
            raise ConnectTimeoutError(self, f"no connection to {self.host} in time") from exc
        finally:
            if watch is not None:
                watchdog.connected(self, established)

    def request(self: Any, *args: Any, **kwargs: Any) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None or self._commclient_watch is not None:
            watchdog.attach(watch, self)
        super(type(self), self).request(*args, **kwargs)

    members = {
        "request": request,
        "connect": connect,
        "_new_conn": new_conn,
        "_commclient_watch": None,
        "_commclient_handshake": None,
    }
    http_connection = type("WatchedHTTPConnection", (HTTPConnection,), members)
    https_connection = type("WatchedHTTPSConnection", (HTTPSConnection,), members)
    pool_classes = {
        "http": type(
            "WatchedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_connection}
        ),
        "https": type(
            "WatchedHTTPSConnectionPool",
            (HTTPSConnectionPool,),
            {"ConnectionCls": https_connection},
        ),
    }

    class WatchedAdapter(requests.adapters.HTTPAdapter):  # type: ignore[misc]
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pool_classes

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pool_classes
            return manager

    return WatchedAdapter

"""The sync facade's deadline over a whole attempt: a watchdog that cuts the socket.

requests bounds each connect and each read, never an exchange: a server that sends
its headers a byte at a time, or a chain of redirects, outlives any deadline. One
daemon thread per process keeps the deadlines of the attempts in flight; when one
passes, it shuts down the socket of that attempt's connection, so that the blocked
read returns at once and the facade reports a timeout. Name resolution
(``getaddrinfo``) has no socket to cut: while a deadline runs, new connections resolve
names on a small thread pool and stop waiting when the deadline passes (the lookup itself
finishes in the background).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import ipaddress
import itertools
import os
import socket
import threading
import time
from typing import Any


class Watch:
    """The deadline of one attempt, and the connection it is using."""

    __slots__ = ("at", "connection", "done", "fired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.connection: Any = None
        self.done = False
        self.fired = False


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


def _cut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


watchdog = _Watchdog()
os.register_at_fork(after_in_child=watchdog.reset)
_current = threading.local()


class _NoWatch:
    fired = False

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


class _Resolver:
    """``getaddrinfo`` on worker threads, waited for no longer than a deadline."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def resolve(self, host: str, port: int, at: float) -> list[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    4, thread_name_prefix="commclient-resolver"
                )
            pool = self._pool
        lookup = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        addresses: list[Any] = lookup.result(timeout=max(0.0, at - time.monotonic()))
        return addresses


resolver = _Resolver()
os.register_at_fork(after_in_child=resolver.reset)


def _make_adapter_class(requests: Any) -> Any:
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    def new_conn(self: Any) -> socket.socket:
        watch = getattr(_current, "watch", None)
        host = self._dns_host
        if watch is None or _is_address(host):
            return super(type(self), self)._new_conn()  # type: ignore[no-any-return]
        try:
            addresses = resolver.resolve(host, self.port, watch.at)
        except concurrent.futures.TimeoutError:
            raise ConnectTimeoutError(
                self, f"resolving {host} outlived the deadline of the call"
            ) from None
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        # Connect to what was resolved, trying each address in turn as create_connection does.
        error: Exception | None = None
        try:
            for *_, address in addresses:
                self._dns_host = address[0]
                try:
                    return super(type(self), self)._new_conn()  # type: ignore[no-any-return]
                except NewConnectionError as exc:
                    error = exc
        finally:
            self._dns_host = host
        raise error or NewConnectionError(self, f"{host} resolved to no address")

    def request(self: Any, *args: Any, **kwargs: Any) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None or self._commclient_watch is not None:
            watchdog.attach(watch, self)
        super(type(self), self).request(*args, **kwargs)

    members = {"request": request, "_new_conn": new_conn, "_commclient_watch": None}
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


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True

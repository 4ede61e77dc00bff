"""What the sync driver does its own way: threads, blocking sockets, ``redis``.

The twin of :mod:`._io_async`, name for name, for the driver generated into :mod:`._sync`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from .._callables import require_function
from .._extras import import_extra
from ._core import rebuild_client

T = TypeVar("T")

Stop = threading.Event
"""Asks a listener thread to end (checked between its short reads)."""

CONNECT_RETRIES = 0
"""A blocking call cannot be interrupted: its socket timeout is its deadline, and a retry
would double what a dead Redis costs before the breaker opens."""

LISTENER_JOIN_TIMEOUT = 5.0


def redis_module() -> Any:
    return import_extra("redis", extra="redis", feature="SyncRedisCache.from_url")


def retry(retries: int) -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), retries)


sleep = time.sleep


def wait(stop: Stop, seconds: float) -> None:
    """Pause a listener between resubscriptions, ending early when ``stop`` is set."""
    stop.wait(seconds)


def poll_timeout(ping_interval: float) -> float:
    """How long one Pub/Sub read may block: short, for ``stop`` to be noticed quickly."""
    return min(ping_interval, 0.1)


def bounded(result: T, seconds: float) -> T:
    """The socket timeouts bound a blocking call; nothing more to do."""
    return result


def check_cancelled() -> None:
    """Threads are stopped through their stop event."""


def check_loader(loader: object, feature: str) -> None:
    """Refuse a loader or callback that is not a blocking function: a call (``load()``), or
    an async function, whose coroutine this driver would store or drop un-awaited."""
    require_function(
        loader, feature, asynchronous=False, async_hint="use the async cache, or a blocking loader"
    )


def call_loader(loader: Callable[[], Any] | None) -> Any:
    return loader() if loader is not None else None


@contextmanager
def renewing(interval: float, renew: Callable[[], object]) -> Iterator[None]:
    """Call ``renew`` every ``interval`` seconds (from a thread) while the body runs."""
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(interval):
            renew()

    thread = threading.Thread(target=keep_alive, name="commclient-cache-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def start_background(function: Callable[[], None], name: str) -> threading.Thread:
    """Run ``function`` in a daemon thread: a listener must never keep the process alive."""
    thread = threading.Thread(target=function, name=name, daemon=True)
    thread.start()
    return thread


def stop_background(thread: threading.Thread, stop: Stop) -> None:
    """Stop a listener thread and wait (boundedly) for its end."""
    stop.set()
    thread.join(timeout=LISTENER_JOIN_TIMEOUT)


def close_quietly(resource: Any) -> None:
    """Close a client or Pub/Sub object without letting a dead connection raise."""
    close = getattr(resource, "close", None)
    if close is not None:
        with suppress(Exception):
            close()


class Deadlines:
    """Blocking calls are bounded by their client's socket timeouts (see ``_bounded_client``)."""

    def __init__(self, timeout: float, on_loop_closed: Callable[[], None]) -> None:
        self.timeout = timeout

    def run(self, command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return command(*args, **kwargs)


class _Flight:
    __slots__ = ("done", "epoch", "error", "value")

    def __init__(self, epoch: int) -> None:
        self.done = threading.Event()
        self.epoch = epoch
        self.value: Any = None
        self.error: BaseException | None = None


class Flights:
    """Single flight: concurrent misses of one key in this process share one load.

    Joined only by callers that saw the same ``epoch`` (see :class:`._io_async.Flights`).
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    def join(self, key: Hashable, epoch: int, load: Callable[[], Any]) -> Any:
        """Wait for the load of ``key`` in flight, or run ``load``; its value or error."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None or flight.epoch != epoch
            if flight is None or leader:
                flight = _Flight(epoch)
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


def rebuilt_client(client: Any, **overrides: Any) -> Any:
    """A client like ``client`` on a pool of its own, with ``overrides`` applied."""
    return rebuild_client(redis_module, client, overrides)


def bounded_client(client: Any, timeout: float) -> tuple[Any, bool]:
    """The client to use, and whether the cache owns it.

    A blocking call cannot be interrupted from outside, so its socket timeouts are its
    deadline: a client whose timeouts are missing or longer than ``timeout`` is rebuilt
    on a pool of the cache's own with ``timeout`` and no retries (the caller's client and
    pool are left as they are).
    """
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        return client, False
    timeouts = (kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout"))
    if all(limit is not None and limit <= timeout for limit in timeouts):
        return client, False
    bounded = rebuilt_client(
        client,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry(CONNECT_RETRIES),
    )
    return bounded, True


def prepare(client: Any) -> None:
    """A blocking cluster client learned its slots when it was built."""


def ended(thread: threading.Thread) -> bool:
    """A listener thread is over (it never ends by itself while the cache is open)."""
    return not thread.is_alive()


def reset_connections(client: Any) -> None:
    """Forget a client's pooled connections without closing them (after a fork they are
    the parent's; redis-py would notice the new pid too)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.reset()

"""What the sync driver does its own way: threads, blocking sockets, ``redis``.

The twin of :mod:`._io_async`, name for name, for the driver generated into :mod:`._sync`.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, suppress
from typing import Any, TypeVar

from .._callables import require_function
from .._extras import import_extra
from ._core import rebuild_client, reentered
from ._renewer import lease_renewer

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


def renewing(interval: float, renew: Callable[[], object]) -> AbstractContextManager[None]:
    """Call ``renew`` every ``interval`` seconds while the body runs (from the process's
    one renewer thread: a miss starts no thread of its own)."""
    return lease_renewer.renewing(interval, renew)


def start_background(function: Callable[[], None], name: str) -> threading.Thread:
    """Run ``function`` in a daemon thread (a listener must never keep the process alive),
    in an empty context, as the async twin does (threads may inherit their starter's)."""
    thread = threading.Thread(
        target=contextvars.Context().run, args=(function,), name=name, daemon=True
    )
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

    def __init__(
        self, timeout: float, on_loop_left: Callable[[], None], *, one_loop: bool = True
    ) -> None:
        self.timeout = timeout

    def run(self, command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return command(*args, **kwargs)


ABANDONED: Any = object()
"""What a follower hears when the load it waited for ended without an outcome to share
(its thread interrupted): load again."""


class _Flight:
    __slots__ = ("done", "epoch", "error", "thread", "value")

    def __init__(self, epoch: int) -> None:
        self.thread = threading.get_ident()  # the leader's, which runs the load
        # Held by the leader until the load ends: a follower waits by acquiring it (a
        # bare lock is cheaper to make than an Event, and a miss makes one).
        self.done = threading.Lock()
        self.done.acquire()
        self.epoch = epoch
        self.value: Any = ABANDONED
        self.error: Exception | None = None

    def wait(self) -> None:
        with self.done:
            pass


class Flights:
    """Single flight: concurrent misses of one key in this process share one load, run
    by the first caller; the others wait for it. Joined only by callers that saw the
    same ``epoch`` (see :class:`._io_async.Flights`, whose twin this is). A loader that
    asks for its own key (in the leader's thread) raises :class:`RecursionError` rather
    than wait for itself."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    def join(self, key: Hashable, epoch: int, load: Callable[[], Any]) -> tuple[Any, bool]:
        """Wait for the load of ``key`` in flight, or run ``load``: its value (and
        whether this caller ran it), or its error."""
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None or flight.epoch != epoch:
                    flight = self._flights[key] = _Flight(epoch)
                    break
            if flight.thread == threading.get_ident():
                raise RecursionError(reentered(key))
            flight.wait()
            if flight.error is not None:
                raise flight.error
            if flight.value is not ABANDONED:
                return flight.value, False
        return self._lead(key, flight, load)

    def lead(self, key: Hashable, epoch: int, load: Callable[[], Any]) -> tuple[Any, bool] | None:
        """Run ``load`` as :meth:`join` would, unless a load of ``key`` is in flight:
        then ``None`` (the caller reads first, and joins only if its read missed)."""
        with self._lock:
            if key in self._flights:
                return None
            flight = self._flights[key] = _Flight(epoch)
        return self._lead(key, flight, load)

    def _lead(self, key: Hashable, flight: _Flight, load: Callable[[], Any]) -> tuple[Any, bool]:
        try:
            value = flight.value = load()
        except Exception as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.release()
        return value, True


def check_decoratable(function: Callable[..., Any], cache: str) -> None:
    """``cached`` of the sync cache decorates plain functions."""
    if inspect.iscoroutinefunction(function):
        raise TypeError(
            f"{cache}.cached decorates plain functions, and "
            f"{getattr(function, '__qualname__', function)!r} is a coroutine function: "
            "use the async cache"
        )


def rebuilt_client(client: Any, **overrides: Any) -> Any:
    """A client like ``client`` on a pool of its own, with ``overrides`` applied."""
    return rebuild_client(redis_module, client, overrides)


class _BoundedClients:
    """The clients rebuilt with an operation timeout, by caller's client and timeout:
    every cache on one client shares one rebuilt client (one pool, one listener)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_caller: dict[tuple[int, float], tuple[Any, Any]] = {}
        self.users: dict[int, int] = {}  # id of a rebuilt client -> caches using it


_bounded = _BoundedClients()


def _unlock_bounded_clients() -> None:
    """A forked child keeps sharing the rebuilt clients among its caches (each cache
    drops the parent's connections: see ``reset_connections``), under a lock of its own:
    another thread of the parent may have held it."""
    _bounded.lock = threading.Lock()


os.register_at_fork(after_in_child=_unlock_bounded_clients)


def bounded_client(client: Any, timeout: float) -> tuple[Any, bool]:
    """The client to use, and whether the cache must hand it to :func:`close_client`.

    A blocking call cannot be interrupted from outside, so its socket timeouts are its
    deadline: a client whose timeouts are missing or longer than ``timeout`` (or, for a
    cluster client, that retries) is rebuilt on a pool of its own with ``timeout`` and
    no retries (the caller's client and pool are left as they are), once for all the
    caches on that client.
    """
    rebuild = _cluster_rebuild if hasattr(client, "get_node_from_key") else _plain_rebuild
    if not rebuild(client, timeout, check_only=True):
        return client, False
    key = (id(client), timeout)
    with _bounded.lock:
        shared = _bounded.by_caller.get(key)
        if shared is None or shared[0] is not client:
            shared = _bounded.by_caller[key] = (client, rebuild(client, timeout))
        bounded = shared[1]
        _bounded.users[id(bounded)] = _bounded.users.get(id(bounded), 0) + 1
    return bounded, True


def close_client(client: Any) -> None:
    """Close a client the cache owns; a shared rebuilt client once its last cache closes."""
    with _bounded.lock:
        users = _bounded.users.get(id(client))
        if users is not None:
            if users > 1:
                _bounded.users[id(client)] = users - 1
                return
            del _bounded.users[id(client)]
            for key, (_, bounded) in list(_bounded.by_caller.items()):
                if bounded is client:
                    del _bounded.by_caller[key]
    close_quietly(client)


def _within(kwargs: dict[str, Any], timeout: float) -> bool:
    timeouts = (kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout"))
    return all(limit is not None and limit <= timeout for limit in timeouts)


def _plain_rebuild(client: Any, timeout: float, *, check_only: bool = False) -> Any:
    """A client like ``client`` bounded by ``timeout`` (or, ``check_only``, whether one
    is needed)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if check_only:
        return kwargs is not None and not _within(kwargs, timeout)
    return rebuilt_client(
        client,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry(CONNECT_RETRIES),
    )


_CLUSTER_OWN_KWARGS = ("redis_connect_func", "oss_cluster_maint_notifications_handler")
"""Connection settings a ``RedisCluster`` makes for itself (not the caller's)."""


def _cluster_rebuild(client: Any, timeout: float, *, check_only: bool = False) -> Any:
    """A ``RedisCluster`` like ``client`` whose every call is bounded by ``timeout``: its
    socket timeouts, and no retries (by default it retries a timed-out command up to
    ten times, reinitialising between tries); or, ``check_only``, whether one is needed."""
    kwargs = dict(client.nodes_manager.connection_kwargs)
    if check_only:
        retries = getattr(getattr(client, "retry", None), "_retries", 0)
        return retries != 0 or not _within(kwargs, timeout)
    for name in _CLUSTER_OWN_KWARGS:
        kwargs.pop(name, None)
    kwargs = {name: value for name, value in kwargs.items() if not name.startswith("orig_")}
    from redis import cluster

    node_class: Any = cluster.ClusterNode  # untyped in redis-py
    nodes = [node_class(node.host, node.port) for node in client.get_nodes()]
    kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry(0))
    return cluster.RedisCluster(startup_nodes=nodes, **kwargs)


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

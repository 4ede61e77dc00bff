"""AsyncRedisCache: the cache on ``redis.asyncio`` (a thin driver over :mod:`._core`).

This module is the one source of both Redis drivers: ``scripts/generate_sync.py`` turns
it into :mod:`._sync` (``SyncRedisCache``), and a test fails when that file is out of
date. What differs between the worlds (tasks or threads, deadlines, single flight) is
in :mod:`._io_async` and its twin :mod:`._io_sync`, which offer the same names.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial, wraps
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from prometheus_client import CollectorRegistry

from . import _flows as flows
from . import _io_async as io
from . import _scripts
from ._codec import CorruptValueError, caller_copy
from ._config import CacheConfig, ttl_milliseconds, ttl_seconds
from ._core import (
    FAILED,
    GENERATION_ATTEMPTS,
    MISMATCH,
    CacheCore,
    CoreFacade,
    KeyPlan,
    Read,
    no_script_error,
    reset_after_fork,
)
from ._decorator import CachedCall
from ._exceptions import CacheClosedError, CacheLoopError
from ._local import MISSING
from ._messages import InvalidationMessage

if TYPE_CHECKING:
    import redis.asyncio

T = TypeVar("T")
D = TypeVar("D")
P = ParamSpec("P")
InvalidationCallback = Callable[[InvalidationMessage], object]


async def _listen(client: Any, config: CacheConfig, stop: io.Stop, subscription: Any) -> None:
    """Subscribe to ``config.channel`` on ``client`` and hand what comes to
    ``subscription`` (its ``subscribed()``, ``message(data)``, ``lost(error)``, and
    ``heard()`` after every read, a message or none) until
    ``stop`` is set (or the task is cancelled); resubscribe after every disconnect."""
    wait = config.resubscribe_min_wait
    while not stop.is_set():
        pubsub = client.pubsub()
        try:
            await io.prepare(client)
            await io.bounded(pubsub.subscribe(config.channel), max(config.operation_timeout, 1.0))
            last_heard = next_ping = time.monotonic()
            while not stop.is_set():
                message = await pubsub.get_message(
                    timeout=io.poll_timeout(config.listener_ping_interval)
                )
                io.check_cancelled()
                subscription.heard()
                now = time.monotonic()
                if message is not None:
                    last_heard = now
                elif now - last_heard > 2 * config.listener_ping_interval:
                    raise ConnectionError("redis did not answer the listener's ping")
                if now >= next_ping:
                    next_ping = now + config.listener_ping_interval
                    await pubsub.ping()
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    wait = config.resubscribe_min_wait
                    subscription.subscribed()
                elif message["type"] == "message":
                    await subscription.message(message["data"])
        except Exception as error:
            subscription.lost(error)
        finally:
            await io.close_quietly(pubsub)
        await io.wait(stop, wait * random.uniform(0.5, 1.0))
        wait = min(wait * 2, config.resubscribe_max_wait)


class _CallbackSubscription:
    """A caller's own subscription (:meth:`AsyncRedisCache.subscribe_invalidation`)."""

    def __init__(self, core: CacheCore, callback: InvalidationCallback) -> None:
        self._core = core
        self._callback = callback

    def subscribed(self) -> None:
        """Nothing to do: the callback hears every message from now on."""

    def heard(self) -> None:
        """Nothing to do: the callback is told of messages, not of silence."""

    async def message(self, data: bytes | str) -> None:
        message = InvalidationMessage.decode(data)
        if message is None:
            return
        try:
            await io.call_loader(partial(self._callback, message))
        except Exception as error:
            self._core.callback_failed(error)

    def lost(self, error: BaseException) -> None:
        self._core.subscriber_lost(error)


class Listener:
    """The local tiers' Pub/Sub subscription: one per Redis client and channel, shared
    by every cache on that client, however many (one task or thread, one connection).

    Each message is decoded once and applied to the caches of its prefix. It holds them
    weakly: a cache dropped without ``close()`` (one made per request, say) goes with
    its local tier instead of being kept and fed for ever. Its timings
    (ping interval, resubscription pauses) are those of the first cache that joined.
    Its client is a copy of the caches' client whose connections never retry by
    themselves: redis-py reconnects and resubscribes a Pub/Sub connection silently when
    retries are on; messages published in that gap would be lost without the listener
    knowing, and the local tiers would keep what they invalidated. With retries off,
    every disconnect reaches the listener, which flushes the local tiers.
    """

    def __init__(self, client: Any, config: CacheConfig) -> None:
        self.client = client
        self._config = config
        self._lock = threading.Lock()
        self._cores: dict[str, weakref.WeakSet[CacheCore]] = {}
        self._live = False
        self._task: Any = None
        self._stop = io.Stop()
        self._pubsub_client: Any = None

    def attach(self, core: CacheCore) -> None:
        with self._lock:
            self._cores.setdefault(core.prefix, weakref.WeakSet()).add(core)
            if self._live:
                core.listener_subscribed()

    def detach(self, core: CacheCore) -> bool:
        """Stop serving ``core``'s local tier; ``True`` if no cache is left."""
        with self._lock:
            self._cores.get(core.prefix, weakref.WeakSet()).discard(core)
            # Prefixes whose caches all left, or were dropped without close().
            self._cores = {prefix: cores for prefix, cores in self._cores.items() if cores}
            core.listener_stopped()
            return not self._cores

    def running(self) -> bool:
        task = self._task
        return task is not None and not io.ended(task)

    def ensure_running(self) -> None:
        with self._lock:
            if self._task is not None and not io.ended(self._task):
                return
            if self._task is not None:
                # Ended with its event loop, and so did its connections.
                self._pubsub_client = None
            if self._pubsub_client is None:
                self._pubsub_client = io.rebuilt_client(self.client, retry=io.retry(0))
            self._task = io.start_background(self._run, name="commclient-cache-listener")

    async def _run(self) -> None:
        try:
            await _listen(self._pubsub_client, self._config, self._stop, self)
        finally:
            with self._lock:
                self._live = False
                for core in self._all_cores():
                    core.listener_stopped()

    def _all_cores(self) -> list[CacheCore]:
        return [core for cores in self._cores.values() for core in cores]

    def heard(self) -> None:
        with self._lock:
            cores = self._all_cores()
        for core in cores:
            core.listener_heard()

    def subscribed(self) -> None:
        with self._lock:
            self._live = True
            for core in self._all_cores():
                core.listener_subscribed()

    async def message(self, data: bytes | str) -> None:
        message = InvalidationMessage.decode(data)
        with self._lock:
            cores = list(self._cores.get(message.prefix, ())) if message else self._all_cores()
        if message is None:
            if cores:
                cores[0].malformed_message(data)
            return
        for core in cores:
            core.apply(message)

    def lost(self, error: BaseException) -> None:
        with self._lock:
            self._live = False
            for core in self._all_cores():
                core.listener_lost(error)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await io.stop_background(task, self._stop)
        client, self._pubsub_client = self._pubsub_client, None
        if client is not None and client is not self.client:
            await io.close_quietly(client)


class _Listeners:
    """The shared listeners of this process, by client and channel."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_client: dict[tuple[int, str], Listener] = {}


_listeners = _Listeners()


def _forget_listeners() -> None:
    """A forked child shares nothing of its parent's listeners (DESIGN §6)."""
    global _listeners
    _listeners = _Listeners()


os.register_at_fork(after_in_child=_forget_listeners)


def join_listener(client: Any, core: CacheCore) -> Listener:
    """The listener shared by the caches on ``client`` (created on first use), with
    ``core`` attached to it."""
    key = (id(client), core.config.channel)
    with _listeners.lock:
        listener = _listeners.by_client.get(key)
        if listener is None or listener.client is not client:
            listener = _listeners.by_client[key] = Listener(client, core.config)
        listener.attach(core)
    return listener


async def leave_listener(listener: Listener, core: CacheCore) -> None:
    """Detach ``core``; the last cache to leave stops the listener."""
    registry = _listeners
    with registry.lock:
        last = listener.detach(core)
        if last:
            key = (id(listener.client), core.config.channel)
            if registry.by_client.get(key) is listener:
                del registry.by_client[key]
    if last:
        await listener.stop()


class AsyncRedisCache(CoreFacade):
    """A JSON cache in Redis for asyncio code; Redis failures become misses.

    ``redis_client`` is a ``redis.asyncio.Redis``; every operation against it is bounded
    by ``config.operation_timeout`` whatever the client's own timeout and retry settings.
    ``prefix`` namespaces the keys; ``name`` (default: the prefix) is the ``cache_name``
    metric label; ``registry`` is the Prometheus registry (``None``: the default one).
    Used from one running event loop at a time (a second raises :class:`CacheLoopError`);
    the memory cache from any number.
    """

    # redis-py's asyncio connections belong to the loop that opened them.
    _connections_bound_to_a_loop = True

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        prefix: str = "cache",
        *,
        config: CacheConfig | None = None,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._core = CacheCore(prefix, config, name, registry)
        timeout = self._core.config.operation_timeout
        self._redis, self._owns_client = io.bounded_client(redis_client, timeout)
        self._no_script_error = no_script_error()
        self._execute_command: Callable[..., Any] = self._redis.execute_command
        self._read_reply = self._script(_scripts.READ)
        self._commands = flows.commands(
            self._redis,
            self._core.layout.tag,
            mget=self._mget,
            script=self._script,
        )
        self._closed = False
        self._build_local_state()
        reset_after_fork(self)

    def _in_forked_child(self) -> None:
        """A forked child must not use its parent's listener, locks or connections."""
        self._build_local_state()
        self._forget_connections()

    def _build_local_state(self) -> None:
        """(Re)build what is tied to a thread, a loop or a socket."""
        self._core.after_fork()
        self._flights = io.Flights()
        timeout = self._core.config.operation_timeout
        self._deadlines = io.Deadlines(
            timeout,
            on_loop_left=self._forget_connections,
            one_loop=self._connections_bound_to_a_loop,
        )
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()

    def _forget_connections(self) -> None:
        """Drop the connections of an event loop left behind, closed or stopped (the
        async driver), or of the parent process (after a fork): the next call opens its
        own."""
        io.reset_connections(self._redis)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "cache",
        *,
        config: CacheConfig | None = None,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> AsyncRedisCache:
        """Build a cache and the client it owns (closed by :meth:`aclose`) from a URL.

        The client's socket timeouts are the operation timeout, so a dead Redis costs
        at most about one operation timeout before the breaker opens.
        """
        config = config or CacheConfig()
        client = io.redis_module().Redis.from_url(
            url,
            socket_timeout=config.operation_timeout,
            socket_connect_timeout=config.operation_timeout,
            retry=io.retry(io.CONNECT_RETRIES),
        )
        cache = cls(client, prefix, config=config, name=name, registry=registry)
        cache._owns_client = True
        return cache

    # -- reads --------------------------------------------------------------------------

    @overload
    async def get(self, key: str, model: None = None, *, default: Any = None) -> Any: ...

    @overload
    async def get(self, key: str, model: type[T]) -> T | None: ...

    @overload
    async def get(self, key: str, model: type[T], *, default: D) -> T | D: ...

    async def get(self, key: str, model: Any = None, *, default: Any = None) -> Any:
        """The value at ``key`` validated as ``model`` (plain JSON without), or ``default``.

        A cached ``None`` is a hit and reads as ``None``: pass a ``default`` of your own
        (any object) to tell it from a miss. A value stored by code with another model
        (a rolling deploy) is a miss here and is left alone for the code that can read it.
        """
        core = self._core
        plan = core.plan(key)
        with core.traced("get", key):
            epoch = 0
            if core.local_tier_enabled:
                value = core.local_get(plan, model)
                if value is not MISSING:
                    return value
                self._ensure_listener()
                epoch = core.local_epoch()
            read = await self._read(plan)
            if read is None:
                core.unavailable(plan)
                return default
            value = await self._decode(plan, read, model, epoch)
            return default if value is MISSING or value is MISMATCH else value

    async def get_raw(self, key: str, *, default: Any = None) -> Any:
        """The decoded JSON at ``key`` without model validation, or ``default``."""
        return await self.get(key, default=default)

    # -- writes -------------------------------------------------------------------------

    async def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool | None:
        """Store ``value`` for ``ttl`` seconds; ``True`` once Redis confirmed the write.

        ``None`` means not confirmed: the reply was lost (a timeout, a dropped
        connection), and Redis may have applied the write or may still apply it (a
        paused Redis does when it resumes). ``False`` means not applied: the breaker
        skipped Redis, or Redis refused the command. Both are falsy, so ``if await
        cache.set(...)`` still reads "confirmed"; every local tier drops the key either way.
        """
        self._check_open()
        with self._core.traced("set", key):
            return await self._run(flows.set_value(self._core, key, value, ttl_milliseconds(ttl)))

    async def delete(self, key: str) -> bool:
        """Delete ``key`` everywhere (Redis, and every local tier); ``True`` if it existed."""
        self._check_open()
        with self._core.traced("delete", key):
            return await self._run(flows.delete(self._core, key))

    async def invalidate(self, pattern: str, *parts: object, strict: bool = False) -> int:
        """Delete every key matching the glob ``pattern``, broadcast it; return how many.

        With ``parts``, ``pattern`` is a template whose ``{}`` fields are filled with the
        parts escaped (see :func:`build_pattern`). Runs SCAN in pages; each page is
        removed and broadcast in one script. The count is of logical keys that held a
        value (copies a group invalidation had already made unreachable are removed, not
        counted). Patterns match per byte of UTF-8, as Redis does: ``?`` matches one
        byte, so ``"u:??"`` matches ``"u:é"``. When Redis fails midway, the failure is
        counted and logged, and returns the count so far; with ``strict=True`` it raises
        :class:`CacheUnavailableError` instead (to retry it, as the middleware does).
        """
        self._check_open()
        with self._core.traced("invalidate", pattern=pattern):
            return await self._run(flows.invalidate(self._core, pattern, parts, strict=strict))

    async def invalidate_group(self, group: str) -> bool:
        """Invalidate every key of ``group`` with one INCR, then broadcast; ``False`` if
        Redis could not be reached."""
        self._check_open()
        with self._core.traced("invalidate_group", group=group):
            return await self._run(flows.invalidate_group(self._core, group))

    # -- read-through -------------------------------------------------------------------

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | timedelta = 300,
        model: None = None,
        *,
        stale_ttl: float | timedelta = 0,
        early_refresh: float | timedelta = 0,
    ) -> T: ...

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[object]],
        ttl: float | timedelta,
        model: type[T],
        *,
        stale_ttl: float | timedelta = 0,
        early_refresh: float | timedelta = 0,
    ) -> T: ...

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[object]],
        *,
        model: type[T],
        ttl: float | timedelta = 300,
        stale_ttl: float | timedelta = 0,
        early_refresh: float | timedelta = 0,
    ) -> T: ...

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float | timedelta = 0,
        early_refresh: float | timedelta = 0,
    ) -> Any:
        """The cached value, or ``loader()``'s result stored for ``ttl`` seconds.

        Concurrent misses of one key share one ``loader`` call in this process, and a
        Redis lease (renewed while the loader runs) makes other processes wait for it
        rather than load too. A loader error reaches every caller waiting for it; in
        other processes, and for ``loader_failure_ttl`` after it, as
        :class:`LoaderFailedError`. Without a ``model``, a loaded value is returned as a
        hit would return it (its JSON, decoded). A loaded value that cannot be stored is
        returned, not cached (logged). With
        ``stale_ttl``, a value is kept that much longer and, once past ``ttl``, served
        while one caller refreshes it; the refreshed value reaches every local tier.

        With ``early_refresh`` (seconds, about how long a load takes), hot keys do not all
        expire at once: each read refreshes the value before its ``ttl`` ends with a
        probability that grows as the end nears (XFetch: ``e**(-remaining /
        early_refresh)``), so one caller reloads it while the others are served.
        """
        io.check_loader(loader, f"{type(self).__name__}.get_or_set()")
        core = self._core
        plan = core.plan(key)
        ttl_ms = ttl_milliseconds(ttl)
        stale_s = ttl_seconds(stale_ttl, "stale_ttl") if stale_ttl else 0.0
        early_s = ttl_seconds(early_refresh, "early_refresh") if early_refresh else 0.0
        with core.traced("get_or_set", key):
            # The local tier does not serve a value in its early-refresh window: Redis decides.
            value = core.local_get(plan, model, stale_s + early_s)
            if value is not MISSING:
                return value
            self._ensure_listener()
            job = flows.ReadThrough(plan, ttl_ms, stale_s, model, core.local_epoch())
            flight_key = (key, model)
            if not (stale_s or early_s) and core.lease_first():
                # Mostly misses of late: read with the lease (a miss in two round trips),
                # unless a load of this key is in flight here (then read, and join on a miss).
                fill = partial(self._run, flows.fill(core, job, first_read=True), loader)
                shared = await self._flights.lead(flight_key, job.epoch, fill)
                if shared is not None:
                    return self._private(shared, model)
            read = await self._read(plan, with_ttl=stale_s > 0 or early_s > 0)
            if read is None:
                core.unavailable(plan)
                return await self._join(
                    flight_key, job.epoch, partial(flows.load, core, job), loader
                )
            value = await self._decode(plan, read, model, job.epoch)
            core.read_through(value is MISSING)
            if value is MISMATCH:
                return await self._join(
                    flight_key, job.epoch, partial(flows.load, core, job), loader
                )
            if value is MISSING:
                return await self._join(
                    flight_key, job.epoch, partial(flows.fill, core, job), loader
                )
            fresh = core.is_fresh(read, stale_s) and not core.refresh_early(read, stale_s, early_s)
            if fresh or flight_key in self._flights:
                return value
            refresh = partial(flows.refresh, core, job, read.generation, value)
            try:
                return await self._join(flight_key, job.epoch, refresh, loader)
            except Exception as error:
                core.refresh_failed(plan, error)
                return value

    async def _join(
        self,
        flight_key: tuple[str, Any],
        epoch: int,
        flow: Callable[[], flows.Flow[Any]],
        loader: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Wait for the load of ``flight_key`` in flight, or run ``flow()`` with ``loader``;
        each caller gets a copy of its own of what the load returned.

        A load whose write Redis refused was overtaken by a ``set``, ``delete`` or
        invalidation (:class:`flows.Superseded`): its value may be older than that
        change, which callers that joined it may have asked after (without a local
        tier, nothing tells this process of another's invalidation). Its first caller
        asked before and keeps it; the others load again, on their own.
        """
        shared = await self._flights.join(flight_key, epoch, partial(self._run_flow, flow, loader))
        if isinstance(shared[0], flows.Superseded) and not shared[1]:
            shared = await self._run(flow(), loader), True
        return self._private(shared, flight_key[1])

    @staticmethod
    def _private(shared: tuple[Any, bool], model: Any) -> Any:
        """A caller's own copy of a shared load's value. Without a model, the caller that
        ran the load keeps its value: it is a fresh decode that nobody else holds (see
        :meth:`CacheCore.as_read`); a model instance may be the loader's own object."""
        value, led = shared
        if isinstance(value, flows.Superseded):
            value = value.value
        return value if led and model is None else caller_copy(value, model)

    async def _run_flow(
        self, flow: Callable[[], flows.Flow[T]], loader: Callable[[], Awaitable[Any]]
    ) -> T:
        return await self._run(flow(), loader)

    def cached(
        self,
        key: str,
        ttl: float | timedelta = 300,
        *,
        group: str | None = None,
        stale_ttl: float | timedelta = 0,
        early_refresh: float | timedelta = 0,
        model: Any = None,
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
        """Decorate a function (``async def`` here) so that its result is cached, as
        :meth:`get_or_set` caches a loader's (single flight, the lease, ``stale_ttl``,
        ``early_refresh``, invalidation: all the same)::

            @cache.cached(key="user:{user_id}", ttl=300)
            async def load_user(user_id: int) -> User: ...

        ``key`` is a ``str.format`` template over the function's parameters, filled with
        each call's arguments (defaults included; ``{user.id}`` and format specs work).
        With ``group``, the key is put in that group (``"{group}:{key}"``), so that
        ``invalidate_group(group)`` drops every value of the function; without it, the
        key's first segment is its group as always. The model is the return annotation
        (``model`` overrides it; none, ``None`` or ``Any``: plain JSON).
        """
        ttl_seconds(ttl)
        if stale_ttl:
            ttl_seconds(stale_ttl, "stale_ttl")
        if early_refresh:
            ttl_seconds(early_refresh, "early_refresh")

        def decorate(function: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
            call = CachedCall(function, key, group, model)
            io.check_decoratable(function, type(self).__name__)

            @wraps(function)
            async def cached_call(*args: P.args, **kwargs: P.kwargs) -> T:
                result: T = await self.get_or_set(
                    call.key(args, kwargs),
                    partial(function, *args, **kwargs),
                    ttl,
                    call.model,
                    stale_ttl=stale_ttl,
                    early_refresh=early_refresh,
                )
                return result

            return cached_call

        return decorate

    # -- Pub/Sub ------------------------------------------------------------------------

    async def subscribe_invalidation(
        self, callback: InvalidationCallback, *, stop: io.Stop | None = None
    ) -> None:
        """Hand every invalidation message to ``callback`` until ``stop`` is set (or,
        for the async cache, the task is cancelled).

        A callback may be a coroutine function with the async cache. Messages this cache
        sent come too (compare ``message.origin`` with :attr:`origin`). Resubscribes by
        itself after a disconnect; messages published while disconnected are lost
        (Pub/Sub delivers at most once).
        """
        self._check_open()
        io.check_loader(callback, f"{type(self).__name__}.subscribe_invalidation()")
        client = io.rebuilt_client(self._redis, retry=io.retry(0))
        try:
            subscription = _CallbackSubscription(self._core, callback)
            await _listen(client, self._core.config, stop or io.Stop(), subscription)
        finally:
            if client is not self._redis:
                await io.close_quietly(client)

    async def start(self, timeout: float = 5.0) -> bool:
        """Check Redis's eviction policy, start the local tier's listener and wait until
        it serves; ``True`` once it does.

        Optional: the listener starts by itself on first use. Without a local tier,
        returns ``False`` after the check. Every eviction policy keeps the cache's
        guarantee (see the README); ``noeviction`` is logged as a warning, since once
        Redis is full no write is stored.
        """
        self._check_open()
        await self._check_eviction_policy()
        if not self._core.local_tier_enabled:
            return False
        self._ensure_listener()
        deadline = time.monotonic() + timeout
        # Activation happens in the sans-I/O core, which has no event to set for either
        # world: a short poll is the simple bridge.
        while not self._core.local.active and time.monotonic() < deadline:
            await io.sleep(0.005)
        return self._core.local.active

    async def _check_eviction_policy(self) -> None:
        try:
            reply = await self._deadlines.run(
                self._execute_command, "CONFIG", "GET", "maxmemory-policy"
            )
        except Exception as error:  # CONFIG renamed or refused (managed Redis), no server
            self._core.eviction_policy(None, error)
        else:
            self._core.eviction_policy(reply)

    def _ensure_listener(self) -> None:
        """Join the listener this cache's client shares (see :class:`Listener`), and
        start it if it is not running (a new one after the event loop it ran on ended:
        ``asyncio.run`` per job)."""
        listener = self._listener
        if listener is not None and listener.running():
            return
        if not self._core.local_tier_enabled:
            return
        with self._listener_lock:
            if self._closed:
                return
            if self._listener is None:
                self._listener = join_listener(self._redis, self._core)
            self._listener.ensure_running()

    # -- lifecycle ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the listener and close what this cache owns; any later call raises
        :class:`CacheClosedError`. Idempotent."""
        with self._listener_lock:
            self._closed = True
            listener, self._listener = self._listener, None
        if listener is not None:
            await leave_listener(listener, self._core)
        if self._owns_client:
            self._owns_client = False
            await io.close_client(self._redis)

    #: ``await cache.close()`` is :meth:`aclose`, as on the clients.
    close = aclose

    def _check_open(self) -> None:
        """Refuse an operation begun after :meth:`aclose` (a closed cache's local tier is
        flushed, so reads reach :meth:`_read`, which checks)."""
        if self._closed:
            raise CacheClosedError(f"cache {self._core.name!r} is closed")

    async def __aenter__(self) -> AsyncRedisCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- I/O helpers --------------------------------------------------------------------

    async def _run(
        self, flow: flows.Flow[T], loader: Callable[[], Awaitable[Any]] | None = None
    ) -> T:
        """Do what ``flow`` asks (Redis calls, sleeps, the loader) until it returns."""
        try:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, flows.Call):
                        command = self._commands[step.command]
                        reply = await self._call(step.operation, command, *step.args, **step.kwargs)
                    elif isinstance(step, flows.Sleep):
                        await io.sleep(step.seconds)
                        reply = None
                    elif step.keep_alive is None:
                        reply = await io.call_loader(loader)
                    else:
                        renew = partial(self._do, step.keep_alive)
                        async with io.renewing(self._core.lease_renew_interval(), renew):
                            reply = await io.call_loader(loader)
                except BaseException as error:
                    step = flow.throw(error)
                else:
                    step = flow.send(reply)
        except StopIteration as done:
            result: T = done.value
            return result

    async def _do(self, step: flows.Call) -> Any:
        command = self._commands[step.command]
        return await self._call(step.operation, command, *step.args, **step.kwargs)

    async def _call(
        self, operation: str, command: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """Run one Redis command within the operation timeout; on failure, :data:`FAILED`
        (or :data:`UNCONFIRMED`, see :meth:`CacheCore.failed`).

        A call made after :meth:`aclose` by an operation already in flight is
        :data:`FAILED` without Redis: the operation ends as in an outage (a loader's value
        is returned, not stored), while every operation begun later raises
        :class:`CacheClosedError` (see :meth:`_check_open`)."""
        if self._closed:
            return FAILED
        core = self._core
        admission = core.admit(operation)
        if admission is None:
            return FAILED
        started = time.perf_counter()
        try:
            result = await self._deadlines.run(command, *args, **kwargs)
        except CacheLoopError:
            core.abandoned(admission)  # the caller's mistake, not an outage
            raise
        except Exception as error:
            return core.failed(operation, error, admission)
        except BaseException:
            core.abandoned(admission)
            raise
        core.succeeded(operation, time.perf_counter() - started, admission)
        return result

    async def _read(self, plan: KeyPlan, *, with_ttl: bool = False) -> Read | None:
        """Read ``plan``'s value (with its TTL for the local tier or ``with_ttl``: the read
        script); ``None`` when Redis could not be reached, or when the group's generation
        moved on at every attempt (counted and logged).

        The hot path of every Redis hit, kept out of the flows (a flow costs it a few
        percent); without a TTL it needs no Lua, which costs the server more than the GET.
        """
        self._check_open()  # every get and get_or_set that the local tier did not serve
        core = self._core
        fast = not with_ttl and not core.local_tier_enabled
        for _ in range(GENERATION_ATTEMPTS):
            guessed = core.guess(plan)
            keys = [plan.generation_key, plan.data_key(guessed)]
            if fast:
                reply = await self._call("get", self._mget, *keys)
            else:
                reply = await self._call("get", self._read_reply, keys, [guessed])
            if reply is FAILED:
                return None
            found = core.parse_read(plan, guessed, reply)
            if found is not None:
                return found
        core.moved_too_often("get", plan)
        return None

    async def _mget(self, *keys: str) -> Any:
        return await self._execute_command("MGET", *keys)

    def _script(self, text: str) -> Callable[..., Awaitable[Any]]:
        """What runs the script ``text`` (given its KEYS and ARGV) by its SHA."""
        return partial(self._evalsha, self._redis.register_script(text))

    async def _evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` by its SHA, without redis-py's ``Script`` wrapper: every read
        with a local tier and every step of a miss runs a script, and the wrapper's
        per-call work is a visible share of them."""
        try:
            return await self._execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except self._no_script_error:
            return await script(keys=keys, args=args)  # loads the script, then runs it

    async def _decode(self, plan: KeyPlan, read: Read, model: Any, epoch: int) -> Any:
        try:
            return self._core.decode_read(plan, read, model, epoch)
        except CorruptValueError as error:
            return await self._run(flows.drop_corrupt(self._core, plan, read, error, model))

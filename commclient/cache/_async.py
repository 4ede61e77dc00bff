"""AsyncRedisCache: the cache on ``redis.asyncio`` (a thin driver over :mod:`._core`)."""

from __future__ import annotations

import asyncio
import inspect
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from prometheus_client import CollectorRegistry

from . import _scripts
from ._codec import CorruptValueError
from ._config import CacheConfig, ttl_milliseconds, ttl_seconds
from ._core import FAILED, SCAN_BATCH, CacheCore, CoreFacade, KeyPlan, Read
from ._deadlines import Deadlines
from ._exceptions import CacheValueTooLargeError
from ._keys import build_pattern
from ._local import MISSING
from ._messages import InvalidationMessage

if TYPE_CHECKING:
    import redis.asyncio

T = TypeVar("T")
InvalidationCallback = Callable[[InvalidationMessage], object]

if sys.version_info >= (3, 11):

    async def _bounded(awaitable: Awaitable[T], seconds: float) -> T:
        async with asyncio.timeout(seconds):
            return await awaitable

else:

    async def _bounded(awaitable: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(awaitable, seconds)


@dataclass
class _Flight:
    """One in-process load of a key that concurrent callers share."""

    task: asyncio.Task[Any]
    epoch: int


class AsyncRedisCache(CoreFacade):
    """A JSON cache in Redis for asyncio code; Redis failures become misses.

    ``redis_client`` is a ``redis.asyncio.Redis``; every operation against it is bounded
    by ``config.operation_timeout`` whatever the client's own retry settings are.
    ``prefix`` namespaces the keys; ``name`` (default: the prefix) is the ``cache_name``
    metric label; ``registry`` is the Prometheus registry (``None``: the default one).
    """

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
        self._redis = redis_client
        self._read_script = redis_client.register_script(_scripts.READ)
        self._write_script = redis_client.register_script(_scripts.WRITE)
        self._delete_script = redis_client.register_script(_scripts.DELETE)
        self._delete_if_equal_script = redis_client.register_script(_scripts.DELETE_IF_EQUAL)
        self._bump_script = redis_client.register_script(_scripts.BUMP_GENERATION)
        self._release_script = redis_client.register_script(_scripts.RELEASE_LEASE)
        self._read_or_lease_script = redis_client.register_script(_scripts.READ_OR_LEASE)
        from redis.exceptions import NoScriptError

        self._no_script_error = NoScriptError
        self._execute_command: Callable[..., Any] = redis_client.execute_command
        self._flights: dict[tuple[str, Any], _Flight] = {}
        self._deadlines = Deadlines(self._core.config.operation_timeout)
        self._owns_client = False
        self._listener_redis: Any = None
        self._listener_task: asyncio.Task[None] | None = None
        self._closed = False

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
        """Build a cache and the client it owns (closed by :meth:`aclose`) from a URL."""
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        config = config or CacheConfig()
        client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=config.operation_timeout,
            socket_connect_timeout=config.operation_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        cache = cls(client, prefix, config=config, name=name, registry=registry)
        cache._owns_client = True
        return cache

    # -- reads --------------------------------------------------------------------------

    @overload
    async def get(self, key: str, model: None = None) -> Any: ...

    @overload
    async def get(self, key: str, model: type[T]) -> T | None: ...

    async def get(self, key: str, model: Any = None) -> Any:
        """The value at ``key`` validated as ``model`` (plain JSON without), or ``None``."""
        core = self._core
        plan = core.plan(key)
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
            return None
        value = await self._decode(plan, read, model, epoch)
        return None if value is MISSING else value

    async def get_raw(self, key: str) -> Any:
        """The decoded JSON at ``key`` without model validation, or ``None``."""
        return await self.get(key)

    # -- writes -------------------------------------------------------------------------

    async def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool:
        """Store ``value`` for ``ttl`` seconds; ``False`` when Redis could not be reached."""
        core = self._core
        plan = core.plan(key)
        ttl_ms = ttl_milliseconds(ttl)
        data = core.encode(key, value)
        keys, args = core.write_args(plan, data, ttl_ms, explicit=True)
        written = await self._call("set", self._write_script, keys=keys, args=args)
        core.after_local_change(core.key_message(plan, 1))
        return written is not FAILED and bool(written)

    async def delete(self, key: str) -> bool:
        """Delete ``key`` everywhere (Redis, and every local tier); ``True`` if it existed."""
        core = self._core
        plan = core.plan(key)
        keys, args = [plan.generation_key, plan.lease_key], [plan.data_base]
        deleted = await self._call("delete", self._delete_script, keys=keys, args=args)
        message = core.key_message(plan, 0 if deleted is FAILED else int(deleted))
        core.after_local_change(message)
        if deleted is not FAILED:
            await self._publish(message)
        return message.count > 0

    async def invalidate(self, pattern: str, *parts: object) -> int:
        """Delete every key matching the glob ``pattern``; return how many, then broadcast.

        With ``parts``, ``pattern`` is a template whose ``{}`` fields are filled with the
        parts escaped (see :func:`build_pattern`). Runs SCAN + UNLINK in batches; the
        count includes copies a group invalidation had already made unreachable.
        """
        core = self._core
        if parts:
            pattern = build_pattern(pattern, *parts)
        match = core.scan_pattern(pattern)
        deleted, cursor, reachable = 0, 0, True
        while True:
            page = await self._call(
                "invalidate_scan", self._redis.scan, cursor, match=match, count=SCAN_BATCH
            )
            if page is FAILED:
                reachable = False
                break
            cursor, keys = int(page[0]), page[1]
            data_keys, lease_keys = core.split_scanned(keys)
            if data_keys or lease_keys:
                removed = await self._call("invalidate_unlink", self._unlink, data_keys, lease_keys)
                if removed is FAILED:
                    reachable = False
                    break
                deleted += removed
            if cursor == 0:
                break
        message = core.pattern_message(pattern, deleted)
        core.after_local_change(message)
        if reachable and await self._publish(message):
            core.sent(message)
        return deleted

    async def invalidate_group(self, group: str) -> bool:
        """Invalidate every key of ``group`` with one INCR, then broadcast; ``False`` if
        Redis could not be reached."""
        core = self._core
        message = core.group_message(group)
        keys = [core.layout.generation_key(group)]
        args: list[str | bytes] = [core.config.channel, message.encode()]
        bumped = await self._call("invalidate_group", self._bump_script, keys=keys, args=args)
        core.after_local_change(message)
        if bumped is FAILED:
            return False
        core.sent(message)
        return True

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
    ) -> T: ...

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float | timedelta = 0,
    ) -> Any:
        """The cached value, or ``loader()``'s result stored for ``ttl`` seconds.

        Concurrent misses of one key share one ``loader`` call in this process, and a
        Redis lease makes other processes wait for it rather than load too. A loader
        error reaches every caller waiting for it. With ``stale_ttl``, a value is kept
        that much longer and, once past ``ttl``, served while one caller refreshes it.
        """
        core = self._core
        plan = core.plan(key)
        ttl_ms = ttl_milliseconds(ttl)
        stale_s = ttl_seconds(stale_ttl) if stale_ttl else 0.0
        value = core.local_get(plan, model)
        if value is not MISSING:
            return value
        self._ensure_listener()
        epoch = core.local_epoch()
        flight_key = (key, model)
        read = await self._read(plan, with_ttl=stale_s > 0)
        if read is None:
            core.unavailable(plan)
            return await self._join(flight_key, epoch, partial(_load, loader, core, model))
        value = await self._decode(plan, read, model, epoch)
        if value is MISSING:
            fill = partial(self._fill, plan, loader, ttl_ms, stale_s, model, epoch)
            return await self._join(flight_key, epoch, fill)
        if core.is_fresh(read, stale_s) or flight_key in self._flights:
            return value
        refresh = partial(
            self._refresh, plan, loader, ttl_ms, stale_s, model, read.generation, epoch, value
        )
        try:
            return await self._join(flight_key, epoch, refresh)
        except Exception as error:
            core.refresh_failed(plan, error)
            return value

    async def _join(
        self, flight_key: tuple[str, Any], epoch: int, load: Callable[[], Coroutine[Any, Any, Any]]
    ) -> Any:
        """Wait for the load of ``flight_key`` in flight, or start it."""
        flight = self._flights.get(flight_key)
        if flight is None or flight.epoch != epoch:
            # A load that began before an invalidation applied here may carry the old
            # data: later callers start their own instead of joining it.
            task = asyncio.get_running_loop().create_task(load())
            flight = _Flight(task, epoch)
            self._flights[flight_key] = flight
            task.add_done_callback(partial(self._flight_done, flight_key, flight))
        return await asyncio.shield(flight.task)

    def _flight_done(
        self, flight_key: tuple[str, Any], flight: _Flight, task: asyncio.Task[Any]
    ) -> None:
        if self._flights.get(flight_key) is flight:
            del self._flights[flight_key]
        if not task.cancelled():
            # Retrieved here so that a load whose callers were all cancelled does not
            # log "exception was never retrieved".
            task.exception()

    async def _refresh(
        self,
        plan: KeyPlan,
        loader: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        stale_s: float,
        model: Any,
        generation: str,
        epoch: int,
        stale_value: Any,
    ) -> Any:
        """Reload a stale value, unless another process holds the lease (then serve it)."""
        token = await self._try_lease(plan)
        if token is None or token is FAILED:
            return stale_value
        return await self._load_and_store(
            plan, loader, ttl_ms, stale_s, model, generation, token, epoch
        )

    async def _fill(
        self,
        plan: KeyPlan,
        loader: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        stale_s: float,
        model: Any,
        epoch: int,
    ) -> Any:
        """Load a missing value under the lease, or wait for the process holding it."""
        core = self._core
        deadline = time.monotonic() + core.config.lease_wait
        while True:
            token = core.new_lease_token()
            keys, args = core.read_or_lease_args(plan, token)
            reply = await self._call(
                "lease_acquire", self._read_or_lease_script, keys=keys, args=args
            )
            if reply is FAILED:
                return await _load(loader, core, model)
            read, leased = core.parse_read_or_lease(reply)
            if read.data is not None:
                value = await self._decode(plan, read, model, epoch, count=False)
                if value is not MISSING:
                    return value
                continue  # it was corrupt, and is deleted: try again at once
            if leased or time.monotonic() >= deadline:
                return await self._load_and_store(
                    plan,
                    loader,
                    ttl_ms,
                    stale_s,
                    model,
                    read.generation,
                    token if leased else "",
                    epoch,
                )
            await asyncio.sleep(core.config.lease_poll_interval)

    async def _load_and_store(
        self,
        plan: KeyPlan,
        loader: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        stale_s: float,
        model: Any,
        generation: str,
        token: str,
        epoch: int,
    ) -> Any:
        core = self._core
        try:
            value = await _load(loader, core, model)
            data = core.encode(plan.key, value)
        except CacheValueTooLargeError as error:
            core.oversized_load(plan, error)
            await self._release(plan, token)
            return value
        except BaseException:
            await self._release(plan, token)
            raise
        keys, args = core.write_args(
            plan, data, ttl_ms + round(stale_s * 1000), generation=generation, lease_token=token
        )
        written = await self._call("set", self._write_script, keys=keys, args=args)
        core.loaded(plan, data, ttl_ms, model, value, epoch, stored=written == 1)
        return value

    # -- Pub/Sub ------------------------------------------------------------------------

    async def subscribe_invalidation(self, callback: InvalidationCallback) -> None:
        """Hand every invalidation message to ``callback`` (sync or async) until cancelled.

        Messages this cache sent come too (compare ``message.origin`` with
        :attr:`origin`). Resubscribes by itself after a disconnect; messages published
        while disconnected are lost (Pub/Sub delivers at most once).
        """
        await self._listen(callback, drives_local_tier=False)

    async def start(self, timeout: float = 5.0) -> bool:
        """Start the local tier's listener and wait until it serves; ``True`` once it does.

        Optional: the listener starts by itself on first use. Without a local tier,
        returns ``False`` at once.
        """
        if not self._core.local_tier_enabled:
            return False
        self._ensure_listener()
        deadline = time.monotonic() + timeout
        # Activation happens in the sans-I/O core, shared with the thread-based driver,
        # which has no asyncio.Event to set: a short poll is the simple bridge.
        while not self._core.local.active and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return self._core.local.active

    def _ensure_listener(self) -> None:
        if self._listener_task is None and self._core.local_tier_enabled and not self._closed:
            self._listener_task = asyncio.get_running_loop().create_task(
                self._listen(None, drives_local_tier=True)
            )

    async def _listen(
        self, callback: InvalidationCallback | None, *, drives_local_tier: bool
    ) -> None:
        core = self._core
        config = core.config
        client = self._listener_client()
        wait = config.resubscribe_min_wait
        try:
            while True:
                pubsub = client.pubsub()
                try:
                    await _bounded(
                        pubsub.subscribe(config.channel), max(config.operation_timeout, 1.0)
                    )
                    loop = asyncio.get_running_loop()
                    last_heard = next_ping = loop.time()
                    while True:
                        message = await pubsub.get_message(timeout=config.listener_ping_interval)
                        if _cancel_requested() or (drives_local_tier and self._closed):
                            raise asyncio.CancelledError
                        now = loop.time()
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
                            if drives_local_tier:
                                core.listener_subscribed()
                        elif message["type"] == "message":
                            await self._dispatch(message["data"], callback, drives_local_tier)
                except Exception as error:
                    if drives_local_tier:
                        core.listener_lost(error)
                    else:
                        core.subscriber_lost(error)
                finally:
                    await _close_quietly(pubsub)
                await asyncio.sleep(wait * random.uniform(0.5, 1.0))
                wait = min(wait * 2, config.resubscribe_max_wait)
        finally:
            if drives_local_tier:
                core.listener_stopped()

    async def _dispatch(
        self, data: bytes | str, callback: InvalidationCallback | None, drives_local_tier: bool
    ) -> None:
        if drives_local_tier:
            self._core.received(data)
            return
        message = InvalidationMessage.decode(data)
        if message is None or callback is None:
            return
        try:
            result = callback(message)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            self._core.callback_failed(error)

    def _listener_client(self) -> Any:
        """A client for Pub/Sub whose connections never retry by themselves.

        redis-py reconnects and resubscribes a Pub/Sub connection silently when retries
        are on; messages published in that gap are lost without the listener knowing,
        and the local tier would keep what they invalidated. With retries off, every
        disconnect reaches the listener, which flushes the local tier.
        """
        if self._listener_redis is None:
            self._listener_redis = _without_retries(self._redis)
        return self._listener_redis

    # -- lifecycle ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the listener and close what this cache owns. Idempotent."""
        self._closed = True
        task, self._listener_task = self._listener_task, None
        while task is not None and not task.done():
            # Cancelled again until it ends: see _cancel_requested.
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        listener_redis, self._listener_redis = self._listener_redis, None
        if listener_redis is not None and listener_redis is not self._redis:
            await _close_quietly(listener_redis)
        if self._owns_client:
            self._owns_client = False
            await _close_quietly(self._redis)

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

    async def _call(
        self, operation: str, command: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """Run one Redis command within the operation timeout; :data:`FAILED` on failure."""
        core = self._core
        if not core.allow(operation):
            return FAILED
        started = time.perf_counter()
        call = self._deadlines.start()
        try:
            result = await command(*args, **kwargs)
        except asyncio.CancelledError:
            if not self._deadlines.timed_out(call):
                raise
            core.failed(operation, TimeoutError(f"redis {operation} took over the timeout"))
            return FAILED
        except Exception as error:
            core.failed(operation, error)
            return FAILED
        finally:
            self._deadlines.finish(call)
        self._deadlines.settle(call)
        core.succeeded(operation, time.perf_counter() - started)
        return result

    async def _read(self, plan: KeyPlan, *, with_ttl: bool = False) -> Read | None:
        """Read ``plan``'s value; ``None`` when Redis could not be reached."""
        core = self._core
        if not with_ttl and not core.local_tier_enabled:
            for _ in range(3):  # a generation moving under our feet twice in a row is rare
                reply = await self._call("get", self._mget, *core.fast_read_keys(plan))
                if reply is FAILED:
                    return None
                read = core.parse_fast_read(plan, reply)
                if read is not None:
                    return read
        keys, args = core.read_args(plan, with_ttl=True)
        reply = await self._call("get", self._read_reply, keys, args)
        return None if reply is FAILED else core.parse_read(reply)

    async def _mget(self, generation_key: str, data_key: str) -> Any:
        return await self._execute_command("MGET", generation_key, data_key)

    async def _read_reply(self, keys: list[str], args: list[str]) -> Any:
        """Run the read script by its SHA, without redis-py's ``Script`` wrapper.

        This is every cache hit; the wrapper's per-call work is a visible share of it.
        """
        try:
            return await self._execute_command("EVALSHA", self._read_script.sha, 1, *keys, *args)
        except self._no_script_error:
            return await self._read_script(keys=keys, args=args)  # loads the script, then runs it

    async def _decode(
        self, plan: KeyPlan, read: Read, model: Any, epoch: int, *, count: bool = True
    ) -> Any:
        core = self._core
        try:
            return core.decode_read(plan, read, model, epoch, count=count)
        except CorruptValueError as error:
            core.corrupt(plan, error, model)
            keys, args = core.delete_corrupt_args(plan, read)
            await self._call("delete", self._delete_if_equal_script, keys=keys, args=args)
            return MISSING

    async def _try_lease(self, plan: KeyPlan) -> Any:
        """A lease token if this process may load, ``None`` if another one is, or FAILED."""
        token = self._core.new_lease_token()
        acquired = await self._call(
            "lease_acquire",
            self._redis.set,
            plan.lease_key,
            token,
            nx=True,
            px=self._core.lease_ms(),
        )
        if acquired is FAILED:
            return FAILED
        return token if acquired else None

    async def _release(self, plan: KeyPlan, token: str) -> None:
        if token:
            await self._call(
                "lease_release",
                self._release_script,
                keys=[plan.lease_key],
                args=[token],
            )

    async def _unlink(self, data_keys: list[str], lease_keys: list[str]) -> int:
        if lease_keys:
            await self._redis.delete(*lease_keys)
        return int(await self._redis.unlink(*data_keys)) if data_keys else 0

    async def _publish(self, message: InvalidationMessage) -> bool:
        published = await self._call(
            "publish", self._redis.publish, self._core.config.channel, message.encode()
        )
        return published is not FAILED


async def _load(loader: Callable[[], Any], core: CacheCore, model: Any) -> Any:
    """Call the loader (a coroutine function, or a plain one) and validate as ``model``."""
    result = loader()
    if inspect.isawaitable(result):
        result = await result
    return core.validate(result, model)


def _without_retries(client: Any) -> Any:
    """A client on its own pool, with the same connection settings and no retries."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return client
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    return redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool(
            connection_class=pool.connection_class, **kwargs
        )
    )


if sys.version_info >= (3, 11):

    def _cancel_requested() -> bool:
        """True if this task was asked to stop, even if the request was swallowed.

        A cancellation that lands while redis-py's Pub/Sub read is inside its own read
        timeout can be absorbed there (the read returns ``None`` and the task stays
        "cancelling"); a listener that then simply polled on would never end.
        """
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0

else:

    def _cancel_requested() -> bool:
        return False  # Python 3.10 cannot tell; aclose() sets a flag as well


async def _close_quietly(resource: Any) -> None:
    """Close a client or Pub/Sub object without letting a dead connection raise or hang."""
    close = getattr(resource, "aclose", None) or getattr(resource, "close", None)
    if close is None:
        return
    with suppress(Exception):
        result = close()
        if inspect.isawaitable(result):
            await _bounded(result, 1.0)

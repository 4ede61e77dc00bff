"""AsyncRedisCache: the cache on ``redis.asyncio`` (a thin driver over :mod:`._core`)."""

from __future__ import annotations

import asyncio
import inspect
import random
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from prometheus_client import CollectorRegistry

from . import _flows as flows
from . import _scripts
from ._codec import CorruptValueError
from ._config import CacheConfig, ttl_milliseconds, ttl_seconds
from ._core import FAILED, CacheCore, CoreFacade, KeyPlan, Read
from ._deadlines import Deadlines
from ._flights import TaskFlights
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
        self._commands = flows.commands(redis_client, self._unlink)
        from redis.exceptions import NoScriptError

        self._no_script_error = NoScriptError
        self._execute_command: Callable[..., Any] = redis_client.execute_command
        self._flights = TaskFlights()
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
        return await self._run(flows.set_value(self._core, key, value, ttl_milliseconds(ttl)))

    async def delete(self, key: str) -> bool:
        """Delete ``key`` everywhere (Redis, and every local tier); ``True`` if it existed."""
        return await self._run(flows.delete(self._core, key))

    async def invalidate(self, pattern: str, *parts: object) -> int:
        """Delete every key matching the glob ``pattern``; return how many, then broadcast.

        With ``parts``, ``pattern`` is a template whose ``{}`` fields are filled with the
        parts escaped (see :func:`build_pattern`). Runs SCAN + UNLINK in batches; the
        count includes copies a group invalidation had already made unreachable.
        """
        return await self._run(flows.invalidate(self._core, pattern, parts))

    async def invalidate_group(self, group: str) -> bool:
        """Invalidate every key of ``group`` with one INCR, then broadcast; ``False`` if
        Redis could not be reached."""
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
        job = flows.ReadThrough(plan, ttl_ms, stale_s, model, core.local_epoch())
        flight_key = (key, model)
        read = await self._read(plan, with_ttl=stale_s > 0)
        if read is None:
            core.unavailable(plan)
            return await self._join(flight_key, job.epoch, flows.load(core, job), loader)
        value = await self._decode(plan, read, model, job.epoch)
        if value is MISSING:
            return await self._join(flight_key, job.epoch, flows.fill(core, job), loader)
        if core.is_fresh(read, stale_s) or flight_key in self._flights:
            return value
        refresh = flows.refresh(core, job, read.generation, value)
        try:
            return await self._join(flight_key, job.epoch, refresh, loader)
        except Exception as error:
            core.refresh_failed(plan, error)
            return value

    async def _join(
        self,
        flight_key: tuple[str, Any],
        epoch: int,
        flow: flows.Flow[Any],
        loader: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Wait for the load of ``flight_key`` in flight, or run ``flow`` with ``loader``."""
        return await self._flights.join(flight_key, epoch, partial(self._run, flow, loader))

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
                        await asyncio.sleep(step.seconds)
                        reply = None
                    else:
                        reply = await _load(loader)
                except BaseException as error:
                    step = flow.throw(error)
                else:
                    step = flow.send(reply)
        except StopIteration as done:
            result: T = done.value
            return result

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

    async def _decode(self, plan: KeyPlan, read: Read, model: Any, epoch: int) -> Any:
        try:
            return self._core.decode_read(plan, read, model, epoch)
        except CorruptValueError as error:
            return await self._run(flows.drop_corrupt(self._core, plan, read, error, model))

    async def _unlink(self, data_keys: list[str], lease_keys: list[str]) -> int:
        if lease_keys:
            await self._redis.delete(*lease_keys)
        return int(await self._redis.unlink(*data_keys)) if data_keys else 0


async def _load(loader: Callable[[], Any] | None) -> Any:
    """Call the loader (a coroutine function, or a plain one) and await what it returns."""
    result = loader() if loader is not None else None
    if inspect.isawaitable(result):
        result = await result
    return result


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

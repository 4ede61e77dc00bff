"""Fixtures and a facade harness shared by the cache tests (unit and integration).

Test modules re-export the fixtures they use (``redis_server = conftest_cache.redis_server``).
One ``redis-server`` serves the whole session; tests that kill or pause a server start
their own with :class:`tests.redis_server.RedisServer`.

The harness gives the sync and async caches one async API, so that each behaviour is
written once and run against both: the async harness awaits the async cache; the sync
harness calls the sync cache directly (and uses threads where the async one uses tasks).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from commclient.cache import (
    AsyncMemoryCache,
    AsyncRedisCache,
    CacheConfig,
    InvalidationMessage,
    MemoryStore,
    SyncMemoryCache,
    SyncRedisCache,
)
from tests.redis_server import RedisServer

T = TypeVar("T")

RELAXED = CacheConfig(operation_timeout=2.0)
"""For tests that are not about timeouts: a slow, busy machine is not a Redis outage."""

_shared: RedisServer | None = None
_shared_lock = threading.Lock()


def shared_redis_server() -> RedisServer:
    """The session's redis-server, started on first use and stopped at interpreter exit."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            server = RedisServer().start()
            import atexit

            atexit.register(server.__exit__, None, None, None)
            _shared = server
        return _shared


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    return shared_redis_server()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A server of this test alone, which it may kill, pause and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone: tests share one server and never see each other."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def run(awaitable: Awaitable[T]) -> T:
    """Run a scenario on a fresh event loop (no pytest plugin needed in any environment)."""

    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def data_key(store: Any, prefix: str, key: str) -> str:
    """The Redis key holding ``key``'s value in ``store`` (a ``redis.Redis`` or a
    :class:`MemoryStore`): under its group's current generation, which a group without
    one gets as "0" (as a test planting a value needs)."""
    generation_key = f"{{{prefix}}}!gen:{key.partition(':')[0]}"
    if isinstance(store, MemoryStore):
        generation = store.generation(generation_key, "0")
    else:
        store.set(generation_key, "0", nx=True)
        generation = store.get(generation_key)
    return f"{{{prefix}}}:{key}#{generation.decode()}"


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def eventually(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.005
) -> float:
    """Poll ``predicate`` until it holds; return the seconds it took, fail after ``timeout``."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not reached within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


class Harness(Protocol):
    """The async face of one cache under test."""

    kind: str
    cache: Any

    async def get(self, key: str, model: Any = None, **kw: Any) -> Any: ...
    async def get_raw(self, key: str) -> Any: ...
    async def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool | None: ...
    async def delete(self, key: str) -> bool: ...
    async def invalidate(self, pattern: str, *parts: object) -> int: ...
    async def invalidate_group(self, group: str) -> bool: ...
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float = 0,
        delay: float = 0.0,
        **kw: Any,
    ) -> Any: ...
    async def many_get_or_set(
        self, count: int, key: str, loader: Callable[[], Any], *, delay: float = 0.0, **kw: Any
    ) -> list[Any]: ...
    async def subscribe(
        self, callback: Callable[[InvalidationMessage], object]
    ) -> Callable[[], Awaitable[None]]: ...
    async def start(self) -> bool: ...
    async def sleep(self, seconds: float) -> None: ...


class AsyncHarness:
    def __init__(self, cache: Any, kind: str) -> None:
        self.cache = cache
        self.kind = kind

    async def get(self, key: str, model: Any = None, **kw: Any) -> Any:
        return await self.cache.get(key, model, **kw)

    async def get_raw(self, key: str) -> Any:
        return await self.cache.get_raw(key)

    async def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool | None:
        result: bool | None = await self.cache.set(key, value, ttl)
        return result

    async def delete(self, key: str) -> bool:
        result: bool = await self.cache.delete(key)
        return result

    async def invalidate(self, pattern: str, *parts: object) -> int:
        result: int = await self.cache.invalidate(pattern, *parts)
        return result

    async def invalidate_group(self, group: str) -> bool:
        result: bool = await self.cache.invalidate_group(group)
        return result

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float = 0,
        delay: float = 0.0,
        **kw: Any,
    ) -> Any:
        async def load() -> Any:
            if delay:
                await asyncio.sleep(delay)
            return loader()

        return await self.cache.get_or_set(key, load, ttl, model, stale_ttl=stale_ttl, **kw)

    async def many_get_or_set(
        self, count: int, key: str, loader: Callable[[], Any], *, delay: float = 0.0, **kw: Any
    ) -> list[Any]:
        return list(
            await asyncio.gather(
                *(self.get_or_set(key, loader, delay=delay, **kw) for _ in range(count)),
                return_exceptions=True,
            )
        )

    async def subscribe(
        self, callback: Callable[[InvalidationMessage], object]
    ) -> Callable[[], Awaitable[None]]:
        task = asyncio.get_running_loop().create_task(self.cache.subscribe_invalidation(callback))

        async def stop() -> None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

        return stop

    async def start(self) -> bool:
        result: bool = await self.cache.start()
        return result

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SyncHarness:
    def __init__(self, cache: Any, kind: str) -> None:
        self.cache = cache
        self.kind = kind

    async def get(self, key: str, model: Any = None, **kw: Any) -> Any:
        return self.cache.get(key, model, **kw)

    async def get_raw(self, key: str) -> Any:
        return self.cache.get_raw(key)

    async def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool | None:
        result: bool | None = self.cache.set(key, value, ttl)
        return result

    async def delete(self, key: str) -> bool:
        result: bool = self.cache.delete(key)
        return result

    async def invalidate(self, pattern: str, *parts: object) -> int:
        result: int = self.cache.invalidate(pattern, *parts)
        return result

    async def invalidate_group(self, group: str) -> bool:
        result: bool = self.cache.invalidate_group(group)
        return result

    def _get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float = 0,
        delay: float = 0.0,
        **kw: Any,
    ) -> Any:
        def load() -> Any:
            if delay:
                time.sleep(delay)
            return loader()

        return self.cache.get_or_set(key, load, ttl, model, stale_ttl=stale_ttl, **kw)

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float = 0,
        delay: float = 0.0,
        **kw: Any,
    ) -> Any:
        return self._get_or_set(key, loader, ttl, model, stale_ttl=stale_ttl, delay=delay, **kw)

    async def many_get_or_set(
        self, count: int, key: str, loader: Callable[[], Any], *, delay: float = 0.0, **kw: Any
    ) -> list[Any]:
        barrier = threading.Barrier(count)

        def call() -> Any:
            barrier.wait()
            try:
                return self._get_or_set(key, loader, delay=delay, **kw)
            except Exception as error:
                return error

        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(lambda _: call(), range(count)))

    async def subscribe(
        self, callback: Callable[[InvalidationMessage], object]
    ) -> Callable[[], Awaitable[None]]:
        stop_event = threading.Event()
        thread = threading.Thread(
            target=self.cache.subscribe_invalidation,
            args=(callback,),
            kwargs={"stop": stop_event},
            daemon=True,
        )
        thread.start()

        async def stop() -> None:
            stop_event.set()
            thread.join(timeout=5)

        return stop

    async def start(self) -> bool:
        result: bool = self.cache.start()
        return result

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Facade:
    """How a test opens caches of one facade (``sync`` or ``async``) and backend."""

    def __init__(self, kind: str, backend: str) -> None:
        self.kind = kind
        self.backend = backend
        self.store = MemoryStore()

    def __repr__(self) -> str:
        return f"{self.backend}-{self.kind}"

    @asynccontextmanager
    async def open(
        self,
        url: str | None,
        prefix: str,
        *,
        config: CacheConfig | None = None,
        registry: CollectorRegistry | None = None,
        client: Any = None,
    ) -> AsyncIterator[Harness]:
        """A cache in a harness, closed on exit. ``client`` replaces the one from ``url``."""
        registry = registry or CollectorRegistry()
        # Tests that are not about timeouts must not turn a loaded machine into misses.
        config = config or RELAXED
        harness: Harness
        if self.backend == "memory" and client is None:
            if self.kind == "async":
                memory = AsyncMemoryCache(
                    prefix, store=self.store, config=config, registry=registry
                )
                harness = AsyncHarness(memory, "async")
                yield harness
                await memory.aclose()
            else:
                sync_memory = SyncMemoryCache(
                    prefix, store=self.store, config=config, registry=registry
                )
                harness = SyncHarness(sync_memory, "sync")
                yield harness
                sync_memory.close()
            return
        assert url is not None or client is not None
        if self.kind == "async":
            if client is not None:
                cache = AsyncRedisCache(client, prefix, config=config, registry=registry)
            else:
                assert url is not None
                cache = AsyncRedisCache.from_url(url, prefix, config=config, registry=registry)
            harness = AsyncHarness(cache, "async")
            try:
                yield harness
            finally:
                await cache.aclose()
        else:
            if client is not None:
                sync_cache = SyncRedisCache(client, prefix, config=config, registry=registry)
            else:
                assert url is not None
                sync_cache = SyncRedisCache.from_url(url, prefix, config=config, registry=registry)
            harness = SyncHarness(sync_cache, "sync")
            try:
                yield harness
            finally:
                sync_cache.close()


REDIS_FACADES = [
    pytest.param(Facade("sync", "redis"), marks=[pytest.mark.facade_sync], id="redis-sync"),
    pytest.param(Facade("async", "redis"), marks=[pytest.mark.facade_async], id="redis-async"),
]
MEMORY_FACADES = [
    pytest.param(Facade("sync", "memory"), marks=[pytest.mark.facade_sync], id="memory-sync"),
    pytest.param(Facade("async", "memory"), marks=[pytest.mark.facade_async], id="memory-async"),
]


@pytest.fixture(params=REDIS_FACADES)
def facade(request: pytest.FixtureRequest) -> Facade:
    """The Redis caches, sync and async."""
    result: Facade = request.param
    return result


@pytest.fixture(params=REDIS_FACADES + MEMORY_FACADES)
def any_facade(request: pytest.FixtureRequest) -> Facade:
    """Every cache: Redis and in memory, sync and async."""
    result: Facade = request.param
    return result


class LogCapture(logging.Handler):
    """Collects records of ``commclient.cache`` (works from any thread, unlike caplog's text)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        with self._lock2:
            return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def cache_logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    logger = logging.getLogger("commclient.cache")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)

"""Redis down = cache miss: no exception reaches the caller, every call is bounded, the
breaker makes a dead Redis cheap, one warning per outage, and recovery on its own."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache
from tests import conftest_cache
from tests.conftest_cache import (
    AsyncHarness,
    Facade,
    Harness,
    LogCapture,
    data_key,
    eventually,
    metric,
    run,
)
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis_server

prefix = conftest_cache.prefix
registry = conftest_cache.registry
facade = conftest_cache.facade
cache_logs = conftest_cache.cache_logs
own_redis_server = conftest_cache.own_redis_server

DEFAULTS = CacheConfig()  # the 100 ms operation timeout is what these tests are about
UNAVAILABLE_WARNING = "redis cache unavailable; serving misses until it recovers"
# A bound for correctness, far above the 100 ms operation timeout and far below the
# seconds an unbounded call would take (socket timeouts of 5 s, ten retries).
BOUND = 1.5


def default_client(facade: Facade, url: str) -> Any:
    """A client as an application would build it: redis-py's defaults (5 s, 10 retries)."""
    if facade.kind == "async":
        return redis.asyncio.Redis.from_url(url)
    return redis.Redis.from_url(url, socket_timeout=0.1, socket_connect_timeout=0.1)


async def exercise(cache: Harness, loader_calls: list[int]) -> list[float]:
    """Every operation once; return how long each took."""

    def loader() -> str:
        loader_calls.append(1)
        return "loaded"

    durations: list[float] = []
    # set(): None while the cache still tries Redis (a lost reply may be a write applied),
    # False once the breaker skips it.
    operations: list[tuple[Any, tuple[Any, ...]]] = [
        (cache.get("settings"), (None,)),
        (cache.get_raw("settings"), (None,)),
        (cache.set("settings", {"a": 1}), (False, None)),
        (cache.delete("settings"), (False,)),
        (cache.invalidate("user:*"), (0,)),
        (cache.invalidate_group("assistant"), (False,)),
        (cache.get_or_set("settings", loader), ("loaded",)),
    ]
    for operation, expected in operations:
        started = time.perf_counter()
        assert await operation in expected
        durations.append(time.perf_counter() - started)
    return durations


def test_unreachable_redis_is_a_miss_without_exceptions(
    facade: Facade, prefix: str, registry: CollectorRegistry, cache_logs: LogCapture
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    loader_calls: list[int] = []

    async def scenario() -> None:
        async with facade.open(url, prefix, config=DEFAULTS, registry=registry) as cache:
            for _ in range(10):
                durations = await exercise(cache, loader_calls)
                assert max(durations) < BOUND, durations

    run(scenario())
    assert len(loader_calls) == 10  # get_or_set fell back to the loader every time
    assert cache_logs.messages(logging.WARNING).count(UNAVAILABLE_WARNING) == 1
    errors = metric(
        registry,
        "redis_cache_errors_total",
        cache_name=prefix,
        operation="get",
        error_type="circuit_open",
    )
    assert errors > 0  # the breaker opened: later calls did not even try
    assert (
        metric(registry, "redis_cache_misses_total", cache_name=prefix, key_pattern="settings")
        == 30
    )


def test_first_call_after_redis_dies_is_bounded(
    facade: Facade, prefix: str, own_redis_server: RedisServer
) -> None:
    """Even with redis-py's default retries, the async cache bounds the call itself."""

    async def scenario() -> None:
        client = default_client(facade, own_redis_server.url)
        async with facade.open(None, prefix, config=DEFAULTS, client=client) as cache:
            await warm(cache, 1)
            assert await cache.get("settings") == 1
            own_redis_server.kill()
            loader_calls: list[int] = []
            durations = await exercise(cache, loader_calls)
            assert max(durations) < BOUND, durations
            assert loader_calls == [1]
        await _close(client)

    run(scenario())


def test_a_hung_redis_is_bounded_by_the_operation_timeout(
    facade: Facade, prefix: str, own_redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    """SIGSTOP: the connection stays open but nothing answers; only a timeout helps."""

    async def scenario() -> None:
        client = default_client(facade, own_redis_server.url)
        async with facade.open(
            None, prefix, config=DEFAULTS, client=client, registry=registry
        ) as cache:
            await warm(cache, 1)
            own_redis_server.pause()
            try:
                started = time.perf_counter()
                assert await cache.get("settings") is None
                first = time.perf_counter() - started
                assert first < BOUND, first
                for _ in range(5):
                    assert await cache.get("settings") is None
            finally:
                own_redis_server.resume()

            # The breaker reopens to a probe after its cooldown; the probe succeeds.
            async def recovered() -> bool:
                return await cache.get("settings") == 1

            await eventually(recovered, timeout=5.0, interval=0.05)
        await _close(client)

    run(scenario())
    assert (
        metric(
            registry,
            "redis_cache_errors_total",
            cache_name=prefix,
            operation="get",
            error_type="circuit_open",
        )
        > 0
    )


def test_one_warning_per_outage_and_recovery(
    facade: Facade, prefix: str, own_redis_server: RedisServer, cache_logs: LogCapture
) -> None:
    config = CacheConfig(breaker_cooldown=0.2)

    async def scenario() -> None:
        async with facade.open(own_redis_server.url, prefix, config=config) as cache:
            for outage in (1, 2):
                await warm(cache, outage)
                own_redis_server.kill()
                for _ in range(20):
                    assert await cache.get("settings") is None
                    assert await cache.set("settings", 0) in (False, None)
                assert cache_logs.messages(logging.WARNING).count(UNAVAILABLE_WARNING) == outage
                own_redis_server.start()

                async def recovered(value: int = outage) -> bool:
                    return await cache.set("settings", value) is True

                await eventually(recovered, timeout=5.0, interval=0.05)
                assert await cache.get("settings") == outage
            assert cache_logs.messages(logging.INFO).count("redis cache recovered") == 2

    run(scenario())


def test_sync_from_url_sets_short_socket_timeouts(prefix: str) -> None:
    cache = SyncRedisCache.from_url(
        "redis://127.0.0.1:1/0", prefix, config=CacheConfig(operation_timeout=0.25)
    )
    kwargs = cache._redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["socket_connect_timeout"] == 0.25
    cache.close()
    # A caller's client without timeouts is used through a bounded copy; it is untouched.
    callers = redis.Redis()
    callers_timeout = callers.connection_pool.connection_kwargs.get("socket_timeout")
    assert callers_timeout is None or callers_timeout > 0.25
    bounded = SyncRedisCache(callers, prefix, config=CacheConfig(operation_timeout=0.25))
    kwargs = bounded._redis.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.25)
    assert callers.connection_pool.connection_kwargs.get("socket_timeout") == callers_timeout
    bounded.close()
    # One with short timeouts of its own is used as it is, and stays the caller's.
    short = redis.Redis(socket_timeout=0.1, socket_connect_timeout=0.1)
    with SyncRedisCache(short, prefix, config=CacheConfig(operation_timeout=0.25)) as cache:
        assert cache._redis is short


test_sync_from_url_sets_short_socket_timeouts = pytest.mark.facade_sync(
    test_sync_from_url_sets_short_socket_timeouts
)


def test_async_cache_owns_only_what_it_built(prefix: str, own_redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(own_redis_server.url)
        async with AsyncRedisCache(client, prefix) as cache:
            await cache.set("k", 1)
        assert await client.ping()  # a client passed in stays open
        await client.aclose()
        owned = AsyncRedisCache.from_url(own_redis_server.url, prefix)
        await owned.set("k", 1)
        await owned.aclose()
        await owned.aclose()  # idempotent

    run(scenario())


test_async_cache_owns_only_what_it_built = pytest.mark.facade_async(
    test_async_cache_owns_only_what_it_built
)


async def warm(cache: Harness, value: int) -> None:
    """Store the value the test starts from, retrying: with the real 100 ms timeout a busy
    machine may turn the first write into a miss, which is not what these tests check."""

    async def stored() -> bool:
        return await cache.set("settings", value)

    await eventually(stored, timeout=10.0, interval=0.05)


async def _close(client: Any) -> None:
    result = client.aclose() if hasattr(client, "aclose") else client.close()
    if result is not None:
        await result


@pytest.mark.facade_async
def test_async_timeouts_are_told_apart_from_cancellation(
    prefix: str, own_redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    """A timed-out call leaves its task clean; a caller's own cancel is never swallowed."""
    import asyncio
    import sys

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(own_redis_server.url)
        cache = AsyncRedisCache(client, prefix, config=DEFAULTS, registry=registry)
        await warm(AsyncHarness(cache, "async"), 1)
        own_redis_server.pause()
        try:
            assert await cache.get("settings") is None  # timed out
            task = asyncio.current_task()
            assert task is not None
            if sys.version_info >= (3, 11):
                assert task.cancelling() == 0
            await asyncio.sleep(0.01)  # and no stray cancellation arrives later

            config = CacheConfig(operation_timeout=5.0, breaker_failure_threshold=100)
            slow = AsyncRedisCache(client, prefix, config=config, registry=CollectorRegistry())
            pending = asyncio.get_running_loop().create_task(slow.get("settings"))
            await asyncio.sleep(0.05)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
        finally:
            own_redis_server.resume()
        await client.aclose()

    run(scenario())
    timeouts = metric(
        registry,
        "redis_cache_errors_total",
        cache_name=prefix,
        operation="get",
        error_type="TimeoutError",
    )
    assert timeouts == 1


def test_set_tells_a_lost_reply_from_a_write_not_applied(
    facade: Facade, prefix: str, own_redis_server: RedisServer
) -> None:
    """``set()``: ``True`` once Redis confirmed the write; ``None`` when its reply was lost
    (Redis may still apply it, and here does once resumed); ``False`` only when Redis surely
    did not apply it: the breaker skipped Redis, or Redis refused the command."""
    # A generous timeout: a loaded machine must not turn the confirmed writes into lost ones.
    config = CacheConfig(operation_timeout=1.0, breaker_failure_threshold=1, breaker_cooldown=60.0)
    raw = redis.Redis.from_url(own_redis_server.url)

    async def scenario() -> None:
        async with facade.open(own_redis_server.url, prefix, config=config) as cache:
            assert await cache.set("settings", 1) is True
            raw.rpush(f"{{{prefix}}}!gen:wrongtype", "not a generation")
            assert await cache.set("wrongtype:key", 1) is False  # a WRONGTYPE reply
            own_redis_server.pause()
            try:
                assert await cache.set("settings", 2) is None  # sent; no reply in time
                assert await cache.set("skipped", 3) is False  # the breaker is open now
            finally:
                own_redis_server.resume()

            async def applied() -> bool:
                return raw.get(data_key(raw, prefix, "settings")) == b"2"

            await eventually(applied, timeout=5.0, interval=0.05)
            assert raw.exists(data_key(raw, prefix, "skipped")) == 0

    run(scenario())
    raw.close()

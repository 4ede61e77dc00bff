"""The cache through Redis Sentinel (a real ``redis-sentinel`` process): clients from
``Sentinel.master_for``, local tiers kept in step by Pub/Sub, the listener's own
connections found through Sentinel too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio.sentinel
import redis.sentinel

from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache
from tests import conftest_cache
from tests.conftest_cache import eventually, run
from tests.redis_server import RedisSentinelServer, RedisServer

pytestmark = pytest.mark.redis_server

prefix = conftest_cache.prefix

LOCAL = CacheConfig(local_tier_size=100, operation_timeout=2.0, listener_ping_interval=0.2)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinelServer]:
    with RedisServer() as master, RedisSentinelServer(master) as watching:
        yield watching


def test_sync_cache_through_sentinel(sentinel: RedisSentinelServer, prefix: str) -> None:
    manager = redis.sentinel.Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=1.0)
    clients = [manager.master_for(sentinel.service, socket_timeout=1.0) for _ in range(2)]
    with (
        SyncRedisCache(clients[0], prefix, config=LOCAL) as writer,
        SyncRedisCache(clients[1], prefix, config=LOCAL) as reader,
    ):
        assert writer.start()
        assert reader.start()
        assert writer.set("global_settings", {"tz": "UTC"})
        assert reader.get("global_settings") == {"tz": "UTC"}  # held locally now
        assert writer.invalidate_group("global_settings")

        async def reader_dropped() -> bool:
            return reader.get("global_settings") is None

        run(eventually(reader_dropped, timeout=5.0))
        assert reader.get_or_set("user:1", lambda: "loaded") == "loaded"
    for client in clients:
        client.close()


def test_async_cache_through_sentinel(sentinel: RedisSentinelServer, prefix: str) -> None:
    async def scenario() -> None:
        manager = redis.asyncio.sentinel.Sentinel([("127.0.0.1", sentinel.port)])
        async with (
            AsyncRedisCache(manager.master_for(sentinel.service), prefix, config=LOCAL) as writer,
            AsyncRedisCache(manager.master_for(sentinel.service), prefix, config=LOCAL) as reader,
        ):
            assert await writer.start()
            assert await reader.start()
            assert await writer.set("assistant:1", {"name": "a"})
            assert await reader.get("assistant:1") == {"name": "a"}
            assert await writer.invalidate("assistant:*") == 1

            async def reader_dropped() -> bool:
                return await reader.get("assistant:1") is None

            await eventually(reader_dropped, timeout=5.0)

    run(scenario())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_cache_through_sentinel_keeps_to_the_operation_timeout(
    sentinel: RedisSentinelServer, prefix: str, kind: str
) -> None:
    """The primary stalls (SIGSTOP) under a client without a socket timeout of its own:
    a read still ends after about one operation timeout, as a miss."""
    config = CacheConfig(operation_timeout=0.2, breaker_failure_threshold=100)
    address = [("127.0.0.1", sentinel.port)]
    if kind == "sync":
        client = redis.sentinel.Sentinel(address, socket_timeout=1.0).master_for(sentinel.service)
        cache = SyncRedisCache(client, prefix, config=config)
        assert cache.set("settings:1", "v1")
        results: list[Any] = []
        reader = threading.Thread(target=lambda: results.append(cache.get("settings:1")))
        sentinel.master.pause()
        try:
            reader.start()
            reader.join(timeout=1.5)
            assert not reader.is_alive(), "get() blocked on a paused primary"
            assert results == [None]
        finally:
            sentinel.master.resume()
            reader.join(timeout=10)
        cache.close()
        client.close()
        return

    async def scenario() -> None:
        manager = redis.asyncio.sentinel.Sentinel(address, socket_timeout=1.0)
        async with AsyncRedisCache(
            manager.master_for(sentinel.service), prefix, config=config
        ) as async_cache:
            assert await async_cache.set("settings:1", "v1")
            sentinel.master.pause()
            try:
                assert await asyncio.wait_for(async_cache.get("settings:1"), 1.5) is None
            finally:
                sentinel.master.resume()

    run(scenario())

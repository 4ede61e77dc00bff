"""The cache through Redis Sentinel (a real ``redis-sentinel`` process): clients from
``Sentinel.master_for``, local tiers kept in step by Pub/Sub, the listener's own
connections found through Sentinel too."""

from __future__ import annotations

from collections.abc import Iterator

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

"""The cache on a real 3-primary Redis Cluster started on loopback: every key of a cache
in one hash slot, scripts, SCAN-based invalidation and Pub/Sub invalidation included."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache
from tests import conftest_cache
from tests.conftest_cache import eventually, run
from tests.redis_server import RedisClusterServers

pytestmark = pytest.mark.redis_server

prefix = conftest_cache.prefix

LOCAL = CacheConfig(local_tier_size=100, operation_timeout=2.0, listener_ping_interval=0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(3) as servers:
        yield servers


def sync_client(cluster: RedisClusterServers) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])


def async_client(cluster: RedisClusterServers) -> Any:
    return redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])


def test_keys_of_a_cache_share_one_slot_and_prefixes_spread(
    cluster: RedisClusterServers, prefix: str
) -> None:
    client = sync_client(cluster)
    with SyncRedisCache(client, prefix, config=CacheConfig(operation_timeout=2.0)) as cache:
        for key in ("assistant:1", "user:2", "global_settings"):
            assert cache.set(key, key)
        assert cache.invalidate_group("assistant")
        everywhere = redis.cluster.RedisCluster.PRIMARIES
        keys = [k.decode() for k in client.keys(f"{{{prefix}}}*", target_nodes=everywhere)]
        assert len(keys) >= 4
        assert {client.keyslot(k) for k in keys} == {client.keyslot(f"{{{prefix}}}")}
    # Different caches land on different primaries: the cluster is really used.
    nodes = {client.get_node_from_key(f"{{{prefix}-{n}}}").port for n in range(30)}
    assert len(nodes) == 3
    client.close()


def test_sync_cache_on_a_cluster(cluster: RedisClusterServers, prefix: str) -> None:
    writer_client, reader_client = sync_client(cluster), sync_client(cluster)
    with (
        SyncRedisCache(writer_client, prefix, config=LOCAL) as writer,
        SyncRedisCache(reader_client, prefix, config=LOCAL) as reader,
    ):
        assert writer.start()
        assert reader.start()
        assert writer.set("assistant:1", {"name": "a"})
        assert reader.get("assistant:1") == {"name": "a"}  # now held locally
        assert writer.get_or_set("global_settings", lambda: {"tz": "UTC"}, stale_ttl=5) == {
            "tz": "UTC"
        }
        assert reader.get_or_set("global_settings", lambda: "not called") == {"tz": "UTC"}
        assert writer.invalidate("assistant:*") == 1
        run(eventually(_async_none(reader.get, "assistant:1"), timeout=5.0))
        writer.set("assistant:2", 2)
        assert reader.get("assistant:2") == 2
        assert writer.invalidate_group("assistant")
        run(eventually(_async_none(reader.get, "assistant:2"), timeout=5.0))
        assert writer.delete("global_settings")
        run(eventually(_async_none(reader.get, "global_settings"), timeout=5.0))
    writer_client.close()
    reader_client.close()


def _async_none(function: Any, key: str) -> Any:
    async def is_none() -> bool:
        return function(key) is None

    return is_none


def test_async_cache_on_a_cluster(cluster: RedisClusterServers, prefix: str) -> None:
    async def scenario() -> None:
        async with (
            AsyncRedisCache(async_client(cluster), prefix, config=LOCAL) as writer,
            AsyncRedisCache(async_client(cluster), prefix, config=LOCAL) as reader,
        ):
            assert await writer.start()
            assert await reader.start()
            assert await writer.set("assistant:1", {"name": "a"})
            assert await reader.get("assistant:1") == {"name": "a"}

            async def loader() -> dict[str, str]:
                await asyncio.sleep(0.05)
                return {"tz": "UTC"}

            values = await asyncio.gather(
                *(reader.get_or_set("global_settings", loader) for _ in range(10))
            )
            assert values == [{"tz": "UTC"}] * 10
            assert await writer.invalidate_group("assistant")

            async def reader_dropped() -> bool:
                return await reader.get("assistant:1") is None

            await eventually(reader_dropped, timeout=5.0)
            await writer.set("user:1", 1)
            assert await reader.get("user:1") == 1
            assert await writer.invalidate("user:*") == 1

            async def reader_dropped_user() -> bool:
                return await reader.get("user:1") is None

            await eventually(reader_dropped_user, timeout=5.0)

    run(scenario())


def test_operations_after_another_cache_moved_the_group(
    cluster: RedisClusterServers, prefix: str
) -> None:
    """The scripts' declared data key is of the generation this cache last saw; another
    cache's group invalidation makes it stale, and each script's answer (the current
    generation) travels back through the cluster client for the retry."""
    config = CacheConfig(operation_timeout=2.0)
    client, other_client = sync_client(cluster), sync_client(cluster)
    with (
        SyncRedisCache(client, prefix, config=config) as cache,
        SyncRedisCache(other_client, prefix, config=config) as other,
    ):
        assert other.invalidate_group("assistant")
        assert cache.set("assistant:1", "v1")
        assert other.get("assistant:1") == "v1"
        assert other.invalidate_group("assistant")
        assert other.set("assistant:1", "v2")
        assert cache.delete("assistant:1")
        assert other.get("assistant:1") is None
        assert other.invalidate_group("assistant")
        assert other.set("assistant:1", "v3")
        assert cache.get_or_set("assistant:1", lambda: "not called", stale_ttl=5) == "v3"
        assert other.invalidate_group("assistant")
        assert cache.get_or_set("assistant:2", lambda: "loaded") == "loaded"
        assert other.get("assistant:2") == "loaded"
        assert not client.exists(f"{{{prefix}}}:assistant:2#L")
    client.close()
    other_client.close()


def test_sync_cache_on_a_callers_cluster_client_keeps_to_the_operation_timeout(
    cluster: RedisClusterServers, prefix: str
) -> None:
    """The caller's cluster client has no socket timeout and retries ten times: the
    cache's calls through it must still end after about one operation timeout."""
    client = sync_client(cluster)
    config = CacheConfig(operation_timeout=0.2, breaker_failure_threshold=100)
    cache = SyncRedisCache(client, prefix, config=config)
    assert cache.set("settings:1", "v1")
    slot_owner = client.get_node_from_key(f"{{{prefix}}}").port
    owner = next(node for node in cluster.nodes if node.port == slot_owner)
    results: list[Any] = []
    reader = threading.Thread(target=lambda: results.append(cache.get("settings:1")), daemon=True)
    owner.pause()
    try:
        reader.start()
        # Well under the cluster's node timeout (2 s): the other primaries keep it.
        reader.join(timeout=1.5)
        assert not reader.is_alive(), "get() blocked on a paused cluster primary"
        assert results == [None]
    finally:
        owner.resume()
        reader.join(timeout=10)
    assert cache.get("settings:1") == "v1"
    cache.close()
    client.close()


def test_async_cache_on_a_cluster_keeps_to_the_operation_timeout(
    cluster: RedisClusterServers, prefix: str
) -> None:
    config = CacheConfig(operation_timeout=0.2, breaker_failure_threshold=100)

    async def scenario() -> None:
        client = async_client(cluster)
        async with AsyncRedisCache(client, prefix, config=config) as cache:
            assert await cache.set("settings:1", "v1")
            slot_owner = client.get_node_from_key(f"{{{prefix}}}").port
            owner = next(node for node in cluster.nodes if node.port == slot_owner)
            owner.pause()
            try:
                # Well under the cluster's node timeout (2 s).
                assert await asyncio.wait_for(cache.get("settings:1"), 1.5) is None
            finally:
                owner.resume()
        await client.aclose()

    run(scenario())

"""Redis under ``maxmemory`` with each ``allkeys-*`` policy, as managed Redis runs by
default: evicting generation keys never brings an invalidated value back."""

from __future__ import annotations

import logging

import pytest
import redis
from prometheus_client import CollectorRegistry

from commclient.cache import CacheConfig, SyncRedisCache
from tests import conftest_cache
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server

cache_logs = conftest_cache.cache_logs

GROUPS = 1500
CONFIG = CacheConfig(operation_timeout=2.0)


@pytest.mark.parametrize("policy", ["allkeys-random", "allkeys-lru", "allkeys-lfu"])
def test_eviction_never_serves_an_invalidated_value(policy: str) -> None:
    args = ("--maxmemory", "3mb", "--maxmemory-policy", policy)
    # LFU keeps what is used most: the filler is read more often than the generation
    # keys (every access counted), as a busy server's hot data is.
    args += ("--lfu-log-factor", "0")
    with RedisServer(extra_args=args) as server:
        admin = redis.Redis.from_url(server.url)
        with SyncRedisCache.from_url(
            server.url, "evict", config=CONFIG, registry=CollectorRegistry()
        ) as cache:
            for index in range(GROUPS):
                assert cache.set(f"g{index}:item", "old" * 100) is True
                assert cache.invalidate_group(f"g{index}") is True
        # Other data fills the memory until Redis has evicted about half of the
        # generation keys (and, depending on the policy, some of the values).
        filler = b"x" * 1024
        batch = 0
        while _generations_left(admin) > GROUPS // 2:
            with admin.pipeline(transaction=False) as pipe:
                for index in range(200):
                    pipe.set(f"filler:{batch}:{index}", filler)
                    for _ in range(4):
                        pipe.get(f"filler:{batch}:{index}")
                pipe.execute()
            batch += 1
        with SyncRedisCache.from_url(
            server.url, "evict", config=CONFIG, registry=CollectorRegistry()
        ) as fresh:
            old_reads = sum(fresh.get(f"g{index}:item") is not None for index in range(GROUPS))
        assert old_reads == 0


def _generations_left(admin: redis.Redis) -> int:
    return sum(1 for _ in admin.scan_iter("{evict}!gen:*", count=1000))


@pytest.mark.parametrize(
    ("policy", "level"), [("allkeys-lru", logging.INFO), ("noeviction", logging.WARNING)]
)
def test_start_reports_the_eviction_policy(
    policy: str, level: int, cache_logs: conftest_cache.LogCapture
) -> None:
    with (
        RedisServer(extra_args=("--maxmemory-policy", policy)) as server,
        SyncRedisCache.from_url(server.url, "policy", registry=CollectorRegistry()) as cache,
    ):
        assert cache.start() is False  # no local tier: only the check
    reported = [r.levelno for r in cache_logs.records if getattr(r, "policy", None) == policy]
    assert reported == [level]

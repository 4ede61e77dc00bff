"""Redis killed while callers keep calling: misses and loader calls, never an exception;
then recovery after the restart, with the local tier flushed."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
import redis

from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache
from tests import conftest_cache
from tests.conftest_cache import LogCapture, data_key, eventually, run
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server

prefix = conftest_cache.prefix
own_redis_server = conftest_cache.own_redis_server
cache_logs = conftest_cache.cache_logs

CONFIG = CacheConfig(
    local_tier_size=100, breaker_cooldown=0.2, listener_ping_interval=0.2, operation_timeout=1.0
)
CALLERS = 8


class Observations:
    """What the callers saw, phase by phase."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.values: dict[str, list[Any]] = {"before": [], "outage": [], "after": []}
        self.phase = "before"

    def record(self, value: Any, phase: str) -> None:
        """Keep ``value`` under the phase its call *started* in: a thread descheduled
        across a phase change must not make an old read look like a new one."""
        with self.lock:
            self.values[phase].append(value)

    def fail(self, error: BaseException) -> None:
        with self.lock:
            self.errors.append(error)


def check(observed: Observations, cache_logs: LogCapture) -> None:
    assert observed.errors == []
    assert "cached" in observed.values["before"]
    # During the outage: misses (None) and loader results, never the cached value once
    # the cache noticed, and never an exception.
    assert None in observed.values["outage"] or "loaded" in observed.values["outage"]
    warnings = cache_logs.messages(logging.WARNING)
    assert warnings.count("redis cache unavailable; serving misses until it recovers") == 1


@pytest.mark.facade_async
def test_async_cache_survives_redis_dying_mid_run(
    own_redis_server: RedisServer, prefix: str, cache_logs: LogCapture
) -> None:
    observed = Observations()

    async def scenario() -> None:
        cache = AsyncRedisCache.from_url(own_redis_server.url, prefix, config=CONFIG)
        assert await cache.start()
        await cache.set("settings", "cached")
        stop = asyncio.Event()

        async def loader() -> str:
            return "loaded"

        async def caller(index: int) -> None:
            while not stop.is_set():
                phase = observed.phase
                try:
                    if index % 3 == 0:
                        observed.record(await cache.get("settings"), phase)
                    elif index % 3 == 1:
                        observed.record(await cache.get_or_set("settings", loader), phase)
                    else:
                        await cache.set(f"other:{index}", index)
                        await cache.invalidate_group("other")
                except Exception as error:  # the point of the test: none may escape
                    observed.fail(error)
                await asyncio.sleep(0.002)

        tasks = [asyncio.get_running_loop().create_task(caller(i)) for i in range(CALLERS)]
        await asyncio.sleep(0.3)
        observed.phase = "outage"
        own_redis_server.kill()

        async def bypassed() -> bool:
            return not cache.local_tier_active

        await eventually(bypassed, timeout=5.0)
        assert await cache.get("settings") is None  # the local copy went with the listener
        await asyncio.sleep(0.5)
        own_redis_server.start()
        observed.phase = "after"
        # Written behind the cache's back: only a flushed local tier can show it.
        admin = redis.Redis.from_url(own_redis_server.url)
        admin.set(data_key(admin, prefix, "settings"), b'"fresh"')

        async def recovered() -> bool:
            return cache.local_tier_active and await cache.get("settings") == "fresh"

        await eventually(recovered, timeout=10.0)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)
        await cache.aclose()

    run(scenario())
    check(observed, cache_logs)
    assert "fresh" in observed.values["after"]
    assert "cached" not in observed.values["after"]


@pytest.mark.facade_sync
def test_sync_cache_survives_redis_dying_mid_run(
    own_redis_server: RedisServer, prefix: str, cache_logs: LogCapture
) -> None:
    observed = Observations()
    cache = SyncRedisCache.from_url(own_redis_server.url, prefix, config=CONFIG)
    assert cache.start()
    cache.set("settings", "cached")
    stop = threading.Event()

    def caller(index: int) -> None:
        while not stop.is_set():
            phase = observed.phase
            try:
                if index % 3 == 0:
                    observed.record(cache.get("settings"), phase)
                elif index % 3 == 1:
                    observed.record(cache.get_or_set("settings", lambda: "loaded"), phase)
                else:
                    cache.set(f"other:{index}", index)
                    cache.invalidate_group("other")
            except Exception as error:  # the point of the test: none may escape
                observed.fail(error)
            time.sleep(0.002)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        observed.phase = "outage"
        own_redis_server.kill()
        deadline = time.monotonic() + 5
        while cache.local_tier_active and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not cache.local_tier_active
        assert cache.get("settings") is None
        time.sleep(0.5)
        own_redis_server.start()
        observed.phase = "after"
        admin = redis.Redis.from_url(own_redis_server.url)
        admin.set(data_key(admin, prefix, "settings"), b'"fresh"')
        deadline = time.monotonic() + 10
        while not (cache.local_tier_active and cache.get("settings") == "fresh"):
            assert time.monotonic() < deadline, "no recovery"
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        cache.close()
    check(observed, cache_logs)
    assert "fresh" in observed.values["after"]
    assert "cached" not in observed.values["after"]

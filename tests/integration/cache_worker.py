"""A separate process for the multi-process cache tests (run with ``python -m``).

``local-tier FACADE URL PREFIX KEY``: holds KEY in its local tier and, for every line
``watch VALUE`` on stdin (VALUE in JSON: what KEY holds now), reports when the value
it serves changes: one JSON line with the wall-clock time it noticed and how many reads
it sent to Redis meanwhile.

``stampede FACADE URL PREFIX KEY COUNTER GO_AT``: at GO_AT (wall clock), 50 concurrent
``get_or_set(KEY)``; the loader counts its calls in Redis at COUNTER. Prints the values.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache

LOCAL = CacheConfig(local_tier_size=100, local_tier_ttl=60.0, operation_timeout=2.0)
CONCURRENT_CALLERS = 50
LOAD_SECONDS = 0.3


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def redis_reads(registry: CollectorRegistry, prefix: str) -> float:
    value = registry.get_sample_value(
        "redis_cache_operations_duration_seconds_count", {"cache_name": prefix, "operation": "get"}
    )
    return value or 0.0


async def local_tier_async(url: str, prefix: str, key: str) -> None:
    registry = CollectorRegistry()
    async with AsyncRedisCache.from_url(url, prefix, config=LOCAL, registry=registry) as cache:
        assert await cache.start()
        loop = asyncio.get_running_loop()
        for line in iter(sys.stdin.readline, ""):
            command, _, expected = line.strip().partition(" ")
            if command != "watch":
                continue
            # The previous round's change may still be on its way here: wait for it.
            old = await cache.get(key)
            while old != json.loads(expected):
                await asyncio.sleep(0.001)
                old = await cache.get(key)
            reads = redis_reads(registry, prefix)
            emit({"ready": True, "value": old})
            await loop.run_in_executor(None, sys.stdin.readline)  # "go": the change is coming
            deadline = time.monotonic() + 10
            value = old
            while value == old and time.monotonic() < deadline:
                value = await cache.get(key)
                await asyncio.sleep(0)
            emit(
                {
                    "noticed_at": time.time(),
                    "value": value,
                    "redis_reads": redis_reads(registry, prefix) - reads,
                    "local_tier_active": cache.local_tier_active,
                }
            )


def local_tier_sync(url: str, prefix: str, key: str) -> None:
    registry = CollectorRegistry()
    with SyncRedisCache.from_url(url, prefix, config=LOCAL, registry=registry) as cache:
        assert cache.start()
        for line in iter(sys.stdin.readline, ""):
            command, _, expected = line.strip().partition(" ")
            if command != "watch":
                continue
            # The previous round's change may still be on its way here: wait for it.
            old = cache.get(key)
            while old != json.loads(expected):
                time.sleep(0.001)
                old = cache.get(key)
            reads = redis_reads(registry, prefix)
            emit({"ready": True, "value": old})
            sys.stdin.readline()
            deadline = time.monotonic() + 10
            value = old
            while value == old and time.monotonic() < deadline:
                value = cache.get(key)
            emit(
                {
                    "noticed_at": time.time(),
                    "value": value,
                    "redis_reads": redis_reads(registry, prefix) - reads,
                    "local_tier_active": cache.local_tier_active,
                }
            )


def count_call(url: str, counter: str) -> None:
    redis.Redis.from_url(url).incr(counter)


async def stampede_async(url: str, prefix: str, key: str, counter: str, go_at: float) -> None:
    async with AsyncRedisCache.from_url(
        url, prefix, config=CacheConfig(operation_timeout=5.0)
    ) as cache:

        async def loader() -> dict[str, Any]:
            count_call(url, counter)
            await asyncio.sleep(LOAD_SECONDS)
            return {"loaded_by": os.getpid()}

        await asyncio.sleep(max(0.0, go_at - time.time()))
        results = await asyncio.gather(
            *(cache.get_or_set(key, loader) for _ in range(CONCURRENT_CALLERS)),
            return_exceptions=True,
        )
    emit({"results": [r if not isinstance(r, BaseException) else repr(r) for r in results]})


def stampede_sync(url: str, prefix: str, key: str, counter: str, go_at: float) -> None:
    with SyncRedisCache.from_url(url, prefix, config=CacheConfig(operation_timeout=5.0)) as cache:

        def loader() -> dict[str, Any]:
            count_call(url, counter)
            time.sleep(LOAD_SECONDS)
            return {"loaded_by": os.getpid()}

        barrier = threading.Barrier(CONCURRENT_CALLERS)

        def call() -> Any:
            barrier.wait()
            try:
                return cache.get_or_set(key, loader)
            except Exception as error:
                return repr(error)

        time.sleep(max(0.0, go_at - time.time()))
        with ThreadPoolExecutor(CONCURRENT_CALLERS) as pool:
            results = list(pool.map(lambda _: call(), range(CONCURRENT_CALLERS)))
    emit({"results": results})


def main(argv: list[str]) -> None:
    mode, facade, url, prefix, key = argv[:5]
    if mode == "local-tier":
        if facade == "async":
            asyncio.run(local_tier_async(url, prefix, key))
        else:
            local_tier_sync(url, prefix, key)
    elif mode == "stampede":
        counter, go_at = argv[5], float(argv[6])
        if facade == "async":
            asyncio.run(stampede_async(url, prefix, key, counter, go_at))
        else:
            stampede_sync(url, prefix, key, counter, go_at)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""A ``get_or_set`` miss against the bare redis-py work it stands for: a GET that misses and
a SET of the loaded value (goal: at most 1.6 x; the lease is the one extra round trip).

Every call misses (a key of its own, in each row's own namespace: a baseline GET that hit
a key an earlier row wrote would skip its SET, and is refused) and its loader returns at
once, so the row measures what the cache adds around a quick loader: reads, the lease,
the write, and no thread (sync) or task (async) per miss. Calls alternate candidate /
baseline one by one and the median call counts; the spread is that of the medians of
rounds. A real ``redis-server`` on loopback. Run: ``python -m benchmarks --only cache_miss``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks._table import Row, spread
from commclient.cache import AsyncRedisCache, SyncRedisCache
from tests.redis_server import RedisServer

MISS_LIMIT = 1.6
VALUE = {"timezone": "Europe/Berlin", "language": "en", "reminder_minutes": 15}
TTL = 300


def _loader() -> dict[str, Any]:
    return VALUE


def _row(group: str, candidate: str, baseline: str, rounds: list[tuple[float, float]]) -> Row:
    ours, bare = [r[0] for r in rounds], [r[1] for r in rounds]
    return Row(
        group,
        candidate,
        baseline,
        statistics.median(ours) * 1e6,
        statistics.median(bare) * 1e6,
        "µs/call",
        MISS_LIMIT,
        "ratio",
        spread(ours),
        spread(bare),
    )


def _sync_rows(url: str, rounds: int, calls: int) -> list[Row]:
    import json

    import redis

    bare = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    cache = SyncRedisCache(bare, "bench-miss-sync", registry=CollectorRegistry())
    keys = itertools.count()
    clock = time.perf_counter

    def candidate() -> float:
        key = f"miss:{next(keys)}"
        started = clock()
        cache.get_or_set(key, _loader, ttl=TTL)
        return clock() - started

    def baseline() -> float:
        key = f"bare-miss-sync:{next(keys)}"
        started = clock()
        if bare.get(key) is None:
            bare.set(key, json.dumps(_loader()), ex=TTL)
        else:
            raise AssertionError(f"the baseline's GET of {key} hit: it must miss")
        return clock() - started

    results = []
    for _ in range(50):
        candidate(), baseline()
    for _ in range(rounds):
        gc.collect()
        ours, theirs = [], []
        for number in range(calls):
            if number % 2:
                theirs.append(baseline())
                ours.append(candidate())
            else:
                ours.append(candidate())
                theirs.append(baseline())
        results.append((statistics.median(ours), statistics.median(theirs)))
    cache.close()
    bare.close()
    return [_row("cache miss sync", "get_or_set miss", "redis GET miss + SET", results)]


async def _async_rows(url: str, rounds: int, calls: int) -> list[Row]:
    import json

    import redis.asyncio

    bare = redis.asyncio.Redis.from_url(url)
    cache = AsyncRedisCache(bare, "bench-miss-async", registry=CollectorRegistry())
    keys = itertools.count()
    clock = time.perf_counter

    async def candidate() -> float:
        key = f"miss:{next(keys)}"
        started = clock()
        await cache.get_or_set(key, _loader, ttl=TTL)
        return clock() - started

    async def baseline() -> float:
        key = f"bare-miss-async:{next(keys)}"
        started = clock()
        if await bare.get(key) is None:
            await bare.set(key, json.dumps(_loader()), ex=TTL)
        else:
            raise AssertionError(f"the baseline's GET of {key} hit: it must miss")
        return clock() - started

    order: tuple[Callable[[], Awaitable[float]], ...] = (candidate, baseline)
    results = []
    for _ in range(50):
        for call in order:
            await call()
    for _ in range(rounds):
        gc.collect()
        ours, theirs = [], []
        for number in range(calls):
            if number % 2:
                theirs.append(await baseline())
                ours.append(await candidate())
            else:
                ours.append(await candidate())
                theirs.append(await baseline())
        results.append((statistics.median(ours), statistics.median(theirs)))
    await cache.aclose()
    await bare.aclose()
    return [_row("cache miss async", "get_or_set miss", "redis.asyncio GET miss + SET", results)]


def run(quick: bool) -> list[Row]:
    rounds, calls = (3, 300) if quick else (15, 2000)
    with RedisServer() as server:
        rows = _sync_rows(server.url, rounds, calls)
        rows += asyncio.run(_async_rows(server.url, rounds, calls))
    return rows

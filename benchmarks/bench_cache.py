"""The configuration cache, side by side with what it replaces and with bare redis-py.

- A cache hit (Redis, and the local tier) against the REST round trip it replaces: a GET of
  a JSON settings document from a small HTTP server on loopback (its own process, so it
  never takes the GIL from the client measured), decoded and validated the same way.
- A Redis hit against a bare redis-py GET of the same bytes, decoded the same way
  (target: at most 1.3 times), and against a bare GET that does not even decode.
- The local tier's hit (target: a median of 5 µs or less), for a model with a list field
  (copied per hit: a caller may mutate it) and for one immutable all the way down (one
  shared object).
- The read script called by hand with ``EVALSHA`` against redis-py's ``Script`` call.
- ``invalidate_group`` against ``invalidate(pattern)`` with 10k, 100k and 1M keys in the
  group (target: ``invalidate_group`` flat, 1 ms or less, at every size).
- The threads and Pub/Sub connections that 50 caches with local tiers on one client add
  (target: one of each, as for one cache).

Network calls alternate call by call and the median call counts; local hits are timed in
batches and the median batch counts.
Run: ``python -m benchmarks --only cache``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict

from benchmarks._redis_server import RedisServer
from benchmarks._table import Row
from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache, _scripts

REDIS_HIT_LIMIT = 1.3
LOCAL_HIT_LIMIT_US = 5.0
INVALIDATE_GROUP_LIMIT_MS = 1.0
KEY = "global_settings"
FROZEN_KEY = "global_settings:frozen"  # its own entry: a local entry shares one model's object
GROUP = "bench"


class Settings(BaseModel):
    """A global settings document of the size the assistant reads on every message."""

    model_config = ConfigDict(frozen=True)

    timezone: str
    language: str
    reminder_minutes: int
    quiet_hours_start: str
    quiet_hours_end: str
    max_conversation_turns: int
    summarise_after_turns: int
    default_assistant_id: int
    features: list[str]
    model: str
    temperature: float
    rate_limit_per_minute: int
    support_email: str
    maintenance: bool


class FrozenSettings(Settings):
    """The same document with a tuple for ``features``: immutable all the way down, so
    the local tier may hand every caller the same object instead of decoding it."""

    features: tuple[str, ...]  # type: ignore[assignment]


SETTINGS = Settings(
    timezone="Europe/Berlin",
    language="en",
    reminder_minutes=15,
    quiet_hours_start="22:00",
    quiet_hours_end="07:00",
    max_conversation_turns=40,
    summarise_after_turns=20,
    default_assistant_id=1,
    features=["reminders", "secretary", "tools", "voice", "calendar"],
    model="assistant-large",
    temperature=0.3,
    rate_limit_per_minute=60,
    support_email="support@example.org",
    maintenance=False,
)
SETTINGS_JSON = SETTINGS.model_dump_json().encode()


@dataclass(frozen=True)
class Plan:
    rounds: int
    calls: int  # network calls per side, interleaved call by call
    local_calls: int  # calls per round of a local-tier hit
    sizes: tuple[int, ...]
    group_repeats: int  # invalidate_group calls timed per size
    label: str


FULL = Plan(
    rounds=15,
    calls=20_000,
    local_calls=20_000,
    sizes=(10_000, 100_000, 1_000_000),
    group_repeats=50,
    label="",
)
QUICK = Plan(
    rounds=4,
    calls=4_000,
    local_calls=5_000,
    sizes=(10_000, 100_000, 200_000),
    group_repeats=20,
    label=" (quick: 200k instead of 1M)",
)


def _text(reply: bytes | str | None) -> str:
    """A group's generation as Redis returned it ("" if it has none)."""
    return reply.decode() if isinstance(reply, bytes) else reply or ""


# -- the REST service it replaces --------------------------------------------------------


async def _serve(port: int) -> None:
    """A minimal keep-alive HTTP/1.1 server answering every GET with the settings JSON."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(SETTINGS_JSON)).encode()
        + b"\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + SETTINGS_JSON)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class RestServer:
    def __enter__(self) -> RestServer:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_cache", "serve"],
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError("settings server did not start")
        self.url = f"http://127.0.0.1:{line.split()[1]}/api/global-settings/"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


# -- measuring ---------------------------------------------------------------------------
#
# Network calls are timed one by one, candidate and baseline alternating call by call, and
# the median call of each side counts: on a shared machine both sides then meet the same
# preemptions, and a preempted call is an outlier the median ignores. Calls of a few
# microseconds (the local tier, no I/O) are timed in batches of this thread's CPU time, the
# median batch counting: on a shared machine, time spent preempted is not the cache's.


def _interleaved_calls(
    calls: int, candidate: Callable[[], Any], baseline: Callable[[], Any]
) -> tuple[float, float]:
    clock = time.perf_counter
    times: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    for number in range(calls):
        pair = [(candidate, times[0]), (baseline, times[1])]
        if number % 2:
            pair.reverse()
        for call, measured in pair:
            started = clock()
            call()
            measured.append(clock() - started)
    return statistics.median(times[0]), statistics.median(times[1])


async def _async_interleaved_calls(
    calls: int, candidate: Callable[[], Awaitable[Any]], baseline: Callable[[], Awaitable[Any]]
) -> tuple[float, float]:
    clock = time.perf_counter
    times: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    for number in range(calls):
        pair = [(candidate, times[0]), (baseline, times[1])]
        if number % 2:
            pair.reverse()
        for call, measured in pair:
            started = clock()
            await call()
            measured.append(clock() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def _batched(rounds: int, calls: int, call: Callable[[], Any]) -> float:
    times = []
    for _ in range(rounds):
        gc.collect()
        started = time.thread_time()
        for _ in range(calls):
            call()
        times.append((time.thread_time() - started) / calls)
    return statistics.median(times)


async def _async_batched(rounds: int, calls: int, call: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(rounds):
        gc.collect()
        started = time.thread_time()
        for _ in range(calls):
            await call()
        times.append((time.thread_time() - started) / calls)
    return statistics.median(times)


def _us_row(
    group: str,
    candidate: str,
    baseline: str,
    values: tuple[float, float],
    limit: float,
    limit_kind: str = "ratio",
) -> Row:
    return Row(
        group=group,
        candidate=candidate,
        baseline=baseline,
        candidate_value=values[0] * 1e6,
        baseline_value=values[1] * 1e6,
        unit="µs/call",
        limit=limit,
        limit_kind=limit_kind,
    )


# -- hits --------------------------------------------------------------------------------


async def _async_hits(redis_url: str, rest_url: str, plan: Plan) -> list[Row]:
    import httpx
    import redis.asyncio

    bare = redis.asyncio.Redis.from_url(redis_url)
    cache = AsyncRedisCache(bare, "bench-async", registry=CollectorRegistry())
    local = AsyncRedisCache.from_url(
        redis_url,
        "bench-async",
        config=CacheConfig(local_tier_size=100),
        registry=CollectorRegistry(),
    )
    http = httpx.AsyncClient()
    await cache.set(KEY, SETTINGS)
    await cache.set(FROZEN_KEY, SETTINGS)
    assert await local.start()
    generation = _text(await bare.get(f"{{bench-async}}!gen:{KEY}"))
    raw_key = f"{{bench-async}}:{KEY}#{generation}"

    async def cache_hit() -> Any:
        return await cache.get(KEY)

    async def bare_get_decoded() -> Any:
        return json.loads(await bare.get(raw_key))  # type: ignore[arg-type]

    async def bare_get() -> Any:
        return await bare.get(raw_key)

    async def cache_hit_typed() -> Any:
        return await cache.get(KEY, Settings)

    async def bare_get_typed() -> Any:
        return Settings.model_validate_json(await bare.get(raw_key))  # type: ignore[arg-type]

    async def rest_get_typed() -> Any:
        response = await http.get(rest_url)
        response.raise_for_status()
        return Settings.model_validate_json(response.content)

    async def local_hit() -> Any:
        return await local.get(KEY, Settings)

    async def local_hit_shared() -> Any:
        return await local.get(FROZEN_KEY, FrozenSettings)

    for call in (cache_hit, bare_get, cache_hit_typed, rest_get_typed, local_hit, local_hit_shared):
        for _ in range(50):
            await call()
    calls = plan.calls
    decoded = await _async_interleaved_calls(calls, cache_hit, bare_get_decoded)
    raw = await _async_interleaved_calls(calls, cache_hit, bare_get)
    typed = await _async_interleaved_calls(calls, cache_hit_typed, bare_get_typed)
    versus_rest = await _async_interleaved_calls(calls // 4, cache_hit_typed, rest_get_typed)
    local_hit_time = await _async_batched(plan.rounds, plan.local_calls, local_hit)
    shared_hit_time = await _async_batched(plan.rounds, plan.local_calls, local_hit_shared)
    rows = [
        _us_row(
            "cache hit async",
            "Redis hit, get(key)",
            "redis.asyncio GET + json.loads",
            decoded,
            REDIS_HIT_LIMIT,
        ),
        _us_row(
            "cache hit async",
            "Redis hit, get(key)",
            "redis.asyncio GET (no decode)",
            raw,
            REDIS_HIT_LIMIT,
        ),
        _us_row(
            "cache hit async",
            "Redis hit, get(key, Settings)",
            "redis.asyncio GET + model_validate_json",
            typed,
            REDIS_HIT_LIMIT,
        ),
        _us_row(
            "cache hit async",
            "Redis hit, get(key, Settings)",
            "REST GET (httpx, loopback) + validate",
            versus_rest,
            1.0,
        ),
        _us_row(
            "cache hit async",
            "local-tier hit, get(key, Settings)",
            "REST GET (httpx, loopback) + validate",
            (local_hit_time, versus_rest[1]),
            LOCAL_HIT_LIMIT_US,
            "value",
        ),
        _us_row(
            "cache hit async",
            "local-tier hit, get(key, FrozenSettings)",
            "REST GET (httpx, loopback) + validate",
            (shared_hit_time, versus_rest[1]),
            LOCAL_HIT_LIMIT_US,
            "value",
        ),
    ]
    await http.aclose()
    await cache.aclose()
    await local.aclose()
    await bare.aclose()
    return rows


def _sync_hits(redis_url: str, rest_url: str, plan: Plan) -> list[Row]:
    import redis
    import requests

    # One client for both sides, with the short socket timeouts the cache asks for.
    bare = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    cache = SyncRedisCache(bare, "bench-sync", registry=CollectorRegistry())
    local = SyncRedisCache.from_url(
        redis_url,
        "bench-sync",
        config=CacheConfig(local_tier_size=100),
        registry=CollectorRegistry(),
    )
    session = requests.Session()
    cache.set(KEY, SETTINGS)
    cache.set(FROZEN_KEY, SETTINGS)
    assert local.start()
    generation = _text(bare.get(f"{{bench-sync}}!gen:{KEY}"))
    raw_key = f"{{bench-sync}}:{KEY}#{generation}"
    # The read script (local tier, serve-stale): called by hand, or through redis-py.
    script = bare.register_script(_scripts.READ)
    # two KEYS, the guessed generation
    script_keys = [f"{{bench-sync}}!gen:{KEY}", raw_key, generation]

    def rest_get_typed() -> Any:
        response = session.get(rest_url)
        response.raise_for_status()
        return Settings.model_validate_json(response.content)

    calls: dict[str, Callable[[], Any]] = {
        "cache_hit": lambda: cache.get(KEY),
        "bare_decoded": lambda: json.loads(bare.get(raw_key)),  # type: ignore[arg-type]
        "bare": lambda: bare.get(raw_key),
        "cache_typed": lambda: cache.get(KEY, Settings),
        "bare_typed": lambda: Settings.model_validate_json(bare.get(raw_key)),  # type: ignore[arg-type]
        "rest_typed": rest_get_typed,
        "local": lambda: local.get(KEY, Settings),
        "local_shared": lambda: local.get(FROZEN_KEY, FrozenSettings),
        "evalsha": lambda: bare.execute_command("EVALSHA", script.sha, 2, *script_keys),
        "script": lambda: script(keys=script_keys[:2], args=script_keys[2:]),
    }
    for call in calls.values():
        for _ in range(50):
            call()
    assert len(calls["evalsha"]().split(b" ", 2)) == 3  # the script row times a hit

    def pair(candidate: str, baseline: str, count: int) -> tuple[float, float]:
        return _interleaved_calls(count, calls[candidate], calls[baseline])

    decoded = pair("cache_hit", "bare_decoded", plan.calls)
    raw = pair("cache_hit", "bare", plan.calls)
    typed = pair("cache_typed", "bare_typed", plan.calls)
    versus_rest = pair("cache_typed", "rest_typed", plan.calls // 4)
    local_hit_time = _batched(plan.rounds, plan.local_calls, calls["local"])
    shared_hit_time = _batched(plan.rounds, plan.local_calls, calls["local_shared"])
    script_call = pair("evalsha", "script", plan.calls)
    session.close()
    cache.close()
    local.close()
    return [
        _us_row(
            "cache hit sync",
            "Redis hit, get(key)",
            "redis GET + json.loads",
            decoded,
            REDIS_HIT_LIMIT,
        ),
        _us_row(
            "cache hit sync", "Redis hit, get(key)", "redis GET (no decode)", raw, REDIS_HIT_LIMIT
        ),
        _us_row(
            "cache hit sync",
            "Redis hit, get(key, Settings)",
            "redis GET + model_validate_json",
            typed,
            REDIS_HIT_LIMIT,
        ),
        _us_row(
            "cache hit sync",
            "Redis hit, get(key, Settings)",
            "REST GET (requests, loopback) + validate",
            versus_rest,
            1.0,
        ),
        _us_row(
            "cache hit sync",
            "local-tier hit, get(key, Settings)",
            "REST GET (requests, loopback) + validate",
            (local_hit_time, versus_rest[1]),
            LOCAL_HIT_LIMIT_US,
            "value",
        ),
        _us_row(
            "cache hit sync",
            "local-tier hit, get(key, FrozenSettings)",
            "REST GET (requests, loopback) + validate",
            (shared_hit_time, versus_rest[1]),
            LOCAL_HIT_LIMIT_US,
            "value",
        ),
        _us_row(
            "cache read script sync",
            "EVALSHA by hand (the driver's read)",
            "redis-py register_script call",
            script_call,
            1.0,
        ),
    ]


# -- invalidation ------------------------------------------------------------------------


def _populate(redis_url: str, prefix: str, size: int) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    value = b'{"v":1}'
    batch = 10_000
    for start in range(0, size, batch):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(size, start + batch)):
            pipe.set(f"{{{prefix}}}:{GROUP}:{index}#0", value, ex=3600)
        pipe.execute()
    client.close()


async def _invalidation(redis_url: str, plan: Plan) -> list[Row]:
    rows = []
    for size in plan.sizes:
        prefix = f"inv{size}"
        _populate(redis_url, prefix, size)
        cache = AsyncRedisCache.from_url(
            redis_url,
            prefix,
            config=CacheConfig(operation_timeout=5.0),
            registry=CollectorRegistry(),
        )
        await cache.invalidate_group("warmup")
        group_times = []
        for _ in range(plan.group_repeats):
            started = time.perf_counter()
            assert await cache.invalidate_group(GROUP)
            group_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        deleted = await cache.invalidate(f"{GROUP}:*")
        pattern_time = time.perf_counter() - started
        # The group bumps made every copy unreachable: they are removed, counted as 0
        # logical keys.
        assert deleted == 0, deleted
        assert not await cache._redis.exists(f"{{{prefix}}}:{GROUP}:{size - 1}#0")
        await cache.aclose()
        label = f"{size // 1000}k keys" + (
            plan.label if size not in (10_000, 100_000, 1_000_000) else ""
        )
        rows.append(
            Row(
                group=f"cache invalidation, {label}",
                candidate="invalidate_group (one INCR)",
                baseline="invalidate(pattern) (SCAN + UNLINK)",
                candidate_value=statistics.median(group_times) * 1e3,
                baseline_value=pattern_time * 1e3,
                unit="ms",
                limit=INVALIDATE_GROUP_LIMIT_MS,
                limit_kind="value",
            )
        )
    return rows


def _listener_resources(redis_url: str, caches: int) -> tuple[int, int]:
    """Threads and Pub/Sub connections that ``caches`` sync caches with local tiers on
    one client add."""
    import threading

    import redis

    admin = redis.Redis.from_url(redis_url)

    def pubsub_connections() -> int:
        return sum(1 for client in admin.client_list() if int(client.get("sub", 0)) > 0)

    threads, connections = threading.active_count(), pubsub_connections()
    client = redis.Redis.from_url(redis_url)
    config = CacheConfig(local_tier_size=100)
    opened = [
        SyncRedisCache(client, f"res{index}", config=config, registry=CollectorRegistry())
        for index in range(caches)
    ]
    for cache in opened:
        assert cache.start()
    used = (threading.active_count() - threads, pubsub_connections() - connections)
    for cache in opened:
        cache.close()
    client.close()
    admin.close()
    return used


def _resources(redis_url: str) -> list[Row]:
    one_threads, one_connections = _listener_resources(redis_url, 1)
    threads, connections = _listener_resources(redis_url, 50)
    return [
        Row(
            group="cache listeners, 50 caches with local tiers on one client",
            candidate="threads, 50 caches",
            baseline="threads, 1 cache",
            candidate_value=threads,
            baseline_value=one_threads,
            unit="threads",
            limit=1,
            limit_kind="value",
        ),
        Row(
            group="cache listeners, 50 caches with local tiers on one client",
            candidate="Pub/Sub connections, 50 caches",
            baseline="Pub/Sub connections, 1 cache",
            candidate_value=connections,
            baseline_value=one_connections,
            unit="connections",
            limit=1,
            limit_kind="value",
        ),
    ]


def run(quick: bool) -> list[Row]:
    plan = QUICK if quick else FULL
    with RedisServer() as server, RestServer() as rest:
        rows = asyncio.run(_async_hits(server.url, rest.url, plan))
        rows += _sync_hits(server.url, rest.url, plan)
        rows += asyncio.run(_invalidation(server.url, plan))
        rows += _resources(server.url)
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        asyncio.run(_serve(0))
    else:
        for row in run(quick="--quick" in sys.argv):
            print(row)

"""What a breaker with its state in Redis costs a caller: no Redis round trip on the call path.

A real ``redis-server`` on loopback holds the shared state. Rows:

- a call rejected by an open breaker whose state is in Redis, on each facade, against the
  same rejection with the state in the process (target: a median of 20 µs or less);
- ``admit`` + ``record_success`` of a closed breaker with its state in Redis, against one read
  of pybreaker's ``CircuitRedisStorage.state`` (the Redis round trip each of its state reads
  costs): the caller's path must cost a small fraction of one round trip.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from benchmarks._table import Row
from commclient import ClientConfig, ServiceUnavailableError, testing
from commclient._breaker import breakers

REJECTION_LIMIT_US = 20.0
#: admit + record on the caller's path, as a fraction of one Redis round trip at most.
CALLER_PATH_RATIO = 0.10
DEAD_URL = "http://127.0.0.1:9"


def _names() -> tuple[str, str]:
    unique = uuid.uuid4().hex[:8]
    return f"bench-breaker-{unique}", f"target-{unique}"


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _sync_rejections(config: ClientConfig, count: int) -> float:
    from commclient import SyncServiceClient

    names = _names()
    client = SyncServiceClient(
        DEAD_URL,
        service_name=names[0],
        target_service=names[1],
        config=config,
        registry=CollectorRegistry(),
    )
    testing.force_open(*names)
    samples: list[float] = []
    clock = time.perf_counter
    gc.collect()
    with client:
        for _ in range(count):
            started = clock()
            try:
                client.get("/x")
            except ServiceUnavailableError:
                samples.append(clock() - started)
            else:
                raise RuntimeError("the open breaker let a call through")
    return _median_us(samples)


def _async_rejections(config: ClientConfig, count: int) -> float:
    from commclient import AsyncServiceClient

    async def measure() -> float:
        names = _names()
        samples: list[float] = []
        clock = time.perf_counter
        async with AsyncServiceClient(
            DEAD_URL,
            service_name=names[0],
            target_service=names[1],
            config=config,
            registry=CollectorRegistry(),
        ) as client:
            testing.force_open(*names)
            gc.collect()
            for _ in range(count):
                started = clock()
                try:
                    await client.get("/x")
                except ServiceUnavailableError:
                    samples.append(clock() - started)
                else:
                    raise RuntimeError("the open breaker let a call through")
        return _median_us(samples)

    return asyncio.run(measure())


def _caller_path(config: ClientConfig, count: int) -> float:
    breaker = breakers.get(*_names(), config)
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(count):
        started = clock()
        breaker.record_success(breaker.admit())
        samples.append(clock() - started)
    return _median_us(samples)


def _pybreaker_state_read(url: str, count: int) -> float:
    import pybreaker
    import redis

    connection = redis.Redis.from_url(url)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, connection, namespace=f"bench:{uuid.uuid4().hex[:8]}"
    )
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(count):
        started = clock()
        _ = storage.state
        samples.append(clock() - started)
    connection.close()
    return _median_us(samples)


def _rows(url: str, quick: bool) -> list[Row]:
    count = 1000 if quick else 5000
    shared = ClientConfig(circuit_breaker_redis_url=url)
    local = ClientConfig()
    measurements: list[tuple[str, Callable[[ClientConfig, int], float]]] = [
        ("SyncServiceClient", _sync_rejections)
    ]
    try:
        import httpx  # noqa: F401
    except ImportError:
        print("bench_breaker: httpx is missing; no async row", file=sys.stderr)
    else:
        measurements.append(("AsyncServiceClient", _async_rejections))
    rows = [
        Row(
            group="breaker open, state in Redis",
            candidate=f"{facade} rejection (Redis)",
            baseline=f"{facade} rejection (in process)",
            candidate_value=measure(shared, count),
            baseline_value=measure(local, count),
            unit="µs",
            limit=REJECTION_LIMIT_US,
            limit_kind="value",
        )
        for facade, measure in measurements
    ]
    rows.append(
        Row(
            group="breaker closed, state in Redis",
            candidate="admit + record_success",
            baseline="one CircuitRedisStorage.state read",
            candidate_value=_caller_path(shared, count),
            baseline_value=_pybreaker_state_read(url, count),
            unit="µs",
            limit=CALLER_PATH_RATIO,
        )
    )
    testing.reset()
    return rows


def run(quick: bool) -> list[Row]:
    """Measure the caller's cost of Redis-backed breaker state against a real redis-server."""
    import redis  # noqa: F401 - a missing client skips this module

    from benchmarks._redis_server import RedisServer, redis_server_executable

    if redis_server_executable() is None:
        print("bench_breaker: redis-server is not installed; skipped", file=sys.stderr)
        return []
    with RedisServer() as server:
        return _rows(server.url, quick)

"""Scale: many callers on one client, the library beside its bare transport in the same run.

``AsyncServiceClient`` against a bare ``httpx.AsyncClient`` with 1, 32, 256 and 1,000
concurrent tasks, ``SyncServiceClient`` against a bare ``requests.Session`` with 1, 8, 32
and 128 threads; each side has a pool of 100 connections (the library's default) and
default timeouts (httpx's pool timeout is its connect timeout, 3 s, as the library's was).
Each row gives calls/s (successful calls over the round's wall time), the p99 latency of
every call (failed ones included) and the failed calls, medians of interleaved rounds
with their spread. Before each timed async round, the side about to run makes one untimed
call from each of up to 100 tasks (a failed one counts among the round's failures): the
other side's round can outlast httpx's 5 s keep-alive expiry, and in practice only the
library's 1,000-task rounds did (they follow a bare-httpx round of over 5 s, while the
library's own rounds are too short to expire bare httpx's pool), so they alone reopened
their connections. A burst after the pool expired is a cost of its own, measured apart:
the "pool expired" rows at 1,000 tasks, each round after ``KEEPALIVE_EXPIRY`` + 0.5 s idle
(no limit). The sync rounds need no warm-up: urllib3 has no idle expiry.

The server is :mod:`benchmarks._loadserver`; its capacity, measured with a raw-socket
client in its own process over as many connections as the largest pool here opens, is
printed as the first row, against the best rate any
candidate reached: a headroom below 3x would mean the server, not the client, set the
pace.

Goals (rows with a limit): at 1,000 tasks the library fails no call, keeps at least
0.8 x its 32-task throughput, and its p99 stays within 2 x the queueing floor (tasks /
throughput, Little's law) or 1.5 s, whichever is larger. Every library row fails no call.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks._loadserver import LoadServer, headroom_row
from benchmarks._table import Row, spread
from commclient import ClientConfig

PATH = "/ping"
MAX_CONNECTIONS = 100
CONFIG = ClientConfig(max_connections=MAX_CONNECTIONS)
TASKS = (1, 32, 256, 1000)
THREADS = (1, 8, 32, 128)
#: At the largest concurrency: throughput against the 32-caller throughput.
SCALE_THROUGHPUT_LIMIT = 0.8
P99_FLOOR_SECONDS = 1.5
#: httpx's keep-alive expiry, which the library's pool keeps (``httpx.Limits``' default).
KEEPALIVE_EXPIRY = 5.0


@dataclass(frozen=True)
class Plan:
    rounds: int  # interleaved rounds per concurrency; medians count
    calls: dict[int, int]  # calls per caller, by concurrency
    #: Seconds an async round may take: a collapsed pool (bare httpx at 1,000 tasks can
    #: serve a call per second) would otherwise hold the run for many minutes. Calls
    #: still unfinished then are cancelled and count as failed, with ``cap`` as latency.
    cap: float


FULL = Plan(rounds=3, calls={1: 400, 8: 60, 32: 25, 128: 8, 256: 6, 1000: 3}, cap=120.0)
QUICK = Plan(rounds=1, calls={1: 50, 8: 10, 32: 5, 128: 4, 256: 3, 1000: 3}, cap=45.0)


@dataclass(frozen=True)
class Round:
    calls_per_second: float
    p99: float  # seconds
    failures: int


@dataclass
class Sides:
    candidate: list[Round]
    baseline: list[Round]


def _round(latencies: list[float], failures: int, wall: float) -> Round:
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Round((len(latencies) - failures) / wall, p99, failures)


def _names() -> tuple[str, str]:
    unique = uuid.uuid4().hex[:8]
    return f"bench-scale-{unique}", f"loopback-{unique}"


def _make(cls: Callable[..., Any], base_url: str) -> Any:
    service, target = _names()
    return cls(
        base_url,
        service_name=service,
        target_service=target,
        config=CONFIG,
        registry=CollectorRegistry(),
    )


# --- async ------------------------------------------------------------------------------------


async def _async_round(
    call: Callable[[], Awaitable[Any]], tasks: int, calls: int, cap: float
) -> Round:
    """One round; calls still unfinished after ``cap`` seconds are cancelled and fail."""
    latencies: list[float] = []
    failures = 0
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal failures
        for _ in range(calls):
            started = clock()
            try:
                await call()
            except Exception:
                failures += 1
            latencies.append(clock() - started)

    started = clock()
    workers = [asyncio.ensure_future(worker()) for _ in range(tasks)]
    _, unfinished = await asyncio.wait(workers, timeout=cap)
    wall = clock() - started
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    cut_off = tasks * calls - len(latencies)
    latencies.extend([cap] * cut_off)
    return _round(latencies, failures + cut_off, wall)


async def _async_scale(base_url: str, plan: Plan) -> tuple[dict[int, Sides], Sides]:
    """Rounds by concurrency, and the largest level's rounds after the pool expired."""
    import httpx

    from commclient import AsyncServiceClient

    url = base_url + PATH
    results: dict[int, Sides] = {}
    expired = Sides([], [])
    for tasks in TASKS:
        # Fresh clients per concurrency: what one level did to a pool (or a breaker) does
        # not carry into the next.
        client = _make(AsyncServiceClient, base_url)
        bare = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
            timeout=httpx.Timeout(
                CONFIG.timeout, connect=CONFIG.connect_timeout, pool=CONFIG.connect_timeout
            ),
        )

        async def candidate(client: Any = client) -> Any:
            return await client.get(PATH)

        async def baseline(bare: httpx.AsyncClient = bare) -> Any:
            response = await bare.get(url)
            response.raise_for_status()
            return response.json()

        sides = Sides([], [])
        async with client, bare:
            await _async_round(candidate, min(tasks, 32), 2, plan.cap)
            await _async_round(baseline, min(tasks, 32), 2, plan.cap)
            for number in range(plan.rounds):
                order = [(candidate, sides.candidate), (baseline, sides.baseline)]
                if number % 2:
                    order.reverse()
                for call, rounds in order:
                    # Untimed: the other side's round may have outlasted the keep-alive
                    # expiry, and reopening every connection is what the "pool expired"
                    # rows measure, not these (both sides start with their pool open).
                    warm = await _async_round(call, min(tasks, MAX_CONNECTIONS), 1, plan.cap)
                    gc.collect()
                    timed = await _async_round(call, tasks, plan.calls[tasks], plan.cap)
                    rounds.append(replace(timed, failures=timed.failures + warm.failures))
            if tasks == TASKS[-1]:
                for number in range(plan.rounds):
                    order = [(candidate, expired.candidate), (baseline, expired.baseline)]
                    if number % 2:
                        order.reverse()
                    for call, rounds in order:
                        await asyncio.sleep(KEEPALIVE_EXPIRY + 0.5)  # every connection idle
                        gc.collect()
                        rounds.append(await _async_round(call, tasks, plan.calls[tasks], plan.cap))
        results[tasks] = sides
    return results, expired


# --- sync -------------------------------------------------------------------------------------


def _sync_round(
    pool: ThreadPoolExecutor, call: Callable[[], Any], threads: int, calls: int
) -> Round:
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)
    clock = time.perf_counter

    def worker() -> None:
        nonlocal failures
        mine: list[float] = []
        failed = 0
        start.wait()
        for _ in range(calls):
            started = clock()
            try:
                call()
            except Exception:
                failed += 1
            mine.append(clock() - started)
        with lock:
            latencies.extend(mine)
            failures += failed

    futures = [pool.submit(worker) for _ in range(threads)]
    start.wait()
    started = clock()
    for future in futures:
        future.result()
    return _round(latencies, failures, clock() - started)


def _sync_scale(base_url: str, plan: Plan) -> dict[int, Sides]:
    import requests

    from commclient import SyncServiceClient

    url = base_url + PATH
    timeout = (CONFIG.connect_timeout, CONFIG.timeout)
    results: dict[int, Sides] = {}
    for threads in THREADS:
        client = _make(SyncServiceClient, base_url)
        bare = requests.Session()
        bare.trust_env = False
        bare.mount(
            "http://",
            requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_CONNECTIONS),
        )

        def candidate(client: Any = client) -> Any:
            return client.get(PATH)

        def baseline(bare: requests.Session = bare) -> Any:
            response = bare.get(url, timeout=timeout)
            response.raise_for_status()
            return response.json()

        sides = Sides([], [])
        with client, bare, ThreadPoolExecutor(threads) as pool:
            _sync_round(pool, candidate, threads, 2)
            _sync_round(pool, baseline, threads, 2)
            for number in range(plan.rounds):
                order = [(candidate, sides.candidate), (baseline, sides.baseline)]
                if number % 2:
                    order.reverse()
                for call, rounds in order:
                    gc.collect()
                    rounds.append(_sync_round(pool, call, threads, plan.calls[threads]))
        results[threads] = sides
    return results


# --- rows -------------------------------------------------------------------------------------


def _median(rounds: list[Round], field: str) -> tuple[float, float]:
    values = [float(getattr(r, field)) for r in rounds]
    return statistics.median(values), spread(values)


def _rows(
    kind: str, unit: str, candidate: str, baseline: str, results: dict[int, Sides]
) -> list[Row]:
    rows: list[Row] = []
    levels = sorted(results)
    reference = statistics.median(r.calls_per_second for r in results[32].candidate)
    for level in levels:
        group = f"scale {kind} x{level} {unit}"
        limited = level == levels[-1]
        rows += _level_rows(group, level, candidate, baseline, results[level], reference, limited)
    return rows


def _level_rows(
    group: str,
    level: int,
    candidate: str,
    baseline: str,
    sides: Sides,
    reference: float,
    limited: bool,
) -> list[Row]:
    """Calls/s, p99 and failed calls of one level; ``limited``: the goals apply."""
    rate, rate_spread = _median(sides.candidate, "calls_per_second")
    bare_rate, bare_rate_spread = _median(sides.baseline, "calls_per_second")
    p99, p99_spread = _median(sides.candidate, "p99")
    bare_p99, bare_p99_spread = _median(sides.baseline, "p99")
    failures = statistics.median(r.failures for r in sides.candidate)
    bare_failures = statistics.median(r.failures for r in sides.baseline)
    floor = level / rate if rate else float("inf")
    return [
        Row(
            group,
            f"{candidate} calls/s",
            f"{baseline} calls/s",
            rate,
            bare_rate,
            "calls/s",
            SCALE_THROUGHPUT_LIMIT * reference if limited else 0.0,
            "min_value" if limited else "none",
            rate_spread,
            bare_rate_spread,
        ),
        Row(
            group,
            f"{candidate} p99",
            f"{baseline} p99",
            p99 * 1000,
            bare_p99 * 1000,
            "ms",
            max(2 * floor, P99_FLOOR_SECONDS) * 1000 if limited else 0.0,
            "value" if limited else "none",
            p99_spread,
            bare_p99_spread,
        ),
        Row(
            group,
            f"{candidate} failed calls",
            f"{baseline} failed calls",
            failures,
            bare_failures,
            "calls",
            0,
            "value",
        ),
    ]


def run(quick: bool) -> list[Row]:
    plan = QUICK if quick else FULL
    with LoadServer() as server:
        capacity = server.capacity(seconds=1.0 if quick else 3.0, connections=MAX_CONNECTIONS)
        async_results, expired = asyncio.run(_async_scale(server.base_url, plan))
        sync_results = _sync_scale(server.base_url, plan)
    async_rows = _rows("async", "tasks", "AsyncServiceClient", "httpx.AsyncClient", async_results)
    # No goal: a burst that first reopens every connection, shown beside bare httpx's.
    async_rows += _level_rows(
        f"scale async x{TASKS[-1]} tasks, pool expired",
        TASKS[-1],
        "AsyncServiceClient",
        "httpx.AsyncClient",
        expired,
        0.0,
        False,
    )
    sync_rows = _rows("sync", "threads", "SyncServiceClient", "requests.Session", sync_results)
    best = max(
        [row.candidate_value for row in async_rows + sync_rows if row.unit == "calls/s"]
        + [row.baseline_value for row in async_rows + sync_rows if row.unit == "calls/s"]
    )
    return [headroom_row(capacity, best), *async_rows, *sync_rows]

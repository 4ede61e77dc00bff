"""The resilience layer's cost on a loopback call: each facade against its bare transport.

``AsyncServiceClient`` is measured against a bare ``httpx.AsyncClient`` and
``SyncServiceClient`` against a bare ``requests.Session``, sequentially and with 32
concurrent callers (asyncio tasks, threads), on the same keep-alive loopback server. The
server runs in its own process so that it never takes the GIL from the client measured.
Candidate and baseline rounds alternate (ABBA, so that a drift in the machine's speed hits
both alike) and the median round counts. Both sides get the same connection pool size and
decode the same JSON body, and use the same timeouts (a socket with a timeout costs two more
``poll()`` calls per request than a blocking one), so the difference is the resilience layer
alone.

The last two rows time a call rejected by an open breaker: no I/O at all, the whole cost is
the core's (target: a median of 20 µs or less).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from benchmarks._table import Row
from commclient import ClientConfig, ServiceUnavailableError, testing
from tests.http_server import ServerProcess

RATIO_LIMIT = 1.10
REJECTION_LIMIT_US = 20.0
CONCURRENCY = 32
PATH = "/ping"
#: The same pool size on both sides, above CONCURRENCY: no side ever waits for a connection.
MAX_CONNECTIONS = 100
#: The client's configuration, whose timeouts the bare transports get too.
CONFIG = ClientConfig(max_connections=MAX_CONNECTIONS)


@dataclass(frozen=True)
class Plan:
    """How much to measure. Many short rounds: a burst of load from elsewhere on the machine
    spans a few rounds of both sides and moves neither median."""

    sequential_rounds: int  # alternating candidate/baseline rounds; the median round counts
    sequential_calls: int  # calls per sequential round
    concurrent_rounds: int
    calls_per_worker: int  # calls per concurrent caller per round
    rejections: int  # breaker-open rejections timed one by one


FULL = Plan(
    sequential_rounds=200,
    sequential_calls=10,
    concurrent_rounds=60,
    calls_per_worker=4,
    rejections=5000,
)
QUICK = Plan(
    sequential_rounds=30,
    sequential_calls=5,
    concurrent_rounds=8,
    calls_per_worker=2,
    rejections=1000,
)


def _names() -> tuple[str, str]:
    """A (service_name, target_service) pair of its own: no breaker or budget is shared."""
    unique = uuid.uuid4().hex[:8]
    return f"bench-{unique}", f"loopback-{unique}"


ClientT = TypeVar("ClientT")


def _make(cls: Callable[..., ClientT], base_url: str, names: tuple[str, str]) -> ClientT:
    return cls(
        base_url,
        service_name=names[0],
        target_service=names[1],
        config=CONFIG,
        registry=CollectorRegistry(),
    )


def _interleaved(
    rounds: int, candidate: Callable[[], float], baseline: Callable[[], float]
) -> tuple[float, float]:
    """Median seconds per call of each, measured in ABBA order round after round."""
    candidate_times: list[float] = []
    baseline_times: list[float] = []
    for number in range(rounds):
        order = [(candidate, candidate_times), (baseline, baseline_times)]
        if number % 2:
            order.reverse()
        for measure, times in order:
            gc.collect()
            times.append(measure())
    return statistics.median(candidate_times), statistics.median(baseline_times)


def _row(group: str, candidate: str, baseline: str, values: tuple[float, float]) -> Row:
    return Row(
        group=group,
        candidate=candidate,
        baseline=baseline,
        candidate_value=values[0] * 1e6,
        baseline_value=values[1] * 1e6,
        unit="µs/call",
        limit=RATIO_LIMIT,
    )


# --- async: AsyncServiceClient vs httpx.AsyncClient -----------------------------------------


async def _async_sequential(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls


async def _async_concurrent(call: Callable[[], Awaitable[Any]], per_worker: int) -> float:
    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.perf_counter() - started) / (CONCURRENCY * per_worker)


async def _async_interleaved(
    plan: Plan,
    candidate: Callable[[], Awaitable[Any]],
    baseline: Callable[[], Awaitable[Any]],
    concurrent: bool,
) -> tuple[float, float]:
    # The rounds are coroutines: run them one at a time on this loop, in ABBA order.
    times: tuple[list[float], list[float]] = ([], [])
    rounds = plan.concurrent_rounds if concurrent else plan.sequential_rounds
    for number in range(rounds):
        order = [(candidate, times[0]), (baseline, times[1])]
        if number % 2:
            order.reverse()
        for call, measured in order:
            gc.collect()
            if concurrent:
                measured.append(await _async_concurrent(call, plan.calls_per_worker))
            else:
                measured.append(await _async_sequential(call, plan.sequential_calls))
    return statistics.median(times[0]), statistics.median(times[1])


async def _async_rows(base_url: str, plan: Plan) -> tuple[list[Row], float]:
    import httpx

    from commclient import AsyncServiceClient

    url = base_url + PATH
    bare = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
        timeout=httpx.Timeout(
            CONFIG.timeout, connect=CONFIG.connect_timeout, pool=CONFIG.connect_timeout
        ),
    )
    client = _make(AsyncServiceClient, base_url, _names())

    async def candidate() -> Any:
        return await client.get(PATH)

    async def baseline() -> Any:
        response = await bare.get(url)
        response.raise_for_status()
        return response.json()

    async with bare, client:
        # Warm up: open CONCURRENCY connections on each side, fill caches.
        for _ in range(2):
            await _async_concurrent(candidate, 2)
            await _async_concurrent(baseline, 2)
        sequential = await _async_interleaved(plan, candidate, baseline, concurrent=False)
        concurrent = await _async_interleaved(plan, candidate, baseline, concurrent=True)
        rejection = await _async_rejection(base_url, plan)
    rows = [
        _row("client async", "AsyncServiceClient", "httpx.AsyncClient", sequential),
        _row(
            f"client async x{CONCURRENCY} tasks",
            "AsyncServiceClient",
            "httpx.AsyncClient",
            concurrent,
        ),
    ]
    return rows, rejection


async def _async_rejection(base_url: str, plan: Plan) -> float:
    from commclient import AsyncServiceClient

    names = _names()
    client = _make(AsyncServiceClient, base_url, names)
    testing.force_open(*names)
    samples: list[float] = []
    clock = time.perf_counter
    async with client:
        for _ in range(plan.rejections):
            started = clock()
            try:
                await client.get(PATH)
            except ServiceUnavailableError:
                samples.append(clock() - started)
            else:
                raise RuntimeError("the open breaker let a call through")
    return statistics.median(samples)


# --- sync: SyncServiceClient vs requests.Session --------------------------------------------


def _sync_sequential(call: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls


def _sync_concurrent(pool: ThreadPoolExecutor, call: Callable[[], Any], per_worker: int) -> float:
    start = threading.Barrier(CONCURRENCY + 1)

    def worker() -> None:
        start.wait()
        for _ in range(per_worker):
            call()

    futures = [pool.submit(worker) for _ in range(CONCURRENCY)]
    start.wait()  # every thread is ready: the clock starts with all of them
    started = time.perf_counter()
    for future in futures:
        future.result()
    return (time.perf_counter() - started) / (CONCURRENCY * per_worker)


def _sync_rows(base_url: str, plan: Plan) -> tuple[list[Row], float, float]:
    import requests

    from commclient import SyncServiceClient

    url = base_url + PATH
    bare = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_CONNECTIONS)
    bare.mount("http://", adapter)
    client = _make(SyncServiceClient, base_url, _names())

    def candidate() -> Any:
        return client.get(PATH)

    def baseline() -> Any:
        response = bare.get(url, timeout=(CONFIG.connect_timeout, CONFIG.timeout))
        response.raise_for_status()
        return response.json()

    with bare, client, ThreadPoolExecutor(CONCURRENCY) as pool:
        for _ in range(2):
            _sync_concurrent(pool, candidate, 2)
            _sync_concurrent(pool, baseline, 2)
        sequential = _interleaved(
            plan.sequential_rounds,
            lambda: _sync_sequential(candidate, plan.sequential_calls),
            lambda: _sync_sequential(baseline, plan.sequential_calls),
        )
        concurrent = _interleaved(
            plan.concurrent_rounds,
            lambda: _sync_concurrent(pool, candidate, plan.calls_per_worker),
            lambda: _sync_concurrent(pool, baseline, plan.calls_per_worker),
        )
    rows = [
        _row("client sync", "SyncServiceClient", "requests.Session", sequential),
        _row(
            f"client sync x{CONCURRENCY} threads",
            "SyncServiceClient",
            "requests.Session",
            concurrent,
        ),
    ]
    return rows, _sync_rejection(base_url, plan), sequential[1]


def _sync_rejection(base_url: str, plan: Plan) -> float:
    from commclient import SyncServiceClient

    names = _names()
    client = _make(SyncServiceClient, base_url, names)
    testing.force_open(*names)
    samples: list[float] = []
    clock = time.perf_counter
    with client:
        for _ in range(plan.rejections):
            started = clock()
            try:
                client.get(PATH)
            except ServiceUnavailableError:
                samples.append(clock() - started)
            else:
                raise RuntimeError("the open breaker let a call through")
    return statistics.median(samples)


def _rejection_row(facade: str, seconds: float, bare_call: float, bare_name: str) -> Row:
    return Row(
        group="breaker open",
        candidate=f"{facade} rejection",
        baseline=f"{bare_name} call",
        candidate_value=seconds * 1e6,
        baseline_value=bare_call * 1e6,
        unit="µs",
        limit=REJECTION_LIMIT_US,
        limit_kind="value",
    )


def run(quick: bool) -> list[Row]:
    """Measure both facades against their bare transports on one loopback server."""
    plan = QUICK if quick else FULL
    if importlib.util.find_spec("sniffio") is None:
        # httpcore imports sniffio on every lock it makes and Python does not cache a failed
        # import: each async request then searches sys.path several times. Both async sides
        # pay it, which hides the layer's cost in a slower baseline.
        print(
            "bench_client: sniffio is not installed; httpx calls are slower than they should be",
            file=sys.stderr,
        )
    with ServerProcess() as server:
        async_rows, async_rejection = asyncio.run(_async_rows(server.base_url, plan))
        sync_rows, sync_rejection, bare_requests_call = _sync_rows(server.base_url, plan)
    bare_httpx_call = async_rows[0].baseline_value / 1e6
    return [
        *async_rows,
        *sync_rows,
        _rejection_row("AsyncServiceClient", async_rejection, bare_httpx_call, "httpx"),
        _rejection_row("SyncServiceClient", sync_rejection, bare_requests_call, "requests"),
    ]

"""The resilience layer's cost on a loopback call: each facade against its bare transport.

``AsyncServiceClient`` is measured against a bare ``httpx.AsyncClient`` and
``SyncServiceClient`` against a bare ``requests.Session``, sequentially and with 32
concurrent callers (asyncio tasks, threads), on the same keep-alive loopback server. The
server (:mod:`benchmarks._loadserver`) runs in its own process so that it never takes the GIL
from the client measured, and its headroom is the first row.
Candidate and baseline rounds alternate (ABBA, so that a drift in the machine's speed hits
both alike) and the median round counts. Both sides get the same connection pool size and
decode the same JSON body, and use the same timeouts (a socket with a timeout costs two more
``poll()`` calls per request than a blocking one), so the difference is the resilience layer
alone.

``SyncServiceClient`` reads the environment (proxies, ``NO_PROXY``, CA bundle) once when it
is built, where a default ``requests.Session`` re-reads it on every request: with
``trust_env=True`` on both sides it must take at most 0.9 times as long. The pure overhead is
measured too, against a ``Session`` with ``trust_env=False``. The CPU rows give the process
time per call of the sequential rounds (``time.process_time``), which moves less with the
machine's load than wall time; their difference is what the facade costs in CPU.

The last two rows time a call rejected by an open breaker: no I/O at all, the whole cost is
the core's (target: a median of 20 µs or less).
"""

from __future__ import annotations

import asyncio
import contextlib
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

from benchmarks._loadserver import LoadServer, headroom_row
from benchmarks._table import Row
from commclient import ClientConfig, ServiceUnavailableError, testing

RATIO_LIMIT = 1.10
#: A sequential async call against bare httpx, one connection each (issue 22).
SEQUENTIAL_LIMIT = 1.05
#: CPU a call may cost above its bare transport (the async client against httpx, the sync
#: client against the bare ``HTTPAdapter`` it drives).
CPU_OVERHEAD_LIMIT_US = 15.0
#: SyncServiceClient against a default requests.Session, both reading the environment.
BEAT_REQUESTS_LIMIT = 0.90
REJECTION_LIMIT_US = 20.0
CONCURRENCY = 32
PATH = "/ping"
#: The same pool size on both sides, above CONCURRENCY: no side ever waits for a connection.
MAX_CONNECTIONS = 100
#: The client's configuration, whose timeouts the bare transports get too.
CONFIG = ClientConfig(max_connections=MAX_CONNECTIONS)
#: As a default requests.Session does: proxies and CA bundle from the environment.
CONFIG_ENV = ClientConfig(max_connections=MAX_CONNECTIONS, trust_env=True)


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


def _make(
    cls: Callable[..., ClientT],
    base_url: str,
    names: tuple[str, str],
    config: ClientConfig = CONFIG,
) -> ClientT:
    return cls(
        base_url,
        service_name=names[0],
        target_service=names[1],
        config=config,
        registry=CollectorRegistry(),
    )


#: A round's seconds per call: (wall time, process CPU time).
Timing = tuple[float, float]


def _medians(candidate: list[Timing], baseline: list[Timing]) -> tuple[Timing, Timing]:
    """((candidate wall, baseline wall), (candidate CPU, baseline CPU)), medians of rounds."""
    return (
        (statistics.median(t[0] for t in candidate), statistics.median(t[0] for t in baseline)),
        (statistics.median(t[1] for t in candidate), statistics.median(t[1] for t in baseline)),
    )


def _interleaved(
    rounds: int, candidate: Callable[[], Timing], baseline: Callable[[], Timing]
) -> tuple[Timing, Timing]:
    """Median seconds per call of each, measured in ABBA order round after round."""
    candidate_times: list[Timing] = []
    baseline_times: list[Timing] = []
    for number in range(rounds):
        order = [(candidate, candidate_times), (baseline, baseline_times)]
        if number % 2:
            order.reverse()
        for measure, times in order:
            gc.collect()
            times.append(measure())
    return _medians(candidate_times, baseline_times)


def _row(
    group: str,
    candidate: str,
    baseline: str,
    values: Timing,
    limit: float = RATIO_LIMIT,
    unit: str = "µs/call",
    limit_kind: str = "ratio",
) -> Row:
    return Row(
        group=group,
        candidate=candidate,
        baseline=baseline,
        candidate_value=values[0] * 1e6,
        baseline_value=values[1] * 1e6,
        unit=unit,
        limit=limit,
        limit_kind=limit_kind,
    )


def _cpu_overhead_row(group: str, candidate: str, baseline: str, cpu: Timing) -> Row:
    return _row(group, candidate, baseline, cpu, CPU_OVERHEAD_LIMIT_US, "µs CPU", "difference")


# --- async: AsyncServiceClient vs httpx.AsyncClient -----------------------------------------


async def _async_sequential(call: Callable[[], Awaitable[Any]], calls: int) -> Timing:
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls


async def _async_concurrent(call: Callable[[], Awaitable[Any]], per_worker: int) -> Timing:
    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    calls = CONCURRENCY * per_worker
    return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls


async def _async_interleaved(
    plan: Plan,
    candidate: Callable[[], Awaitable[Any]],
    baseline: Callable[[], Awaitable[Any]],
    concurrent: bool,
) -> tuple[Timing, Timing]:
    # The rounds are coroutines: run them one at a time on this loop, in ABBA order.
    times: tuple[list[Timing], list[Timing]] = ([], [])
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
    return _medians(*times)


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
        # Sequential rounds first, on one connection each: httpcore's own pool checks every
        # idle connection's socket whenever a request enters or leaves it, so bare httpx's
        # sequential call grows with the connections a concurrent round left open.
        await _async_sequential(candidate, 20)
        await _async_sequential(baseline, 20)
        sequential, cpu = await _async_interleaved(plan, candidate, baseline, concurrent=False)
        # Warm up: open CONCURRENCY connections on each side.
        for _ in range(2):
            await _async_concurrent(candidate, 2)
            await _async_concurrent(baseline, 2)
        concurrent, _ = await _async_interleaved(plan, candidate, baseline, concurrent=True)
        rejection = await _async_rejection(base_url, plan)
    rows = [
        _row(
            "client async", "AsyncServiceClient", "httpx.AsyncClient", sequential, SEQUENTIAL_LIMIT
        ),
        _row(
            f"client async x{CONCURRENCY} tasks",
            "AsyncServiceClient",
            "httpx.AsyncClient",
            concurrent,
        ),
        _cpu_overhead_row("client async CPU", "AsyncServiceClient", "httpx.AsyncClient", cpu),
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


def _sync_sequential(call: Callable[[], Any], calls: int) -> Timing:
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls


def _sync_concurrent(pool: ThreadPoolExecutor, call: Callable[[], Any], per_worker: int) -> Timing:
    start = threading.Barrier(CONCURRENCY + 1)

    def worker() -> None:
        start.wait()
        for _ in range(per_worker):
            call()

    futures = [pool.submit(worker) for _ in range(CONCURRENCY)]
    start.wait()  # every thread is ready: the clock starts with all of them
    started, cpu = time.perf_counter(), time.process_time()
    for future in futures:
        future.result()
    calls = CONCURRENCY * per_worker
    return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls


def _sync_rows(base_url: str, plan: Plan) -> tuple[list[Row], float, float]:
    import requests

    from commclient import SyncServiceClient

    url = base_url + PATH

    def session(trust_env: bool) -> requests.Session:
        bare = requests.Session()
        bare.trust_env = trust_env
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_CONNECTIONS)
        bare.mount("http://", adapter)
        return bare

    def bare_call(bare: requests.Session) -> Callable[[], Any]:
        def call() -> Any:
            response = bare.get(url, timeout=(CONFIG.connect_timeout, CONFIG.timeout))
            response.raise_for_status()
            return response.json()

        return call

    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_CONNECTIONS)

    def adapter_call() -> Any:
        prepared = requests.Request("GET", url).prepare()
        response = adapter.send(prepared, timeout=(CONFIG.connect_timeout, CONFIG.timeout))
        response.raise_for_status()
        return response.json()

    default, no_env = session(True), session(False)
    client = _make(SyncServiceClient, base_url, _names(), CONFIG_ENV)
    client_no_env = _make(SyncServiceClient, base_url, _names())
    candidate, candidate_no_env = (lambda: client.get(PATH)), (lambda: client_no_env.get(PATH))
    baseline, baseline_no_env = bare_call(default), bare_call(no_env)

    with (
        contextlib.closing(adapter),
        default,
        no_env,
        client,
        client_no_env,
        ThreadPoolExecutor(CONCURRENCY) as pool,
    ):
        adapter_call()
        for _ in range(2):
            for call in (candidate, baseline, candidate_no_env, baseline_no_env):
                _sync_concurrent(pool, call, 2)
        sequential, cpu = _interleaved(
            plan.sequential_rounds,
            lambda: _sync_sequential(candidate, plan.sequential_calls),
            lambda: _sync_sequential(baseline, plan.sequential_calls),
        )
        sequential_no_env, cpu_no_env = _interleaved(
            plan.sequential_rounds,
            lambda: _sync_sequential(candidate_no_env, plan.sequential_calls),
            lambda: _sync_sequential(baseline_no_env, plan.sequential_calls),
        )
        _, cpu_adapter = _interleaved(
            plan.sequential_rounds,
            lambda: _sync_sequential(candidate_no_env, plan.sequential_calls),
            lambda: _sync_sequential(adapter_call, plan.sequential_calls),
        )
        concurrent, _ = _interleaved(
            plan.concurrent_rounds,
            lambda: _sync_concurrent(pool, candidate, plan.calls_per_worker),
            lambda: _sync_concurrent(pool, baseline, plan.calls_per_worker),
        )
    facade, bare_name = "SyncServiceClient", "requests.Session"
    no_env_name = "requests.Session(trust_env=False)"
    rows = [
        _row("client sync", facade, bare_name, sequential, BEAT_REQUESTS_LIMIT),
        _row(f"client sync x{CONCURRENCY} threads", facade, bare_name, concurrent),
        _row("client sync, no env", f"{facade}(trust_env=False)", no_env_name, sequential_no_env),
        _row("client sync CPU", facade, bare_name, cpu, BEAT_REQUESTS_LIMIT, "µs CPU"),
        _row(
            "client sync CPU, no env",
            f"{facade}(trust_env=False)",
            no_env_name,
            cpu_no_env,
            unit="µs CPU",
        ),
        _cpu_overhead_row(
            "client sync CPU, bare adapter",
            f"{facade}(trust_env=False)",
            "HTTPAdapter.send",
            cpu_adapter,
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
    with LoadServer() as server:
        capacity = server.capacity(seconds=1.0 if quick else 3.0)
        async_rows, async_rejection = asyncio.run(_async_rows(server.base_url, plan))
        sync_rows, sync_rejection, bare_requests_call = _sync_rows(server.base_url, plan)
    bare_httpx_call = async_rows[0].baseline_value / 1e6
    # The fastest calls/s of any row: the server must serve several times that.
    best = max(
        1e6 / value
        for row in async_rows + sync_rows
        for value in (row.candidate_value, row.baseline_value)
        if row.unit == "µs/call"
    )
    return [
        headroom_row(capacity, best),
        *async_rows,
        *sync_rows,
        _rejection_row("AsyncServiceClient", async_rejection, bare_httpx_call, "httpx"),
        _rejection_row("SyncServiceClient", sync_rejection, bare_requests_call, "requests"),
    ]

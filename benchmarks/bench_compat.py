"""The bridges' cost: compat.run_sync and sync_proxy against the ways around them.

(a) One hop into async code with a trivial coroutine: ``run_sync`` against the floor of
a thread hop, a bare ``asyncio.run_coroutine_threadsafe(...).result()`` on a loop thread
of its own (target: at most 1.2 times), and against asgiref's ``async_to_sync`` (a
dev-only comparison; its row is left out when asgiref is not installed).

(b) A real GET on a keep-alive loopback server through the same ``AsyncServiceClient``:
from sync code through ``sync_proxy(client)`` against a native ``await client.get()``
(target: at most 1.3 times), against the floor of any bridge, the same call on a bare
loop thread through ``run_coroutine_threadsafe(...).result()`` (target: at most 1.1
times: what the bridge itself adds to running the call on another thread), and against
``asyncio.run`` per call with a fresh ``httpx.AsyncClient``, which is what calling
``asyncio.run()`` in a job handler amounts to (target: at least 10 times faster, a ratio
of at most 0.1).

(c) The same GET from 32 threads at once, wall time per call (the inverse of throughput):
through one ``sync_proxy(AsyncServiceClient)`` against one ``SyncServiceClient`` shared by
the threads (the guidance in the README holds if the shared sync client is not slower:
ratio at most 1), and the proxy against the async client awaited natively by 32 tasks
on one loop (what funnelling 32 threads through the bridge loop thread costs).

The server runs in its own process, so it never takes the GIL from the side measured.
Candidate and baseline rounds alternate (ABBA), and the median round counts.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks._table import Row
from tests.http_server import ServerProcess

HOP_LIMIT = 1.2
PROXY_LIMIT = 1.3
ASYNCIO_RUN_LIMIT = 0.1  # sync_proxy / asyncio.run per call: at least 10 times faster
SHARED_SYNC_LIMIT = 1.0  # shared SyncServiceClient / sync_proxy, 32 threads: not slower
FUNNEL_LIMIT = 3.0  # sync_proxy from 32 threads / 32 native tasks: a regression guard
FLOOR_LIMIT = 1.1  # sync_proxy GET / the same GET through a bare loop thread
PATH = "/ping"


@dataclass(frozen=True)
class Plan:
    rounds: int  # alternating candidate/baseline rounds; the median round counts
    hops: int  # trivial-coroutine calls per round
    gets: int  # loopback GETs per round
    fresh_loop_gets: int  # asyncio.run-per-call GETs per round (each costs milliseconds)
    thread_rounds: int  # alternating rounds of the 32-thread comparison
    gets_per_thread: int  # GETs per thread (or task) per 32-thread round


FULL = Plan(rounds=15, hops=2000, gets=200, fresh_loop_gets=15, thread_rounds=15, gets_per_thread=8)
QUICK = Plan(rounds=4, hops=300, gets=40, fresh_loop_gets=4, thread_rounds=4, gets_per_thread=3)


async def trivial() -> int:
    return 1


def _per_call(calls: int, call: Callable[[], Any]) -> Callable[[], float]:
    """A round: ``calls`` calls in a row; seconds per call."""

    def measure() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - started) / calls

    return measure


def _interleaved(
    rounds: int, candidate: Callable[[], float], baseline: Callable[[], float]
) -> tuple[float, float]:
    """Median seconds per call of each, measured in ABBA order round after round."""
    times: tuple[list[float], list[float]] = ([], [])
    for number in range(rounds):
        order = [(candidate, times[0]), (baseline, times[1])]
        if number % 2:
            order.reverse()
        for measure, measured in order:
            gc.collect()
            measured.append(measure())
    return statistics.median(times[0]), statistics.median(times[1])


def _row(
    group: str, candidate: str, baseline: str, values: tuple[float, float], limit: float
) -> Row:
    return Row(
        group=group,
        candidate=candidate,
        baseline=baseline,
        candidate_value=values[0] * 1e6,
        baseline_value=values[1] * 1e6,
        unit="µs/call",
        limit=limit,
    )


class _LoopThread:
    """A bare event loop in a thread: the floor any thread hop can reach."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> asyncio.AbstractEventLoop:
        self._thread.start()
        return self.loop

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _hop_rows(plan: Plan) -> list[Row]:
    from compat import run_sync, start_bridge

    start_bridge()
    rows = []
    with _LoopThread() as loop:

        def bare_hop() -> int:
            return asyncio.run_coroutine_threadsafe(trivial(), loop).result()

        def bridge_hop() -> int:
            return run_sync(trivial)

        for _ in range(2):  # warm up both sides
            _per_call(plan.hops // 4, bridge_hop)()
            _per_call(plan.hops // 4, bare_hop)()
        hop = _interleaved(
            plan.rounds, _per_call(plan.hops, bridge_hop), _per_call(plan.hops, bare_hop)
        )
        rows.append(
            _row(
                "compat hop",
                "run_sync",
                "run_coroutine_threadsafe on a loop thread",
                hop,
                HOP_LIMIT,
            )
        )
    try:
        from asgiref.sync import async_to_sync
    except ImportError:
        return rows
    asgiref_hop = async_to_sync(trivial)
    calls = plan.hops // 4  # it is several times slower
    versus_asgiref = _interleaved(
        plan.rounds, _per_call(calls, bridge_hop), _per_call(calls, asgiref_hop)
    )
    rows.append(_row("compat hop", "run_sync", "asgiref async_to_sync", versus_asgiref, 1.0))
    return rows


def _client(base_url: str) -> Any:
    from commclient import AsyncServiceClient

    unique = uuid.uuid4().hex[:8]
    return AsyncServiceClient(
        base_url,
        service_name=f"bench-{unique}",
        target_service=f"loopback-{unique}",
        registry=CollectorRegistry(),
    )


def _get_rows(base_url: str, plan: Plan) -> list[Row]:
    import httpx

    from compat import sync_proxy

    native_client = _client(base_url)
    native_loop = asyncio.new_event_loop()

    async def native_round(calls: int) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await native_client.get(PATH)
        return (time.perf_counter() - started) / calls

    def native(calls: int) -> Callable[[], float]:
        # One loop for every round, so the native client keeps its connection.
        return lambda: native_loop.run_until_complete(native_round(calls))

    async def fresh_loop_and_client() -> Any:
        async with httpx.AsyncClient() as fresh:
            response = await fresh.get(base_url + PATH)
            response.raise_for_status()
            return response.json()

    def asyncio_run_per_call() -> Any:
        return asyncio.run(fresh_loop_and_client())

    floor_client = _client(base_url)
    try:
        with sync_proxy(_client(base_url)) as proxy, _LoopThread() as floor_loop:

            def proxied() -> Any:
                return proxy.get(PATH)

            def on_a_loop_thread() -> Any:
                call = floor_client.get(PATH)
                return asyncio.run_coroutine_threadsafe(call, floor_loop).result()

            for _ in range(2):  # warm up: connections open, caches filled
                _per_call(plan.gets // 4, proxied)()
                native(plan.gets // 4)()
                _per_call(plan.gets // 4, on_a_loop_thread)()
            versus_native = _interleaved(
                plan.rounds, _per_call(plan.gets, proxied), native(plan.gets)
            )
            versus_floor = _interleaved(
                plan.rounds, _per_call(plan.gets, proxied), _per_call(plan.gets, on_a_loop_thread)
            )
            asyncio.run_coroutine_threadsafe(floor_client.close(), floor_loop).result()
            versus_asyncio_run = _interleaved(
                max(3, plan.rounds // 3),
                _per_call(plan.gets, proxied),
                _per_call(plan.fresh_loop_gets, asyncio_run_per_call),
            )
    finally:
        native_loop.run_until_complete(native_client.close())
        native_loop.close()
    return [
        _row(
            "compat GET",
            "sync_proxy(client).get",
            "await client.get (native)",
            versus_native,
            PROXY_LIMIT,
        ),
        _row(
            "compat GET",
            "sync_proxy(client).get",
            "run_coroutine_threadsafe on a loop thread",
            versus_floor,
            FLOOR_LIMIT,
        ),
        _row(
            "compat GET",
            "sync_proxy(client).get",
            "asyncio.run per call, fresh httpx.AsyncClient",
            versus_asyncio_run,
            ASYNCIO_RUN_LIMIT,
        ),
    ]


def _thread_rows(base_url: str, plan: Plan) -> list[Row]:
    # The same client configuration, pool size and concurrency as the client benchmark.
    from benchmarks.bench_client import (
        CONCURRENCY,
        _async_concurrent,
        _make,
        _names,
        _sync_concurrent,
    )
    from commclient import AsyncServiceClient, SyncServiceClient
    from compat import sync_proxy

    group = f"compat x{CONCURRENCY} threads"
    per_worker = plan.gets_per_thread
    native_client = _make(AsyncServiceClient, base_url, _names())
    native_loop = asyncio.new_event_loop()

    def native() -> float:
        wall, _cpu = native_loop.run_until_complete(
            _async_concurrent(lambda: native_client.get(PATH), per_worker)
        )
        return wall

    try:
        with (
            sync_proxy(_make(AsyncServiceClient, base_url, _names())) as proxy,
            _make(SyncServiceClient, base_url, _names()) as shared,
            ThreadPoolExecutor(CONCURRENCY) as pool,
        ):

            def proxied() -> float:
                return _sync_concurrent(pool, lambda: proxy.get(PATH), per_worker)[0]

            def shared_sync() -> float:
                return _sync_concurrent(pool, lambda: shared.get(PATH), per_worker)[0]

            for _ in range(2):  # warm up: every side opens its connections
                proxied(), shared_sync(), native()
            sync_versus_proxy = _interleaved(plan.thread_rounds, shared_sync, proxied)
            proxy_versus_native = _interleaved(plan.thread_rounds, proxied, native)
    finally:
        native_loop.run_until_complete(native_client.close())
        native_loop.close()
    return [
        _row(
            group,
            "shared SyncServiceClient.get",
            "sync_proxy(AsyncServiceClient).get",
            sync_versus_proxy,
            SHARED_SYNC_LIMIT,
        ),
        _row(
            group,
            "sync_proxy(AsyncServiceClient).get",
            f"await client.get, {CONCURRENCY} tasks (native)",
            proxy_versus_native,
            FUNNEL_LIMIT,
        ),
    ]


def run(quick: bool) -> list[Row]:
    """Measure the bridge hop and a proxied loopback GET against their alternatives."""
    import anyio  # noqa: F401  (the async extra; without it the runner skips this module)

    plan = QUICK if quick else FULL
    rows = _hop_rows(plan)
    with ServerProcess() as server:
        rows += _get_rows(server.base_url, plan)
        rows += _thread_rows(server.base_url, plan)
    return rows


if __name__ == "__main__":
    from benchmarks.__main__ import render_text

    print(render_text(run(quick=False)))

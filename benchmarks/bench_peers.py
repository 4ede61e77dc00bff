"""The library beside what a team would assemble instead, on the same loopback server.

Sequential calls, seconds per call and process CPU per call, candidate and baseline
rounds interleaved (ABBA), medians of the rounds with their spread. Each peer retries
three times on transport errors and 5xx like the library's default, and the breaker
peers wrap every call:

- async: ``stamina.retry`` around ``httpx.AsyncClient``; ``aiobreaker`` around it;
- sync: ``tenacity`` + ``pybreaker`` around ``requests.Session``; ``niquests.Session``
  (measured only where niquests is importable: it brings urllib3-future, which replaces
  the ``urllib3`` package the sync facade's deadline watchdog extends, so it belongs in
  an environment of its own).

The bare transport is every row's baseline. These rows compare, they carry no limit; the
library's own limits are in :mod:`benchmarks.bench_client`. The server is
:mod:`benchmarks._loadserver`, its headroom printed as the first row.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks._loadserver import LoadServer, headroom_row
from benchmarks._table import Row, spread
from commclient import ClientConfig

PATH = "/ping"
CONFIG = ClientConfig(max_connections=100)
#: (wall seconds, CPU seconds) per call of one round
Timing = tuple[float, float]


def _names() -> tuple[str, str]:
    unique = uuid.uuid4().hex[:8]
    return f"bench-peers-{unique}", f"loopback-{unique}"


def _row(group: str, candidate: str, baseline: str, times: tuple[list[float], list[float]]) -> Row:
    return Row(
        group,
        candidate,
        baseline,
        statistics.median(times[0]) * 1e6,
        statistics.median(times[1]) * 1e6,
        "µs/call" if "CPU" not in group else "µs CPU",
        0,
        "none",
        spread(times[0]),
        spread(times[1]),
    )


def _pair_rows(
    group: str, candidate: str, baseline: str, rounds: tuple[list[Timing], list[Timing]]
) -> list[Row]:
    wall = ([t[0] for t in rounds[0]], [t[0] for t in rounds[1]])
    cpu = ([t[1] for t in rounds[0]], [t[1] for t in rounds[1]])
    return [
        _row(group, candidate, baseline, wall),
        _row(f"{group} CPU", candidate, baseline, cpu),
    ]


# --- async ------------------------------------------------------------------------------------


async def _async_timing(call: Callable[[], Awaitable[Any]], calls: int) -> Timing:
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls


async def _async_rows(base_url: str, rounds: int, calls: int) -> list[Row]:
    import httpx

    from commclient import AsyncServiceClient

    url = base_url + PATH
    timeout = httpx.Timeout(CONFIG.timeout, connect=CONFIG.connect_timeout)
    bare = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=timeout)

    async def baseline() -> Any:
        response = await bare.get(url)
        response.raise_for_status()
        return response.json()

    service, target = _names()
    client = AsyncServiceClient(
        base_url,
        service_name=service,
        target_service=target,
        config=CONFIG,
        registry=CollectorRegistry(),
    )
    candidates: dict[str, Callable[[], Awaitable[Any]]] = {
        "AsyncServiceClient": lambda: client.get(PATH)
    }
    if importlib.util.find_spec("stamina") is not None:
        import stamina

        @stamina.retry(on=httpx.HTTPError, attempts=CONFIG.max_retries)
        async def with_stamina() -> Any:
            return await baseline()

        candidates["stamina + httpx"] = with_stamina
        if importlib.util.find_spec("aiobreaker") is not None:
            from aiobreaker import CircuitBreaker

            breaker = CircuitBreaker(fail_max=CONFIG.circuit_breaker_fail_max)

            async def with_aiobreaker() -> Any:
                return await breaker.call_async(with_stamina)

            candidates["stamina + aiobreaker + httpx"] = with_aiobreaker
    rows: list[Row] = []
    async with bare, client:
        for call in (baseline, *candidates.values()):
            await _async_timing(call, 20)
        for name, call in candidates.items():
            times: tuple[list[Timing], list[Timing]] = ([], [])
            for number in range(rounds):
                order = [(call, times[0]), (baseline, times[1])]
                if number % 2:
                    order.reverse()
                for measured, into in order:
                    gc.collect()
                    into.append(await _async_timing(measured, calls))
            rows += _pair_rows("peers async", name, "httpx.AsyncClient", times)
    return rows


# --- sync -------------------------------------------------------------------------------------


def _sync_timing(call: Callable[[], Any], calls: int) -> Timing:
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls


def _sync_rows(base_url: str, rounds: int, calls: int) -> list[Row]:
    import requests

    from commclient import SyncServiceClient

    url = base_url + PATH
    timeout = (CONFIG.connect_timeout, CONFIG.timeout)
    bare = requests.Session()
    bare.trust_env = False
    bare.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=100))

    def baseline() -> Any:
        response = bare.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()

    service, target = _names()
    client = SyncServiceClient(
        base_url,
        service_name=service,
        target_service=target,
        config=CONFIG,
        registry=CollectorRegistry(),
    )
    candidates: dict[str, Callable[[], Any]] = {"SyncServiceClient": lambda: client.get(PATH)}

    import pybreaker
    import tenacity

    breaker = pybreaker.CircuitBreaker(fail_max=CONFIG.circuit_breaker_fail_max)

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(CONFIG.max_retries),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=10),
        retry=tenacity.retry_if_exception_type(requests.RequestException),
        reraise=True,
    )
    def with_tenacity() -> Any:
        return breaker.call(baseline)

    candidates["tenacity + pybreaker + requests"] = with_tenacity
    closers: list[Any] = []
    if importlib.util.find_spec("niquests") is not None:
        import niquests

        session = niquests.Session()
        session.trust_env = False
        closers.append(session)

        def with_niquests() -> Any:
            response = session.get(url, timeout=timeout)
            response.raise_for_status()
            return response.json()

        candidates["niquests.Session"] = with_niquests
    rows: list[Row] = []
    try:
        for call in (baseline, *candidates.values()):
            _sync_timing(call, 20)
        for name, call in candidates.items():
            times: tuple[list[Timing], list[Timing]] = ([], [])
            for number in range(rounds):
                order = [(call, times[0]), (baseline, times[1])]
                if number % 2:
                    order.reverse()
                for measured, into in order:
                    gc.collect()
                    into.append(_sync_timing(measured, calls))
            rows += _pair_rows("peers sync", name, "requests.Session(trust_env=False)", times)
    finally:
        client.close()
        bare.close()
        for closer in closers:
            closer.close()
    return rows


def run(quick: bool) -> list[Row]:
    rounds, calls = (6, 20) if quick else (60, 50)
    with LoadServer() as server:
        capacity = server.capacity(seconds=1.0 if quick else 3.0)
        rows = asyncio.run(_async_rows(server.base_url, rounds, calls))
        rows += _sync_rows(server.base_url, rounds, calls)
    best = max(1e6 / row.baseline_value for row in rows if row.unit == "µs/call")
    return [headroom_row(capacity, best, "fastest sequential calls/s of this run"), *rows]

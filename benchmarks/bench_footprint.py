"""What a facade costs before and besides its calls: import time and memory.

Import time: a fresh interpreter imports ``commclient`` and builds one facade (which
imports its transport), against a fresh interpreter importing the transport alone;
candidate and baseline interpreters alternate, the median of the rounds counts. Each
interpreter runs with ``python -X importtime`` and the figure is the sum of its
top-level imports after start-up (what ``-X importtime`` reports for the statement
measured), so interpreter start-up is left out of both sides. Goal: 1.6 x the transport
(prometheus-client, a core dependency, is about half of that).

Memory: the bytes Python allocates (``tracemalloc``) for one more client, and for 1,000
calls in flight at once on one async client, against the same for a bare
``httpx.AsyncClient`` (informational rows).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks._loadserver import LoadServer, _repository_root
from benchmarks._table import Row, spread

IMPORT_LIMIT = 1.6
MARK = "commclient-benchmark-mark"

#: (group, candidate label, candidate code, baseline label, baseline code)
IMPORTS = (
    (
        "import async facade",
        "import commclient + AsyncServiceClient(...)",
        "import commclient\n"
        "commclient.AsyncServiceClient('http://127.0.0.1:1', service_name='a', target_service='b')",
        "import httpx",
        "import httpx",
    ),
    (
        "import sync facade",
        "import commclient + SyncServiceClient(...)",
        "import commclient\n"
        "commclient.SyncServiceClient('http://127.0.0.1:1', service_name='a', target_service='b')",
        "import requests",
        "import requests",
    ),
)


def import_microseconds(code: str) -> float:
    """Microseconds of the imports ``code`` makes in a fresh interpreter (``-X importtime``)."""
    # Start-up imports are printed before the marker module is looked up; the marker's
    # failed import splits them from the code's.
    script = f"try:\n    import {MARK.replace('-', '_')}\nexcept ImportError:\n    pass\n{code}\n"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=_repository_root(),
    )
    total = 0.0
    after_marker = False
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not cumulative.strip().isdigit():
            continue  # the header line
        if name.strip() == MARK.replace("-", "_"):
            after_marker = True
            continue
        # A top-level import has no indentation beyond the one space after the bar.
        if after_marker and not name.startswith("  "):
            total += float(cumulative)
    return total


def _import_rows(rounds: int) -> list[Row]:
    rows = []
    for group, candidate, candidate_code, baseline, baseline_code in IMPORTS:
        candidate_times: list[float] = []
        baseline_times: list[float] = []
        for number in range(rounds):
            order = [(candidate_code, candidate_times), (baseline_code, baseline_times)]
            if number % 2:
                order.reverse()
            for code, times in order:
                times.append(import_microseconds(code) / 1000)
        rows.append(
            Row(
                group,
                candidate,
                baseline,
                statistics.median(candidate_times),
                statistics.median(baseline_times),
                "ms",
                IMPORT_LIMIT,
                "ratio",
                spread(candidate_times),
                spread(baseline_times),
            )
        )
    return rows


async def _allocated(build: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """Bytes still allocated after ``build()`` (what it returns is kept alive meanwhile)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = await build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


async def _memory_rows(base_url: str) -> list[Row]:
    import httpx

    from commclient import AsyncServiceClient

    def client(name: str) -> AsyncServiceClient:
        return AsyncServiceClient(
            base_url,
            service_name=f"memory-{name}",
            target_service="loopback",
            registry=CollectorRegistry(),
        )

    clients_measured = 20

    async def libraries() -> list[AsyncServiceClient]:
        made = [client(str(i)) for i in range(clients_measured)]
        for made_client in made:
            await made_client.get("/ping")  # its pool open, one connection in it
        return made

    async def bares() -> list[httpx.AsyncClient]:
        made = [httpx.AsyncClient() for _ in range(clients_measured)]
        for bare in made:
            (await bare.get(base_url + "/ping")).raise_for_status()
        return made

    await (await libraries())[0].aclose()  # first-use costs (metric families, modules) paid
    per_client, clients = await _allocated(libraries)
    per_bare, bare_clients = await _allocated(bares)
    for opened in [*clients, *bare_clients]:
        await opened.aclose()

    async def in_flight(call: Any) -> float:
        await asyncio.gather(*(call() for _ in range(10)))  # connections open, caches warm
        gc.collect()
        tracemalloc.start()
        try:
            tasks = [asyncio.ensure_future(call()) for _ in range(1000)]
            await asyncio.sleep(0)  # every call started, most of them waiting
            peak = tracemalloc.get_traced_memory()[0]
            await asyncio.gather(*tasks)
            return float(peak)
        finally:
            tracemalloc.stop()

    async with (
        client("flight") as library,
        httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100), timeout=httpx.Timeout(10, pool=30)
        ) as bare,
    ):
        library_bytes = await in_flight(lambda: library.get("/ping"))
        bare_bytes = await in_flight(lambda: bare.get(base_url + "/ping"))
    return [
        Row(
            "memory",
            "AsyncServiceClient, per client (one connection)",
            "httpx.AsyncClient, per client (one connection)",
            per_client / clients_measured / 1024,
            per_bare / clients_measured / 1024,
            "KiB",
            0,
            "none",
        ),
        Row(
            "memory",
            "AsyncServiceClient, 1,000 calls in flight",
            "httpx.AsyncClient, 1,000 calls in flight",
            library_bytes / 1024 / 1024,
            bare_bytes / 1024 / 1024,
            "MiB",
            0,
            "none",
        ),
    ]


def run(quick: bool) -> list[Row]:
    rows = _import_rows(3 if quick else 15)
    with LoadServer() as server:
        rows += asyncio.run(_memory_rows(server.base_url))
    return rows

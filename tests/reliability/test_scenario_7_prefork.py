"""Scenario 7: a pre-forking server (``multiprocessing`` with the fork start method) after the
parent used every component: clients, breaker and budget, cache with a local tier and its
listener, the compat bridge, a ``sync_proxy`` and a ``LegacyShim``. See ``prefork.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_server import ServerProcess
from tests.redis_server import RedisServer
from tests.reliability._results import Row, sized
from tests.reliability.rest_service import RestServiceProcess

pytestmark = [pytest.mark.facade_sync, pytest.mark.facade_async, pytest.mark.redis_server]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4


@pytest.fixture
def rest_service() -> Iterator[RestServiceProcess]:
    with RestServiceProcess() as service:
        yield service


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_prefork_workers(
    http_server: ServerProcess,
    rest_service: RestServiceProcess,
    redis_server: RedisServer,
    row: Row,
) -> None:
    calls = sized(25, 100)
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.prefork",
            http_server.base_url,
            rest_service.url,
            redis_server.url,
            str(WORKERS),
            str(calls),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    reports = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    processes = [r for r in reports if r.get("process", "").startswith(("worker", "parent"))]
    workers = [r for r in processes if r["process"].startswith("worker")]
    failures: dict[str, dict[str, int]] = {}
    for report in processes:
        bad = {k: v for k, v in report.get("outcome", {}).items() if not k.endswith(": ok")}
        if bad:
            failures[report["process"]] = bad
    ok_calls = sum(
        v for r in processes for k, v in r.get("outcome", {}).items() if k.endswith(": ok")
    )
    crossed = sum(
        v for r in processes for k, v in r.get("outcome", {}).items() if k.endswith("crossed")
    )
    hung = [w["process"] for w in workers if w.get("hung") or w.get("crashed")]
    reached = [w for w in workers if w.get("probe_after") == "after-fork"]
    wrong_before = [w["process"] for w in workers if w.get("probe_before") != "before-fork"]

    row.scenario = "7"
    row.title = "Pre-fork: 4 workers forked after the parent used every component"
    row.load = (
        f"parent and {WORKERS} forked workers at once, {calls} rounds each: sync client, "
        "run_sync(async client), and every 5th round sync_proxy(CronRestClient), a LegacyShim "
        "function and the cache"
    )
    row.faults = "fork (multiprocessing, fork start method) with pooled connections, a running "
    row.faults += "bridge loop, a cache listener and a local tier in the parent"
    row.outcome = (
        f"{ok_calls:,} calls ok, {crossed} answers crossed to another request, failures "
        f"{failures or 'none'}; hung or crashed workers: {hung or 'none'}; invalidation after "
        f"the fork reached {len(reached)}/{WORKERS} workers"
    )
    row.lost = f"{crossed} crossed answers"
    row.figures = {"ok_calls": ok_calls, "crossed": crossed, "reached": len(reached)}

    details: Any = {"stderr": finished.stderr[-3000:], "reports": reports}
    assert finished.returncode == 0, details
    assert len(workers) == WORKERS, details
    assert not hung, details
    assert not failures, details
    assert crossed == 0
    assert not wrong_before, details
    assert len(reached) == WORKERS, details

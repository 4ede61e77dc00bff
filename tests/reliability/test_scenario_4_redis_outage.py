"""Scenario 4: Redis killed and restarted under cache traffic from two processes with local tiers.

One process drives ``SyncRedisCache``, the other ``AsyncRedisCache``, both with a local tier
and an invalidation listener, both busy without pause. Before the outage each holds a probe
value in its local tier. Redis is killed (SIGKILL) and comes back empty on the same port.
Then: no call raised; neither process serves the pre-outage probe from its tier any longer
(the tiers were flushed); and an invalidation sent after the restart reaches both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from commclient.cache import CacheConfig, SyncRedisCache
from tests.redis_server import RedisServer
from tests.reliability._results import Row, sized

pytestmark = pytest.mark.redis_server

ROOT = Path(__file__).resolve().parents[2]
#: How long a change may take to reach a process on a loaded machine.
PROPAGATION = 15.0


class Worker:
    def __init__(self, facade: str, url: str, prefix: str) -> None:
        self.facade = facade
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.cache_traffic", facade, url, prefix],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.facade} worker died")
        return json.loads(line)

    def wait_for(self, key: str, expected: Any) -> float | None:
        """Seconds until the worker serves ``expected`` for ``key``, or None."""
        started = time.monotonic()
        while time.monotonic() - started < PROPAGATION:
            if self.ask(f"get {key}")["value"] == expected:
                return time.monotonic() - started
            time.sleep(0.02)
        return None

    def stop(self) -> dict[str, Any]:
        report: dict[str, Any] = self.ask("stop")
        self.process.wait(30)
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_redis_killed_under_traffic(redis_server: RedisServer, row: Row) -> None:
    outage = sized(3.0, 10.0)
    prefix = f"s4{uuid.uuid4().hex[:8]}"
    control = SyncRedisCache.from_url(
        redis_server.url, prefix, config=CacheConfig(operation_timeout=2.0)
    )
    workers = [Worker(facade, redis_server.url, prefix) for facade in ("sync", "async")]
    try:
        assert control.set("probe", "before")
        for worker in workers:
            assert worker.wait_for("probe", "before") is not None
        time.sleep(1.0)  # traffic with Redis up

        redis_server.kill()
        time.sleep(outage)
        redis_server.start()  # empty: nothing is persisted
        time.sleep(2.0)  # traffic after the restart

        # Flushed: Redis has no probe any more, so a tier that still serves "before" kept
        # a value no listener could invalidate while Redis was gone.
        stale = {w.facade: w.wait_for("probe", None) is None for w in workers}
        assert control.set("probe", "after-restart")
        seen = {w.facade: w.wait_for("probe", "after-restart") for w in workers}
        # Both hold "after-restart" in their tiers now; this change must reach them.
        assert control.set("probe", "invalidated")
        reached = {w.facade: w.wait_for("probe", "invalidated") for w in workers}
        reports = {w.facade: w.stop() for w in workers}
    finally:
        for worker in workers:
            worker.kill()
        control.close()

    calls = sum(r["calls"] for r in reports.values())
    exceptions = {f: r["exceptions"] for f, r in reports.items() if r["exceptions"]}
    row.scenario = "4"
    row.title = "Redis killed under cache traffic, two processes with local tiers"
    row.load = (
        f"{calls:,} cache calls (get, get_or_set, set over 20 keys) from a sync and an async "
        "process, each with a local tier and a listener"
    )
    row.faults = f"redis-server SIGKILLed for {outage:.0f} s, restarted empty on the same port"
    row.outcome = (
        f"exceptions seen by callers: {exceptions or 'none'}; pre-outage value still served "
        f"from a tier: {[f for f, s in stale.items() if s] or 'none'}; invalidation after the "
        "restart reached "
        + ", ".join(
            f"{f} in {t:.2f} s" if t is not None else f"{f}: never" for f, t in reached.items()
        )
    )
    row.lost = "-"
    row.figures = {"calls": calls, "exceptions": exceptions, "reached": reached}

    assert not exceptions, {f: r["samples"] for f, r in reports.items()}
    assert not any(stale.values()), stale
    assert all(t is not None for t in seen.values()), seen
    assert all(t is not None for t in reached.values()), reached
    assert all(r["calls"] > 100 for r in reports.values()), reports

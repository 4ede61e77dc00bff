"""Two scheduler processes sharing one real Redis with the lease: every slot runs exactly once.

CI runs a 0.25 s interval for 5 s; ``CRON_REPLICAS_FULL=1`` runs the 1 s interval for 20 s.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("redis")

import redis

from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis_server, pytest.mark.facade_async]

REPO_ROOT = Path(__file__).resolve().parents[2]
FULL = os.environ.get("CRON_REPLICAS_FULL", "") not in ("", "0")
INTERVAL, DURATION = (1.0, 20.0) if FULL else (0.25, 5.0)
REPLICAS = 2
# Both processes must be up before the first slot: importing takes a while on a busy machine.
STARTUP = 8.0


def test_two_replicas_run_every_slot_exactly_once() -> None:
    with RedisServer() as server:
        start = math.ceil(time.time() + STARTUP)
        end = start + DURATION
        prefix = "replicas"
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.cron_replica_worker",
                    server.url,
                    prefix,
                    str(INTERVAL),
                    str(start),
                    str(end),
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(REPLICAS)
        ]
        reports = []
        for process in processes:
            out, err = process.communicate(timeout=STARTUP + DURATION + 60)
            assert process.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
        entries = [
            entry.decode().split()
            for entry in redis.Redis.from_url(server.url).lrange(f"{prefix}:slots", 0, -1)
        ]

    expected = [round(start + k * INTERVAL, 3) for k in range(int(DURATION / INTERVAL) + 1)]
    slots = sorted(float(slot) for slot, _pid in entries)
    twice = sorted({slot for slot in slots if slots.count(slot) > 1})
    missing = sorted(set(expected) - set(slots))
    assert slots == expected, f"ran twice: {twice}; never ran: {missing}"
    assert len({pid for _slot, pid in entries}) >= 1
    succeeded = sum(report["runs"]["success"] for report in reports)
    skipped = sum(report["runs"]["skipped_elsewhere"] for report in reports)
    assert succeeded == len(expected)
    # Every replica fired every slot: one ran it, the others found the lease taken.
    assert skipped == (REPLICAS - 1) * len(expected)
    assert all(report["runs"]["skipped_no_lease"] == 0 for report in reports)
    assert all(report["runs"]["error"] == 0 for report in reports)


def run_leased_once(url: str, on_redis_error: str) -> tuple[list[str], dict[str, float]]:
    """One run of a leased job under a MigrationExecutor; what ran and the outcomes."""
    import asyncio
    from datetime import datetime, timezone

    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from prometheus_client import CollectorRegistry

    from cron_migration import Lease, MigrationExecutor, migrated_job, shutdown_gracefully
    from tests.unit.cron_support import wait_until_async

    registry = CollectorRegistry()
    ran: list[str] = []
    lease = Lease(url, on_redis_error=on_redis_error, redis_timeout=0.5)  # type: ignore[arg-type]

    @migrated_job(timeout=5, lease=lease, registry=registry, name="remind")
    async def remind() -> None:
        ran.append("ran")

    def outcome(name: str) -> float:
        value = registry.get_sample_value(
            "cron_job_runs_total", {"cron_job": "remind", "outcome": name}
        )
        return value or 0.0

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(
            remind, "interval", hours=1, id="remind", next_run_time=datetime.now(timezone.utc)
        )
        scheduler.start()
        await wait_until_async(
            lambda: outcome("success") + outcome("skipped_no_lease") >= 1, what="the run"
        )
        await shutdown_gracefully(scheduler, timeout=5)

    asyncio.run(main())
    return ran, {name: outcome(name) for name in ("success", "skipped_no_lease")}


@pytest.mark.parametrize("failure", ["killed", "paused"])
@pytest.mark.parametrize(("on_redis_error", "runs_anyway"), [("skip", False), ("run", True)])
def test_a_dead_or_hung_redis_follows_the_configured_choice(
    failure: str, on_redis_error: str, runs_anyway: bool
) -> None:
    with RedisServer() as server:
        if failure == "killed":
            server.kill()
        else:
            server.pause()
        try:
            ran, outcomes = run_leased_once(server.url, on_redis_error)
        finally:
            server.resume()
    assert ran == (["ran"] if runs_anyway else [])
    assert outcomes == {
        "success": 1.0 if runs_anyway else 0.0,
        "skipped_no_lease": 0.0 if runs_anyway else 1.0,
    }


def test_the_lease_outlives_the_run_by_its_timeout_plus_the_clock_skew() -> None:
    with RedisServer() as server:
        ran, outcomes = run_leased_once(server.url, "skip")
        assert outcomes["success"] == 1
        client = redis.Redis.from_url(server.url)
        keys = list(client.scan_iter("cron_migration:lease:remind:*"))
        assert ran == ["ran"]
        assert len(keys) == 1
        remaining_ms = client.pttl(keys[0])
        value = client.get(keys[0])
    # Not released when the run ended; expires after timeout (5 s) + clock skew (30 s).
    assert 0 < remaining_ms <= 35_000
    assert value is not None
    assert f":{os.getpid()}:" in value.decode()

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
    assert slots == expected, "a slot ran twice or not at all"
    assert len({pid for _slot, pid in entries}) >= 1
    succeeded = sum(report["runs"]["success"] for report in reports)
    skipped = sum(report["runs"]["skipped_elsewhere"] for report in reports)
    assert succeeded == len(expected)
    # Every replica fired every slot: one ran it, the others found the lease taken.
    assert skipped == (REPLICAS - 1) * len(expected)
    assert all(report["runs"]["skipped_no_lease"] == 0 for report in reports)
    assert all(report["runs"]["error"] == 0 for report in reports)

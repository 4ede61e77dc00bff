"""One replica of a cron service for the lease test (run with ``python -m``).

``URL PREFIX INTERVAL START END``: an AsyncIOScheduler with a MigrationExecutor runs the
job ``remind`` every INTERVAL seconds from START to END (epoch seconds), leased in Redis at
URL. Each run appends ``<scheduled epoch> <pid>`` to the list PREFIX:slots. At the end it
prints one JSON line with its counts of runs per outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone

import redis.asyncio
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from cron_migration import (
    Lease,
    MigrationExecutor,
    current_scheduled_run,
    migrated_job,
    shutdown_gracefully,
)

OUTCOMES = ("success", "error", "skipped_elsewhere", "skipped_no_lease")


async def main(url: str, prefix: str, interval: float, start: float, end: float) -> None:
    registry = CollectorRegistry()
    client = redis.asyncio.Redis.from_url(url)
    lease = Lease(url, clock_skew=2.0, key_prefix=f"{prefix}:lease")

    @migrated_job(timeout=5, lease=lease, registry=registry, name="remind")
    async def remind() -> None:
        run = current_scheduled_run()
        assert run is not None
        await client.rpush(f"{prefix}:slots", f"{run.scheduled_at.timestamp():.3f} {os.getpid()}")

    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(registry=registry)})
    scheduler.add_job(
        remind,
        IntervalTrigger(
            seconds=interval,
            start_date=datetime.fromtimestamp(start, timezone.utc),
            end_date=datetime.fromtimestamp(end, timezone.utc),
        ),
        id="remind",
        # From the first slot even when this process came up after it (a loaded machine):
        # a new job's first run is otherwise the next slot after now.
        next_run_time=datetime.fromtimestamp(start, timezone.utc),
        coalesce=False,  # every slot is fired, however late this replica wakes
        misfire_grace_time=None,
        max_instances=100,
    )
    scheduler.start()
    await asyncio.sleep(max(0.0, end - time.time()) + 1.0)
    await shutdown_gracefully(scheduler, timeout=10)
    await lease.aclose()
    await client.aclose()
    counts = {
        outcome: registry.get_sample_value(
            "cron_job_runs_total", {"cron_job": "remind", "outcome": outcome}
        )
        or 0.0
        for outcome in OUTCOMES
    }
    print(json.dumps({"pid": os.getpid(), "runs": counts}), flush=True)


if __name__ == "__main__":
    url, prefix, interval, start, end = sys.argv[1:6]
    asyncio.run(main(url, prefix, float(interval), float(start), float(end)))

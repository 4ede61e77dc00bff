"""Event-loop lag under ten blocking legacy jobs: with @migrated_job against bare on the loop.

Ten sync jobs, each blocking for 200 ms (``time.sleep``, as legacy I/O does), all due
every 0.5 s on one ``AsyncIOScheduler`` while an :class:`EventLoopLagMonitor` probes the
loop every 10 ms. The candidate runs them as ``@migrated_job`` under the
``MigrationExecutor``: they go to compat's worker pool. The baseline calls the same
functions bare on the loop, from ``async def`` jobs, which is what moving a job to
``AsyncIOScheduler`` without moving its I/O amounts to. Target: p99 lag <= 20 ms with the
decorator. A second row sets it against the same loop with no jobs at all: the lag a busy
machine causes by itself, which the decorator cannot go below. Rounds rotate the order;
the median round's p99 counts.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from benchmarks._table import Row
from cron_migration import EventLoopLagMonitor, MigrationExecutor, migrated_job, shutdown_gracefully

JOBS = 10
BLOCK = 0.2
INTERVAL = 0.5
PROBE = 0.01
LAG_LIMIT_MS = 20.0


def legacy_job() -> None:
    time.sleep(BLOCK)  # blocking legacy I/O


def bare_on_the_loop() -> Callable[[], Any]:
    async def job() -> None:
        legacy_job()  # the blocking call made on the loop itself

    return job


def decorated() -> Callable[[], Any]:
    job: Callable[[], Any] = migrated_job(timeout=30, registry=CollectorRegistry())(legacy_job)
    return job


async def lag_p99(make_job: Callable[[], Callable[[], Any]] | None, seconds: float) -> float:
    """Run the ten jobs (none for None) for ``seconds``; the loop's p99 lag in milliseconds."""
    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
    now = datetime.now(timezone.utc)
    for number in range(JOBS if make_job is not None else 0):
        assert make_job is not None
        scheduler.add_job(
            make_job(),
            "interval",
            seconds=INTERVAL,
            id=f"job{number}",
            next_run_time=now,
            misfire_grace_time=None,
        )
    monitor = EventLoopLagMonitor(interval=PROBE, registry=CollectorRegistry())
    async with monitor:
        scheduler.start()
        await asyncio.sleep(seconds)
        await shutdown_gracefully(scheduler, timeout=30, records_timeout=0)
    return monitor.percentile(0.99) * 1000


def run(quick: bool) -> list[Row]:
    rounds, seconds = (1, 2.0) if quick else (3, 6.0)
    variants: list[tuple[Callable[[], Callable[[], Any]] | None, list[float]]] = [
        (decorated, []),
        (bare_on_the_loop, []),
        (None, []),
    ]
    for number in range(rounds):
        turn = number % len(variants)
        for make_job, results in variants[turn:] + variants[:turn]:
            results.append(asyncio.run(lag_p99(make_job, seconds)))
    candidate, bare, idle = (statistics.median(results) for _, results in variants)
    group = f"cron loop lag p99, {JOBS} jobs blocking {BLOCK * 1000:.0f} ms"
    return [
        Row(
            group,
            "@migrated_job (worker pool)",
            "bare on the loop",
            candidate,
            bare,
            "ms",
            LAG_LIMIT_MS,
            "value",
        ),
        Row(
            group,
            "@migrated_job (worker pool)",
            "no jobs (the machine's own lag)",
            candidate,
            idle,
            "ms",
            LAG_LIMIT_MS,
            "value",
        ),
    ]

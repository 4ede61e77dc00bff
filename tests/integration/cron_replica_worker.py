"""One replica of a cron service for the replica tests (run with ``python -m``).

``python -m tests.integration.cron_replica_worker CONFIG_JSON``: an AsyncIOScheduler with a
MigrationExecutor runs the jobs CONFIG names until CONFIG["end"] (epoch seconds) or a
SIGTERM, then prints one JSON line: its pid, its counts of runs per job and outcome, and
what it refused.

Every run appends ``<job> <scheduled epoch> <pid> <argument> <fencing token>`` to the list
``<prefix>:runs``, so that the test counts each slot across replicas.

CONFIG: ``url``, ``prefix``, ``end``, ``mode`` (``"lease"``: every job leased, or
``"leader"``: a LeaderElection and no lease), ``jobs`` (names below), and per mode:
``interval``, ``jitter``, ``date_at``, ``grace``, ``clock_skew``, ``timeout``, ``ttl``.

- ``interval``: every CONFIG["interval"] s, no start_date (the default: counted from when
  this process adds it);
- ``interval_jitter``: the same with ``jitter=CONFIG["jitter"]``;
- ``cron``: every second (``second="*"``);
- ``date``: once at CONFIG["date_at"];
- ``tenants``: every second, an unleased job calling the leased ``sync_tenant(t)`` for
  three tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from datetime import datetime, timezone
from typing import Any

import redis.asyncio
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from cron_migration import (
    LeaderElection,
    Lease,
    LeaseRefusedError,
    MigrationExecutor,
    current_scheduled_run,
    migrate_scheduler,
    migrated_job,
    shutdown_gracefully,
)

OUTCOMES = ("success", "error", "skipped_elsewhere", "skipped_no_lease")
TENANTS = ("a", "b", "c")
# KEYS: the runs list, the newest token seen, the refused writes; ARGV: entry, token.
FENCED_APPEND = """
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) < newest then return redis.call('RPUSH', KEYS[3], ARGV[1]) end
redis.call('SET', KEYS[2], ARGV[2])
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


def trigger_of(name: str, config: dict[str, Any]) -> Any:
    if name == "interval":
        return IntervalTrigger(seconds=config["interval"])
    if name == "interval_jitter":
        return IntervalTrigger(seconds=config["interval"], jitter=config["jitter"])
    if name == "date":
        return DateTrigger(datetime.fromtimestamp(config["date_at"], timezone.utc))
    return CronTrigger(second="*", timezone=timezone.utc)


def refusals_of(config: dict[str, Any], registry: CollectorRegistry) -> dict[str, Any]:
    """Migrating and starting a scheduler with a leased interval+jitter job: both refuse."""

    @migrated_job(timeout=5, lease=config["url"], registry=registry, name="jittery")
    async def jittery() -> None:
        raise AssertionError("a refused job ran")

    legacy = BackgroundScheduler(timezone="UTC")
    legacy.add_job(jittery, trigger_of("interval_jitter", config), id="jittery")
    new, report = migrate_scheduler(legacy, lag_monitor=False, registry=registry)
    try:
        new.start()
    except LeaseRefusedError as exc:
        started = str(exc)
    else:
        new.shutdown(wait=False)
        started = "started"
    return {"report": report.render(), "start": started}


async def main(config: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    prefix = config["prefix"]
    client = redis.asyncio.Redis.from_url(config["url"])
    leased = config["mode"] == "lease"
    lease = (
        Lease(
            config["url"],
            clock_skew=config.get("clock_skew", 2.0),
            key_prefix=f"{prefix}:lease",
            redis_timeout=config.get("redis_timeout", 2.0),
        )
        if leased
        else None
    )
    leader = (
        None
        if leased
        else LeaderElection(
            config["url"],
            name=prefix,
            ttl=config["ttl"],
            redis_timeout=config["redis_timeout"],
        )
    )
    refused = refusals_of(config, registry) if config.get("probe_refusals") else None

    async def note(job: str, argument: str = "-") -> None:
        run = current_scheduled_run()
        assert run is not None
        entry = f"{job} {run.scheduled_at.timestamp():.6f} {os.getpid()} {argument}"
        if run.fencing_token is None:
            await client.rpush(f"{prefix}:runs", f"{entry} None")
            return
        # A write fenced as the README says: refused when a newer leader has written.
        keys = [f"{prefix}:runs", f"{prefix}:newest_token", f"{prefix}:stale_writes"]
        await client.eval(
            FENCED_APPEND, 3, *keys, f"{entry} {run.fencing_token}", run.fencing_token
        )

    def job(name: str) -> Any:
        async def run() -> None:
            await note(name)

        return migrated_job(
            run, timeout=config.get("timeout", 5), lease=lease, registry=registry, name=name
        )

    @migrated_job(timeout=5, lease=lease, registry=registry, name="sync_tenant")
    async def sync_tenant(tenant: str) -> None:
        await note("sync_tenant", tenant)

    @migrated_job(timeout=5, registry=registry, name="tenants")
    async def tenants() -> None:
        for tenant in TENANTS:
            await sync_tenant(tenant)

    # Replicas come up at different moments: each interval trigger counts from its own.
    await asyncio.sleep(random.uniform(0, config.get("interval", 1.0)))
    scheduler = AsyncIOScheduler(
        executors={"default": MigrationExecutor(registry=registry, leader=leader)}
    )
    for name in config["jobs"]:
        scheduler.add_job(
            tenants if name == "tenants" else job(name),
            trigger_of(name, config),
            id=name,
            coalesce=False,
            misfire_grace_time=config.get("grace", 5),
            max_instances=100,
        )
    scheduler.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, config["end"] - time.time()))
    await shutdown_gracefully(scheduler, timeout=10)
    if lease is not None:
        await lease.aclose()
    if leader is not None:
        await leader.aclose()
    await client.aclose()
    counts = {
        name: {
            outcome: registry.get_sample_value(
                "cron_job_runs_total", {"cron_job": name, "outcome": outcome}
            )
            or 0.0
            for outcome in OUTCOMES
        }
        for name in [*config["jobs"], "sync_tenant"]
    }
    missed = {
        name: registry.get_sample_value("cron_job_missed_total", {"cron_job": name}) or 0.0
        for name in config["jobs"]
    }
    print(
        json.dumps({"pid": os.getpid(), "runs": counts, "missed": missed, "refused": refused}),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))

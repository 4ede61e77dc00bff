"""Replicas of a cron service on one real Redis: each slot once, or refused at set-up.

Three scheduler processes (``cron_replica_worker``) with interval (no ``start_date``, as
by default), cron, date and per-call leases; an interval+jitter job refused; a replica
SIGSTOPped across a slot within its misfire grace; a frozen redis-server (SIGSTOP) under
a sync client, an asyncio client and a URL; and leader election with its leader killed,
then paused. Durations are short (grace, timeouts, TTLs of seconds): the rules are what
is checked, in RELIABILITY.md with their figures.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("redis")

import redis

from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis_server, pytest.mark.facade_async]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every replica must be up before the first slot: importing takes a while on a busy machine.
STARTUP = 8.0


def spawn(config: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.cron_replica_worker", json.dumps(config)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report_of(process: subprocess.Popen[str], timeout: float = 90) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


@contextmanager
def replicas(configs: list[dict[str, Any]]) -> Iterator[list[subprocess.Popen[str]]]:
    processes = [spawn(config) for config in configs]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.communicate(timeout=30)


def runs_of(url: str, prefix: str) -> list[tuple[str, float, int, str, str]]:
    """``(job, scheduled epoch, pid, argument, fencing token)`` of every run, in order."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.lrange(f"{prefix}:runs", 0, -1)
    finally:
        client.close()
    parsed = []
    for entry in entries:
        job, scheduled, pid, argument, fence = entry.decode().split()
        parsed.append((job, float(scheduled), int(pid), argument, fence))
    return parsed


def assert_each_slot_once(slots: list[int], what: str) -> None:
    """Each slot ran once, and none between the first and the last is missing."""
    counted = Counter(slots)
    twice = sorted(slot for slot, n in counted.items() if n > 1)
    missing = sorted(set(range(min(slots), max(slots) + 1)) - set(counted))
    assert (twice, missing) == ([], []), f"{what}: ran twice {twice}; never ran {missing}"


def test_three_replicas_run_each_slot_of_every_trigger_once_or_refuse_it() -> None:
    interval, duration = 0.5, 6.0
    with RedisServer() as server:
        start = time.time() + STARTUP
        config = {
            "url": server.url,
            "prefix": "three",
            "mode": "lease",
            "end": start + duration,
            "interval": interval,
            "jitter": 0.3,
            "date_at": start + 2.0,
            "jobs": ["interval", "cron", "date", "tenants"],
            "grace": 5,
        }
        with replicas([config, config, {**config, "probe_refusals": True}]) as processes:
            reports = [report_of(process) for process in processes]
        runs = runs_of(server.url, "three")

    by_job: dict[str, list[tuple[float, int, str]]] = {}
    for job, scheduled, pid, argument, _fence in runs:
        by_job.setdefault(job, []).append((scheduled, pid, argument))
    # Interval without start_date: each replica counts from its own start; the slot is the
    # epoch-aligned window. At least one replica fired each window from the first on.
    windows = [math.floor(scheduled / interval) for scheduled, _, _ in by_job["interval"]]
    assert_each_slot_once(windows, "interval")
    assert len(windows) >= duration / interval - 1
    seconds = [round(scheduled) for scheduled, _, _ in by_job["cron"]]
    assert_each_slot_once(seconds, "cron")
    assert len(seconds) >= duration - 1
    assert len(by_job["date"]) == 1
    # A leased job called three times in one slot with different arguments: each call once.
    calls = Counter((round(scheduled), tenant) for scheduled, _, tenant in by_job["sync_tenant"])
    assert set(calls.values()) == {1}, calls
    per_slot = Counter(second for second, _tenant in calls)
    assert set(per_slot.values()) == {3}, per_slot
    for report in reports:
        for job, outcomes in report["runs"].items():
            assert outcomes["error"] == 0, (job, outcomes)
            assert outcomes["skipped_no_lease"] == 0, (job, outcomes)
    skipped = sum(report["runs"]["cron"]["skipped_elsewhere"] for report in reports)
    # Every replica was up from ``start`` to ``end``: the others fired those slots too.
    assert skipped >= len([second for second in seconds if start < second < start + duration - 1])
    # Interval + jitter with a lease: the migration report flags it, start refuses it.
    refused = reports[2]["refused"]
    assert "CANNOT MOVE AS IS: jittery: cannot be leased" in refused["report"], refused
    assert "jitter=0.3" in refused["report"]
    assert "'jittery'" in refused["start"], refused
    assert "jitter=0.3" in refused["start"], refused
    print(
        f"\nreplica runs per slot: interval {len(windows)} windows, cron {len(seconds)} s, "
        f"date 1, tenants {len(calls)} calls: each once; skipped_elsewhere (cron) {skipped}"
    )


def test_a_replica_paused_across_a_slot_within_its_misfire_grace_does_not_run_it_again() -> None:
    # The old lease lasted timeout + clock skew (1 s here) and the paused replica, resumed
    # 3 s after the slot, within misfire_grace_time (8 s), ran it a second time.
    with RedisServer() as server:
        slot = time.time() + STARTUP
        config = {
            "url": server.url,
            "prefix": "paused",
            "mode": "lease",
            "end": slot + 6.0,
            "date_at": slot,
            "jobs": ["date"],
            "grace": 8,
            "timeout": 0.5,
            "clock_skew": 0.5,
        }
        with replicas([config, config]) as (running, paused):
            while time.time() < slot - 1.0:
                time.sleep(0.05)
            paused.send_signal(signal.SIGSTOP)
            while not runs_of(server.url, "paused"):
                assert time.time() < slot + 30, "the running replica never ran the slot"
                time.sleep(0.05)
            while time.time() < slot + 3.0:  # past timeout + clock skew, within the grace
                time.sleep(0.05)
            paused.send_signal(signal.SIGCONT)
            reports = [report_of(running), report_of(paused)]
        runs = runs_of(server.url, "paused")
    assert len(runs) == 1, runs
    assert sum(report["runs"]["date"]["skipped_elsewhere"] for report in reports) == 1
    assert sum(report["missed"]["date"] for report in reports) == 0


def run_leased_once(url: str, on_redis_error: str) -> tuple[list[str], dict[str, float]]:
    """One run of a leased job under a MigrationExecutor; what ran and the outcomes."""
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


def test_the_lease_outlives_the_run_until_its_slot_can_no_longer_start() -> None:
    before = datetime.now(timezone.utc)
    with RedisServer() as server:
        ran, outcomes = run_leased_once(server.url, "skip")
        assert outcomes["success"] == 1
        client = redis.Redis.from_url(server.url)
        keys = list(client.scan_iter("cron_migration:lease:remind:*"))
        assert ran == ["ran"]
        assert len(keys) == 1
        remaining_ms = client.pttl(keys[0])
        value = client.get(keys[0])
    # Not released when the run ended; expires when the slot's window (the hour, for
    # an hourly interval) ends + misfire_grace_time (APScheduler's default, 1 s) + the
    # clock skew (30 s).
    now = datetime.now(timezone.utc)
    window_ends = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert 30_000 < remaining_ms <= ((window_ends - before).total_seconds() + 31) * 1000
    assert value is not None
    assert f":{os.getpid()}:" in value.decode()


def frozen_redis_slot(server: RedisServer, client_kind: str) -> dict[str, Any]:
    """Replica A's lease call meets a frozen Redis; B fires the same slot once it is back."""
    import redis.asyncio
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.date import DateTrigger
    from prometheus_client import CollectorRegistry

    from cron_migration import Lease, MigrationExecutor, migrated_job, shutdown_gracefully
    from tests.unit.cron_support import runs, wait_until_async

    ran: list[str] = []
    registries = {"a": CollectorRegistry(), "b": CollectorRegistry()}
    returned = threading.Event()

    class ObservedRedis(redis.Redis):
        """A sync client with redis-py's defaults; says when a call has come back."""

        def execute_command(self, *args: Any, **options: Any) -> Any:
            try:
                return super().execute_command(*args, **options)
            finally:
                returned.set()

    def lease_of(replica: str) -> Lease:
        if replica == "b" or client_kind == "url":
            return Lease(server.url, redis_timeout=0.5)
        if client_kind == "sync client":
            return Lease(ObservedRedis.from_url(server.url), redis_timeout=0.5)
        return Lease(redis.asyncio.Redis.from_url(server.url), redis_timeout=0.5)

    def scheduler_of(replica: str, slot: datetime) -> AsyncIOScheduler:
        @migrated_job(timeout=5, lease=lease_of(replica), registry=registries[replica])
        async def remind() -> None:
            ran.append(replica)

        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        # B wakes late, as a paused replica would: its first run is the slot A fired.
        scheduler.add_job(
            remind, DateTrigger(slot), id="remind", misfire_grace_time=60, next_run_time=slot
        )
        return scheduler

    def outcome(replica: str, name: str) -> float:
        return runs(registries[replica], "remind", name)

    async def main() -> None:
        slot = datetime.now(timezone.utc) + timedelta(seconds=0.5)
        a = scheduler_of("a", slot)
        server.pause()
        try:
            a.start()
            await wait_until_async(lambda: outcome("a", "skipped_no_lease") == 1, what="A gives up")
        finally:
            server.resume()
        if client_kind == "sync client":
            assert await asyncio.to_thread(returned.wait, 30)  # its SET reached Redis by now
        else:
            await asyncio.sleep(1.0)  # redis-py's resent copies reach Redis
        b = scheduler_of("b", slot)
        b.start()
        await wait_until_async(
            lambda: outcome("b", "success") + outcome("b", "skipped_elsewhere") == 1,
            what="B fires the slot",
        )
        for scheduler in (a, b):
            await shutdown_gracefully(scheduler, timeout=5)

    asyncio.run(main())
    keys = redis.Redis.from_url(server.url).keys("cron_migration:lease:*")
    return {"ran": ran, "b_skipped": outcome("b", "skipped_elsewhere"), "keys": len(keys)}


@pytest.mark.parametrize("client_kind", ["sync client", "asyncio client", "url"])
def test_a_replica_that_gave_up_on_a_frozen_redis_leaves_no_lease_behind(
    client_kind: str,
) -> None:
    with RedisServer() as server:
        seen = frozen_redis_slot(server, client_kind)
    # A gave up (skipped_no_lease); its SET, run by Redis when it woke, set nothing.
    assert seen["ran"] == ["b"], seen
    assert seen["b_skipped"] == 0
    assert seen["keys"] == 1  # B's


def leader_of(client: redis.Redis, prefix: str) -> tuple[int, int] | None:
    """``(pid, fencing token)`` of the current leader, from its key."""
    value = client.get(f"cron_migration:leader:{{{prefix}}}")
    if value is None:
        return None
    owner, fence = value.decode().rsplit("|", 1)
    return int(owner.split(":")[-2]), int(fence)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_leader_election_fails_over_and_fences_a_paused_leader() -> None:
    ttl = 3.0
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        config = {
            "url": server.url,
            "prefix": "leader",
            "mode": "leader",
            "end": time.time() + 120,  # ended by SIGTERM
            "interval": 0.5,
            "jitter": 0.2,
            "jobs": ["cron", "interval_jitter"],
            "grace": 30,
            "ttl": ttl,
            "redis_timeout": 0.2,
        }

        def ran() -> int:
            return len(runs_of(server.url, "leader"))

        def leader_other_than(pid: int) -> tuple[int, int] | None:
            lead = leader_of(client, "leader")
            return lead if lead is not None and lead[0] != pid else None

        with replicas([config, config, config]) as processes:
            by_pid = {process.pid: process for process in processes}
            first, _ = wait_for(lambda: leader_of(client, "leader"), STARTUP + 30, "a leader")
            wait_for(lambda: ran() >= 4, 30, "the leader's runs")
            # The leader dies: a standby takes over within ttl + ttl/3 (+ a Redis timeout).
            by_pid[first].kill()
            killed_at = time.monotonic()
            second, _ = wait_for(lambda: leader_other_than(first), 30, "a new leader")
            failover = time.monotonic() - killed_at
            before = ran()
            wait_for(lambda: ran() >= before + 3, 30, "the new leader's runs")
            # The new leader pauses past its ttl: the third takes over; the paused one,
            # resumed with its slots due within their grace, must not run them.
            by_pid[second].send_signal(signal.SIGSTOP)
            paused_at = time.monotonic()
            third, _ = wait_for(lambda: leader_other_than(second), 30, "a third leader")
            takeover = time.monotonic() - paused_at
            by_pid[second].send_signal(signal.SIGCONT)
            before = ran()
            wait_for(lambda: ran() >= before + 3, 30, "the third leader's runs")
            reports = {}
            for pid in (second, third):
                by_pid[pid].send_signal(signal.SIGTERM)
                reports[pid] = report_of(by_pid[pid])
        runs = runs_of(server.url, "leader")
        stale_writes = client.llen("leader:stale_writes")
        client.close()

    # One replica ran at a time, in the order they led: the paused one never again (a run
    # it had confirmed just before its pause would write with its old token, refused by
    # the fenced write: counted in stale_writes).
    order = [pid for _job, _s, pid, _a, _f in runs]
    groups = [pid for index, pid in enumerate(order) if index == 0 or order[index - 1] != pid]
    assert groups == [first, second, third], groups
    seconds = [round(scheduled) for job, scheduled, *_ in runs if job == "cron"]
    assert len(seconds) == len(set(seconds)), Counter(seconds).most_common(3)
    # Every run carries the fencing token of the leadership it ran under, never decreasing.
    fences = [int(fence) for *_, fence in runs]
    assert fences == sorted(fences), fences
    assert len(set(fences)) == 3, fences
    assert all(
        outcome["error"] == 0 for report in reports.values() for outcome in report["runs"].values()
    )
    print(
        f"\nleader failover after SIGKILL: {failover:.2f}s; after SIGSTOP: {takeover:.2f}s "
        f"(ttl {ttl:g}s: bound ttl + ttl/3 + 2 x redis_timeout = {ttl * 4 / 3 + 0.4:.2f}s); "
        f"stale writes refused by the fencing token: {stale_writes}"
    )


def test_a_leased_job_added_without_an_id_runs_once_across_replicas() -> None:
    # add_job() without id= (APScheduler's default) draws a random id in each process:
    # a key made of it would differ on every replica, and every replica would run. Two
    # jobs made by one factory (one function name) stay two jobs.
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from prometheus_client import CollectorRegistry

    from cron_migration import (
        MigrationExecutor,
        current_scheduled_run,
        migrated_job,
        shutdown_gracefully,
    )
    from tests.unit.cron_support import runs, wait_until_async

    registries = [CollectorRegistry(), CollectorRegistry()]
    ran: list[tuple[str, datetime]] = []
    names = ("remind", "cron_a", "cron_b")

    def fired() -> float:
        outcomes = ("success", "skipped_elsewhere")
        return sum(
            runs(registry, name, outcome)
            for registry in registries
            for name in names
            for outcome in outcomes
        )

    def leased(name: str, url: str, registry: CollectorRegistry) -> Any:
        async def run() -> None:
            scheduled = current_scheduled_run()
            assert scheduled is not None
            ran.append((name, scheduled.scheduled_at))

        return migrated_job(run, timeout=5, lease=url, registry=registry, name=name)

    async def main(url: str) -> None:
        slot = datetime.now(timezone.utc) + timedelta(seconds=0.5)
        schedulers = []
        for registry in registries:
            scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
            scheduler.add_job(leased("remind", url, registry), "date", run_date=slot)
            for name in ("cron_a", "cron_b"):  # one trigger, one function name, no ids
                scheduler.add_job(leased(name, url, registry), "cron", second="*")
            scheduler.start()
            schedulers.append(scheduler)
        await wait_until_async(lambda: fired() >= 10, timeout=15, what="both replicas fire")
        for scheduler in schedulers:
            await shutdown_gracefully(scheduler, timeout=5)

    with RedisServer() as server:
        asyncio.run(main(server.url))
    assert [name for name, _ in ran].count("remind") == 1, ran
    assert len(ran) == len(set(ran)), Counter(ran).most_common(2)  # each slot once
    slots = {name: {at for each, at in ran if each == name} for name in ("cron_a", "cron_b")}
    common = slots["cron_a"] & slots["cron_b"]
    assert common, slots  # both jobs ran the same slots, neither skipped for the other


def test_a_url_of_a_redis_cluster_node_leases_and_elects() -> None:
    # A Redis URL is what users pass; on Redis Cluster it names one node, which answers
    # MOVED for keys it does not own: every slot would be skipped as "Redis unreachable"
    # and no replica would ever lead.
    from cron_migration import LeaderElection, Lease
    from cron_migration._lease import LeaseDecision
    from tests.redis_server import RedisClusterServers

    async def main(url: str) -> list[Any]:
        lease = Lease(url, redis_timeout=0.5)
        until = time.time() + 5
        keys = [f"cron_migration:lease:job{n}:slot" for n in range(8)]  # on every node
        decisions = [await lease.acquire(key, until, "run") for key in keys]
        decisions.append(await lease.acquire(keys[0], until, "another run"))
        await lease.aclose()
        election = LeaderElection(url, name="svc", ttl=3, redis_timeout=0.2)
        led = [await election.campaign_once(), await election.confirm() is not None]
        await election.aclose()
        return [*decisions, *led]

    with RedisClusterServers() as cluster:
        seen = asyncio.run(main(f"redis://127.0.0.1:{cluster.ports[0]}/0"))
    assert seen == [LeaseDecision.ACQUIRED] * 8 + [LeaseDecision.HELD_ELSEWHERE, True, True]


class LateSet:
    """An asyncio Redis client whose lease SET reaches Redis 1.5 s late (a slow network),
    whether or not its caller still waits; its other commands go straight through."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.deliveries: list[asyncio.Task[Any]] = []

    async def eval(self, script: str, *args: Any) -> Any:
        from cron_migration._lease import ACQUIRE_SCRIPT

        if script != ACQUIRE_SCRIPT:
            return await self.client.eval(script, *args)

        async def deliver() -> Any:
            await asyncio.sleep(1.5)
            return await self.client.eval(script, *args)

        self.deliveries.append(asyncio.ensure_future(deliver()))
        return await asyncio.shield(self.deliveries[-1])


def test_a_set_landing_after_the_give_up_under_a_lagging_redis_clock_is_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Redis's clock 3 s behind the replica's (within clock_skew): the give-up check lets
    # a SET that reaches Redis 1.5 s late land after the replica gave up. Its release
    # must still remove it, even when the release's first answer came before it landed.
    import types

    import redis.asyncio

    from cron_migration import Lease
    from cron_migration import _lease as lease_module
    from cron_migration._lease import LeaseDecision

    ahead = types.SimpleNamespace(time=lambda: time.time() + 3.0)
    key = "cron_migration:lease:remind:2026-01-01T00:00:00.000000+00:00"

    async def main(url: str) -> list[Any]:
        late = LateSet(redis.asyncio.Redis.from_url(url))
        a = Lease(late, redis_timeout=0.25, clock_skew=4)
        monkeypatch.setattr(lease_module, "time", ahead)
        gave_up = await a.acquire(key, time.time() + 20, "a")
        landed = await asyncio.gather(*late.deliveries, return_exceptions=True)
        await asyncio.gather(*a._releases)
        monkeypatch.undo()
        b = Lease(url, redis_timeout=0.25)
        took = await b.acquire(key, time.time() + 20, "b")
        await b.aclose()
        await late.client.aclose()
        return [gave_up, landed, took]

    with RedisServer() as server:
        seen = asyncio.run(main(server.url))
    # The late SET did land (1), and was released: B takes the key.
    assert seen == [LeaseDecision.REDIS_UNAVAILABLE, [1], LeaseDecision.ACQUIRED]


def test_a_lease_given_an_asyncio_client_works_on_every_loop() -> None:
    # An asyncio client's connections belong to the loop that opened them. Runs on two
    # loops (a LoopSwitch's legacy path on compat's loop, a scheduler started again in a
    # new asyncio.run) must not skip their slots as "Redis unreachable".
    import redis.asyncio

    from cron_migration import Lease
    from cron_migration._lease import LeaseDecision

    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        lease = Lease(client, redis_timeout=0.5)

        async def take(key: str) -> LeaseDecision:
            decision = await lease.acquire(key, time.time() + 5, "run")
            await lease.aclose()
            return decision

        seen = [asyncio.run(take("first loop"))]
        other: list[LeaseDecision] = []
        thread = threading.Thread(target=lambda: other.append(asyncio.run(take("other loop"))))
        thread.start()
        thread.join()
        seen += [*other, asyncio.run(take("a new loop"))]
    assert seen == [LeaseDecision.ACQUIRED] * 3

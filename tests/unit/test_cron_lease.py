"""The replica lease: one run per slot, never released, loud without a run time, Redis down."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from cron_migration import (
    Lease,
    MigrationExecutor,
    ScheduledRunUnknownError,
    current_scheduled_run,
    migrated_job,
    shutdown_gracefully,
)
from cron_migration._lease import ACQUIRE_SCRIPT, RELEASE_SCRIPT, LeaseDecision
from cron_migration._slots import call_digest
from tests.unit.cron_support import runs, wait_until_async

pytestmark = pytest.mark.facade_async


class FakeRedis:
    """The lease's two scripts on a dict; ``down`` makes every command fail as a dead server."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.expiry_ms: dict[str, int] = {}
        self.down = False
        self.lock = threading.Lock()

    def _eval(self, script: str, numkeys: int, key: str, *args: Any) -> int:
        if self.down:
            raise ConnectionError("Error 111 connecting to redis: Connection refused")
        assert numkeys == 1
        with self.lock:
            if script == ACQUIRE_SCRIPT:
                token, px, _give_up = args
                assert int(px) > 0, "the lease must expire"
                if key in self.values:
                    return 0
                self.values[key] = token
                self.expiry_ms[key] = int(px)
                return 1
            assert script == RELEASE_SCRIPT
            if self.values.get(key) == args[0]:
                del self.values[key]
                return 1
            return 0


class FakeAsyncRedis(FakeRedis):
    async def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        return self._eval(script, numkeys, *args)


class FakeSyncRedis(FakeRedis):
    def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        assert threading.current_thread() is not threading.main_thread(), "blocked the loop"
        return self._eval(script, numkeys, *args)


def replicas_run(redis: Any, seconds: float = 1.0) -> tuple[Counter[datetime], CollectorRegistry]:
    """Two schedulers on one loop, same job and trigger, sharing the lease's Redis."""
    registry = CollectorRegistry()
    slots: Counter[datetime] = Counter()
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)

    def make_job(replica: str) -> Any:
        @migrated_job(timeout=5, lease=redis, registry=registry, name="remind")
        async def remind() -> None:
            scheduled = current_scheduled_run()
            assert scheduled is not None
            slots[scheduled.scheduled_at] += 1

        return remind

    async def main() -> None:
        schedulers = []
        for replica in ("a", "b"):
            scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
            scheduler.add_job(
                make_job(replica),
                IntervalTrigger(seconds=0.1, start_date=start),
                id="remind",
                misfire_grace_time=30,
            )
            schedulers.append(scheduler)
        for scheduler in schedulers:
            scheduler.start()
        await wait_until_async(lambda: len(slots) >= seconds * 10, what="slots")
        for scheduler in schedulers:
            await shutdown_gracefully(scheduler, timeout=5)

    asyncio.run(main())
    return slots, registry


@pytest.mark.parametrize("client", [FakeAsyncRedis, FakeSyncRedis])
def test_each_slot_runs_on_one_replica_only(client: type[FakeRedis]) -> None:
    redis = client()
    slots, registry = replicas_run(redis)
    assert set(slots.values()) == {1}
    executed = runs(registry, "remind", "success")
    skipped = runs(registry, "remind", "skipped_elsewhere")
    assert executed == len(slots)
    assert skipped >= len(slots) - 2  # the other replica fired the same slots too
    # Never released: every slot's key is still there, one per slot.
    assert len(redis.values) == len(slots)
    # Until the slot's window (0.1 s) ends + misfire_grace_time (30 s) + clock skew (30 s),
    # counted from the moment of the SET, which is after the slot began.
    assert all(30_000 < ms <= 60_100 for ms in redis.expiry_ms.values()), redis.expiry_ms


def test_the_key_is_the_job_id_the_utc_slot_and_the_call() -> None:
    lease = Lease("redis://localhost:6379/0", clock_skew=3)
    berlin = datetime(2026, 6, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    utc = datetime(2026, 6, 1, 7, 30, tzinfo=timezone.utc)
    assert lease.key("remind", berlin) == lease.key("remind", utc)
    assert (
        lease.key("remind", utc, "ab12")
        == "cron_migration:lease:remind:2026-06-01T07:30:00.000000+00:00:ab12"
    )


def test_a_lease_without_a_scheduled_run_time_fails_loudly() -> None:
    registry = CollectorRegistry()
    redis = FakeAsyncRedis()
    ran = []

    @migrated_job(timeout=5, lease=redis, registry=registry)
    async def remind() -> None:
        ran.append(1)

    with pytest.raises(ScheduledRunUnknownError, match="MigrationExecutor"):
        remind()  # as a thread scheduler's default executor would call it
    assert ran == []
    assert redis.values == {}
    assert runs(registry, "remind", "error") == 1  # what the failing-runs alert watches
    assert runs(registry, "remind", "skipped_no_lease") == 0


@pytest.mark.parametrize(("on_redis_error", "runs_anyway"), [("skip", False), ("run", True)])
def test_redis_unreachable_follows_the_configured_choice(
    on_redis_error: str, runs_anyway: bool, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    redis = FakeAsyncRedis()
    redis.down = True
    ran: list[int] = []

    @migrated_job(timeout=5, lease=redis, registry=registry, on_redis_error=on_redis_error)  # type: ignore[arg-type]
    async def remind() -> None:
        ran.append(1)

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(
            remind, "interval", hours=1, id="remind", next_run_time=datetime.now(timezone.utc)
        )
        scheduler.start()
        await wait_until_async(
            lambda: (
                runs(registry, "remind", "success") + runs(registry, "remind", "skipped_no_lease")
                >= 1
            ),
            what="the run",
        )
        await shutdown_gracefully(scheduler, timeout=5)

    with caplog.at_level(logging.ERROR, logger="cron_migration"):
        asyncio.run(main())
    assert ran == ([1] if runs_anyway else [])
    outcome = "success" if runs_anyway else "skipped_no_lease"
    assert runs(registry, "remind", outcome) == 1
    messages = [r.getMessage() for r in caplog.records]
    action = "running it anyway" if runs_anyway else "skipping it"
    assert any("Redis unreachable" in m and action in m for m in messages), messages


def test_a_leased_job_called_by_another_takes_its_own_lease_for_the_callers_slot() -> None:
    registry = CollectorRegistry()
    redis = FakeAsyncRedis()
    ran: list[tuple[str, Any]] = []

    @migrated_job(timeout=5, lease=redis, registry=registry, name="notify")
    async def notify() -> None:
        ran.append(("notify", current_scheduled_run()))

    @migrated_job(timeout=5, lease=redis, registry=registry, name="remind")
    async def remind() -> None:
        ran.append(("remind", current_scheduled_run()))
        await notify()  # not its own scheduled run: the caller's slot, its own key

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(
            remind, "interval", hours=1, id="remind", next_run_time=datetime.now(timezone.utc)
        )
        scheduler.start()
        await wait_until_async(lambda: len(ran) >= 2, what="both jobs")
        await shutdown_gracefully(scheduler, timeout=5)

    asyncio.run(main())
    assert [name for name, _ in ran] == ["remind", "notify"]
    slot = ran[0][1]
    assert slot is not None
    no_arguments = call_digest((), {})
    assert set(redis.values) == {
        Lease(redis).key("remind", slot.slot, no_arguments),
        Lease(redis).key("notify", slot.slot, no_arguments),
    }
    assert runs(registry, "notify", "success") == 1
    assert runs(registry, "notify", "skipped_elsewhere") == 0


class LostReplyRedis(FakeAsyncRedis):
    """Runs the first SET, then times out as if its answer were lost on the way back."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    async def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        answer = self._eval(script, numkeys, *args)
        if script == ACQUIRE_SCRIPT and self.lost == 0:
            self.lost += 1
            raise TimeoutError("Timeout reading from socket")
        return answer


def test_a_set_whose_answer_was_lost_is_released_by_the_replica_that_gave_up() -> None:
    redis = LostReplyRedis()
    lease = Lease(redis)
    key = lease.key("remind", datetime(2026, 6, 1, tzinfo=timezone.utc))

    async def main() -> Any:
        decision = await lease.acquire(key, time.time() + 60, "run-1")
        # Released at once; the release goes on trying until a late copy can no longer land.
        await wait_until_async(lambda: key not in redis.values, what="the release")
        # Another replica, firing the slot afterwards, takes it.
        return decision, await lease.acquire(key, time.time() + 60, "run-2")

    first, second = asyncio.run(main())
    assert first is LeaseDecision.REDIS_UNAVAILABLE
    assert second is LeaseDecision.ACQUIRED
    assert redis.values[key].endswith(":run-2")


def test_interval_triggers_started_apart_name_their_slots_alike() -> None:
    interval = timedelta(seconds=10)
    first = datetime(2026, 6, 1, 7, 30, 1, 250000, tzinfo=timezone.utc)
    slots = set()
    for offset in (0.0, 3.7, 8.7):  # three replicas' default start_date (process start)
        run_time = first + timedelta(seconds=offset)
        slots.add(
            scheduled_run_of_interval(interval, run_time, grace=None).slot,
        )
    assert slots == {"2026-06-01T07:30:00.000000+00:00/PT10S"}


def scheduled_run_of_interval(interval: timedelta, run_time: datetime, grace: float | None) -> Any:
    from types import SimpleNamespace

    from cron_migration._slots import scheduled_run_of

    job = SimpleNamespace(
        id="remind",
        trigger=IntervalTrigger(seconds=interval.total_seconds()),
        misfire_grace_time=grace,
    )
    return scheduled_run_of(job, run_time)


def test_the_lease_lasts_until_the_slot_can_no_longer_start_plus_the_skew() -> None:
    from cron_migration._job import lease_covers_until

    run_time = datetime(2026, 6, 1, 7, 30, 4, tzinfo=timezone.utc)
    scheduled = scheduled_run_of_interval(timedelta(seconds=10), run_time, grace=300)
    window_ends = datetime(2026, 6, 1, 7, 30, 10, tzinfo=timezone.utc).timestamp()
    assert lease_covers_until(scheduled, timeout=2) == window_ends + 300
    unlimited = scheduled_run_of_interval(timedelta(seconds=10), run_time, grace=None)
    assert lease_covers_until(unlimited, timeout=2) == window_ends + 2


def test_a_leased_run_later_than_its_lease_covers_is_refused_and_counted_missed() -> None:
    from cron_migration._context import ScheduledRun, _run_target, _scheduled_run

    registry = CollectorRegistry()
    redis = FakeAsyncRedis()
    ran: list[int] = []

    @migrated_job(timeout=2, lease=redis, registry=registry, name="remind")
    async def remind() -> None:
        ran.append(1)

    async def run_late(late: float) -> None:
        slot = datetime.now(timezone.utc) - timedelta(seconds=late)
        token = _scheduled_run.set(ScheduledRun("remind", slot, misfire_grace_time=5))
        target = _run_target.set(remind)
        try:
            await remind.run_async()
        finally:
            _run_target.reset(target)
            _scheduled_run.reset(token)

    asyncio.run(run_late(6.0))  # 1 s past slot + grace: a lease taken now could be a 2nd
    assert ran == []
    assert redis.values == {}
    assert registry.get_sample_value("cron_job_missed_total", {"cron_job": "remind"}) == 1
    asyncio.run(run_late(4.0))  # within the grace: runs
    assert ran == [1]


def test_a_leased_job_runs_each_distinct_call_once_per_slot() -> None:
    registry = CollectorRegistry()
    redis = FakeAsyncRedis()
    synced: list[str] = []

    @migrated_job(timeout=5, lease=redis, registry=registry, name="sync_tenant")
    async def sync_tenant(tenant: str, *, full: bool = False) -> None:
        synced.append(tenant)

    @migrated_job(timeout=5, registry=registry, name="sync_all")
    async def sync_all() -> None:
        for tenant in ("a", "b", "c", "a"):  # "a" twice: the same call, once
            await sync_tenant(tenant, full=False)

    async def main() -> None:
        schedulers = [
            AsyncIOScheduler(executors={"default": MigrationExecutor()}) for _ in range(2)
        ]
        slot = datetime.now(timezone.utc)
        for scheduler in schedulers:  # two replicas firing the same slot
            scheduler.add_job(sync_all, "date", run_date=slot, id="sync_all")
            scheduler.start()
        await wait_until_async(
            lambda: runs(registry, "sync_all", "success") == 2, what="both replicas"
        )
        for scheduler in schedulers:
            await shutdown_gracefully(scheduler, timeout=5)

    asyncio.run(main())
    assert sorted(synced) == ["a", "b", "c"]
    assert runs(registry, "sync_tenant", "skipped_elsewhere") == 5


def test_the_call_digest_is_stable_and_refuses_arguments_without_a_value() -> None:
    import dataclasses

    from cron_migration import UnstableArgumentError

    @dataclasses.dataclass
    class Tenant:
        id: int

    assert call_digest((Tenant(1),), {"b": 1, "a": {2, 1}}) == call_digest(
        (Tenant(1),), {"a": {1, 2}, "b": 1}
    )
    assert call_digest((1,), {}) != call_digest(("1",), {})
    assert call_digest((1,), {}) != call_digest((1.0,), {})
    assert call_digest((), {"when": datetime(2026, 1, 1)}) != call_digest((), {"when": "x"})

    class Opaque:
        pass

    with pytest.raises(UnstableArgumentError, match="memory address"):
        call_digest((Opaque(),), {})


def test_a_method_job_is_keyed_by_its_arguments_not_its_instance() -> None:
    redis = FakeAsyncRedis()

    class Service:  # no __repr__: its instance has no value-based form
        @migrated_job(timeout=5, lease=redis, registry=CollectorRegistry(), name="sync")
        async def sync(self, tenant: str) -> str:
            return tenant

    job = Service.__dict__["sync"]
    assert job._call_arguments((Service(), "a")) == ("a",)


@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        (IntervalTrigger(seconds=5, jitter=1), "jitter=1"),
        ("cron-jitter", "jitter=2"),
        ("or-interval", "combines an interval trigger"),
    ],
)
def test_a_leased_job_whose_slots_a_lease_cannot_key_is_refused_at_start(
    trigger: Any, reason: str
) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    from cron_migration import LeaseRefusedError, migrate_scheduler

    if trigger == "cron-jitter":
        trigger = CronTrigger(minute="*", jitter=2)
    elif trigger == "or-interval":
        trigger = OrTrigger([CronTrigger(minute="*"), IntervalTrigger(seconds=5)])

    @migrated_job(timeout=5, lease=FakeAsyncRedis(), registry=CollectorRegistry())
    async def remind() -> None: ...

    legacy = BackgroundScheduler()
    legacy.add_job(remind, trigger, id="remind")
    new, report = migrate_scheduler(legacy, lag_monitor=False, registry=CollectorRegistry())
    assert not report.ok
    assert "CANNOT MOVE AS IS: remind: cannot be leased:" in report.render()
    assert reason in report.render()

    async def main() -> None:
        with pytest.raises(LeaseRefusedError, match=f"job 'remind': .*{reason}"):
            new.start()

    asyncio.run(main())
    # Without a lease the same trigger is fine: one scheduler, or LeaderElection.
    legacy.remove_job("remind")
    legacy.add_job(migrated_job(lambda: None, registry=CollectorRegistry()), trigger, id="x")
    assert migrate_scheduler(legacy, lag_monitor=False, registry=CollectorRegistry())[1].ok


def test_a_leased_job_added_to_a_running_scheduler_with_jitter_fails_each_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    redis = FakeAsyncRedis()
    ran: list[int] = []

    @migrated_job(timeout=5, lease=redis, registry=registry, name="remind")
    async def remind() -> None:
        ran.append(1)

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.start()
        scheduler.add_job(remind, IntervalTrigger(seconds=0.1, jitter=0.05), id="remind")
        await wait_until_async(lambda: runs(registry, "remind", "error") >= 1, what="a run")
        await shutdown_gracefully(scheduler, timeout=5)

    with caplog.at_level(logging.ERROR, logger="cron_migration"):
        asyncio.run(main())
    assert ran == []
    assert redis.values == {}
    messages = [record.getMessage() for record in caplog.records]
    assert any("'remind' cannot be leased, every run will fail" in m for m in messages), messages
    assert any("jitter=0.05" in m for m in messages)


def test_a_leased_job_rescheduled_with_jitter_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    redis = FakeAsyncRedis()

    @migrated_job(timeout=5, lease=redis, registry=CollectorRegistry(), name="remind")
    async def remind() -> None:
        """Never due within the test."""

    async def main() -> None:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(remind, "cron", hour=3, id="remind")
        scheduler.start()
        scheduler.reschedule_job("remind", trigger="interval", hours=1, jitter=30)
        await shutdown_gracefully(scheduler, timeout=5)

    with caplog.at_level(logging.ERROR, logger="cron_migration"):
        asyncio.run(main())
    messages = [record.getMessage() for record in caplog.records]
    assert any("'remind' cannot be leased, every run will fail" in m for m in messages), messages


# Each argument as two separate processes build it: a lease key must be the same in both.
_DIGEST_IN_A_PROCESS = """
import functools, threading
from cron_migration._slots import call_digest
def notify(): pass
class Service:
    def __repr__(self): return "Service()"
    def sync(self): pass
arguments = {
    "function": notify,
    "builtin": print,
    "class": Service,
    "partial": functools.partial(notify),
    "bound method": Service().sync,
    "lock": threading.Lock(),
}
for name, argument in arguments.items():
    try:
        print(name, call_digest((argument,), {}))
    except TypeError as exc:
        print(name, "refused:", type(exc).__name__)
"""


def test_a_call_digest_is_the_same_in_every_process_or_the_argument_is_refused() -> None:
    # A repr that shows a memory address (functions, partials, locks...) differs in every
    # replica: each would take its own key and run the same call.
    import subprocess
    import sys

    def digests() -> dict[str, str]:
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST_IN_A_PROCESS], check=True, capture_output=True, text=True
        ).stdout
        return dict(line.split(" ", 1) for line in out.splitlines())

    first, second = digests(), digests()
    assert first == second
    assert first["lock"] == "refused: UnstableArgumentError"
    assert len({first[name] for name in ("function", "builtin", "class", "partial")}) == 4
    from cron_migration import UnstableArgumentError

    with pytest.raises(UnstableArgumentError, match="lambda"):
        call_digest((lambda: None,), {})

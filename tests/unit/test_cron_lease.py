"""The replica lease: one run per slot, never released, loud without a run time, Redis down."""

from __future__ import annotations

import asyncio
import logging
import threading
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
from cron_migration._lease import ACQUIRE_SCRIPT, RELEASE_SCRIPT
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

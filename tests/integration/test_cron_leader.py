"""LeaderElection against a real redis-server: one leader, fencing, resigning, thread schedulers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("redis")
pytest.importorskip("anyio")

from apscheduler.schedulers.background import BackgroundScheduler

from cron_migration import LeaderElection, MigrationExecutor, current_scheduled_run
from tests.redis_server import RedisServer
from tests.unit.cron_support import wait_until

pytestmark = [pytest.mark.redis_server, pytest.mark.facade_async]


def test_one_candidate_leads_with_a_growing_fencing_token_until_it_resigns() -> None:
    with RedisServer() as server:
        first = LeaderElection(server.url, name="svc", ttl=1.5, redis_timeout=0.1)
        second = LeaderElection(server.url, name="svc", ttl=1.5, redis_timeout=0.1)

        async def main() -> list[Any]:
            seen: list[Any] = [await first.campaign_once(), await second.campaign_once()]
            token = first.fencing_token
            assert token is not None
            seen += [await first.confirm() == token, await second.confirm()]
            await first.resign()
            seen += [await second.campaign_once(), second.fencing_token == token + 1]
            seen += [await first.campaign_once(), await first.confirm()]
            for election in (first, second):
                await election.aclose()
            return seen

        seen = asyncio.run(main())
    assert seen == [True, False, True, None, True, True, False, None]


def test_a_ttl_too_short_for_the_redis_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl=1s is too short for redis_timeout=1s"):
        LeaderElection("redis://127.0.0.1:6379/0", ttl=1)
    with pytest.raises(ValueError, match="ttl=15s is too short for redis_timeout=2s"):
        LeaderElection("redis://127.0.0.1:6379/0", redis_timeout=2)


def test_the_defaults_are_accepted() -> None:
    election = LeaderElection("redis://127.0.0.1:6379/0")
    assert (election.ttl, election.renew_every) == (15.0, 5.0)
    with pytest.raises(ValueError, match="not a Redis URL"):
        LeaderElection("http://127.0.0.1:6379/0")


def test_thread_schedulers_run_jobs_on_the_leader_only_and_hand_over_on_shutdown() -> None:
    ran: list[tuple[str, int | None]] = []
    lock = threading.Lock()

    def job_of(replica: str) -> Callable[[], None]:
        def tick() -> None:
            run = current_scheduled_run()
            assert run is not None
            with lock:
                ran.append((replica, run.fencing_token))

        return tick

    def replicas_seen() -> list[str]:
        with lock:
            return [replica for replica, _ in ran]

    with RedisServer() as server:
        schedulers = {}
        for replica in ("a", "b"):
            election = LeaderElection(server.url, name="svc", ttl=3, redis_timeout=0.2)
            scheduler = BackgroundScheduler(
                executors={"default": MigrationExecutor(leader=election)}
            )
            scheduler.add_job(job_of(replica), "interval", seconds=0.1, id="tick")
            schedulers[replica] = scheduler
        schedulers["a"].start()
        wait_until(lambda: len(replicas_seen()) >= 3, what="a's runs as the leader")
        schedulers["b"].start()
        wait_until(lambda: len(replicas_seen()) >= 8, what="more runs")
        assert set(replicas_seen()) == {"a"}  # b stands by
        schedulers["a"].shutdown(wait=True)  # resigns: b takes over at its next attempt
        handed_over = len(replicas_seen())
        wait_until(lambda: "b" in replicas_seen()[handed_over:], what="b leading")
        schedulers["b"].shutdown(wait=True)
    order = replicas_seen()
    assert order == sorted(order), order  # a, then b: never both
    tokens = {replica: {token for seen, token in ran if seen == replica} for replica in "ab"}
    assert len(tokens["a"]) == len(tokens["b"]) == 1, tokens
    (first,), (second,) = tokens["a"], tokens["b"]
    assert first is not None, tokens
    assert second == first + 1, tokens


def test_an_asyncio_leader_resigns_when_its_scheduler_shuts_down() -> None:
    import redis.asyncio
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from cron_migration import shutdown_gracefully
    from tests.unit.cron_support import wait_until_async

    ran: list[int] = []

    async def tick() -> None:
        ran.append(1)

    async def main(url: str) -> bool:
        client = redis.asyncio.Redis.from_url(url)
        # A 30 s ttl: the key gone within the test's 10 s wait can only be a resignation.
        election = LeaderElection(url, name="svc", ttl=30)
        standby = LeaderElection(url, name="svc", ttl=30)
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(leader=election)})
        scheduler.add_job(tick, "interval", seconds=0.1, id="tick")
        scheduler.start()
        await wait_until_async(lambda: bool(ran), timeout=10, what="runs as the leader")
        assert not await standby.campaign_once()
        await shutdown_gracefully(scheduler, timeout=5)
        key = "cron_migration:leader:{svc}"
        await wait_until_async_value(lambda: client.exists(key), 0, what="the key resigned")
        took_over = await standby.campaign_once()
        await standby.aclose()
        await client.aclose()
        return took_over

    async def wait_until_async_value(read: Any, expected: int, what: str) -> None:
        for _ in range(1000):
            if await read() == expected:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    with RedisServer() as server:
        assert asyncio.run(main(server.url))


def test_the_fencing_token_keeps_growing_after_redis_restarts_without_its_data() -> None:
    # A fenced store has seen the old leader's token; a leader elected after Redis lost
    # its keys (a restart without persistence, an eviction) must still write above it.
    with RedisServer() as server:
        election = LeaderElection(server.url, name="svc", ttl=1.5, redis_timeout=0.1)

        async def lead() -> int | None:
            await election.campaign_once()
            await election.resign()
            return election.fencing_token if await election.campaign_once() else None

        async def tokens() -> list[int | None]:
            seen = [await lead(), await lead()]
            server.kill()
            server.start()
            seen.append(await lead())
            await election.aclose()
            return seen

        before, again, after_restart = asyncio.run(tokens())
    assert None not in (before, again, after_restart)
    assert before < again < after_restart, (before, again, after_restart)  # type: ignore[operator]


def test_a_replica_that_cannot_campaign_says_so(caplog: pytest.LogCaptureFixture) -> None:
    # A wrong password (or a Cluster node that answers MOVED) makes every replica a
    # standby: no job runs anywhere, which must not go unseen.
    import logging

    import redis

    with RedisServer() as server:
        with redis.Redis.from_url(server.url) as admin:
            admin.config_set("requirepass", "right")
        url = server.url.replace("redis://", "redis://:wrong@")
        election = LeaderElection(url, name="svc", ttl=1.5, redis_timeout=0.1)

        async def campaign_twice() -> list[bool]:
            seen = [await election.campaign_once(), await election.campaign_once()]
            await election.aclose()
            return seen

        with caplog.at_level(logging.DEBUG, logger="cron_migration"):
            assert asyncio.run(campaign_twice()) == [False, False]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # once, not on every attempt
    assert "svc" in errors[0]
    assert "wrong" not in errors[0]


def test_a_slot_due_when_the_leader_starts_runs_on_it() -> None:
    # A replica started mid-slot (a deploy, a persistent job store's missed run within
    # its grace): the run is due at the scheduler's first tick, before the election's
    # first answer from Redis. The legacy scheduler ran it; the leader must too.
    from datetime import datetime, timedelta, timezone

    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from cron_migration import shutdown_gracefully
    from tests.unit.cron_support import wait_until_async

    ran: list[int | None] = []

    async def once() -> None:
        run = current_scheduled_run()
        ran.append(None if run is None else run.fencing_token)

    async def main(url: str) -> None:
        election = LeaderElection(url, name="svc", ttl=3, redis_timeout=0.2)
        executor = MigrationExecutor(leader=election)
        scheduler = AsyncIOScheduler(executors={"default": executor})
        due = datetime.now(timezone.utc) - timedelta(seconds=1)
        scheduler.add_job(once, "date", run_date=due, id="once", misfire_grace_time=60)
        scheduler.start()
        await wait_until_async(
            lambda: scheduler.get_job("once") is None and not executor.in_flight,
            timeout=10,
            what="the due run submitted and ended",
        )
        await wait_until_async(lambda: election.is_leader, timeout=10, what="leading")
        await shutdown_gracefully(scheduler, timeout=5)

    with RedisServer() as server:
        asyncio.run(main(server.url))
    assert len(ran) == 1, ran
    assert ran[0] is not None


def test_a_run_waiting_for_a_worker_thread_does_not_start_once_leadership_lapsed() -> None:
    # The leadership is confirmed before a sync run waits for one of compat's worker
    # threads; a run still waiting when the leadership lapses (here Redis is gone, as
    # in a partition, past the ttl) must not start: another replica may lead by then.
    import logging
    from datetime import datetime, timezone

    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    import compat
    from cron_migration import shutdown_gracefully
    from tests.unit.cron_support import wait_until_async

    holding, release, confirmed = threading.Event(), threading.Event(), threading.Event()
    ran: list[str] = []

    class Confirmed(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("Running job") and ".queued " in message:
                confirmed.set()

    def hold() -> None:
        holding.set()
        release.wait(30)

    def queued() -> None:
        ran.append("queued")

    async def main(server: RedisServer) -> None:
        election = LeaderElection(server.url, name="svc", ttl=1.5, redis_timeout=0.1)
        executor = MigrationExecutor(leader=election)
        scheduler = AsyncIOScheduler(executors={"default": executor})
        now = datetime.now(timezone.utc)
        scheduler.add_job(hold, "date", run_date=now, id="hold", misfire_grace_time=60)
        scheduler.start()
        await wait_until_async(holding.is_set, timeout=10, what="the worker thread held")
        scheduler.add_job(queued, "date", run_date=now, id="queued", misfire_grace_time=60)
        await wait_until_async(confirmed.is_set, timeout=10, what="queued confirmed")
        server.kill()
        await wait_until_async(lambda: not election.is_leader, timeout=10, what="lapsed")
        release.set()
        await wait_until_async(lambda: not executor.in_flight, timeout=10, what="runs ended")
        await shutdown_gracefully(scheduler, timeout=5)

    handler = Confirmed()
    logger = logging.getLogger("apscheduler")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    limit = compat.blocking_limit()
    compat.set_blocking_limit(1)
    try:
        with RedisServer() as server:
            asyncio.run(main(server))
    finally:
        compat.set_blocking_limit(limit)
        logger.removeHandler(handler)
        logger.setLevel(level)
        release.set()
    assert ran == []

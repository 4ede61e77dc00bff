"""The migrated cron service ("after") end to end: ``AsyncIOScheduler`` with real short
intervals against the real REST service, run records, the cache, the trigger queue, the
per-job switch, a REST outage, and two replicas sharing Redis."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, testing
from commclient.cache import AsyncMemoryCache
from cron_migration import ASYNC_JOBS_ENV
from examples.cron_service import CronRestClient
from examples.cron_service.service import CronService
from examples.rest_service import RestApp, create_app
from examples.secretary_queue import read_triggers
from examples.serving import serve
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.facade_async, pytest.mark.facade_sync]

FAST = {
    "send_due_reminders": 0.3,
    "poll_batch_jobs": 0.3,
    "extract_memories": 0.5,
    "schedule_nightly_cleanup": 1.0,
}
QUICK_CLIENT = ClientConfig(
    timeout=2.0,
    max_retries=2,
    retry_min_wait=0.01,
    retry_max_wait=0.05,
    circuit_breaker_fail_max=50,
)


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


@pytest.fixture
def cache_registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def cache(cache_registry: CollectorRegistry) -> AsyncMemoryCache:
    return AsyncMemoryCache("assistant_cache", registry=cache_registry)


@pytest.fixture
def served(cache: AsyncMemoryCache) -> Iterator[tuple[RestApp, str]]:
    app = create_app(cache=cache)
    with serve(app) as base_url:
        yield app, base_url


def seed(app: RestApp, reminders: int = 4, conversations: int = 3) -> None:
    now = datetime.now(timezone.utc)
    for n in range(reminders):
        app.service.create(
            "reminders",
            {"remind_at": (now - timedelta(minutes=n)).isoformat(), "status": "scheduled"},
        )
    for _ in range(conversations):
        app.service.create("conversations", {"status": "closed", "memory_status": "pending"})


def runs_by_job(registry: CollectorRegistry) -> Counter[str]:
    """Runs the jobs made (skipped slots left out), per job."""
    counts: Counter[str] = Counter()
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "cron_job_runs_total" and sample.labels["outcome"] in (
                "success",
                "error",
                "timeout",
                "cancelled",
            ):
                counts[sample.labels["cron_job"]] += int(sample.value)
    return counts


def run_service(
    base_url: str,
    until: Callable[[], bool],
    *,
    at_least: float = 0.0,
    during: Any = None,
    **options: Any,
) -> tuple[CronService, Any]:
    """Run a service until ``until()`` holds (and ``at_least`` seconds passed), then stop it.

    Waits up to 60 s: a loaded machine runs the jobs late, and no assertion is about speed.
    """

    async def scenario() -> tuple[CronService, Any]:
        service = CronService(base_url, client_config=QUICK_CLIENT, intervals=FAST, **options)
        started = time.monotonic()
        await service.start()
        if during is not None:
            await during()
        while not (until() and time.monotonic() - started >= at_least):
            if time.monotonic() - started > 60:
                break  # the assertions say what is missing
            await asyncio.sleep(0.1)
        return service, await service.stop(timeout=10)

    return asyncio.run(scenario())


def reminders_sent(app: RestApp) -> bool:
    return all(r["status"] == "sent" for r in app.service.find("reminders"))


def test_every_run_is_recorded_and_every_reminder_sent_once(
    served: tuple[RestApp, str], cache: AsyncMemoryCache, cache_registry: CollectorRegistry
) -> None:
    app, base_url = served
    seed(app)
    registry = CollectorRegistry()

    def everything_ran() -> bool:
        batches = app.service.find("batch-jobs")
        return (
            reminders_sent(app)
            and set(runs_by_job(registry)) == set(FAST)
            and any(
                b["job_type"] == "memory_extraction" and b["status"] == "completed" for b in batches
            )
        )

    service, shutdown = run_service(
        base_url, everything_ran, at_least=1.5, cache=cache, registry=registry
    )

    assert shutdown.records_pending == 0
    executions = app.service.find("job-executions")
    assert {e["status"] for e in executions} == {"completed"}
    assert Counter(e["job_id"] for e in executions) == runs_by_job(registry)
    assert set(runs_by_job(registry)) == set(FAST)
    assert all(e["scheduled_at"] and e["correlation_id"] for e in executions)
    # Reminders: each on the queue once, all marked sent.
    assert [r["status"] for r in app.service.find("reminders")] == ["sent"] * 4
    triggers = service.queue.triggers()  # type: ignore[attr-defined]
    assert sorted(int(t["reminder_id"]) for t in triggers) == [1, 2, 3, 4]
    # Memories: extracted by the legacy sync job, the batch job finished by the async one.
    kinds = {(b["job_type"], b["status"]) for b in app.service.find("batch-jobs")}
    assert ("memory_extraction", "completed") in kinds
    assert {c["memory_status"] for c in app.service.find("conversations")} == {"queued"}
    # The settings came from the cache after the first read (runs every 0.3 s for 1.5 s).
    hits = cache_registry.get_sample_value(
        "redis_cache_hits_total",
        {"cache_name": "assistant_cache", "key_pattern": "global_settings"},
    )
    assert hits is not None
    assert hits >= 1


def test_runs_failed_in_an_outage_are_recorded_once_the_service_is_back(
    served: tuple[RestApp, str],
) -> None:
    app, base_url = served
    seed(app)
    registry = CollectorRegistry()

    async def outage() -> None:
        app.faults.configure(outage=True)
        await asyncio.sleep(1.5)
        app.faults.clear()

    def recovered() -> bool:
        completed = app.service.find(
            "job-executions", {"job_id": "send_due_reminders", "status": "completed"}
        )
        return reminders_sent(app) and bool(completed)

    _, shutdown = run_service(base_url, recovered, during=outage, registry=registry)

    assert shutdown.records_pending == 0
    executions = app.service.find("job-executions")
    statuses = Counter((e["job_id"], e["status"]) for e in executions)
    assert statuses[("send_due_reminders", "failed")] >= 1
    assert statuses[("send_due_reminders", "completed")] >= 1
    failed = next(e for e in executions if e["status"] == "failed")
    assert "503" in failed["error"]
    assert "Traceback" in failed["traceback"]
    assert Counter(e["job_id"] for e in executions) == runs_by_job(registry)
    assert [r["status"] for r in app.service.find("reminders")] == ["sent"] * 4


def test_a_job_switched_back_to_its_legacy_version_sends_nothing_twice(
    served: tuple[RestApp, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, base_url = served
    seed(app)
    monkeypatch.setenv(ASYNC_JOBS_ENV, "poll_batch_jobs")
    service, _ = run_service(base_url, lambda: reminders_sent(app), registry=CollectorRegistry())
    kinds = {job.job_id: job.kind for job in service.report.jobs}
    assert kinds == {
        "send_due_reminders": "sync",
        "poll_batch_jobs": "async",
        "extract_memories": "sync",
        "schedule_nightly_cleanup": "sync",
    }
    triggers = service.queue.triggers()  # type: ignore[attr-defined]
    assert sorted(int(t["reminder_id"]) for t in triggers) == [1, 2, 3, 4]
    assert [r["status"] for r in app.service.find("reminders")] == ["sent"] * 4


def test_a_job_without_an_async_version_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="extract_memories"):
        CronService("http://127.0.0.1:1", async_jobs={"extract_memories"})
    with pytest.raises(TypeError, match="collection"):
        CronService("http://127.0.0.1:1", async_jobs="send_due_reminders")


@pytest.mark.redis_server
def test_two_replicas_run_each_scheduled_run_once(served: tuple[RestApp, str]) -> None:
    import redis

    app, base_url = served
    with RedisServer() as server:

        async def scenario() -> list[CronService]:
            replicas = [
                CronService(
                    base_url,
                    redis_url=server.url,
                    lease_redis_url=server.url,
                    client_config=QUICK_CLIENT,
                    intervals=FAST,
                    run_timeout=5,
                    registry=CollectorRegistry(),
                )
                for _ in range(2)
            ]
            for replica in replicas:
                await replica.start()
            for tick in range(12):
                due = datetime.now(timezone.utc)
                app.service.create("reminders", {"remind_at": due.isoformat(), "n": tick})
                await asyncio.sleep(0.25)
            # Until every reminder is sent (a loaded machine runs the jobs late), at most 60 s.
            for _ in range(600):
                if all(r.get("status") == "sent" for r in app.service.find("reminders")):
                    break
                await asyncio.sleep(0.1)
            for replica in replicas:
                await replica.stop(timeout=10)
            return replicas

        replicas = asyncio.run(scenario())
        executions = app.service.find("job-executions")
        slots = Counter((e["job_id"], e["scheduled_at"]) for e in executions)
        assert slots
        assert max(slots.values()) == 1, [slot for slot, n in slots.items() if n > 1]
        skipped = sum(
            sample.value
            for replica in replicas
            for metric in (replica.registry or CollectorRegistry()).collect()
            for sample in metric.samples
            if sample.name == "cron_job_runs_total"
            and sample.labels["outcome"] == "skipped_elsewhere"
        )
        assert skipped >= 1  # both replicas did fire: the lease chose one per slot
        with redis.Redis.from_url(server.url) as client:
            triggers = read_triggers(client)
        ids = [t["reminder_id"] for t in triggers]
        assert sorted(ids, key=int) == [str(n) for n in range(1, 13)]


def test_every_client_method_against_the_rest_service(served: tuple[RestApp, str]) -> None:
    app, base_url = served
    store = app.service
    reminder = store.create("reminders", {"remind_at": "2026-03-01T08:00:00+00:00"})
    store.create("reminders", {"remind_at": "2026-03-02T08:00:00+00:00"})
    conversation = store.create("conversations", {"status": "closed", "memory_status": "pending"})

    async def scenario() -> None:
        client = CronRestClient(
            base_url,
            service_name="cron_service",
            target_service="rest_service",
            config=QUICK_CLIENT,
        )
        async with client:
            # A naive time is taken as UTC (the REST service refuses times without an offset).
            due = await client.get_scheduled_reminders(datetime(2026, 3, 1, 9))
            assert [r["id"] for r in due] == [reminder["id"]]
            assert len(await client.get_scheduled_reminders()) == 2
            assert (await client.get_reminder(reminder["id"]))["remind_at"] == reminder["remind_at"]
            assert (await client.mark_reminder_sent(reminder["id"]))["status"] == "sent"
            assert (await client.update_reminder(reminder["id"], {"note": "x"}))["note"] == "x"
            assert (await client.get_global_settings())["timezone"] == "UTC"
            found = await client.get_conversations(status="closed")
            assert [c["id"] for c in found] == [conversation["id"]]
            changed = await client.update_conversation(
                conversation["id"], {"memory_status": "done"}
            )
            assert changed["memory_status"] == "done"
            batch = await client.create_batch_job("cleanup", {"days": 7}, idempotency_key="b-1")
            again = await client.create_batch_job("cleanup", {"days": 7}, idempotency_key="b-1")
            assert again["id"] == batch["id"]
            assert [j["id"] for j in await client.get_pending_batch_jobs()] == [batch["id"]]
            await client.update_batch_job(batch["id"], {"status": "completed"})
            assert (await client.get_batch_job(batch["id"]))["status"] == "completed"
            execution_id = await client.create_job_execution(
                job_id="j",
                job_name="J",
                scheduled_at=datetime(2026, 3, 1, 8),
                correlation_id="c",
                idempotency_key="e-1",
            )
            await client.start_job_execution(execution_id, idempotency_key="e-2")
            await client.fail_job_execution(
                execution_id, error="boom", traceback="tb", idempotency_key="e-3"
            )
            (record,) = await client.list_job_executions(status="failed")
            assert record["id"] == int(execution_id)
            assert record["scheduled_at"] == "2026-03-01T08:00:00+00:00"
            assert (record["error"], record["traceback"]) == ("boom", "tb")

    asyncio.run(scenario())

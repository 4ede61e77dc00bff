"""The legacy cron service ("before"): its sync jobs on ``requests`` and its
``BlockingScheduler`` against the real REST service, and the trigger queue it feeds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pytest

from examples.cron_service_legacy import jobs
from examples.cron_service_legacy.scheduler import SCHEDULE, build_scheduler
from examples.rest_service import RestApp, create_app
from examples.secretary_queue import InProcessQueue, RedisStreamQueue, read_triggers
from examples.serving import serve
from tests.redis_server import RedisServer

pytestmark = pytest.mark.facade_sync

NOW = datetime(2026, 3, 1, 8, 45, tzinfo=timezone.utc)


@pytest.fixture
def app() -> Iterator[RestApp]:
    app = create_app()
    with serve(app) as base_url:
        jobs.configure(base_url)
        yield app


def seed_reminders(app: RestApp) -> list[int]:
    """Due at 08:00 and 09:00 (inside a 30-minute lead at 08:45), and tomorrow."""
    app.service.update_settings({"reminder_lead_minutes": 30}, replace=False)
    return [
        app.service.create("reminders", {"remind_at": at, "status": "scheduled", "user_id": 7})[
            "id"
        ]
        for at in (
            "2026-03-01T08:00:00+00:00",
            "2026-03-01T09:00:00+00:00",
            "2026-03-02T08:00:00+00:00",
        )
    ]


def statuses(app: RestApp, collection: str, field: str = "status") -> list[Any]:
    return [record.get(field) for record in app.service.find(collection)]


def test_due_reminders_reach_the_queue_and_are_marked_sent(app: RestApp) -> None:
    ids = seed_reminders(app)
    assert jobs.send_due_reminders(NOW) == 2
    assert statuses(app, "reminders") == ["sent", "sent", "scheduled"]
    assert isinstance(jobs.QUEUE, InProcessQueue)
    triggers = jobs.QUEUE.triggers()
    assert [t["reminder_id"] for t in triggers] == [str(ids[0]), str(ids[1])]
    assert triggers[0]["type"] == "reminder"
    assert triggers[0]["user_id"] == "7"
    (execution,) = app.service.find("job-executions")
    assert (execution["job_id"], execution["status"]) == ("send_due_reminders", "completed")
    assert execution["result"] == {"reminders_sent": 2}


def test_a_reminder_is_appended_once_even_if_marking_it_sent_was_lost(app: RestApp) -> None:
    seed_reminders(app)
    # The PATCH that marks the first reminder sent fails: the old code swallows that.
    app.faults.configure(fail_next=1, path_prefix="/api/reminders/1")
    assert jobs.send_due_reminders(NOW) == 1
    assert statuses(app, "reminders") == ["scheduled", "sent", "scheduled"]
    app.faults.clear()
    assert jobs.send_due_reminders(NOW) == 1  # the retry marks it sent ...
    assert isinstance(jobs.QUEUE, InProcessQueue)
    assert [t["reminder_id"] for t in jobs.QUEUE.triggers()] == ["1", "2"]  # ... not re-sent


def test_memory_extraction_queues_a_batch_job_that_polling_completes(app: RestApp) -> None:
    for status in ("closed", "open", "closed"):
        app.service.create("conversations", {"status": status, "memory_status": "pending"})
    assert jobs.extract_memories() == 2
    assert statuses(app, "conversations", "memory_status") == ["queued", "pending", "queued"]
    (batch,) = app.service.find("batch-jobs")
    assert (batch["job_type"], batch["payload"]) == (
        "memory_extraction",
        {"conversation_ids": [1, 3]},
    )
    assert jobs.extract_memories() == 0  # nothing left to extract
    assert jobs.poll_batch_jobs() == 1
    (batch,) = app.service.find("batch-jobs")
    assert batch["status"] == "completed"
    assert batch["result"] == {"memories": 2, "conversations": [1, 3]}
    assert jobs.poll_batch_jobs() == 0


def test_during_an_outage_the_old_jobs_look_like_they_had_nothing_to_do(app: RestApp) -> None:
    """The "before" problem the migration fixes: errors become empty results."""
    seed_reminders(app)
    app.service.create("batch-jobs", {"job_type": "cleanup", "status": "pending"})
    app.faults.configure(outage=True)
    assert jobs.send_due_reminders(NOW) == 0
    assert jobs.poll_batch_jobs() == 0
    assert jobs.schedule_nightly_cleanup() is None
    assert app.service.find("job-executions") == []  # and no record that the run happened
    app.faults.clear()
    assert jobs.send_due_reminders(NOW) == 2


def test_the_blocking_scheduler_runs_every_job(app: RestApp) -> None:
    app.service.create("reminders", {"remind_at": "2020-01-01T00:00:00+00:00"})
    app.service.create("conversations", {"status": "closed", "memory_status": "pending"})
    scheduler = build_scheduler(intervals=dict.fromkeys(SCHEDULE, 0.2))
    runner = threading.Thread(target=scheduler.start, daemon=True)
    runner.start()
    try:
        wait_for(lambda: statuses(app, "reminders") == ["sent"])
        wait_for(lambda: "completed" in statuses(app, "batch-jobs"))
        wait_for(lambda: "cleanup" in statuses(app, "batch-jobs", "job_type"))
    finally:
        scheduler.shutdown(wait=True)
        runner.join(10)
    assert not runner.is_alive()
    job_types = statuses(app, "batch-jobs", "job_type")
    assert "memory_extraction" in job_types


def test_an_unknown_job_interval_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="send_reminders"):
        build_scheduler(intervals={"send_reminders": 1})


@pytest.mark.redis_server
def test_the_redis_stream_appends_each_reminder_once_across_threads() -> None:
    import redis

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        queue = RedisStreamQueue(client)
        reminders = [{"id": n, "user_id": 1, "text": f"r{n}"} for n in range(20)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            appended = list(pool.map(queue.append_reminder, reminders * 4))
        assert sum(appended) == 20
        triggers = read_triggers(client)
        assert sorted(int(t["reminder_id"]) for t in triggers) == list(range(20))
        assert triggers[0]["type"] == "reminder"
        ttl = client.ttl("queue:to_secretary:appended:0")
        assert 0 < ttl <= 7 * 24 * 3600
        client.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)

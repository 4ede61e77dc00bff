"""The cron service's jobs as they were: plain functions the scheduler calls.

They reach the REST service only through ``rest_client``'s module-level functions and
rely on its convention: ``[]`` or ``None`` instead of an exception. Reminder triggers go
to ``QUEUE`` (in memory until :func:`configure` is given a Redis URL).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from examples import domain
from examples.cron_service_legacy import rest_client
from examples.secretary_queue import STREAM, InProcessQueue, RedisStreamQueue, TriggerQueue

logger = logging.getLogger(__name__)

QUEUE: TriggerQueue = InProcessQueue()


def configure(
    rest_service_url: str, redis_url: str | None = None, *, stream: str = STREAM
) -> TriggerQueue:
    """Point the jobs at a REST service and a trigger queue (a Redis stream, or in memory)."""
    global QUEUE
    rest_client.configure(rest_service_url)
    if redis_url:
        import redis

        QUEUE = RedisStreamQueue(redis.Redis.from_url(redis_url), stream=stream)
    else:
        QUEUE = InProcessQueue()
    return QUEUE


def send_due_reminders(now: datetime | None = None) -> int:
    """Hand every due reminder to the assistant and mark it sent; return how many were."""
    now = now or datetime.now(timezone.utc)
    execution = rest_client.create_job_execution("send_due_reminders")
    settings = rest_client.fetch_global_settings()
    if settings is None:
        logger.warning("global settings unavailable; using defaults")
    sent = 0
    for reminder in rest_client.fetch_scheduled_reminders(domain.due_before(now, settings)):
        QUEUE.append_reminder(reminder)
        if rest_client.update_reminder(reminder["id"], {"status": "sent"}) is not None:
            sent += 1
    if execution is not None:
        rest_client.complete_job_execution(execution["id"], {"reminders_sent": sent})
    return sent


def extract_memories() -> int:
    """Queue one memory-extraction batch job for the closed conversations; return how
    many conversations it covers."""
    conversations = rest_client.fetch_conversations(dict(domain.CONVERSATIONS_TO_EXTRACT))
    batch = domain.memory_extraction_job(conversations)
    if batch is None:
        return 0
    job = rest_client.create_batch_job(batch["job_type"], batch["payload"])
    if job is None:
        return 0
    queued = 0
    for conversation_id in batch["payload"]["conversation_ids"]:
        if rest_client.update_conversation(conversation_id, {"memory_status": "queued"}):
            queued += 1
    return queued


def poll_batch_jobs() -> int:
    """Process every pending batch job; return how many were finished."""
    finished = 0
    for job in rest_client.fetch_pending_batch_jobs():
        if rest_client.update_batch_job(job["id"], domain.process_batch_job(job)) is not None:
            finished += 1
    return finished


def schedule_nightly_cleanup(older_than_days: int = 30) -> dict[str, Any] | None:
    """Queue the nightly cleanup batch job; return it, or ``None`` when that failed."""
    job = rest_client.create_batch_job("cleanup", {"older_than_days": older_than_days})
    if job is None:
        logger.error("nightly cleanup was not scheduled")
    return job

"""The jobs already migrated to async: they use ``CronRestClient`` and the cache.

The rules (what is due, what a trigger holds, how a batch job is processed) are the legacy
jobs' own, from :mod:`examples.domain`; only the I/O changed. Unlike the legacy jobs, a
REST failure raises (after the client's retries), so the run is recorded as failed
instead of looking like "nothing to do".
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from commclient.cache import AsyncCache
from examples import domain
from examples.cron_service.client import CronRestClient
from examples.secretary_queue import AsyncTriggerQueue

SETTINGS_KEY = "global_settings"  # the group CacheInvalidationMiddleware drops on a change
SETTINGS_TTL = 300


async def global_settings(client: CronRestClient, cache: AsyncCache) -> dict[str, Any]:
    """The settings from the cache; read over REST only when it does not have them."""
    settings: dict[str, Any] = await cache.get_or_set(
        SETTINGS_KEY, client.get_global_settings, ttl=SETTINGS_TTL
    )
    return settings


async def send_reminders(
    client: CronRestClient,
    cache: AsyncCache,
    queue: AsyncTriggerQueue,
    now: datetime | None = None,
) -> dict[str, int]:
    """Hand every due reminder to the assistant once, then mark it sent."""
    now = now or datetime.now(timezone.utc)
    settings = await global_settings(client, cache)
    due = await client.get_scheduled_reminders(domain.due_before(now, settings))
    appended = 0
    for reminder in due:
        # Appended first: a reminder marked sent is never lost. The queue appends each
        # reminder once, so a run that fails after this line does not send it twice.
        appended += await queue.append_reminder(reminder)
        await client.mark_reminder_sent(reminder["id"])
    return {"due": len(due), "appended": appended}


async def poll_batch_jobs(client: CronRestClient) -> int:
    """Process every pending batch job; return how many were finished."""
    finished = 0
    for job in await client.get_pending_batch_jobs():
        await client.update_batch_job(
            job["id"], domain.process_batch_job(job), idempotency_key=f"batch-done:{job['id']}"
        )
        finished += 1
    return finished

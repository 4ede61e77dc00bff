"""The cron service's jobs as they were: plain functions the scheduler calls.

They reach the REST service only through ``rest_client``'s module-level functions,
and rely on its convention: ``[]`` or ``None`` instead of an exception.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from examples.cron_service_legacy import rest_client

logger = logging.getLogger(__name__)


def send_due_reminders(now: datetime | None = None) -> int:
    """Mark every active reminder that is due as sent; return how many were."""
    now = now or datetime.now(timezone.utc)
    execution = rest_client.create_job_execution("send_due_reminders")
    settings = rest_client.fetch_global_settings()
    if settings is None:
        logger.warning("global settings unavailable; using defaults")
        settings = {}
    lead = timedelta(minutes=int(settings.get("reminder_lead_minutes", 0)))
    sent = 0
    for reminder in rest_client.fetch_active_reminders():
        remind_at = datetime.fromisoformat(reminder["remind_at"])
        if remind_at - lead <= now:
            updated = rest_client.update_reminder(reminder["id"], {"status": "sent"})
            if updated is not None:
                sent += 1
    if execution is not None:
        rest_client.update_job_execution(
            execution["id"], {"status": "succeeded", "reminders_sent": sent}
        )
    return sent


def schedule_nightly_cleanup(older_than_days: int = 30) -> dict[str, Any] | None:
    """Queue the nightly cleanup batch job; return it, or ``None`` when that failed."""
    job = rest_client.create_batch_job("cleanup", {"older_than_days": older_than_days})
    if job is None:
        logger.error("nightly cleanup was not scheduled")
    return job


JOBS = {
    "send_due_reminders": send_due_reminders,
    "schedule_nightly_cleanup": schedule_nightly_cleanup,
}

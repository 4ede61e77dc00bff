"""The cron service's business rules, shared by the legacy jobs and the migrated ones.

Pure functions: which reminders are due, what the assistant receives for one, what a
memory-extraction batch job holds and what processing it yields. Only the I/O around
them differs between the "before" (requests, ``BlockingScheduler``) and the "after".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

MEMORY_EXTRACTION = "memory_extraction"


def reminder_lead(settings: Mapping[str, Any] | None) -> timedelta:
    """How long before its time a reminder is sent (the ``reminder_lead_minutes`` setting)."""
    minutes = (settings or {}).get("reminder_lead_minutes", 0)
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes < 0:
        raise ValueError(f"reminder_lead_minutes must be a number >= 0, got {minutes!r}")
    return timedelta(minutes=minutes)


def due_before(now: datetime, settings: Mapping[str, Any] | None) -> datetime:
    """Reminders due by this time are sent now."""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now + reminder_lead(settings)


def reminder_trigger(reminder: Mapping[str, Any]) -> dict[str, str]:
    """The message the assistant gets on ``queue:to_secretary`` for one due reminder."""
    return {
        "type": "reminder",
        "reminder_id": str(reminder["id"]),
        "user_id": str(reminder.get("user_id", "")),
        "text": str(reminder.get("text", "")),
        "remind_at": str(reminder.get("remind_at", "")),
    }


def memory_extraction_job(conversations: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The batch job extracting memories from these conversations (``None``: none to do)."""
    ids = sorted(int(c["id"]) for c in conversations)
    if not ids:
        return None
    return {"job_type": MEMORY_EXTRACTION, "payload": {"conversation_ids": ids}}


def extraction_key(batch: Mapping[str, Any]) -> str:
    """The idempotency key of a memory-extraction job: one job per set of conversations."""
    ids = batch["payload"]["conversation_ids"]
    return f"{MEMORY_EXTRACTION}:{','.join(str(i) for i in ids)}"


def process_batch_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run one pending batch job; returns the fields that finish it (status, result)."""
    if job.get("job_type") == MEMORY_EXTRACTION:
        ids = list(job.get("payload", {}).get("conversation_ids", []))
        return {"status": "completed", "result": {"memories": len(ids), "conversations": ids}}
    return {"status": "completed", "result": {"note": f"nothing to do for {job.get('job_type')}"}}


# Conversations waiting for memory extraction: closed and not yet handed to a batch job.
CONVERSATIONS_TO_EXTRACT = {"status": "closed", "memory_status": "pending"}

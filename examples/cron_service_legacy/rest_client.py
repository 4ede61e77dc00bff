"""The cron service's REST helpers as they were: one ``requests`` call per function.

Every function swallows every error, logs it and returns ``[]`` or ``None``, so a
caller cannot tell "no reminders" from "the REST service is down"; there is no retry and
a new connection per call. Kept as the "before" of the migration; ``compat.LegacyShim``
can rebuild these functions on the async client without touching their callers.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime
from typing import Any

import requests

logger = logging.getLogger(__name__)

REST_SERVICE_URL = os.environ.get("REST_SERVICE_URL", "http://rest_service:8000")
TIMEOUT = 10


def configure(rest_service_url: str) -> None:
    """Point every function at another REST service (the old code read it at import)."""
    global REST_SERVICE_URL
    REST_SERVICE_URL = rest_service_url.rstrip("/")


def fetch_scheduled_reminders(due_before: datetime) -> list[dict[str, Any]]:
    try:
        response = requests.get(
            f"{REST_SERVICE_URL}/api/reminders/scheduled",
            params={"due_before": due_before.isoformat()},
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        reminders: list[dict[str, Any]] = response.json()
        return reminders
    except Exception as e:
        logger.error(f"Error fetching scheduled reminders: {e}")
        return []


def fetch_global_settings() -> dict[str, Any] | None:
    try:
        response = requests.get(f"{REST_SERVICE_URL}/api/global-settings", timeout=TIMEOUT)
        response.raise_for_status()
        settings: dict[str, Any] = response.json()
        return settings
    except Exception as e:
        logger.error(f"Error fetching global settings: {e}")
        return None


def update_reminder(reminder_id: int, data: dict[str, Any]) -> dict[str, Any] | None:
    try:
        response = requests.patch(
            f"{REST_SERVICE_URL}/api/reminders/{reminder_id}", json=data, timeout=TIMEOUT
        )
        response.raise_for_status()
        reminder: dict[str, Any] = response.json()
        return reminder
    except Exception as e:
        logger.error(f"Error updating reminder {reminder_id}: {e}")
        return None


def fetch_conversations(filters: dict[str, str]) -> list[dict[str, Any]]:
    try:
        response = requests.get(
            f"{REST_SERVICE_URL}/api/conversations/", params=filters, timeout=TIMEOUT
        )
        response.raise_for_status()
        conversations: list[dict[str, Any]] = response.json()
        return conversations
    except Exception as e:
        logger.error(f"Error fetching conversations: {e}")
        return []


def update_conversation(conversation_id: int, data: dict[str, Any]) -> dict[str, Any] | None:
    try:
        response = requests.patch(
            f"{REST_SERVICE_URL}/api/conversations/{conversation_id}", json=data, timeout=TIMEOUT
        )
        response.raise_for_status()
        conversation: dict[str, Any] = response.json()
        return conversation
    except Exception as e:
        logger.error(f"Error updating conversation {conversation_id}: {e}")
        return None


def create_batch_job(job_type: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    try:
        response = requests.post(
            f"{REST_SERVICE_URL}/api/batch-jobs/",
            json={"job_type": job_type, "payload": payload, "status": "pending"},
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        return job
    except Exception as e:
        logger.error(f"Error creating batch job {job_type}: {e}")
        return None


def fetch_pending_batch_jobs() -> list[dict[str, Any]]:
    try:
        response = requests.get(f"{REST_SERVICE_URL}/api/batch-jobs/pending", timeout=TIMEOUT)
        response.raise_for_status()
        jobs: list[dict[str, Any]] = response.json()
        return jobs
    except Exception as e:
        logger.error(f"Error fetching pending batch jobs: {e}")
        return []


def update_batch_job(job_id: int, data: dict[str, Any]) -> dict[str, Any] | None:
    try:
        response = requests.patch(
            f"{REST_SERVICE_URL}/api/batch-jobs/{job_id}", json=data, timeout=TIMEOUT
        )
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        return job
    except Exception as e:
        logger.error(f"Error updating batch job {job_id}: {e}")
        return None


def create_job_execution(job_name: str) -> dict[str, Any] | None:
    try:
        response = requests.post(
            f"{REST_SERVICE_URL}/api/job-executions/",
            json={
                "job_id": job_name,
                "job_name": job_name,
                "scheduled_at": None,
                "correlation_id": uuid.uuid4().hex,
            },
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        execution: dict[str, Any] = response.json()
        return execution
    except Exception as e:
        logger.error(f"Error creating job execution for {job_name}: {e}")
        return None


def complete_job_execution(execution_id: int, result: Any) -> dict[str, Any] | None:
    try:
        response = requests.post(
            f"{REST_SERVICE_URL}/api/job-executions/{execution_id}/complete",
            json={"result": result},
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        execution: dict[str, Any] = response.json()
        return execution
    except Exception as e:
        logger.error(f"Error completing job execution {execution_id}: {e}")
        return None

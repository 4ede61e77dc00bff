"""The cron service's REST helpers as they were: one ``requests`` call per function.

Every function swallows every error, logs it and returns ``[]`` or ``None``, so a
caller cannot tell "no reminders" from "the REST service is down". Kept unchanged as
the "before" of the migration; ``compat.LegacyShim`` rebuilds these functions on the
async client without touching their callers.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import requests

logger = logging.getLogger(__name__)

REST_SERVICE_URL = os.environ.get("REST_SERVICE_URL", "http://rest_service:8000")
TIMEOUT = 10


def fetch_active_reminders() -> list[dict[str, Any]]:
    try:
        response = requests.get(f"{REST_SERVICE_URL}/api/reminders/active", timeout=TIMEOUT)
        response.raise_for_status()
        reminders: list[dict[str, Any]] = response.json()
        return reminders
    except Exception as e:
        logger.error(f"Error fetching active reminders: {e}")
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


def create_job_execution(job_name: str) -> dict[str, Any] | None:
    try:
        response = requests.post(
            f"{REST_SERVICE_URL}/api/job-executions/",
            json={"job_name": job_name, "status": "running"},
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        execution: dict[str, Any] = response.json()
        return execution
    except Exception as e:
        logger.error(f"Error creating job execution for {job_name}: {e}")
        return None


def update_job_execution(execution_id: int, data: dict[str, Any]) -> dict[str, Any] | None:
    try:
        response = requests.patch(
            f"{REST_SERVICE_URL}/api/job-executions/{execution_id}", json=data, timeout=TIMEOUT
        )
        response.raise_for_status()
        execution: dict[str, Any] = response.json()
        return execution
    except Exception as e:
        logger.error(f"Error updating job execution {execution_id}: {e}")
        return None

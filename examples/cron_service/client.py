"""``CronRestClient``: the cron service's domain client on :class:`AsyncServiceClient`.

Every REST call the cron service makes, with retries, the breaker and metrics from the
facade. It also records job runs for ``cron_migration`` (its ``RunRecorder`` protocol):
each recording call carries the idempotency key cron_migration derives from the run, so
a retried or replayed record is applied once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from commclient import AsyncServiceClient


class CronRestClient(AsyncServiceClient):
    """Reminders, global settings, conversations, batch jobs and job executions."""

    # -- reminders -------------------------------------------------------------------------

    async def get_scheduled_reminders(
        self, due_before: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Reminders still to send, by time; only those due by ``due_before`` when given."""
        params = None if due_before is None else {"due_before": _aware(due_before).isoformat()}
        result: list[dict[str, Any]] = await self.get("/api/reminders/scheduled", params=params)
        return result

    async def get_reminder(self, reminder_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.get(
            "/api/reminders/{reminder_id}", path_params={"reminder_id": reminder_id}
        )
        return result

    async def update_reminder(
        self, reminder_id: int, data: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.patch(
            "/api/reminders/{reminder_id}",
            path_params={"reminder_id": reminder_id},
            json=data,
            idempotency_key=idempotency_key,
        )
        return result

    async def mark_reminder_sent(self, reminder_id: int) -> dict[str, Any]:
        """Set the reminder's status to ``sent`` (safe to repeat, so it is retried)."""
        return await self.update_reminder(
            reminder_id,
            {"status": "sent", "sent_at": datetime.now(timezone.utc).isoformat()},
            idempotency_key=f"reminder-sent:{reminder_id}",
        )

    # -- global settings -------------------------------------------------------------------

    async def get_global_settings(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get("/api/global-settings/")
        return result

    # -- conversations ---------------------------------------------------------------------

    async def get_conversations(self, **filters: str) -> list[dict[str, Any]]:
        """Conversations whose fields equal every filter (``status="closed"``...)."""
        result: list[dict[str, Any]] = await self.get("/api/conversations/", params=filters or None)
        return result

    async def update_conversation(
        self, conversation_id: int, data: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.patch(
            "/api/conversations/{conversation_id}",
            path_params={"conversation_id": conversation_id},
            json=data,
            idempotency_key=idempotency_key,
        )
        return result

    # -- batch jobs ------------------------------------------------------------------------

    async def create_batch_job(
        self, job_type: str, payload: dict[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        """Create a pending batch job; the key makes a retried creation create one job."""
        result: dict[str, Any] = await self.post(
            "/api/batch-jobs/",
            json={"job_type": job_type, "payload": payload},
            idempotency_key=idempotency_key,
        )
        return result

    async def get_pending_batch_jobs(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.get("/api/batch-jobs/pending")
        return result

    async def get_batch_job(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.get(
            "/api/batch-jobs/{job_id}", path_params={"job_id": job_id}
        )
        return result

    async def update_batch_job(
        self, job_id: int, data: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.patch(
            "/api/batch-jobs/{job_id}",
            path_params={"job_id": job_id},
            json=data,
            idempotency_key=idempotency_key,
        )
        return result

    # -- job executions: cron_migration's RunRecorder ----------------------------------------

    async def create_job_execution(
        self,
        *,
        job_id: str,
        job_name: str,
        scheduled_at: datetime | None,
        correlation_id: str,
        idempotency_key: str,
    ) -> str:
        """Record a new run; returns the REST service's execution id."""
        result: dict[str, Any] = await self.post(
            "/api/job-executions/",
            json={
                "job_id": job_id,
                "job_name": job_name,
                "scheduled_at": None if scheduled_at is None else _aware(scheduled_at).isoformat(),
                "correlation_id": correlation_id,
            },
            idempotency_key=idempotency_key,
        )
        return str(result["id"])

    async def start_job_execution(self, execution_id: str, *, idempotency_key: str) -> None:
        await self.post(
            "/api/job-executions/{execution_id}/start",
            path_params={"execution_id": execution_id},
            idempotency_key=idempotency_key,
        )

    async def complete_job_execution(
        self, execution_id: str, *, result: Any, idempotency_key: str
    ) -> None:
        await self.post(
            "/api/job-executions/{execution_id}/complete",
            path_params={"execution_id": execution_id},
            json={"result": result},
            idempotency_key=idempotency_key,
        )

    async def fail_job_execution(
        self, execution_id: str, *, error: str, traceback: str, idempotency_key: str
    ) -> None:
        await self.post(
            "/api/job-executions/{execution_id}/fail",
            path_params={"execution_id": execution_id},
            json={"error": error, "traceback": traceback},
            idempotency_key=idempotency_key,
        )

    async def list_job_executions(self, **filters: str) -> list[dict[str, Any]]:
        """Every recorded run (filtered by field, e.g. ``status="failed"``)."""
        result: list[dict[str, Any]] = await self.get(
            "/api/job-executions/", params=filters or None
        )
        return result


def _aware(moment: datetime) -> datetime:
    """A naive time is taken as UTC: the REST service refuses times without an offset."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

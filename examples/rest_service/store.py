"""The REST service's data: an in-memory, thread-safe store with the plan's rules.

Framework-free so that tests and the demo can seed and inspect it directly. Records are
plain JSON-able dicts; every method returns copies, so a caller never sees a record
change under it.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

COLLECTIONS = (
    "reminders",
    "conversations",
    "batch-jobs",
    "job-executions",
    "users",
    "user-secretaries",
    "assistants",
    "tools",
)

# A job execution moves forward only: created -> running -> completed | failed. A run that
# fails before it could be marked as started goes straight from created to its outcome.
_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "running": ("created",),
    "completed": ("created", "running"),
    "failed": ("created", "running"),
}


class NotFoundError(LookupError):
    """No record with that id (HTTP 404)."""


class ConflictError(ValueError):
    """The change does not fit the record's state (HTTP 409)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time as an aware datetime (naive means UTC), or ``None`` if unparsable."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class RestService:
    """Reminders, settings, conversations, batch jobs, job executions and a few plain
    collections (users, user secretaries, assistants, tools)."""

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._lock = threading.Lock()
        self._ids = {name: itertools.count(1) for name in COLLECTIONS}
        self._clock = clock
        self.records: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in COLLECTIONS}
        self.global_settings: dict[str, Any] = {"timezone": "UTC", "reminder_lead_minutes": 0}

    # -- any collection ----------------------------------------------------------------------

    def create(self, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Store a copy of ``document`` under a new id (an ``id`` in it is ignored)."""
        with self._lock:
            records = self._collection(collection)
            record = {**copy.deepcopy(dict(document)), "id": next(self._ids[collection])}
            record.setdefault("created_at", self._now())
            records[record["id"]] = record
            return copy.deepcopy(record)

    def get(self, collection: str, record_id: int) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._record(collection, record_id))

    def update(self, collection: str, record_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the record (its ``id`` cannot change)."""
        with self._lock:
            record = self._record(collection, record_id)
            record.update({k: copy.deepcopy(v) for k, v in changes.items() if k != "id"})
            record["updated_at"] = self._now()
            return copy.deepcopy(record)

    def find(
        self, collection: str, filters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Records whose fields equal every filter (compared as text), oldest first."""
        with self._lock:
            items = [
                record
                for record in self._collection(collection).values()
                if all(
                    _as_text(record.get(name)) == value for name, value in (filters or {}).items()
                )
            ]
            return copy.deepcopy(items)

    # -- the plan's queries and state changes ------------------------------------------------

    def scheduled_reminders(self, due_before: datetime | None = None) -> list[dict[str, Any]]:
        """Reminders still to send, by time; only those due by ``due_before`` when given."""
        with self._lock:
            due = [
                r
                for r in self.records["reminders"].values()
                if r.get("status", "scheduled") == "scheduled"
                and (due_before is None or _before(r.get("remind_at"), due_before))
            ]
            due.sort(key=lambda r: (str(r.get("remind_at", "")), r["id"]))
            return copy.deepcopy(due)

    def pending_batch_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(
                [j for j in self.records["batch-jobs"].values() if j.get("status") == "pending"]
            )

    def update_settings(self, changes: Mapping[str, Any], *, replace: bool) -> dict[str, Any]:
        with self._lock:
            if replace:
                self.global_settings.clear()
            self.global_settings.update(copy.deepcopy(dict(changes)))
            return copy.deepcopy(self.global_settings)

    def settings(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.global_settings)

    def create_job_execution(
        self,
        *,
        job_id: str,
        job_name: str,
        scheduled_at: datetime | None,
        correlation_id: str | None,
    ) -> dict[str, Any]:
        return self.create(
            "job-executions",
            {
                "job_id": job_id,
                "job_name": job_name,
                "scheduled_at": None if scheduled_at is None else scheduled_at.isoformat(),
                "correlation_id": correlation_id,
                "status": "created",
                "started_at": None,
                "finished_at": None,
                "result": None,
                "error": None,
                "traceback": None,
            },
        )

    def move_job_execution(self, execution_id: int, status: str, **fields: Any) -> dict[str, Any]:
        """Move an execution to ``status`` (running, completed or failed), or raise
        :class:`ConflictError` when its current state does not allow it."""
        allowed_from = _TRANSITIONS[status]
        with self._lock:
            record = self._record("job-executions", execution_id)
            if record["status"] not in allowed_from:
                raise ConflictError(
                    f"job execution {execution_id} is {record['status']}; it cannot become {status}"
                )
            now = self._now()
            record.update(copy.deepcopy(fields), status=status)
            record["started_at" if status == "running" else "finished_at"] = now
            return copy.deepcopy(record)

    # -- helpers ---------------------------------------------------------------------------

    def _now(self) -> str:
        return self._clock().isoformat()

    def _collection(self, name: str) -> dict[int, dict[str, Any]]:
        try:
            return self.records[name]
        except KeyError:
            raise NotFoundError(f"no collection named {name!r}") from None

    def _record(self, collection: str, record_id: int) -> dict[str, Any]:
        record = self._collection(collection).get(record_id)
        if record is None:
            raise NotFoundError(f"{collection} {record_id} not found")
        return record


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _before(value: object, limit: datetime) -> bool:
    when = parse_time(value)
    return when is not None and when <= limit

"""The legacy scheduler: APScheduler's ``BlockingScheduler`` calling the sync jobs.

``python -m examples.cron_service_legacy`` runs it against ``REST_SERVICE_URL`` (and
``REDIS_URL`` for the trigger stream, when set) until interrupted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from examples.cron_service_legacy import jobs

#: job id -> (function, seconds between runs)
SCHEDULE: dict[str, tuple[Any, float]] = {
    "send_due_reminders": (jobs.send_due_reminders, 60),
    "extract_memories": (jobs.extract_memories, 300),
    "poll_batch_jobs": (jobs.poll_batch_jobs, 30),
    "schedule_nightly_cleanup": (jobs.schedule_nightly_cleanup, 24 * 3600),
}


def build_scheduler(
    scheduler: Any = None,
    *,
    intervals: dict[str, float] | None = None,
    wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]] | None = None,
    start_date: datetime | None = None,
) -> Any:
    """Add every job to ``scheduler`` (a new ``BlockingScheduler`` by default).

    ``intervals`` overrides the seconds between runs of some jobs (tests use short ones);
    ``wrap(job_id, function)`` returns what the scheduler calls instead of the function
    (the migration decorates the legacy jobs with it); ``start_date`` anchors every
    interval (replicas with one anchor compute the same run times).
    """
    if scheduler is None:
        from apscheduler.schedulers.blocking import BlockingScheduler

        scheduler = BlockingScheduler(timezone="UTC")
    unknown = sorted(set(intervals or {}) - set(SCHEDULE))
    if unknown:
        raise ValueError(f"no job named {unknown}; the jobs are {sorted(SCHEDULE)}")
    for job_id, (function, seconds) in SCHEDULE.items():
        scheduler.add_job(
            function if wrap is None else wrap(job_id, function),
            "interval",
            seconds=(intervals or {}).get(job_id, seconds),
            start_date=start_date,
            id=job_id,
            name=job_id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=30,
        )
    return scheduler

"""Move cron jobs from a legacy APScheduler 3 scheduler to ``AsyncIOScheduler``, job by job.

::

    from cron_migration import migrated_job, migrate_scheduler, shutdown_gracefully

    @migrated_job(timeout=60, lease="redis://redis:6379/0", recorder=rest_client)
    async def send_reminders() -> int: ...

    new_scheduler, report = migrate_scheduler(old_scheduler, async_jobs={"send_reminders"})
    new_scheduler.start()                       # on a running event loop
    ...
    await shutdown_gracefully(new_scheduler, timeout=30)

``python -m cron_migration plan module:scheduler [--check]`` prints what migrating a
scheduler changes; ``python -m cron_migration audit PATH`` lists the call sites still to
migrate.
"""

import logging

from ._context import ScheduledRun, current_scheduled_run
from ._executor import MigrationExecutor, watch_missed_runs
from ._job import JobTimeoutError, MigratedJob, ScheduledRunUnknownError, migrated_job
from ._lag import EventLoopLagMonitor, monitor_event_loop_lag
from ._lease import Lease
from ._migrate import (
    ASYNC_JOBS_ENV,
    JobMigration,
    MigrationProblem,
    MigrationReport,
    migrate_scheduler,
)
from ._records import RunRecorder, flush_run_records
from ._shutdown import ShutdownReport, shutdown_gracefully

__all__ = [
    "ASYNC_JOBS_ENV",
    "EventLoopLagMonitor",
    "JobMigration",
    "JobTimeoutError",
    "Lease",
    "MigratedJob",
    "MigrationExecutor",
    "MigrationProblem",
    "MigrationReport",
    "RunRecorder",
    "ScheduledRun",
    "ScheduledRunUnknownError",
    "ShutdownReport",
    "current_scheduled_run",
    "flush_run_records",
    "migrate_scheduler",
    "migrated_job",
    "monitor_event_loop_lag",
    "shutdown_gracefully",
    "watch_missed_runs",
]

# With no logging set up, its records are not printed to stderr by the last resort.
logging.getLogger(__name__).addHandler(logging.NullHandler())

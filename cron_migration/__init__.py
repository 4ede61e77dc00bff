"""Move cron jobs from a legacy APScheduler 3 scheduler to ``AsyncIOScheduler``, job by job.

::

    from cron_migration import migrated_job, migrate_scheduler, shutdown_gracefully

    @migrated_job(timeout=60, lease="redis://redis:6379/0", recorder=rest_client)
    async def send_reminders() -> int: ...

    new_scheduler, report = migrate_scheduler(old_scheduler, async_jobs={"send_reminders"})
    new_scheduler.start()                       # on a running event loop
    ...
    await shutdown_gracefully(new_scheduler, timeout=30)

Replicas: ``lease=`` runs each call in each slot on one replica; ``LeaderElection``
(``migrate_scheduler(old, leader=...)``) runs every job on one replica at a time.

``python -m cron_migration plan module:scheduler [--check]`` prints what migrating a
scheduler changes; ``python -m cron_migration audit PATH`` lists the call sites still to
migrate.
"""

from ._context import ScheduledRun, current_scheduled_run
from ._executor import MigrationExecutor, watch_missed_runs
from ._job import (
    JobTimeoutError,
    LeaseRefusedError,
    MigratedJob,
    ScheduledRunUnknownError,
    migrated_job,
)
from ._lag import EventLoopLagMonitor, monitor_event_loop_lag
from ._leader import LeaderElection
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
from ._slots import UnstableArgumentError

__all__ = [
    "ASYNC_JOBS_ENV",
    "EventLoopLagMonitor",
    "JobMigration",
    "JobTimeoutError",
    "LeaderElection",
    "Lease",
    "LeaseRefusedError",
    "MigratedJob",
    "MigrationExecutor",
    "MigrationProblem",
    "MigrationReport",
    "RunRecorder",
    "ScheduledRun",
    "ScheduledRunUnknownError",
    "ShutdownReport",
    "UnstableArgumentError",
    "current_scheduled_run",
    "flush_run_records",
    "migrate_scheduler",
    "migrated_job",
    "monitor_event_loop_lag",
    "shutdown_gracefully",
    "watch_missed_runs",
]

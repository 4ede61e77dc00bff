"""Move cron jobs from a legacy APScheduler 3 scheduler to ``AsyncIOScheduler``, job by job.

::

    from cron_migration import migrated_job, migrate_scheduler, run_until_signal

    @migrated_job(timeout=60, lease="redis://redis:6379/0", recorder=rest_client)
    async def send_reminders() -> int: ...

    new_scheduler, report = migrate_scheduler(old_scheduler, async_jobs={"send_reminders"})
    run_until_signal(new_scheduler, grace=25)   # a service's main: until SIGTERM/SIGINT

    # or within an async main of your own, on a running event loop:
    new_scheduler.start()
    ...
    await shutdown_gracefully(new_scheduler, timeout=30)

Replicas: ``lease=`` runs each call in each slot on one replica; ``LeaderElection``
(``migrate_scheduler(old, leader=...)``) runs every job on one replica at a time.

``python -m cron_migration plan module:scheduler [--check]`` prints what migrating a
scheduler changes; ``python -m cron_migration audit PATH`` lists the call sites still to
migrate.
"""

import logging
from typing import TYPE_CHECKING, Any

from ._shadowing import ShadowedPackageError as _ShadowedPackageError
from ._shadowing import check_not_shadowed as _check_not_shadowed
from ._shadowing import running_the_command_line as _running_the_command_line

try:
    _check_not_shadowed()
except _ShadowedPackageError:
    # `python -m cron_migration` in a project with a compat.py of its own: the audit and
    # --help import neither package; `plan`, which does, fails with this error.
    if not _running_the_command_line():
        raise

from ._context import ScheduledRun, current_scheduled_run
from ._job import (
    JobTimeoutError,
    LeaseRefusedError,
    MigratedJob,
    ScheduledRunUnknownError,
    migrated_job,
)
from ._lag import EventLoopLagMonitor, monitor_event_loop_lag
from ._leader import LeaderElection, LeadershipLostError
from ._lease import Lease
from ._records import RunRecorder, flush_run_records
from ._routing import LoopSwitch
from ._slots import UnstableArgumentError

if TYPE_CHECKING:
    from ._executor import MigrationExecutor, watch_missed_runs
    from ._migrate import (
        ASYNC_JOBS_ENV,
        ExecutorMigration,
        JobMigration,
        MigrationProblem,
        MigrationReport,
        StoreMigration,
        migrate_scheduler,
    )
    from ._shutdown import ShutdownReport, run_until_signal, shutdown_gracefully

# The names that need APScheduler, imported on first use: the audit, the CLI's help and
# @migrated_job work without it.
_NEEDS_SCHEDULER = {
    "ASYNC_JOBS_ENV": "._migrate",
    "ExecutorMigration": "._migrate",
    "JobMigration": "._migrate",
    "MigrationExecutor": "._executor",
    "MigrationProblem": "._migrate",
    "MigrationReport": "._migrate",
    "ShutdownReport": "._shutdown",
    "StoreMigration": "._migrate",
    "migrate_scheduler": "._migrate",
    "run_until_signal": "._shutdown",
    "shutdown_gracefully": "._shutdown",
    "watch_missed_runs": "._executor",
}


def __getattr__(name: str) -> Any:
    module_name = _NEEDS_SCHEDULER.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._extras import import_needing_scheduler

    value = getattr(import_needing_scheduler(module_name, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ASYNC_JOBS_ENV",
    "EventLoopLagMonitor",
    "ExecutorMigration",
    "JobMigration",
    "JobTimeoutError",
    "LeaderElection",
    "LeadershipLostError",
    "Lease",
    "LeaseRefusedError",
    "LoopSwitch",
    "MigratedJob",
    "MigrationExecutor",
    "MigrationProblem",
    "MigrationReport",
    "RunRecorder",
    "ScheduledRun",
    "ScheduledRunUnknownError",
    "ShutdownReport",
    "StoreMigration",
    "UnstableArgumentError",
    "current_scheduled_run",
    "flush_run_records",
    "migrate_scheduler",
    "migrated_job",
    "monitor_event_loop_lag",
    "run_until_signal",
    "shutdown_gracefully",
    "watch_missed_runs",
]

# With no logging set up, its records are not printed to stderr by the last resort.
logging.getLogger(__name__).addHandler(logging.NullHandler())

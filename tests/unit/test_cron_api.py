"""cron_migration's public names: the contract's, what users need beside them, nothing else."""

from __future__ import annotations

import pytest

pytest.importorskip("apscheduler")

import cron_migration

pytestmark = pytest.mark.facade_async

PUBLIC = [
    "ASYNC_JOBS_ENV",  # the per-job switch read from the environment
    "EventLoopLagMonitor",
    "JobMigration",  # the items of MigrationReport
    "JobTimeoutError",
    "Lease",  # lease= with its own key prefix or Redis timeout
    "MigratedJob",  # what @migrated_job returns
    "MigrationExecutor",  # the executor a lease needs in schedulers built by hand
    "MigrationProblem",
    "MigrationReport",
    "RunRecorder",
    "ScheduledRun",  # what current_scheduled_run() returns
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


def test_only_what_users_call_or_receive_is_exported() -> None:
    assert cron_migration.__all__ == PUBLIC


@pytest.mark.parametrize("plumbing", ["RecordOutbox", "LeaseDecision", "DEFAULT_CLOCK_SKEW"])
def test_the_plumbing_stays_in_private_modules(plumbing: str) -> None:
    assert not hasattr(cron_migration, plumbing)


def test_a_decorated_job_shows_no_plumbing_attributes() -> None:
    job = cron_migration.migrated_job(lambda: None)
    assert not hasattr(job, "outbox")
    assert not hasattr(job, "metrics")

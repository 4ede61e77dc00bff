"""cron_migration's public names: the contract's, what users need beside them, nothing else."""

from __future__ import annotations

import pytest

pytest.importorskip("apscheduler")

import cron_migration

pytestmark = pytest.mark.facade_async

# The contract's names, and what a user of them receives or needs beside them.
CONTRACT = {"RunRecorder", "migrate_scheduler", "migrated_job", "shutdown_gracefully"}
RECEIVED = {"MigratedJob", "MigrationReport", "ShutdownReport", "ScheduledRun", "JobTimeoutError"}


def test_the_contract_and_what_it_hands_out_are_exported() -> None:
    assert set(cron_migration.__all__) >= CONTRACT | RECEIVED


@pytest.mark.parametrize("plumbing", ["RecordOutbox", "LeaseDecision", "DEFAULT_CLOCK_SKEW"])
def test_the_plumbing_stays_in_private_modules(plumbing: str) -> None:
    assert not hasattr(cron_migration, plumbing)


def test_a_decorated_job_shows_no_plumbing_attributes() -> None:
    job = cron_migration.migrated_job(lambda: None)
    assert not hasattr(job, "outbox")
    assert not hasattr(job, "metrics")

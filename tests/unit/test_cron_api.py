"""cron_migration's public names: the contract's, what users need beside them, nothing else."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

pytest.importorskip("apscheduler")

import cron_migration
from tests.typecheck import run_mypy

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


def test_mypy_accepts_every_option_of_migrated_job_in_both_forms(tmp_path: Path) -> None:
    """Each overload of migrated_job takes every keyword the function takes: a documented
    option missing from one (record_max_age was) makes a checked service fail mypy."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (tox.ini installs it in py313-async only)")
    options = [
        name
        for name, parameter in inspect.signature(cron_migration.migrated_job).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    values = {
        "timeout": "60",
        "lease": "None",
        "recorder": "None",
        "name": "'job'",
        "registry": "None",
        "lease_clock_skew": "30.0",
        "on_redis_error": "'skip'",
        "record_capacity": "100",
        "record_max_age": "90.0",
    }
    assert set(options) == set(values), "a new option: give it a value here"
    arguments = ", ".join(f"{name}={values[name]}" for name in options)
    program = tmp_path / "program.py"
    program.write_text(
        "from cron_migration import migrated_job\n\n\n"
        f"@migrated_job({arguments})\n"
        "def decorated() -> None: ...\n\n\n"
        "def plain() -> None: ...\n\n\n"
        f"called = migrated_job(plain, {arguments})\n"
    )
    result = run_mypy(tmp_path / "c", program)
    # Only the program's own lines count: an environment without the other extras (no
    # requests, no OpenTelemetry) makes mypy report the library's imports of them.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert result.stdout, result.stderr  # mypy ran and said something
    own_errors = [
        line for line in result.stdout.splitlines() if "program.py:" in line and ": error:" in line
    ]
    assert own_errors == [], result.stdout

"""The plan and audit commands on the legacy cron service example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("requests")

REPO_ROOT = Path(__file__).resolve().parents[2]
LEGACY = "examples.cron_service_legacy.scheduler:build_scheduler"


def cron_migration(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cron_migration", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )


def test_plan_on_the_legacy_service_lists_every_job_and_passes_the_check() -> None:
    from examples.cron_service_legacy.scheduler import SCHEDULE

    result = cron_migration("plan", LEGACY, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    for job_id in SCHEDULE:
        assert f"job {job_id!r} ({job_id}): sync" in result.stdout
    assert result.stdout.count("executor: 'default': ThreadPoolExecutor") == len(SCHEDULE)
    assert "executor 'default': ThreadPoolExecutor(10) -> MigrationExecutor" in result.stdout
    assert result.stdout.count("compat's bounded worker pool") == len(SCHEDULE)
    assert f"{len(SCHEDULE)} job(s), ok" in result.stdout


def test_plan_refuses_a_job_id_the_legacy_service_does_not_have() -> None:
    result = cron_migration("plan", LEGACY, "--async-jobs", "send_reminders")
    assert result.returncode == 2
    assert "'send_reminders'" in result.stderr
    assert "send_due_reminders" in result.stderr  # the ids it does have


def test_audit_lists_the_legacy_services_raw_requests_calls() -> None:
    result = cron_migration("audit", "examples/cron_service_legacy", "--check")
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if " CM001 " in line]
    assert lines
    assert all("raw requests." in line for line in lines)


def test_audit_lists_the_legacy_jobs_calls_of_the_old_helpers() -> None:
    import re

    jobs = REPO_ROOT / "examples" / "cron_service_legacy" / "jobs.py"
    calls = [
        name
        for name in re.findall(r"rest_client\.(\w+)\(", jobs.read_text())
        if name != "configure"  # it makes no HTTP call
    ]
    result = cron_migration("audit", "examples/cron_service_legacy")
    assert result.returncode == 0
    listed = [line for line in result.stdout.splitlines() if " CM004 " in line]
    assert len(listed) == len(calls)
    assert all(line.startswith("examples/cron_service_legacy/jobs.py:") for line in listed)
    assert sorted(re.search(r"rest_client\.(\w+)\(\)", line)[1] for line in listed) == sorted(calls)

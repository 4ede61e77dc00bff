"""cron_migration in the environments users have: no APScheduler, no httpx, a compat.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Run first in the child: importing any of BLOCKED fails as if it were not installed.
BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def run_python(
    code: str,
    *args: str,
    blocked: tuple[str, ...] = (),
    path: tuple[Path, ...] = (),
    cwd: Path = REPO_ROOT,
) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter with ``blocked`` uninstallable and ``path`` first."""
    env_path = ":".join(str(p) for p in (*path, REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-c", BLOCKER.format(blocked=blocked) + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        check=False,
    )


LEGACY_JOB = """\
import requests

def fetch():
    return requests.get("http://x")
"""

RUN_CLI = """
import runpy, sys
sys.argv = ["cron_migration", *sys.argv[1:]]
runpy.run_module("cron_migration", run_name="__main__", alter_sys=True)
"""


def test_cron_migration_imports_without_apscheduler() -> None:
    result = run_python(
        """
        import sys
        import cron_migration
        from cron_migration import migrated_job, current_scheduled_run, LoopSwitch
        assert "apscheduler" not in sys.modules
        try:
            from cron_migration import migrate_scheduler
        except ImportError as exc:
            print("refused:", exc)
        """,
        blocked=("apscheduler",),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "refused: cron_migration (to migrate, run or shut down a scheduler) needs apscheduler"
        in (result.stdout)
    )
    assert "pip install 'commclient[scheduler]'" in result.stdout


@pytest.mark.parametrize(
    "args", [("--help",), ("plan", "--help"), ("audit", "--help"), ("audit", "examples")]
)
def test_the_cli_help_and_audit_work_without_apscheduler(args: tuple[str, ...]) -> None:
    result = run_python(RUN_CLI, *args, blocked=("apscheduler",))
    assert result.returncode == 0, result.stderr
    assert "No module named" not in result.stdout + result.stderr


def test_plan_without_apscheduler_names_the_extra() -> None:
    result = run_python(
        RUN_CLI,
        "plan",
        "examples.cron_service_legacy.scheduler:build_scheduler",
        blocked=("apscheduler",),
    )
    assert result.returncode == 2
    assert "pip install 'commclient[scheduler]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_scheduler_extra_runs_a_migrated_job_without_an_http_client() -> None:
    pytest.importorskip("apscheduler")
    pytest.importorskip("anyio")
    result = run_python(
        """
        import asyncio, sys
        from apscheduler.schedulers.background import BackgroundScheduler
        from cron_migration import migrate_scheduler, migrated_job, shutdown_gracefully

        ran = []

        @migrated_job(timeout=5)
        def legacy_job():
            ran.append(True)

        async def main():
            old = BackgroundScheduler()
            old.add_job(legacy_job, "interval", seconds=0.05, id="legacy")
            new, report = migrate_scheduler(old)
            new.start()
            while not ran:
                await asyncio.sleep(0.01)
            await shutdown_gracefully(new, timeout=5)

        asyncio.run(main())
        assert "httpx" not in sys.modules and "requests" not in sys.modules
        print("ran")
        """,
        blocked=("httpx", "requests"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran"


@pytest.fixture
def users_compat(tmp_path: Path) -> Path:
    """A directory holding a user's own ``compat.py``."""
    (tmp_path / "compat.py").write_text('"""The user\'s own compatibility helpers."""\n')
    return tmp_path


def test_a_users_compat_module_first_on_the_path_is_named_at_import(users_compat: Path) -> None:
    # `python -c` and `python -m` put the current directory first: the service's own.
    result = run_python("import cron_migration", cwd=users_compat)
    assert result.returncode == 1
    shadow = users_compat / "compat.py"
    assert f"the module 'compat' at {shadow} shadows commclient's package 'compat'" in (
        result.stderr
    )
    assert str(REPO_ROOT / "compat" / "__init__.py") in result.stderr


def test_the_audit_runs_in_a_project_with_its_own_compat_module(users_compat: Path) -> None:
    """A legacy codebase's root often has a compat.py; `python -m` puts it first on the path."""
    (users_compat / "jobs.py").write_text(LEGACY_JOB)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cron_migration", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=users_compat,
            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
            check=False,
        )

    audit = cli("audit", "jobs.py")
    assert (audit.returncode, audit.stderr) == (0, "")
    assert "jobs.py:4:11: CM001 raw requests.get()" in audit.stdout
    assert cli("--help").returncode == 0
    plan = cli("plan", "jobs:scheduler")
    assert plan.returncode == 2
    assert "shadows commclient's package 'compat'" in plan.stderr
    assert "Traceback" not in plan.stderr


def test_a_users_compat_module_added_later_cannot_break_a_run(users_compat: Path) -> None:
    pytest.importorskip("anyio")
    result = run_python(
        f"""
        import sys
        from cron_migration import migrated_job

        @migrated_job
        def job():
            return "done"

        sys.path.insert(0, {str(users_compat)!r})  # e.g. the service's own directory
        print(job())
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


def test_the_scheduler_extra_brings_anyio_and_no_http_client() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    scheduler = project["optional-dependencies"]["scheduler"]
    names = {requirement.split(">")[0].split("<")[0].split("=")[0] for requirement in scheduler}
    assert names == {"apscheduler", "anyio"}

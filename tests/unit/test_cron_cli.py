"""python -m cron_migration plan / audit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from cron_migration._audit import audit_paths, audit_source
from cron_migration._cli import main

pytestmark = pytest.mark.facade_async

LEGACY_MODULE = '''
import asyncio
from apscheduler.schedulers.blocking import BlockingScheduler

def report() -> None:
    """A sync job."""

async def remind() -> None:
    """A coroutine job the thread pool never awaits."""

scheduler = BlockingScheduler(timezone="UTC")
scheduler.add_job(report, "interval", minutes=5, id="report")
scheduler.add_job(remind, "interval", minutes=1, id="remind")

def build():
    made = BlockingScheduler(timezone="UTC")
    made.add_job(report, "interval", minutes=5, id="report")
    return made

not_a_scheduler = 42

def failing_factory():
    raise KeyError("DATABASE_URL")

def exiting_factory():
    raise SystemExit(0)

def leased_with_jitter():
    from cron_migration import migrated_job

    made = BlockingScheduler(timezone="UTC")
    job = migrated_job(report, timeout=5, lease="redis://127.0.0.1:1/0", name="leased")
    made.add_job(job, "cron", minute="*", jitter=5, id="leased")
    return made

unknown_executor = BlockingScheduler(timezone="UTC")
unknown_executor.add_job(report, "interval", minutes=5, id="report", executor="nope")
'''


@pytest.fixture
def legacy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"legacy_cron_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(LEGACY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_plan_prints_each_job_and_check_fails_on_what_cannot_move(
    legacy_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", f"{legacy_module}:scheduler"]) == 0
    out = capsys.readouterr().out
    assert "job 'report' (report): sync" in out
    assert "job 'remind' (remind): async" in out
    assert "'default': ThreadPoolExecutor" in out
    assert "compat's bounded worker pool" in out
    assert "CANNOT MOVE AS IS: remind: coroutine job on ThreadPoolExecutor" in out
    assert main(["plan", f"{legacy_module}:scheduler", "--check"]) == 1
    assert main(["plan", f"{legacy_module}:build", "--check"]) == 0  # a factory works too
    assert main(["plan", f"{legacy_module}:scheduler", "--async-jobs", "remind"]) == 0
    assert "the scheduler's event loop" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected module:attribute"),
        ("no_such_module_xyz:scheduler", "cannot import 'no_such_module_xyz'"),
        ("{module}:missing", "has no attribute 'missing'"),
        ("{module}:not_a_scheduler", "int, not an APScheduler 3 scheduler"),
        ("{module}:failing_factory", "failing_factory() failed: KeyError('DATABASE_URL')"),
        ("{module}:exiting_factory", "exiting_factory() failed: SystemExit(0)"),
        ("{broken}:scheduler", "failed: RuntimeError('REST_SERVICE_URL is not set')"),
    ],
)
def test_plan_names_what_is_wrong_with_its_argument(
    legacy_module: str,
    tmp_path: Path,
    spec: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = f"{legacy_module}_broken"
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('REST_SERVICE_URL is not set')\n")
    # 2, the command's own failure: never 1 (cannot migrate) nor 0 (a pass for --check).
    assert main(["plan", spec.format(module=legacy_module, broken=broken), "--check"]) == 2
    assert message in capsys.readouterr().err


def test_plan_check_fails_on_a_job_whose_executor_does_not_exist(
    legacy_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", f"{legacy_module}:unknown_executor", "--check"]) == 1
    out = capsys.readouterr().out
    assert "executor: 'nope': missing" in out
    assert "CANNOT MOVE AS IS: report: its executor 'nope' does not exist" in out


def test_plan_refuses_a_misspelt_async_job(
    legacy_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", f"{legacy_module}:scheduler", "--async-jobs", "remnd"]) == 2
    assert "'remnd'" in capsys.readouterr().err


AUDITED = """
import asyncio
import time as clock
import requests as rq
from httpx import AsyncClient, get as httpx_get
from apscheduler.schedulers.blocking import BlockingScheduler
from cron_migration import migrated_job

scheduler = BlockingScheduler()

def fetch():
    return rq.get("http://x/api")                     # CM001

@migrated_job(timeout=5)
def legacy_job():
    asyncio.run(main())                                # CM002
    loop = asyncio.get_event_loop()                    # CM002

def registered():
    asyncio.new_event_loop().run_until_complete(main())  # CM002 x2

scheduler.add_job(registered, "interval", seconds=5)

@scheduler.scheduled_job("interval", seconds=5)
async def async_job():
    clock.sleep(1)                                     # CM003
    httpx_get("http://x")                              # CM001 + CM003
    async with AsyncClient() as client:                # a client, not a request
        await client.get("http://x")                   # CM001 only

def not_a_job():
    asyncio.run(main())                                # fine: not a job

async def main():
    await asyncio.sleep(1)                             # fine
"""


def test_audit_finds_each_kind_of_call_site() -> None:
    findings = audit_source(AUDITED, "service.py")
    found = [(f.line, f.code) for f in findings]
    lines = AUDITED.splitlines()

    def line_of(text: str) -> int:
        return next(n for n, line in enumerate(lines, 1) if text in line)

    assert sorted(found) == sorted(
        [
            (line_of("rq.get("), "CM001"),
            (line_of("asyncio.run(main())                                # CM002"), "CM002"),
            (line_of("get_event_loop"), "CM002"),
            (line_of("new_event_loop"), "CM002"),
            (line_of("new_event_loop"), "CM002"),
            (line_of("clock.sleep"), "CM003"),
            (line_of("httpx_get("), "CM001"),
            (line_of("httpx_get("), "CM003"),
            (line_of("await client.get"), "CM001"),
        ]
    )
    sleep = next(f for f in findings if f.code == "CM003" and "time.sleep" in f.message)
    assert sleep.render().startswith(f"service.py:{line_of('clock.sleep')}:")
    assert "in async def async_job" in sleep.message


def test_audit_walks_a_tree_skips_the_clients_and_reports_unparsable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "jobs.py").write_text(AUDITED)
    (tmp_path / "service" / "broken.py").write_text("def (:\n")
    (tmp_path / "service" / "latin1.py").write_bytes(b"# caf\xe9\n")
    # The packages themselves, side by side as installed or vendored: skipped.
    for package in ("commclient", "compat"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "_sync.py").write_text("import requests\nrequests.get('x')\n")
    assert main(["audit", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "commclient" not in out
    assert "/compat/" not in out
    assert "broken.py:1:" in out
    assert "CM000 cannot parse" in out
    assert "latin1.py:0:0: CM000 cannot read:" in out
    assert "11 call site(s) to migrate" in out
    assert main(["audit", str(tmp_path), "--check"]) == 1
    assert main(["audit", str(tmp_path / "nowhere")]) == 2


def test_a_users_own_package_named_like_ours_is_audited(tmp_path: Path) -> None:
    """An application's own compat package (no commclient beside it) is its code."""
    (tmp_path / "app" / "compat").mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "compat" / "__init__.py").write_text(
        "import requests\n\ndef fetch(url):\n    return requests.get(url)\n"
    )
    found = [(Path(f.path).parent.name, f.code) for f in audit_paths([tmp_path / "app"])]
    assert found == [("compat", "CM001")]


@pytest.mark.parametrize("layout", ["script directories", "services of a monorepo"])
def test_modules_of_one_name_in_different_roots_are_not_confused(
    tmp_path: Path, layout: str
) -> None:
    """Each directory's own helpers: only the cron one makes a request."""
    if layout == "script directories":  # no __init__.py: each directory is on sys.path
        cron, web, imported = tmp_path / "cron", tmp_path / "web", "helpers"
    else:  # services/<name>/app/...: each service's directory is its root
        cron = tmp_path / "services" / "cron" / "app"
        web = tmp_path / "services" / "web" / "app"
        imported = "app.helpers"
        for package in (cron, web):
            package.mkdir(parents=True)
            (package / "__init__.py").write_text("")
    for directory in (cron, web):
        directory.mkdir(parents=True, exist_ok=True)
    (cron / "helpers.py").write_text(
        "import requests\n\ndef fetch():\n    return requests.get('x')\n"
    )
    (web / "helpers.py").write_text("def fetch():\n    return 1\n")
    for directory, name in ((cron, "jobs.py"), (web, "views.py")):
        (directory / name).write_text(
            f"import {imported}\n\nasync def run():\n    return {imported}.fetch()\n"
        )
    found = sorted(
        (Path(f.path).relative_to(tmp_path).as_posix(), f.code) for f in audit_paths([tmp_path])
    )
    where = cron.relative_to(tmp_path).as_posix()
    assert found == [
        (f"{where}/helpers.py", "CM001"),
        (f"{where}/jobs.py", "CM003"),
        (f"{where}/jobs.py", "CM004"),
    ]


def test_the_module_runs_as_a_command(legacy_module: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cron_migration", "plan", f"{legacy_module}:scheduler", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "2 job(s), 1 problem(s)" in result.stdout


def test_audit_lists_the_calls_of_helpers_that_make_raw_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "service"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "old_client.py").write_text(
        "import requests\n\ndef fetch(url):\n    return requests.get(url).json()\n\n"
        "def configure(url):\n    return url\n"
    )
    (package / "jobs.py").write_text(
        "from service import old_client\n"
        "from service.old_client import fetch as get_it\n\n"
        "def job():\n"
        "    old_client.configure('x')\n"  # no raw call: not listed
        "    old_client.fetch('a')\n"
        "    return get_it('b')\n"
    )
    assert main(["audit", str(package)]) == 0
    out = capsys.readouterr().out
    found = [line for line in out.splitlines() if " CM004 " in line]
    assert [line.split(": CM004")[0] for line in found] == [
        f"{package / 'jobs.py'}:6:4",
        f"{package / 'jobs.py'}:7:11",
    ]
    assert all("old_client.fetch() in job makes raw HTTP calls" in line for line in found)
    assert all(f"({package / 'old_client.py'}:4)" in line for line in found)
    assert "3 call site(s) to migrate" in out


MANAGER_MODULE = """
from apscheduler.schedulers.blocking import BlockingScheduler

scheduler = BlockingScheduler()

def cleanup():
    pass

def manager():
    scheduler.reschedule_job("cleanup", trigger="interval", minutes=5)

scheduler.add_job(cleanup, "interval", minutes=1, id="cleanup")
scheduler.add_job(manager, "interval", minutes=1, id="manager")
"""


def test_plan_warns_of_a_job_that_drives_the_old_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"manager_cron_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MANAGER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plan", f"{name}:scheduler", "--check"]) == 1
    out = capsys.readouterr().out
    assert (
        "CANNOT MOVE AS IS: manager: its code uses the old scheduler "
        "(scheduler.reschedule_job on line 10)"
    ) in out
    assert "cleanup: its code" not in out


def test_audit_follows_a_module_session_and_stops_where_a_name_is_shadowed() -> None:
    source = (
        "import requests\n"
        "SESSION = requests.Session()\n"
        "def shared():\n"
        "    return SESSION.get('x')\n"
        "def passed_in(SESSION):\n"
        "    return SESSION.get('x')\n"
        "def looped(sessions):\n"
        "    for SESSION in sessions:\n"
        "        SESSION.get('x')\n"
    )
    assert [(f.line, f.code) for f in audit_source(source, "m.py")] == [(4, "CM001")]


def test_audit_finds_jobs_registered_in_a_loop_over_a_schedule_of_another_module(
    tmp_path: Path,
) -> None:
    # The legacy example's layout: jobs.py holds the jobs, scheduler.py a SCHEDULE dict
    # that a function iterates to call add_job.
    package = tmp_path / "legacy_service"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(
        "import asyncio\n\n"
        "async def main():\n    pass\n\n"
        "def send():\n    asyncio.run(main())\n\n"
        "def not_scheduled():\n    asyncio.run(main())\n"
    )
    (package / "scheduler.py").write_text(
        "from typing import Any\n"
        "from legacy_service import jobs\n\n"
        "SCHEDULE: dict[str, tuple[Any, float]] = {'send': (jobs.send, 60)}\n\n"
        "def build(scheduler, wrap=None):\n"
        "    for job_id, (function, seconds) in SCHEDULE.items():\n"
        "        scheduler.add_job(function if wrap is None else wrap(job_id, function),\n"
        "                          'interval', seconds=seconds, id=job_id)\n"
    )
    found = [(Path(f.path).name, f.line, f.code) for f in audit_paths([package])]
    assert found == [("jobs.py", 7, "CM002")]


def test_plan_check_flags_a_leased_job_whose_slots_a_lease_cannot_key(
    legacy_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", f"{legacy_module}:leased_with_jitter", "--check"]) == 1
    out = capsys.readouterr().out
    assert "CANNOT MOVE AS IS: leased: cannot be leased: its trigger has jitter=5" in out

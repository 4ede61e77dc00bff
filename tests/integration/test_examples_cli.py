"""Every runnable example answers ``--help`` without starting anything, both as
``python -m examples.X`` and as a file or folder path, from any working directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from examples.serving import free_port

pytestmark = [pytest.mark.facade_async, pytest.mark.facade_sync]

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = [
    "examples.cron_service",
    "examples.cron_service_legacy",
    "examples.demo",
    "examples.read_through",
    "examples.rest_service",
]


def path_of(module: str) -> Path:
    """The file or folder ``python PATH`` runs for ``module``."""
    relative = Path(*module.split("."))
    file = ROOT / relative.with_suffix(".py")
    return file if file.is_file() else ROOT / relative


def without_root_on_path() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize("module", RUNNABLE)
@pytest.mark.parametrize("form", ["module", "path"])
def test_example_answers_help_and_exits(module: str, form: str, tmp_path: Path) -> None:
    if form == "module":
        command, cwd, env = [sys.executable, "-m", module], ROOT, dict(os.environ)
    else:
        # A path run from elsewhere: nothing but the example itself puts the root on the path.
        command, cwd, env = [sys.executable, str(path_of(module))], tmp_path, without_root_on_path()
    result = subprocess.run(
        [*command, "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout[:500]
    # Not "usage: __main__.py": the usage names the command that runs the example.
    assert "__main__" not in result.stdout.splitlines()[0], result.stdout.splitlines()[0]
    assert "Adding job" not in result.stderr, "--help started the scheduler"


def test_rest_service_prints_where_it_listens() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.rest_service", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": ""},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(30)
    assert f"http://127.0.0.1:{port}" in first_line


def test_the_legacy_service_stops_on_ctrl_c_without_a_traceback() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.cron_service_legacy",
            "--rest-url",
            f"http://127.0.0.1:{free_port()}",
        ],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "Scheduler started" in line:
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert "Traceback" not in stderr, stderr
    assert process.returncode == 0, stderr
    assert "legacy cron service: stopped" in stdout

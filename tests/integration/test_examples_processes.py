"""The example services as processes: ``python -m examples.rest_service`` and
``python -m examples.cron_service``, stopped with SIGTERM like a container would be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.serving import free_port

pytestmark = [pytest.mark.facade_async, pytest.mark.facade_sync]

ROOT = Path(__file__).resolve().parents[2]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body.startswith((b"{", b"[")) else body.decode()


def wait_for(url: str, process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(url)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered (exit {process.poll()})") from None
            time.sleep(0.1)


@pytest.fixture
def rest_service() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.rest_service", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": ""},
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base_url}/healthz", process)
        yield base_url
    finally:
        process.terminate()
        process.wait(30)


def test_the_cron_service_process_stops_on_sigterm_with_every_run_recorded(
    rest_service: str,
) -> None:
    metrics_port = free_port()
    cron = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.cron_service",
            "--metrics-port",
            str(metrics_port),
            *("--interval", "send_due_reminders=0.5", "--interval", "poll_batch_jobs=0.5"),
            *("--interval", "extract_memories=0.5"),
        ],
        cwd=ROOT,
        env={**os.environ, "REST_SERVICE_URL": rest_service, "REDIS_URL": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{metrics_port}/metrics", cron)
        deadline = time.monotonic() + 60
        while len(get(f"{rest_service}/api/job-executions/")) < 6:
            assert time.monotonic() < deadline, "the jobs never ran"
            time.sleep(0.2)
        metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert "cron_job_runs_total" in metrics
        assert "cron_event_loop_lag_seconds" in metrics
    finally:
        cron.send_signal(signal.SIGTERM)
        out, err = cron.communicate(timeout=60)
    assert cron.returncode == 0, out + err
    assert "records_pending=0" in out
    executions = get(f"{rest_service}/api/job-executions/")
    assert {e["status"] for e in executions} == {"completed"}
    assert {e["job_id"] for e in executions} >= {"send_due_reminders", "poll_batch_jobs"}


def test_an_interval_for_no_job_is_refused_by_name() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "examples.cron_service", "--interval", "send_reminders=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "send_reminders" in finished.stderr

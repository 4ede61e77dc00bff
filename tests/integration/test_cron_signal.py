"""A real SIGTERM to a cron service process in the middle of a long sync run: the run is
recorded as abandoned (not cancelled, not completed), and the process exits within its
grace period instead of waiting for the thread."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from tests.unit.cron_support import wait_until

pytestmark = pytest.mark.facade_async

REPO_ROOT = Path(__file__).resolve().parents[2]
GRACE = 1.0
RECORDS_TIMEOUT = 3.0  # as the worker passes it


def signalled_mid_run(tmp_path: Path, grace: str, signum: signal.Signals) -> subprocess.Popen[str]:
    """The worker (a service whose one sync run lasts 60 s), sent ``signum`` once its run
    started; kill it when done with it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.cron_signal_worker", str(tmp_path), grace],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (tmp_path / "started").exists(), timeout=60, what="the run to start")
        process.send_signal(signum)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_long_sync_run_records_it_abandoned_and_exits_in_time(
    tmp_path: Path, signum: signal.Signals
) -> None:
    process = signalled_mid_run(tmp_path, str(GRACE), signum)
    signalled = time.monotonic()
    try:
        out, err = process.communicate(timeout=50)  # the job alone would take 60 s
        exited_after = time.monotonic() - signalled
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["abandoned"] == 1
    assert report["cancelled"] == 0
    assert report["records_pending"] == 0
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [r["op"] for r in records] == ["create", "start", "fail"]
    assert records[-1]["error"].startswith("abandoned")
    assert "outcome is unknown" in records[-1]["error"]
    assert not (tmp_path / "finished").exists()
    # Grace, then the records' time (the abandoned run is awaited until 1 s before its end),
    # with room for a loaded machine; without the fix the exit waited for the 60 s run.
    print(f"exited {exited_after:.1f}s after the signal (grace {GRACE:g}s + {RECORDS_TIMEOUT:g}s)")
    assert exited_after < GRACE + RECORDS_TIMEOUT + 15


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_the_service_at_once(tmp_path: Path, signum: signal.Signals) -> None:
    """The first signal starts a shutdown giving the run 60 s; the second stops the process
    as the signal would without run_until_signal (SIGTERM: killed by it; SIGINT:
    KeyboardInterrupt), long before the grace is up."""
    process = signalled_mid_run(tmp_path, "60", signum)
    try:
        wait_until(
            lambda: (tmp_path / "log").exists() and "received" in (tmp_path / "log").read_text(),
            timeout=30,
            what="the shutdown to begin",
        )
        process.send_signal(signum)
        _, err = process.communicate(timeout=40)  # before the 60 s grace is up
    finally:
        process.kill()
    # Python ends a process that a KeyboardInterrupt ends by the SIGINT itself.
    assert process.returncode == -signum, err[-3000:]
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    assert not (tmp_path / "finished").exists()

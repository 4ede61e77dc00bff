"""The main demo: a short run exits 0 and prints its summary; a lost run makes it fail."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples import demo
from examples.rest_service.store import ConflictError, RestService
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.facade_async, pytest.mark.facade_sync]

ROOT = Path(__file__).resolve().parents[2]
SHORT = "8"


def test_a_short_demo_exits_0_and_prints_the_summary() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--duration", SHORT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "REDIS_URL": ""},
    )
    out = finished.stdout
    assert finished.returncode == 0, out + finished.stderr
    for phase in ("healthy", "503 storm", "stall", "recovered"):
        assert f"phase: {phase}" in out
    assert "/metrics" in out
    summary = out[out.index("summary") :]
    for row in (
        "REST calls",
        "retries",
        "breaker transitions",
        "cache hit ratio",
        "runs ok",
        "runs failed",
        "runs recorded, finished",
        "event-loop lag p99",
    ):
        assert row in summary
    assert "OK: all" in summary
    assert _row(summary, "run records unfinished / dropped") == "0 / 0"
    # The fault window made the client retry and runs fail, and yet every run is recorded.
    assert int(_row(summary, "retries")) > 0
    assert int(_row(summary, "runs failed (error, timeout, cancelled)")) > 0
    # The breaker's own transitions: a chain (each starts where the last ended) that never
    # jumps from open to closed, which a sampled state showed when it missed a half-open.
    (row,) = [line for line in summary.splitlines() if line.startswith("breaker transitions ")]
    count = _row(summary, "breaker transitions")
    listed = row.partition("(")[2].rstrip(") ")
    steps = [step.split("->") for step in listed.split(", ") if step]
    assert len(steps) == int(count), row
    assert all(earlier[1] == later[0] for earlier, later in itertools.pairwise(steps)), row
    assert ["open", "closed"] not in steps
    assert "Traceback" not in finished.stderr
    # The breaker's own transitions, in order (whether the short fault window opens the
    # breaker depends on the machine): a sampled state could skip the half-open of a
    # quick probe and show "open->closed".
    (line,) = [line for line in summary.splitlines() if line.startswith("breaker transitions ")]
    count = _row(summary, "breaker transitions")
    listed = line.partition("(")[2].rstrip(")")
    transitions = listed.split(", ") if listed else []
    assert len(transitions) == int(count), line
    assert "open->closed" not in transitions, line  # only a probe closes it: via half-open
    assert transitions[:1] in ([], ["closed->open"]), line
    for before, after in itertools.pairwise(transitions):
        assert before.split("->")[1] == after.split("->")[0], line


def test_a_run_the_rest_service_refuses_to_record_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_move = RestService.move_job_execution

    def refuse_completion(self: RestService, execution_id: int, status: str, **fields: object):  # type: ignore[no-untyped-def]
        if status == "completed" and execution_id == 2:
            raise ConflictError("refused for the test")
        return real_move(self, execution_id, status, **fields)

    monkeypatch.setattr(RestService, "move_job_execution", refuse_completion)
    out = io.StringIO()
    status = asyncio.run(demo.run_demo(6, None, out=out, live=False))
    text = out.getvalue()
    assert status == 1, text
    assert "FAILED: 1 run(s) lost from the records" in text


@pytest.mark.redis_server
def test_with_redis_the_demo_uses_its_own_stream_and_removes_it() -> None:
    import redis

    with RedisServer() as server:
        out = io.StringIO()
        # Long enough that reminders are sent whatever the fault window does: a healthy
        # phase of several reminder runs, and runs after the breaker closed again (in a
        # 6 s run, a late first run and an open breaker can leave none).
        status = asyncio.run(demo.run_demo(10, server.url, out=out, live=False))
        text = out.getvalue()
        assert status == 0, text
        assert f"Redis at {server.url}, stream queue:to_secretary:demo-" in text
        assert int(_row(text, "reminders sent / created").split("/")[0]) > 0
        with redis.Redis.from_url(server.url) as client:
            leftovers = list(client.scan_iter(match="queue:to_secretary*"))
        assert leftovers == []


def test_a_too_short_duration_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        demo.main(["--duration", "2"])
    assert exited.value.code == 2
    assert "--duration must be at least" in capsys.readouterr().err


def _row(text: str, name: str) -> str:
    """The value of the summary row ``name`` (up to its first parenthesis)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line[len(name) :].split("(")[0].strip()
    raise AssertionError(f"no row {name!r} in:\n{text}")

"""Every code block of README.md runs, read from the README itself at test time.

Python blocks run one per child interpreter (``readme_runner``), bash blocks with ``bash -e``,
both against services this module starts on loopback: the example REST service, a
redis-server (holding what ``examples/read_through.py`` cached, so the README's cache block
reads the example's value) and an echo server. The README's host names are replaced by
those services' addresses (``SUBSTITUTIONS``). A block marked ``skip`` in the README (an
HTML comment right before it, with its reason) is not run; the test below lists them and
fails on a skip without a reason or an unknown directive.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from examples.read_through import run_demo
from examples.rest_service import create_app
from examples.serving import serve
from tests.http_server import ServerProcess
from tests.integration.readme_blocks import DIRECTIVES, Block, read_blocks
from tests.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCKS = read_blocks()
RUN = [block for block in BLOCKS if block.is_code and block.directive != "skip"]


@dataclass(frozen=True)
class Services:
    rest_url: str
    redis_url: str
    echo_url: str

    def substitutions(self) -> dict[str, str]:
        """The README's addresses, and where the test's services are."""
        return {
            "http://rest_service:8000": self.rest_url,
            "redis://redis:6379/0": self.redis_url,
            # Loopback and a free port: the README's 9100 on every interface may be taken.
            'start_metrics_server(9100, host="0.0.0.0")': (
                'start_metrics_server(0, host="127.0.0.1")'
            ),
        }


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    rest = create_app()
    for user in range(1, 6):  # the quick start reads user 5, as does the typed responses' block
        rest.service.create("users", {"name": f"user {user}", "email": f"user{user}@example.com"})
    # The tenacity block reads batch job 1: done, so it is not polled again.
    rest.service.create("batch-jobs", {"job_type": "nightly", "status": "completed", "result": {}})
    with RedisServer() as redis, ServerProcess() as echo, serve(rest) as rest_url:
        # What the README's cache block reads: the example's settings, cached in this Redis.
        asyncio.run(run_demo(redis.url, verbose=False))
        yield Services(rest_url, redis.url, echo.base_url)


def run_block(block: Block, services: Services, workdir: Path) -> str:
    code = block.code
    for readme_address, address in services.substitutions().items():
        code = code.replace(readme_address, address)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "README_REST_URL": services.rest_url,
        "README_REDIS_URL": services.redis_url,
        "README_ECHO_URL": services.echo_url,
    }
    if block.language == "python":
        script = workdir / "block.py"
        script.write_text(code)
        command = [sys.executable, "-m", "tests.integration.readme_runner", str(script)]
        command += [block.directive] if block.directive else []
        cwd = REPO_ROOT
    else:
        command = ["bash", "-e", "-c", code]
        # As if in the clone's root, but what the block writes lands in workdir.
        for entry in REPO_ROOT.iterdir():
            if not entry.name.startswith("."):
                (workdir / entry.name).symlink_to(entry)
        cwd = workdir
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"README line {block.line} failed:\n{code}\n---\n{output}"
    if block.language == "python":
        assert "BLOCK OK" in result.stdout, output
    return output


SETTING_OPTIONS = ("--slo", "--breaker-window", "--runbook-base", "--selector", "--group-by")


def check_exported_files(block: Block, workdir: Path) -> None:
    """An export block wrote what the section's listing says: every file with the default
    settings, all but the promtool tests (written for the defaults) with other settings."""
    section = [other for other in BLOCKS if other.heading == block.heading]
    listing = next(other for other in section if not other.is_code)
    listed = [line.split()[0] for line in listing.code.splitlines() if line.strip()]
    assert listed
    assert all(path.startswith("monitoring/") for path in listed), listed
    assert any(path.endswith(".test.yml") for path in listed), listed
    target = block.code.split(" export ", 1)[1].split()[0]
    defaults = not any(option in block.code for option in SETTING_OPTIONS)
    for path in listed:
        written = workdir / target / path.removeprefix("monitoring/")
        expected = defaults or not path.endswith(".test.yml")
        assert written.is_file() == expected, (block.line, written, expected)


@pytest.mark.parametrize("block", RUN, ids=[block.name for block in RUN])
def test_the_readme_block_runs(block: Block, services: Services, tmp_path: Path) -> None:
    output = run_block(block, services, tmp_path)
    heading = block.heading
    if heading == "Async":
        # The user the example service holds, not the error branch of the block.
        assert "'id': 5" in output, output
    elif heading == "Sync":
        # The block prints only in its error branch.
        assert output.startswith("BLOCK OK"), output
    elif heading.startswith("Configuration cache"):
        # The example cached the settings under this prefix and key: a hit, no load.
        assert "LOADER CALLED" not in output, output
        assert "does not fit the model" not in output, output
    elif "run_until_signal(" in block.code:
        # The runner's SIGTERM ended run_until_signal, and the scheduler it served stopped.
        assert "STOPPED ON SIGTERM" in output, output
    elif heading.startswith("Exposing"):
        assert "METRICS OK" in output, output
    elif heading.startswith("Dashboard, alerts"):
        check_exported_files(block, tmp_path)


def test_the_request_raw_block_reads_a_created_location(services: Services) -> None:
    # The README says a 201's Location is in created.headers: the example service sends it.
    response = httpx.post(f"{services.rest_url}/api/batch-jobs/", json={"job_type": "x"})
    assert response.status_code == 201
    assert response.headers["Location"] == f"/api/batch-jobs/{response.json()['id']}"


def test_every_code_block_is_run_or_skipped_with_a_reason() -> None:
    code = [block for block in BLOCKS if block.is_code]
    assert len(code) >= 20, "the README's blocks were not found"
    for block in BLOCKS:
        if block.directive is not None:
            assert block.directive in DIRECTIVES, f"line {block.line}: {block.directive!r}"
            assert block.reason, f"line {block.line}: a {block.directive} without a reason"
    skipped = [f"line {b.line} ({b.heading}): {b.reason}" for b in code if b.directive == "skip"]
    print("README blocks not run:\n" + "\n".join(skipped))
    # Skips stay the exception: the demo, the test command and installs.
    assert len(skipped) <= 6, skipped

"""The README's multiprocess recipe, end to end: worker processes using the public API write
their metrics to ``PROMETHEUS_MULTIPROC_DIR``, one exits and is marked dead, and a scrape of
``metrics_registry()`` forgets its gauges while keeping its counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from commclient.monitoring import metrics_registry

pytestmark = pytest.mark.facade_sync

BREAKER = "http_client_circuit_breaker_state"
BUDGET = "http_client_retry_budget_tokens"

# A worker: one client; its breaker forced open when told to; a call to a closed port, which
# counts a connect error; then it waits for its stdin to close, as a gunicorn worker waits
# for requests, and exits.
WORKER = textwrap.dedent(
    """
    import sys
    from commclient import ClientConfig, ServiceClientError, SyncServiceClient, testing

    client = SyncServiceClient(
        sys.argv[1], service_name="web", target_service="rest",
        config=ClientConfig(max_retries=1),
    )
    try:
        client.get("/api/health")
    except ServiceClientError:
        pass
    if sys.argv[2] == "open":
        testing.force_open("web", "rest")
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


def _start(state: str, url: str, directory: Path) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, state],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**_env(), "PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "ready"
    return worker


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _stop(worker: subprocess.Popen[str]) -> None:
    assert worker.stdin is not None
    worker.stdin.close()
    assert worker.wait(60) == 0


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(metrics_registry()).decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_an_exited_worker_leaves_no_breaker_state_and_budgets_are_values(
    multiproc_dir: Path,
) -> None:
    url = _closed_port_url()
    opened = _start("open", url, multiproc_dir)
    closed = _start("closed", url, multiproc_dir)
    try:
        pair = (("source_service", "web"), ("target_service", "rest"))
        # One series per pair, without a pid label: the worst state of the live workers.
        assert _samples("http_client_circuit_breaker_state") == {pair: 2.0}
        # Written as a value, so the multiprocess collector sees it (a set_function gauge
        # reads 0 there): the full budget of a fresh worker.
        assert _samples("http_client_retry_budget_tokens") == {(("target_service", "rest"),): 10.0}

        _stop(opened)
        multiprocess.mark_process_dead(opened.pid)

        assert _samples("http_client_circuit_breaker_state") == {pair: 0.0}
        # The exited worker's calls still count.
        requests = _samples("http_client_requests_total")
        assert sum(requests.values()) == 2.0, requests
    finally:
        for worker in (opened, closed):
            if worker.poll() is None:
                _stop(worker)


def test_a_worker_that_exits_without_a_hook_takes_its_breaker_state_with_it(
    multiproc_dir: Path,
) -> None:
    """uvicorn --workers has no child_exit: a worker that exits normally, never marked dead
    by its manager, must not report its open breaker for ever."""
    url = _closed_port_url()
    opened = _start("open", url, multiproc_dir)
    closed = _start("closed", url, multiproc_dir)
    try:
        pair = (("source_service", "web"), ("target_service", "rest"))
        assert _samples(BREAKER) == {pair: 2.0}
        _stop(opened)
        assert _samples(BREAKER) == {pair: 0.0}
        assert not list(multiproc_dir.glob(f"gauge_live*_{opened.pid}.db"))
    finally:
        for worker in (opened, closed):
            if worker.poll() is None:
                _stop(worker)


# A master that builds its client before forking its worker (gunicorn's preload_app, Celery
# prefork); the worker makes one call, which the budget does not need, and stays a live
# worker: the test never marks it dead.
PRELOADED = textwrap.dedent(
    """
    import os, sys
    from commclient import ClientConfig, ServiceClientError, SyncServiceClient

    client = SyncServiceClient(
        sys.argv[1], service_name="web", target_service="rest",
        config=ClientConfig(max_retries=1),
    )
    pid = os.fork()
    if pid == 0:
        try:
            client.get("/api/health")
        except ServiceClientError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_a_worker_forked_from_a_master_with_a_client_shows_its_full_budget(
    multiproc_dir: Path,
) -> None:
    master = subprocess.Popen(
        [sys.executable, "-c", PRELOADED, _closed_port_url()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**_env(), "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
    )
    try:
        assert master.stdout is not None
        assert master.stdout.readline().strip() == "ready"
        # The worker's gauges start in its own files: the budget it inherited, full, and
        # not the 0 of a value never written there.
        assert _samples(BUDGET) == {(("target_service", "rest"),): 10.0}
        assert sum(_samples("http_client_requests_total").values()) == 1.0
    finally:
        _stop(master)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def _gauge_values(base: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(_get(f"{base}/metrics"))
        for sample in family.samples
        if sample.name == name
    ]


def test_gunicorn_forgets_the_breaker_of_a_worker_that_exits(multiproc_dir: Path) -> None:
    """gunicorn with the README's child_exit: a worker's open breaker shows while it lives
    and goes with it; the retry budget reads as a value."""
    pytest.importorskip("gunicorn")
    root = Path(__file__).resolve().parents[2]
    port = int(_closed_port_url().rsplit(":", 1)[1])
    base = f"http://127.0.0.1:{port}"
    env = {
        **_env(),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        "GUNICORN_TEST_TARGET": _closed_port_url(),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(root / "tests" / "integration" / "gunicorn_conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "tests.integration.gunicorn_app:app",
        ],
        env=env,
        cwd=root,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/metrics")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        opened = int(_get(f"{base}/open"))
        assert [value for _, value in _gauge_values(base, BREAKER)] == [2.0]
        assert [labels for labels, _ in _gauge_values(base, BREAKER)] == [
            {"source_service": "web", "target_service": "rest"}
        ]
        assert [value for _, value in _gauge_values(base, BUDGET)] == [10.0]

        os.kill(opened, signal.SIGTERM)
        # gunicorn reaps the worker, calls child_exit, which removes its live files.
        deadline = time.monotonic() + 60
        while list(multiproc_dir.glob(f"gauge_livemax_{opened}.db")):
            assert time.monotonic() < deadline, "the exited worker was never marked dead"
            time.sleep(0.1)

        # The other workers' state (closed, or no client built yet): never the dead one's.
        assert {value for _, value in _gauge_values(base, BREAKER)} <= {0.0}
    finally:
        server.terminate()
        server.wait(60)

"""The /metrics helpers: a plain HTTP server, an ASGI app, and multiprocess mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from commclient.monitoring import (
    MetricsServer,
    metrics_asgi_app,
    metrics_registry,
    start_metrics_server,
)


def _registry_with(name: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter(name, "A test counter.", ["target_service"], registry=registry).labels("x").inc(3)
    return registry


def test_server_serves_the_registry_and_frees_its_port() -> None:
    registry = _registry_with("exposed_calls")
    with start_metrics_server(0, registry=registry) as server:
        assert isinstance(server, MetricsServer)
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=10) as response:
            body = response.read().decode()
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
        assert 'exposed_calls_total{target_service="x"} 3.0' in body
    server.close()  # a second close does nothing
    # The port is free again: a new server can take it.
    with start_metrics_server(server.port, registry=registry) as again:
        assert again.port == server.port


@pytest.mark.parametrize("port", [-1, 65536, "9100", 1.5, True])
def test_bad_port_is_refused(port: Any) -> None:
    with pytest.raises(ValueError, match="port must be an int"):
        start_metrics_server(port)


def test_a_port_in_use_is_an_error() -> None:
    with start_metrics_server(0, registry=CollectorRegistry()) as server:
        with pytest.raises(OSError, match="in use"):
            start_metrics_server(server.port, registry=CollectorRegistry())
        # The first server still answers.
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200


def test_bad_host_is_refused() -> None:
    with pytest.raises(TypeError, match="host must be a str"):
        start_metrics_server(0, 127001)  # type: ignore[arg-type]


def test_default_registry_without_multiprocess_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert metrics_registry() is REGISTRY


def _asgi_get(app: Any, path: str = "/metrics") -> tuple[int, dict[bytes, bytes], bytes]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": [],
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_asgi_app_serves_the_registry() -> None:
    status, headers, body = _asgi_get(metrics_asgi_app(_registry_with("asgi_calls")))
    assert status == 200
    assert headers[b"Content-Type"].startswith(b"text/plain")
    assert b'asgi_calls_total{target_service="x"} 3.0' in body


def test_multiprocess_mode_adds_up_every_worker(tmp_path: Path) -> None:
    """Two worker processes count calls; one scrape shows the sum, and each breaker."""
    worker = textwrap.dedent(
        """
        import sys
        from prometheus_client import Counter, Gauge
        calls = Counter("mp_calls", "Calls.", ["target_service"])
        state = Gauge("mp_breaker_state", "State.", ["target_service"])
        calls.labels("rest").inc(int(sys.argv[1]))
        state.labels("rest").set(int(sys.argv[2]))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count, state in ((2, 0), (5, 1)):
        subprocess.run(
            [sys.executable, "-c", worker, str(count), str(state)], env=env, check=True, timeout=60
        )
    scrape = textwrap.dedent(
        """
        import urllib.request
        from commclient.monitoring import start_metrics_server
        with start_metrics_server(0) as server:
            print(urllib.request.urlopen(server.url, timeout=10).read().decode())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", scrape], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert 'mp_calls_total{target_service="rest"} 7.0' in result.stdout
    breaker_lines = [line for line in result.stdout.splitlines() if line.startswith("mp_breaker")]
    # Gauges keep one series per process (a pid label): max() over them finds the open one.
    assert len(breaker_lines) == 2
    assert {line.rsplit(" ", 1)[1] for line in breaker_lines} == {"0.0", "1.0"}

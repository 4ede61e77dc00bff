"""A WSGI service run by gunicorn in the multiprocess test: each worker has one client.

``/fail`` makes a call that fails (to a closed port); ``/open`` forces the pair's breaker
open in this worker and answers with its pid; ``/metrics`` answers with
``metrics_registry()``, as the README's recipe says.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import generate_latest

from commclient import ServiceClientError, SyncServiceClient, testing
from commclient.monitoring import metrics_registry

TARGET_URL = os.environ["GUNICORN_TEST_TARGET"]
_client: SyncServiceClient | None = None


def _the_client() -> SyncServiceClient:
    # Built in the worker, after gunicorn forked it.
    global _client
    if _client is None:
        _client = SyncServiceClient(TARGET_URL, service_name="web", target_service="rest")
    return _client


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    client = _the_client()
    if path == "/metrics":
        body = generate_latest(metrics_registry())
    elif path == "/fail":
        try:
            client.get("/api/health")
        except ServiceClientError as error:
            body = type(error).__name__.encode()
    elif path == "/open":
        testing.force_open("web", "rest")
        body = str(os.getpid()).encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]

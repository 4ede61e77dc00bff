"""Expose ``/metrics``: a plain HTTP server in a thread, or an ASGI app to mount."""

from __future__ import annotations

import os
import threading
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from commclient._metrics import MULTIPROC_ENV


def metrics_registry() -> CollectorRegistry:
    """The registry a service should expose.

    In ``prometheus_client`` multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) a new
    registry that adds up the files of every worker process; otherwise the default one.
    """
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


class MetricsASGIApp:
    """The ASGI app :func:`metrics_asgi_app` returns: every GET gets the metrics.

    An object, not a function, so that Starlette and FastAPI serve it as an ASGI app at
    exactly ``/metrics`` with ``app.add_route("/metrics", metrics_asgi_app())``. (A
    ``Mount`` at ``/metrics`` answers ``/metrics`` itself with a redirect to ``/metrics/``.)
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._app = make_asgi_app(registry)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def metrics_asgi_app(registry: CollectorRegistry | None = None) -> MetricsASGIApp:
    """An ASGI app answering every GET with the metrics of ``registry``.

    In FastAPI or Starlette: ``app.add_route("/metrics", metrics_asgi_app())``. ``None``
    exposes :func:`metrics_registry`.
    """
    return MetricsASGIApp(metrics_registry() if registry is None else registry)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # One line on stderr per scrape would drown the service's own logs.
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # A slow scraper must not hold up the next one, nor keep the process alive at exit.
    daemon_threads = True


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` from a daemon thread.

    Start it with :func:`start_metrics_server`; ``close()`` (or leaving a ``with`` block)
    stops it and frees the port. At interpreter exit the daemon thread simply stops.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server = make_server(
            host,
            port,
            make_wsgi_app(registry),
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"commclient-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the metrics are served: ``http://host:port/metrics``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; calling it again does nothing."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def start_metrics_server(
    port: int, host: str = "127.0.0.1", *, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the metrics of ``registry`` (default :func:`metrics_registry`) on ``host:port``.

    ``port=0`` picks a free port (read it from ``.port``). The default host is loopback:
    pass ``host="0.0.0.0"`` for a Prometheus in another container or machine.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, got {type(host).__name__}")
    return MetricsServer(metrics_registry() if registry is None else registry, host, port)

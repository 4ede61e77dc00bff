"""WSGI support: continue the caller's correlation id and W3C trace in a WSGI service.

::

    from commclient.wsgi import CorrelationIdMiddleware

    app = CorrelationIdMiddleware(app)                       # any WSGI app
    flask_app.wsgi_app = CorrelationIdMiddleware(flask_app.wsgi_app)   # Flask
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._correlation import CORRELATION_HEADER
from ._inbound import chosen_context, enter

__all__ = ["CorrelationIdMiddleware", "StartResponse", "WSGIApp"]

StartResponse = Callable[..., Any]
"""The WSGI ``start_response(status, headers, exc_info=None)`` callable."""
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
"""A WSGI application: ``app(environ, start_response)`` returns the body's chunks."""


class CorrelationIdMiddleware:
    """Continue the caller's correlation id and trace for each WSGI request.

    The id is the request's valid ``X-Correlation-ID``, else the trace id of its valid
    ``traceparent``, else a new one; an unsafe value is replaced, never propagated. The
    context covers the application call and the iteration of its response, and never leaks
    into the server's thread. The id is echoed in the response's ``X-Correlation-ID``
    header unless ``echo=False``.
    """

    def __init__(self, app: WSGIApp, *, echo: bool = True) -> None:
        self.app = app
        self.echo = echo

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        correlation_id, trace = chosen_context(
            environ.get("HTTP_X_CORRELATION_ID"),
            environ.get("HTTP_TRACEPARENT"),
            environ.get("HTTP_TRACESTATE"),
        )
        context = contextvars.copy_context()
        context.run(enter, correlation_id, trace)

        def start_with_id(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            if self.echo:
                headers = [*headers, (CORRELATION_HEADER, correlation_id)]
            return start_response(status, headers, *exc_info)

        return _InContext(context, context.run(self.app, environ, start_with_id))


class _InContext:
    """A WSGI response iterable whose iteration and ``close`` run in the request's context."""

    def __init__(self, context: contextvars.Context, body: Iterable[bytes]) -> None:
        self._context = context
        self._body = body
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            self._context.run(close)

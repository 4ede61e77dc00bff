"""Inbound correlation: continue the caller's correlation id and trace in this service.

A request (ASGI or WSGI) or a stream entry carries ``X-Correlation-ID`` and W3C
``traceparent``/``tracestate``; for the duration of its handling, ``correlation_id_ctx`` and
the trace context are set from them, so every outgoing call of the handler, every log record
and every stream entry it appends continue the same chain.

Which id wins: a valid ``X-Correlation-ID`` (printable ASCII, at most 128 characters); else
the trace id of a valid ``traceparent``; else a new id. A value that is present but unsafe
(too long, control characters) is replaced, never propagated, and the replacement logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ._correlation import (
    CORRELATION_HEADER,
    correlation_id_ctx,
    is_valid_correlation_id,
    new_correlation_id,
    outgoing_correlation_id,
)
from ._tracecontext import (
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    TraceParent,
    inbound_trace_ctx,
    outgoing_trace_headers,
    parse_traceparent,
)
from ._tracing import active_tracer, inbound_context

logger = logging.getLogger("commclient")

#: The field names a stream entry carries the chain in (see :func:`stream_entry_fields`).
CORRELATION_FIELD = "correlation_id"


def chosen_context(
    correlation_id: str | None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> tuple[str, TraceParent | None]:
    """The correlation id and trace context inbound work continues (module docstring)."""
    trace = parse_traceparent(traceparent, tracestate)
    if correlation_id is not None and is_valid_correlation_id(correlation_id):
        return correlation_id, trace
    chosen = trace.trace_id if trace is not None else new_correlation_id()
    if correlation_id is not None:
        logger.warning(
            "unsafe inbound correlation id replaced",
            extra={"correlation_id": chosen, "rejected_length": len(correlation_id)},
        )
    return chosen, trace


def enter(correlation_id: str, trace: TraceParent | None) -> None:
    """Set the chain in the current context (for a context that is thrown away afterwards).

    OpenTelemetry's current span is left alone: see :func:`continued`.
    """
    correlation_id_ctx.set(correlation_id)
    inbound_trace_ctx.set(trace)


def _attach_otel(trace: TraceParent | None) -> object | None:
    """With OpenTelemetry on, make the inbound trace the current one; the detach token.

    A span of that trace already current stays current.
    """
    if trace is None or active_tracer() is None:
        return None
    from opentelemetry import context
    from opentelemetry import trace as otel_trace

    current = otel_trace.get_current_span().get_span_context()
    if current.is_valid and f"{current.trace_id:032x}" == trace.trace_id:
        return None
    return context.attach(inbound_context(trace))


@contextlib.contextmanager
def continued(
    correlation_id: str | None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    *,
    current_span: bool = True,
) -> Iterator[str]:
    """Set the correlation id and trace context of inbound work for the block; yield the id.

    ``current_span``: with OpenTelemetry on, make the inbound trace OpenTelemetry's current
    context too (a stream consumer's own spans continue it). The middlewares leave it out:
    an instrumentation inside them (Flask's, OpenTelemetry's WSGI or ASGI middleware) makes
    its SERVER span only when no span is current; the library's own spans start from the
    inbound trace when no span is current (``_tracing.parent_context``).
    """
    chosen, trace = chosen_context(correlation_id, traceparent, tracestate)
    id_token = correlation_id_ctx.set(chosen)
    trace_token = inbound_trace_ctx.set(trace)
    otel_token = _attach_otel(trace) if current_span else None
    try:
        yield chosen
    finally:
        if otel_token is not None:
            from opentelemetry import context

            context.detach(otel_token)  # type: ignore[arg-type]
        inbound_trace_ctx.reset(trace_token)
        correlation_id_ctx.reset(id_token)


def stream_entry_fields() -> dict[str, str]:
    """The fields to add to a message (a Redis stream entry) so its consumer continues the chain.

    Empty when there is no correlation id in the current context.
    """
    correlation_id = outgoing_correlation_id()
    if correlation_id is None:
        return {}
    fields = {CORRELATION_FIELD: correlation_id}
    if active_tracer() is not None:
        from opentelemetry import propagate

        propagate.inject(fields)  # the current span: the consumer's work is its child
        if TRACEPARENT_HEADER in fields:
            return fields
    fields.update(outgoing_trace_headers(correlation_id))
    return fields


def continue_from_stream_entry(
    fields: Mapping[str, Any] | Mapping[bytes, Any],
) -> contextlib.AbstractContextManager[str]:
    """Continue the chain of a stream entry written with :func:`stream_entry_fields`.

    ``fields`` as redis-py returns them (``bytes`` or ``str`` keys and values). Use as
    ``with continue_from_stream_entry(fields) as correlation_id: handle(fields)``.
    """
    text = {_text(name): _text(value) for name, value in fields.items()}
    return continued(
        text.get(CORRELATION_FIELD), text.get(TRACEPARENT_HEADER), text.get(TRACESTATE_HEADER)
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


Scope = Any
ASGIReceive = Callable[[], Any]
ASGISend = Callable[[Any], Any]


class CorrelationIdMiddleware:
    """Continue the caller's correlation id and trace for each ASGI request.

    ``app = CorrelationIdMiddleware(app)`` or, in FastAPI/Starlette,
    ``app.add_middleware(CorrelationIdMiddleware)``. The id is echoed in the response's
    ``X-Correlation-ID`` header (``echo=False`` turns that off).
    """

    def __init__(self, app: Callable[..., Any], *, echo: bool = True) -> None:
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _asgi_headers(scope.get("headers") or ())
        with continued(
            headers.get(CORRELATION_HEADER.lower()),
            headers.get(TRACEPARENT_HEADER),
            headers.get(TRACESTATE_HEADER),
            current_span=False,
        ) as correlation_id:
            if not self.echo or scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            echoed = (CORRELATION_HEADER.lower().encode(), correlation_id.encode("ascii"))

            async def send_with_id(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), echoed]
                await send(message)

            await self.app(scope, receive, send_with_id)


def _asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers the middleware reads, names lower-cased; a repeated header's values
    joined by commas.

    As a WSGI server joins them (RFC 9110 5.3): repeated ``tracestate`` headers are one
    list, and two ``traceparent`` headers make a value that is no valid ``traceparent``
    (W3C: neither is the caller's, a new trace starts). In one pass: a server without a
    header limit hands over as many headers as a client sends.
    """
    values: dict[str, list[str]] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in _READ_HEADERS:
            values.setdefault(key, []).append(value.decode("latin-1"))
    return {key: ",".join(parts) for key, parts in values.items()}


_READ_HEADERS = frozenset({CORRELATION_HEADER.lower(), TRACEPARENT_HEADER, TRACESTATE_HEADER})

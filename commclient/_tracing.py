"""OpenTelemetry spans, when the application has set a tracer provider (optional).

Nothing here imports OpenTelemetry: a tracer is used only when the application has imported
``opentelemetry.trace`` itself and set a real tracer provider (not the API's default proxy),
so without the ``otel`` extra, or with the API but no SDK, a call costs one dictionary lookup
(and one provider check).

Spans: one per call (``INTERNAL``, named ``{METHOD} {route}``) with a ``CLIENT`` child per
attempt (HTTP semantic-convention attributes), events for backoff waits and breaker
rejections; one per cron run (``cron_migration``); one per public cache operation
(:class:`CacheSpan`). The attempt's ``traceparent`` names the attempt span, so the
receiving service continues the trace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from ._tracecontext import (
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    TraceParent,
    format_traceparent,
    inbound_trace_ctx,
)
from ._version import __version__

_cached: tuple[Any, Any] = (None, None)  # (provider, tracer)
_UNKNOWN = object()
# A provider named by the environment, which the API sets on its first request for one.
_PROVIDER_IN_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def active_tracer() -> Any | None:
    """The library's tracer, or None when no tracer provider is set (the common case)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    # The provider set, read as the API's own proxy tracers read it: while none is set,
    # get_tracer_provider() looks the environment up on every call (most of a µs).
    provider: Any = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None and not _PROVIDER_IN_ENVIRONMENT:
        return None
    if provider is None or provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
    global _cached
    cached_provider, tracer = _cached
    if provider is not cached_provider:
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            tracer = None
        else:
            tracer = provider.get_tracer("commclient", __version__)
        _cached = (provider, tracer)
    if tracer is not None and _suppressed():
        return None
    return tracer


def _suppressed() -> bool:
    """Whether instrumentation is suppressed here, as OpenTelemetry's instrumentations
    check it: the SDK exports spans so, and an exporter's own calls (through this
    library's client, or a cache) must not make spans to export, without end."""
    context: Any = sys.modules.get("opentelemetry.context")  # imported with the trace API
    key = getattr(context, "_SUPPRESS_INSTRUMENTATION_KEY", None)
    return key is not None and bool(context.get_value(key))


def _suppress_http_key() -> Any:
    """The context key OpenTelemetry's HTTP instrumentations check before making a span."""
    from opentelemetry import context

    return getattr(context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)


def inject(headers: dict[str, str], span: Any) -> None:
    """Write the W3C trace context naming ``span`` into ``headers``."""
    from opentelemetry import propagate, trace

    propagate.inject(headers, context=trace.set_span_in_context(span))


def extracted_context(headers: Mapping[str, str]) -> Any:
    """The OpenTelemetry context a request's ``traceparent``/``tracestate`` carry."""
    from opentelemetry import propagate

    return propagate.extract(headers)


def inbound_context(trace: TraceParent) -> Any:
    """The OpenTelemetry context of an inbound trace (its caller's span as a remote parent)."""
    carrier = {TRACEPARENT_HEADER: format_traceparent(trace.trace_id, trace.flags, trace.parent_id)}
    if trace.tracestate:
        carrier[TRACESTATE_HEADER] = trace.tracestate
    return extracted_context(carrier)


def parent_context() -> Any:
    """Where a span of the library starts: the current span, or, when none is current, the
    trace the request being handled came with (``None``: the current context)."""
    from opentelemetry import trace

    inbound = inbound_trace_ctx.get()
    if inbound is None or trace.get_current_span().get_span_context().is_valid:
        return None
    return inbound_context(inbound)


class CallTrace:
    """The spans of one client call: the call, its attempts, its waits."""

    __slots__ = ("_attempt", "_trace", "_tracer", "span")

    def __init__(self, tracer: Any, name: str, attributes: Mapping[str, Any]) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = tracer
        self._attempt: Any = None
        self.span = tracer.start_span(
            name, context=parent_context(), kind=trace.SpanKind.INTERNAL, attributes=attributes
        )

    def attempt(self, name: str, attributes: Mapping[str, Any], headers: dict[str, str]) -> None:
        """Start an attempt's span and put its trace context into ``headers``."""
        trace = self._trace
        self._attempt = self._tracer.start_span(
            name,
            context=trace.set_span_in_context(self.span),
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        )
        inject(headers, self._attempt)

    def sending(self) -> object:
        """Make the attempt's span current while it is sent; the token for :meth:`sent`.

        OpenTelemetry's HTTP instrumentations (httpx, requests, urllib3) are suppressed
        meanwhile, as they allow: the attempt is the request's CLIENT span, and the
        ``traceparent`` it sent is not replaced by theirs (which would name a span outside
        the call, in a trace of its own when no span was current).
        """
        from opentelemetry import context

        current = self._trace.set_span_in_context(self._attempt)
        suppress = _suppress_http_key()
        if suppress is not None:
            current = context.set_value(suppress, True, current)
        return context.attach(current)

    def sent(self, token: object) -> None:
        from opentelemetry import context

        context.detach(token)  # type: ignore[arg-type]

    def attempt_done(self, status: int | None, error_type: str | None) -> None:
        span, self._attempt = self._attempt, None
        if span is None:
            return
        _conclude(self._trace, span, status, error_type)
        span.end()

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.span.add_event(name, attributes)

    def end(self, status: int | None, error_type: str | None, attempts: int) -> None:
        """End the call's span (and an attempt left open by a cancellation)."""
        if self._attempt is not None:
            self.attempt_done(None, error_type or "cancelled")
        self.span.set_attribute("commclient.attempts", attempts)
        _conclude(self._trace, self.span, status, error_type)
        self.span.end()

    def trace_id(self) -> str | None:
        """The call's trace id (32 hex digits), for an exemplar; None when the trace is not
        sampled (the exemplar would point at a trace no backend has)."""
        context = self.span.get_span_context()
        if not (context.is_valid and context.trace_flags.sampled):
            return None
        return f"{context.trace_id:032x}"


def _conclude(trace: Any, span: Any, status: int | None, error_type: str | None) -> None:
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error_type is not None:
        span.set_attribute("error.type", error_type)
        span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))


def rejected_call(
    tracer: Any, name: str, attributes: Mapping[str, Any], retry_after: float
) -> None:
    """A call the breaker refused: a span with one event, in error."""
    trace = CallTrace(tracer, name, attributes)
    trace.event("breaker_rejected", {"commclient.retry_after": retry_after})
    trace.span.set_attribute("commclient.breaker.decision", "rejected")
    trace.end(None, "circuit_open", 0)


class RunSpan:
    """The span of one cron run, current while the run works (its calls are its children).

    ``cron.outcome`` is the outcome ``cron_job_runs_total`` counts the run under (``error``
    for a failure before the run started; the exception itself is the span's event).
    """

    __slots__ = ("_outcome", "_scope", "span")

    def __init__(self, tracer: Any, name: str, attributes: Mapping[str, Any]) -> None:
        from opentelemetry import trace

        self.span = tracer.start_span(
            name, context=parent_context(), kind=trace.SpanKind.INTERNAL, attributes=attributes
        )
        self._scope = trace.use_span(self.span, end_on_exit=True, record_exception=True)
        self._outcome: str | None = None

    def outcome(self, outcome: str) -> None:
        self._outcome = outcome
        self.span.set_attribute("cron.outcome", outcome)

    def __enter__(self) -> RunSpan:
        self._scope.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[1] is not None and self._outcome is None:
            self.outcome("error")
        self._scope.__exit__(*exc_info)


CACHE_RESULT = "commclient.cache.result"

_cache_span: ContextVar[CacheSpan | None] = ContextVar("commclient_cache_span", default=None)


class CacheSpan:
    """The span of one cache operation, current while it runs (a loader's calls are its
    children). What the operation found is told by :func:`cache_result` and
    :func:`cache_event`, from where the cache counts it, to the span of the operation
    running in this context.

    An error that escapes the operation sets ``error.type`` and the span's status, as a
    call's span does (``cancelled`` for a cancellation); the exception's text is not
    recorded (a loader's error may carry anything).
    """

    __slots__ = ("_context", "_otel_token", "_token", "_trace", "open", "span")

    def __init__(self, tracer: Any, name: str, attributes: Mapping[str, Any]) -> None:
        from opentelemetry import context, trace

        self._trace = trace
        self._context = context
        self.span = tracer.start_span(
            name, context=parent_context(), kind=trace.SpanKind.INTERNAL, attributes=attributes
        )
        self.open = False

    def __enter__(self) -> CacheSpan:
        self._otel_token = self._context.attach(self._trace.set_span_in_context(self.span))
        self._token = _cache_span.set(self)
        self.open = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Tasks and threads started meanwhile (the local tier's listener) keep a copy of
        # this context: ``open`` stops them telling an ended span.
        self.open = False
        _cache_span.reset(self._token)
        self._context.detach(self._otel_token)
        error = exc_info[1]
        if error is not None:
            # Cancelled or interrupted (not an Exception): ``cancelled``, as a call's span.
            error_type = type(error).__name__ if isinstance(error, Exception) else "cancelled"
            _conclude(self._trace, self.span, None, error_type)
        self.span.end()


def cache_result(result: str) -> None:
    """What the cache operation running here found (the last word counts: a hit found
    stale is ``stale``). Called on every hit: one context variable read when untraced."""
    span = _cache_span.get()
    if span is not None and span.open:
        span.span.set_attribute(CACHE_RESULT, result)


def cache_event(name: str, attributes: Mapping[str, Any]) -> None:
    """Something that happened during the cache operation running here."""
    span = _cache_span.get()
    if span is not None and span.open:
        span.span.add_event(name, attributes)

"""Where OpenTelemetry suppresses instrumentation, the library makes no span either.

The SDK exports spans with instrumentation suppressed, so that an exporter's own requests
are not traced: were they spans, each export would make spans to export (an endless
recursion with a simple processor, an endless trickle with a batch one). A team's
exporter that posts through the library's client, or a cache it reads, relies on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, SyncServiceClient
from commclient.cache import CacheConfig, SyncRedisCache
from tests.http_server import ServerProcess
from tests.redis_server import RedisServer


class ForwardingExporter(SpanExporter):
    """Posts each exported span's name through the library's client, and counts it in
    a cache: what a team's exporter to its own collector does. Notes an export made
    while it is exporting (the recursion) instead of recursing."""

    def __init__(self) -> None:
        self.client: SyncServiceClient | None = None
        self.cache: SyncRedisCache | None = None
        self.exported: list[str] = []
        self.reentered = 0
        self._local = threading.local()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.client is None or self.cache is None:
            return SpanExportResult.SUCCESS
        if getattr(self._local, "busy", False):
            self.reentered += 1
            return SpanExportResult.SUCCESS
        self._local.busy = True
        try:
            for span in spans:
                self.client.get("/echo/export")
                self.cache.set("exported:last", span.name)
                self.exported.append(span.name)
        finally:
            self._local.busy = False
        return SpanExportResult.SUCCESS


FORWARDING = ForwardingExporter()
trace.get_tracer_provider().add_span_processor(  # type: ignore[attr-defined]
    SimpleSpanProcessor(FORWARDING)
)


@pytest.fixture
def forwarding() -> Iterator[ForwardingExporter]:
    with ServerProcess() as server, RedisServer() as redis_server:
        FORWARDING.client = SyncServiceClient(
            server.base_url,
            service_name="exporter",
            target_service="collector",
            config=ClientConfig(max_retries=1, timeout=5),
        )
        FORWARDING.cache = SyncRedisCache.from_url(
            redis_server.url,
            "exporter",
            config=CacheConfig(operation_timeout=30.0),
            registry=CollectorRegistry(),
        )
        FORWARDING.exported.clear()
        FORWARDING.reentered = 0
        try:
            yield FORWARDING
        finally:
            FORWARDING.client.close()
            FORWARDING.cache.close()
            FORWARDING.client = FORWARDING.cache = None


def test_an_exporter_using_the_client_and_the_cache_makes_no_spans(
    forwarding: ForwardingExporter, spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("tests").start_as_current_span("request"):
        pass
    assert forwarding.exported == ["request"]
    assert forwarding.reentered == 0
    assert [s.name for s in spans.get_finished_spans()] == ["request"]


def test_a_call_and_a_cache_operation_made_with_instrumentation_suppressed_have_no_span(
    forwarding: ForwardingExporter, spans: InMemorySpanExporter
) -> None:
    key: Any = context._SUPPRESS_INSTRUMENTATION_KEY
    token = context.attach(context.set_value(key, True))
    try:
        assert forwarding.client is not None
        assert forwarding.cache is not None
        forwarding.client.get("/echo/suppressed")
        forwarding.cache.get("exported:last")
    finally:
        context.detach(token)
    assert spans.get_finished_spans() == ()

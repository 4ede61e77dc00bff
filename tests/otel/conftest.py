"""One tracer provider for the process, its spans kept in memory (the ``otel`` environment).

OpenTelemetry allows one global tracer provider per process, so these tests run in a tox
environment of their own, where every test may assume tracing is on.
"""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The exporter, emptied before the test."""
    EXPORTER.clear()
    return EXPORTER

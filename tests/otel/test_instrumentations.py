"""Beside OpenTelemetry's own HTTP instrumentations (httpx, FastAPI), which teams install too.

They are not dependencies of the library; the ``otel`` environment installs them to check
that the chain stays one trace, with one span per request, when they are on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from commclient import AsyncServiceClient, ClientConfig, testing
from commclient.asgi import CorrelationIdMiddleware
from examples.serving import serve
from tests.otel.spantree import ancestors

FAST = ClientConfig(max_retries=1, timeout=5)


def echo_app(downstream: str | None, seen: list[str]) -> FastAPI:
    """Records the traceparent it receives; calls ``downstream`` when given."""
    app = FastAPI()
    client = (
        None
        if downstream is None
        else AsyncServiceClient(downstream, service_name="b", target_service="c", config=FAST)
    )

    @app.get("/work")
    async def work(request: Request) -> Any:
        seen.append(request.headers["traceparent"])
        return {"next": await client.get("/work")} if client is not None else {"done": True}

    app.add_middleware(CorrelationIdMiddleware)
    return app


def test_calls_are_children_of_fastapis_server_span(spans: InMemorySpanExporter) -> None:
    # FastAPI makes a SERVER span of each request once a tracer provider is set (its own
    # telemetry; older FastAPI through OpenTelemetry's FastAPI instrumentation): the
    # middleware, inside it, keeps it current instead of the caller's attempt.
    testing.reset()
    seen: list[str] = []
    with serve(echo_app(None, seen)) as c_url:
        b_app = echo_app(c_url, seen)
        with serve(b_app) as b_url:

            async def main() -> Any:
                async with AsyncServiceClient(
                    b_url, service_name="edge", target_service="b", config=FAST
                ) as client:
                    return await client.get("/work")

            assert asyncio.run(main()) == {"next": {"done": True}}
    finished = spans.get_finished_spans()
    (server,) = [
        s
        for s in finished
        if s.kind is trace.SpanKind.SERVER
        and s.attributes.get("server.port") == int(b_url.rsplit(":", 1)[1])  # type: ignore[union-attr]
    ]
    calls = [s for s in finished if s.name == "GET /work" and s.kind is trace.SpanKind.INTERNAL]
    (b_call,) = [s for s in calls if s.parent is not None]
    # B's call is within B's server span (under FastAPI's endpoint span), never beside it.
    assert server.context.span_id in ancestors(b_call, finished)
    assert len({s.context.trace_id for s in finished}) == 1

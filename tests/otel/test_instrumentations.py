"""Beside OpenTelemetry's own HTTP instrumentations (httpx, FastAPI), which teams install too.

They are not dependencies of the library; the ``otel`` environment installs them to check
that the chain stays one trace, with one span per request, when they are on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
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


@pytest.fixture
def httpx_instrumented() -> Iterator[None]:
    module = pytest.importorskip("opentelemetry.instrumentation.httpx")
    instrumentor = module.HTTPXClientInstrumentor()
    instrumentor.instrument()
    yield
    instrumentor.uninstrument()


def test_with_the_httpx_instrumentation_the_attempt_is_the_one_client_span_sent(
    spans: InMemorySpanExporter, httpx_instrumented: None
) -> None:
    testing.reset()
    seen: list[str] = []
    with serve(echo_app(None, seen)) as url:

        async def main() -> Any:
            async with AsyncServiceClient(
                url, service_name="edge", target_service="c", config=FAST
            ) as client:
                return await client.get("/work")

        assert asyncio.run(main()) == {"done": True}
    finished = spans.get_finished_spans()
    client_spans = [s for s in finished if s.kind is trace.SpanKind.CLIENT]
    # One CLIENT span for the one request: the attempt's, whose id the server received.
    assert [s.instrumentation_scope.name for s in client_spans] == ["commclient"]
    (attempt,) = client_spans
    (received,) = seen
    assert received.split("-")[1:3] == [
        f"{attempt.context.trace_id:032x}",
        f"{attempt.context.span_id:016x}",
    ]


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


def test_a_call_cancelled_mid_attempt_ends_its_spans_and_restores_the_callers_span(
    spans: InMemorySpanExporter, httpx_instrumented: None
) -> None:
    testing.reset()
    tracer = trace.get_tracer("test")

    async def main() -> bool:
        arrived, release = asyncio.Event(), asyncio.Event()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await release.wait()
            writer.close()

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with tracer.start_as_current_span("handler") as handler:
                async with AsyncServiceClient(
                    f"http://127.0.0.1:{port}", service_name="a", target_service="b", config=FAST
                ) as client:
                    call = asyncio.ensure_future(client.get("/slow"))
                    await arrived.wait()
                    call.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await call
                    release.set()
                    return trace.get_current_span() is handler

    assert asyncio.run(main())
    finished = spans.get_finished_spans()
    ours = [s for s in finished if s.name == "GET /slow"]
    assert sorted(s.kind.name for s in ours) == ["CLIENT", "INTERNAL"]
    assert {s.attributes["error.type"] for s in ours} == {"cancelled"}  # type: ignore[index]


def test_an_instrumented_app_inside_the_middleware_keeps_its_server_span(
    spans: InMemorySpanExporter,
) -> None:
    # Flask's and the WSGI/ASGI instrumentations make a SERVER span only when no span is
    # current (else an INTERNAL one): with OpenTelemetry's auto-instrumentation, Flask's
    # app.wsgi_app is instrumented when the app is made, inside the middleware wrapped
    # around it afterwards (the README's recipe).
    wsgi = pytest.importorskip("opentelemetry.instrumentation.wsgi")
    from commclient import SyncServiceClient
    from commclient.wsgi import CorrelationIdMiddleware as WsgiMiddleware

    testing.reset()
    seen: list[str] = []
    with serve(echo_app(None, seen)) as url:
        client = SyncServiceClient(url, service_name="flask", target_service="c", config=FAST)

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            client.get("/work")
            start_response("200 OK", [])
            return [b"ok"]

        wrapped = WsgiMiddleware(wsgi.OpenTelemetryMiddleware(app))
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/page",
            "SERVER_NAME": "flask.test",
            "SERVER_PORT": "80",
            "HTTP_HOST": "flask.test",
            "wsgi.url_scheme": "http",
            "HTTP_TRACEPARENT": f"00-{'4' * 32}-{'5' * 16}-01",
        }
        body = wrapped(environ, lambda *_: None)
        assert list(body) == [b"ok"]
        getattr(body, "close", lambda: None)()
        client.close()
    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.name == "GET /page"]
    assert server.kind is trace.SpanKind.SERVER
    assert server.parent is not None
    assert (server.context.trace_id, server.parent.span_id) == (
        int("4" * 32, 16),
        int("5" * 16, 16),
    )
    (call,) = [s for s in finished if s.name == "GET /work" and s.kind is trace.SpanKind.INTERNAL]
    assert call.parent is not None
    assert call.parent.span_id == server.context.span_id

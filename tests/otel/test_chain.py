"""One request, one trace: a real three-hop chain, a cron run through a Redis stream, and the
span tree of a call with retries, with OpenTelemetry's SDK and in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from commclient import (
    AsyncServiceClient,
    ClientConfig,
    ServiceResponseError,
    continue_from_stream_entry,
    correlation_id_ctx,
    log_correlation_ids,
    stream_entry_fields,
    testing,
)
from commclient.asgi import CorrelationIdMiddleware
from examples.serving import serve
from tests.otel.spantree import ancestors

FAST = ClientConfig(max_retries=3, retry_min_wait=0.01, retry_max_wait=0.02, timeout=5)


class Records(logging.Handler):
    """Every record of the services, with the correlation id it was logged under."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, getattr(record, "correlation_id", None)))


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    log_correlation_ids(handler)
    for name in ("service_a", "service_b", "service_c"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    yield handler
    for name in ("service_a", "service_b", "service_c"):
        logging.getLogger(name).removeHandler(handler)


def chain_app(name: str, downstream: str | None, failures: list[int]) -> FastAPI:
    """A service that logs, then calls ``downstream`` (or answers 503 while ``failures``)."""
    app = FastAPI()
    log = logging.getLogger(name)
    client = (
        None
        if downstream is None
        else AsyncServiceClient(downstream, service_name=name, target_service="next", config=FAST)
    )

    @app.get("/work")
    async def work(request: Request) -> Any:
        log.info("handling")
        if client is not None:
            return {name: await client.get("/work")}
        if failures:
            failures.pop()
            return JSONResponse({"detail": "busy"}, status_code=503)
        return {name: "done"}

    app.add_middleware(CorrelationIdMiddleware)
    return app


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_three_services_share_one_trace_and_one_correlation_id(
    spans: InMemorySpanExporter, records: Records
) -> None:
    testing.reset()
    with (
        serve(chain_app("service_c", None, failures=[1, 1])) as c_url,
        serve(chain_app("service_b", c_url, failures=[])) as b_url,
        serve(chain_app("service_a", b_url, failures=[])) as a_url,
    ):

        async def enter() -> Any:
            async with AsyncServiceClient(
                a_url, service_name="edge", target_service="service_a", config=FAST
            ) as client:
                correlation_id_ctx.set("req-42")
                return await client.get("/work")

        answer = asyncio.run(enter())
    assert answer == {"service_a": {"service_b": {"service_c": "done"}}}
    finished = spans.get_finished_spans()
    assert len({span.context.trace_id for span in finished}) == 1
    calls = by_name(finished, "GET /work")
    internal = [s for s in calls if s.kind is trace.SpanKind.INTERNAL]
    attempts = [s for s in calls if s.kind is trace.SpanKind.CLIENT]
    # edge -> a -> b -> c: three calls; the last one saw two 503s and three attempts.
    assert len(internal) == 3
    last = max(internal, key=lambda s: s.attributes["commclient.attempts"])  # type: ignore[index]
    assert last.attributes["commclient.attempts"] == 3  # type: ignore[index]
    assert [event.name for event in last.events] == ["backoff", "backoff"]
    its_attempts = [s for s in attempts if s.parent and s.parent.span_id == last.context.span_id]
    assert [s.attributes["http.response.status_code"] for s in its_attempts] == [503, 503, 200]  # type: ignore[index]
    assert [s.status.status_code for s in its_attempts][:2] == [trace.StatusCode.ERROR] * 2
    # Each service's call descends from the attempt that reached it, through the service's
    # own server span (FastAPI makes one once a provider is set).
    attempt_ids = {s.context.span_id for s in attempts}
    servers = {s.context.span_id for s in finished if s.kind is trace.SpanKind.SERVER}
    reached = 0
    for call in internal:
        above = ancestors(call, finished)
        hops = [index for index, span_id in enumerate(above) if span_id in attempt_ids]
        if hops:
            reached += 1
            assert any(span_id in servers for span_id in above[: hops[0]])
    assert reached == 2
    ids = {cid for name, cid in records.seen}
    assert {name for name, _ in records.seen} == {"service_a", "service_b", "service_c"}
    assert ids == {"req-42"}


def test_a_breaker_rejection_is_a_span_with_its_event(spans: InMemorySpanExporter) -> None:
    testing.reset()

    async def main() -> None:
        async with AsyncServiceClient(
            "http://127.0.0.1:9", service_name="edge", target_service="closed_shop", config=FAST
        ) as client:
            testing.force_open("edge", "closed_shop")
            with pytest.raises(ServiceResponseError.__mro__[1]):  # ServiceClientError
                await client.get("/anything")

    asyncio.run(main())
    (span,) = by_name(spans.get_finished_spans(), "GET /anything")
    assert [event.name for event in span.events] == ["breaker_rejected"]
    assert span.attributes["error.type"] == "circuit_open"  # type: ignore[index]


def test_a_bridge_hop_keeps_the_parent_span(spans: InMemorySpanExporter) -> None:
    from compat import run_sync

    testing.reset()
    with serve(chain_app("service_c", None, failures=[])) as c_url:
        client = AsyncServiceClient(c_url, service_name="legacy", target_service="c", config=FAST)
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("legacy job") as parent:
            run_sync(client.get, "/work")
        run_sync(client.aclose)
    (call,) = [
        s
        for s in by_name(spans.get_finished_spans(), "GET /work")
        if s.kind is trace.SpanKind.INTERNAL
    ]
    assert call.parent is not None
    assert call.parent.span_id == parent.get_span_context().span_id


def test_a_stream_entry_carries_the_trace_to_its_consumer(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("cron run") as producer:
        token = correlation_id_ctx.set("run-7")
        try:
            fields = stream_entry_fields()
        finally:
            correlation_id_ctx.reset(token)  # not left to the tests that follow
    as_redis_returns = {k.encode(): v.encode() for k, v in fields.items()}
    with (
        continue_from_stream_entry(as_redis_returns) as correlation_id,
        tracer.start_as_current_span("consume") as consumer,
    ):
        pass
    assert correlation_id == "run-7"
    assert consumer.get_span_context().trace_id == producer.get_span_context().trace_id
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["consume"].parent.span_id == producer.get_span_context().span_id  # type: ignore[union-attr]


def test_a_cron_runs_reminder_is_continued_through_a_redis_stream(
    spans: InMemorySpanExporter,
) -> None:
    import redis.asyncio
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from cron_migration import migrated_job
    from tests.redis_server import RedisServer
    from tests.unit.cron_support import wait_until_async

    testing.reset()
    consumed: list[str] = []
    with RedisServer() as server, serve(chain_app("service_c", None, failures=[])) as c_url:

        @migrated_job(timeout=5, name="send_reminders")
        async def send_reminders() -> None:
            async with redis.asyncio.Redis.from_url(server.url) as writer:
                await writer.xadd(
                    "queue:to_secretary", {"type": "reminder", **stream_entry_fields()}
                )

        async def consume() -> None:
            async with (
                redis.asyncio.Redis.from_url(server.url) as reader,
                AsyncServiceClient(
                    c_url, service_name="assistant", target_service="c", config=FAST
                ) as client,
            ):
                entries = await reader.xread({"queue:to_secretary": "0"}, block=10_000, count=1)
                ((_, [(_, fields)]),) = entries
                with continue_from_stream_entry(fields) as correlation_id:
                    await client.get("/work")
                    consumed.append(correlation_id)

        async def main() -> None:
            scheduler = AsyncIOScheduler()
            scheduler.add_job(send_reminders, "date", id="send_reminders")
            scheduler.start()
            try:
                await consume()
                await wait_until_async(lambda: bool(consumed), what="the consumer")
            finally:
                scheduler.shutdown(wait=False)

        asyncio.run(main())
    finished = spans.get_finished_spans()
    (run,) = by_name(finished, "cron run send_reminders")
    assert run.attributes["cron.outcome"] == "success"  # type: ignore[index]
    (call,) = [s for s in by_name(finished, "GET /work") if s.kind is trace.SpanKind.INTERNAL]
    assert call.context.trace_id == run.context.trace_id
    assert call.parent is not None
    assert call.parent.span_id == run.context.span_id
    assert consumed == [run.attributes["commclient.correlation_id"]]  # type: ignore[index]


def test_the_duration_histogram_carries_the_calls_trace_id_as_exemplar(
    spans: InMemorySpanExporter,
) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import generate_latest

    testing.reset()
    registry = CollectorRegistry()
    with serve(chain_app("service_c", None, failures=[])) as c_url:

        async def main() -> None:
            async with AsyncServiceClient(
                c_url, service_name="edge", target_service="c", config=FAST, registry=registry
            ) as client:
                await client.get("/work")

        asyncio.run(main())
    (call,) = [
        s
        for s in by_name(spans.get_finished_spans(), "GET /work")
        if s.kind is trace.SpanKind.INTERNAL
    ]
    exposition = generate_latest(registry).decode()
    assert f'# {{trace_id="{call.context.trace_id:032x}"}}' in exposition


def test_each_redirect_hop_is_a_client_span_naming_where_it_went(
    spans: InMemorySpanExporter,
) -> None:
    from fastapi.responses import RedirectResponse

    testing.reset()
    app = FastAPI()

    @app.get("/old")
    async def old() -> Any:
        return RedirectResponse("/new?token=s3cret&page=2", status_code=307)

    @app.get("/new")
    async def new() -> Any:
        return {"moved": True}

    config = ClientConfig(follow_redirects=True, timeout=5)
    with serve(app) as url:

        async def main() -> Any:
            async with AsyncServiceClient(
                url, service_name="edge", target_service="mover", config=config
            ) as client:
                return await client.get("/old")

        assert asyncio.run(main()) == {"moved": True}
    hops = [
        s
        for s in by_name(spans.get_finished_spans(), "GET /old")
        if s.kind is trace.SpanKind.CLIENT
    ]
    assert [s.attributes["http.response.status_code"] for s in hops] == [307, 200]  # type: ignore[index]
    assert [s.attributes["url.full"] for s in hops] == [  # type: ignore[index]
        f"{url}/old",
        f"{url}/new?token=[REDACTED]&page=2",
    ]
    assert [s.attributes.get("http.request.resend_count") for s in hops] == [None, 1]  # type: ignore[union-attr]


def test_an_unsampled_call_leaves_no_exemplar_pointing_at_a_trace_never_recorded(
    spans: InMemorySpanExporter,
) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import generate_latest

    testing.reset()
    registry = CollectorRegistry()
    unsampled = f"00-{'a' * 32}-{'b' * 16}-00"  # the caller decided not to record this trace
    with serve(chain_app("service_c", None, failures=[])) as c_url:

        async def main() -> None:
            async with AsyncServiceClient(
                c_url, service_name="edge", target_service="c", config=FAST, registry=registry
            ) as client:
                with continue_from_stream_entry({"traceparent": unsampled}):
                    await client.get("/work")

        asyncio.run(main())
    assert by_name(spans.get_finished_spans(), "GET /work") == []
    exposition = generate_latest(registry).decode()
    assert "http_client_request_duration_seconds_count{" in exposition
    assert "trace_id" not in exposition


def test_url_full_carries_no_secret_of_the_query(spans: InMemorySpanExporter) -> None:
    testing.reset()
    with serve(chain_app("service_c", None, failures=[])) as c_url:

        async def main() -> None:
            async with AsyncServiceClient(
                c_url, service_name="edge", target_service="c", config=FAST
            ) as client:
                await client.get("/work", params={"sig": "sas-signature", "access_token": "t0k"})

        asyncio.run(main())
    (attempt,) = [
        s
        for s in by_name(spans.get_finished_spans(), "GET /work")
        if s.kind is trace.SpanKind.CLIENT
    ]
    assert attempt.attributes["url.full"] == (  # type: ignore[index]
        f"{c_url}/work?sig=[REDACTED]&access_token=[REDACTED]"
    )


def test_without_a_server_span_a_call_continues_the_inbound_trace(
    spans: InMemorySpanExporter,
) -> None:
    from commclient.asgi import CorrelationIdMiddleware as AsgiMiddleware

    testing.reset()
    with serve(chain_app("service_c", None, failures=[])) as c_url:

        async def handler(scope: Any, receive: Any, send: Any) -> None:  # a bare ASGI app
            async with AsyncServiceClient(
                c_url, service_name="bare", target_service="c", config=FAST
            ) as client:
                await client.get("/work")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def main() -> None:
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/",
                "headers": [(b"traceparent", f"00-{'6' * 32}-{'7' * 16}-01".encode())],
            }

            async def receive() -> Any:
                return {"type": "http.request", "body": b""}

            async def send(message: Any) -> None:
                pass

            await AsgiMiddleware(handler)(scope, receive, send)

        asyncio.run(main())
    (call,) = [
        s
        for s in by_name(spans.get_finished_spans(), "GET /work")
        if s.kind is trace.SpanKind.INTERNAL
    ]
    assert call.parent is not None
    assert (call.context.trace_id, call.parent.span_id) == (int("6" * 32, 16), int("7" * 16, 16))

"""Inbound correlation: the ASGI and WSGI middlewares, stream entries and W3C trace context."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterable
from typing import Any

import pytest

from commclient import continue_from_stream_entry, correlation_id_ctx, stream_entry_fields
from commclient._tracecontext import (
    inbound_trace_ctx,
    outgoing_trace_headers,
    parse_traceparent,
    trace_id_for,
)
from commclient.asgi import CorrelationIdMiddleware as AsgiMiddleware
from commclient.wsgi import CorrelationIdMiddleware as WsgiMiddleware

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
HOSTILE_IDS = ["x" * 10_000, "abc\r\nSet-Cookie: a=b", "tab\there", "ünïcode", ""]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # three fields
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # extra on 00
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",  # injection
    ],
)
def test_invalid_traceparents_are_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_with_more_fields_is_read_for_what_version_00_defines() -> None:
    parsed = parse_traceparent(f"01-{TRACE_ID}-00f067aa0ba902b7-01-what-comes-next")
    assert parsed is not None
    assert (parsed.trace_id, parsed.sampled) == (TRACE_ID, True)


def test_an_oversized_or_binary_tracestate_is_dropped_not_propagated() -> None:
    assert parse_traceparent(TRACEPARENT, "a=" + "b" * 600)[3] is None  # type: ignore[index]
    assert parse_traceparent(TRACEPARENT, "a=b\x00")[3] is None  # type: ignore[index]
    assert parse_traceparent(TRACEPARENT, "vendor=x")[3] == "vendor=x"  # type: ignore[index]


def test_the_trace_id_of_a_correlation_id_is_the_id_itself_or_its_digest() -> None:
    assert trace_id_for(TRACE_ID) == TRACE_ID
    derived = trace_id_for("order-42")
    assert len(derived) == 32
    assert derived == trace_id_for("order-42") != trace_id_for("order-43")


def test_outgoing_headers_continue_the_inbound_trace_with_a_new_span_each_time() -> None:
    token = inbound_trace_ctx.set(parse_traceparent(TRACEPARENT, "vendor=x"))
    try:
        first, second = outgoing_trace_headers("cid"), outgoing_trace_headers("cid")
    finally:
        inbound_trace_ctx.reset(token)
    assert first["traceparent"].split("-")[1] == TRACE_ID
    assert first["traceparent"] != second["traceparent"]
    assert first["tracestate"] == "vendor=x"
    assert outgoing_trace_headers(None) == {}
    assert outgoing_trace_headers(TRACE_ID)["traceparent"].startswith(f"00-{TRACE_ID}-")


def test_flags_that_w3c_leaves_undefined_are_not_passed_on() -> None:
    """W3C: the flags a version does not define are set to zero when propagating; only
    ``sampled`` (and level 2's ``random``, true of the trace id kept) go on."""
    token = inbound_trace_ctx.set(parse_traceparent(f"00-{TRACE_ID}-00f067aa0ba902b7-ff"))
    try:
        sent = outgoing_trace_headers("cid")["traceparent"]
    finally:
        inbound_trace_ctx.reset(token)
    assert sent.split("-")[3] == "03"


# --- ASGI -------------------------------------------------------------------------------


async def asgi_request(headers: list[tuple[bytes, bytes]], echo: bool = True) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["correlation_id"] = correlation_id_ctx.get()
        seen["outgoing"] = outgoing_trace_headers(correlation_id_ctx.get())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    await AsgiMiddleware(app, echo=echo)(scope, receive, send)
    seen["response_headers"] = dict(sent[0]["headers"])
    seen["after"] = correlation_id_ctx.get()
    return seen


def test_asgi_continues_the_callers_id_and_trace_and_echoes_the_id() -> None:
    seen = asyncio.run(
        asgi_request([(b"x-correlation-id", b"req-7"), (b"traceparent", TRACEPARENT.encode())])
    )
    assert seen["correlation_id"] == "req-7"
    assert seen["outgoing"]["traceparent"].split("-")[1] == TRACE_ID
    assert seen["response_headers"][b"x-correlation-id"] == b"req-7"
    assert seen["after"] is None


def test_asgi_takes_the_trace_id_as_the_id_when_only_a_traceparent_came() -> None:
    seen = asyncio.run(asgi_request([(b"traceparent", TRACEPARENT.encode())]))
    assert seen["correlation_id"] == TRACE_ID


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_asgi_replaces_a_hostile_id_and_never_propagates_it(
    hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="commclient"):
        seen = asyncio.run(asgi_request([(b"x-correlation-id", hostile.encode("utf-8"))]))
    assert seen["correlation_id"] not in (None, hostile)
    assert len(seen["correlation_id"]) == 32
    assert seen["response_headers"][b"x-correlation-id"] == seen["correlation_id"].encode()
    assert any("unsafe inbound correlation id" in r.getMessage() for r in caplog.records)
    assert all(hostile not in r.getMessage() for r in caplog.records if hostile)


def test_asgi_reads_a_flood_of_repeated_headers_in_one_pass() -> None:
    """A server without a header limit (uvicorn with httptools, as ``uvicorn[standard]``
    installs it) hands over every header a client sends: 150,000 repeated headers
    (7 MB) must cost one pass, not a new string per header as long as all before it
    (about 10^12 bytes copied: the pytest timeout, not an answer). The combined
    ``tracestate`` is far over W3C's size, so it is dropped."""
    flood = [(b"tracestate", b"vendor=" + b"x" * 40)] * 150_000
    cookies = [(b"cookie", b"session=" + b"y" * 40)] * 150_000
    seen = asyncio.run(asgi_request([(b"traceparent", TRACEPARENT.encode()), *flood, *cookies]))
    assert seen["outgoing"]["traceparent"].split("-")[1] == TRACE_ID
    assert "tracestate" not in seen["outgoing"]


def test_asgi_reads_repeated_trace_headers_as_w3c_says() -> None:
    # Two traceparent headers: neither is the caller's (W3C's test suite expects a new
    # trace); several tracestate headers are one list, combined in order (RFC 9110 5.3),
    # as a WSGI server combines them into one environ value.
    other = f"00-{'1' * 32}-00f067aa0ba902b7-01"
    seen = asyncio.run(
        asgi_request(
            [
                (b"traceparent", TRACEPARENT.encode()),
                (b"traceparent", other.encode()),
                (b"tracestate", b"a=1"),
            ]
        )
    )
    assert seen["outgoing"]["traceparent"].split("-")[1] not in (TRACE_ID, "1" * 32)
    seen = asyncio.run(
        asgi_request(
            [
                (b"traceparent", TRACEPARENT.encode()),
                (b"tracestate", b"a=1"),
                (b"tracestate", b"b=2"),
            ]
        )
    )
    assert seen["outgoing"]["tracestate"] == "a=1,b=2"


def test_asgi_echo_can_be_turned_off_and_lifespan_passes_through() -> None:
    seen = asyncio.run(asgi_request([(b"x-correlation-id", b"req-8")], echo=False))
    assert b"x-correlation-id" not in seen["response_headers"]

    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        assert correlation_id_ctx.get() is None

    async def nothing(*_: Any) -> Any:
        return None

    asyncio.run(AsgiMiddleware(app)({"type": "lifespan"}, nothing, nothing))
    assert calls == ["lifespan"]


# --- WSGI -------------------------------------------------------------------------------


def wsgi_request(environ_headers: dict[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(f"call:{correlation_id_ctx.get()}")
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterable[bytes]:
            # A streaming body is produced after the app returned: still in the request.
            seen.append(f"iterate:{correlation_id_ctx.get()}")
            yield b"ok"

        return body()

    response_headers: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
        response_headers.update(headers)
        return io.BytesIO().write

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", **environ_headers}
    result = WsgiMiddleware(app)(environ, start_response)
    body = [chunk.decode() for chunk in result]
    getattr(result, "close", lambda: None)()
    return seen, response_headers, body


def test_wsgi_keeps_the_id_for_the_call_and_the_streamed_body_and_never_leaks() -> None:
    seen, headers, body = wsgi_request(
        {"HTTP_X_CORRELATION_ID": "req-9", "HTTP_TRACEPARENT": TRACEPARENT}
    )
    assert seen == ["call:req-9", "iterate:req-9"]
    assert headers["X-Correlation-ID"] == "req-9"
    assert body == ["ok"]
    assert correlation_id_ctx.get() is None


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_wsgi_replaces_a_hostile_id(hostile: str) -> None:
    seen, headers, _ = wsgi_request({"HTTP_X_CORRELATION_ID": hostile})
    replacement = headers["X-Correlation-ID"]
    assert replacement != hostile
    assert len(replacement) == 32
    assert seen == [f"call:{replacement}", f"iterate:{replacement}"]


# --- stream entries ---------------------------------------------------------------------


def test_a_stream_entry_carries_the_chain_to_its_consumer() -> None:
    token = correlation_id_ctx.set("run-5")
    try:
        fields = stream_entry_fields()
    finally:
        correlation_id_ctx.reset(token)
    assert fields["correlation_id"] == "run-5"
    assert fields["traceparent"].split("-")[1] == trace_id_for("run-5")
    as_redis_returns = {k.encode(): v.encode() for k, v in fields.items()}
    with continue_from_stream_entry(as_redis_returns) as correlation_id:
        assert correlation_id == correlation_id_ctx.get() == "run-5"
        onward = outgoing_trace_headers(correlation_id)
    assert onward["traceparent"].split("-")[1] == trace_id_for("run-5")
    assert correlation_id_ctx.get() is None
    assert stream_entry_fields() == {}


def test_a_stream_entry_without_fields_starts_a_new_chain() -> None:
    with continue_from_stream_entry({"type": "reminder"}) as correlation_id:
        assert len(correlation_id) == 32


def test_the_example_trigger_carries_the_run_chain_to_the_assistant() -> None:
    from examples.secretary_queue import InProcessQueue

    queue = InProcessQueue()
    token = correlation_id_ctx.set("run-11")
    try:
        queue.append_reminder({"id": 3, "user_id": 7, "text": "call"})
    finally:
        correlation_id_ctx.reset(token)
    (trigger,) = queue.triggers()
    assert trigger["reminder_id"] == "3"
    with continue_from_stream_entry(trigger) as correlation_id:
        assert correlation_id == "run-11"
        onward = outgoing_trace_headers(correlation_id)
    assert onward["traceparent"].split("-")[1] == trace_id_for("run-11")

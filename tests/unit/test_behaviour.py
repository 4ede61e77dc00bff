"""The behaviour table of issue 2, run against both facades (see conftest.facade)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from commclient import (
    ClientConfig,
    ServiceClientError,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponseError,
    ServiceResponseTooLargeError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    correlation_id_ctx,
)
from tests.unit.conftest import MakeHarness
from tests.unit.harness import BASE_URL, Reply

OK = Reply(200, json={"ok": True})
E503 = Reply(503, json={"detail": "busy"})


@dataclass(frozen=True)
class Row:
    """Replies the server gives, what the caller gets, and how many requests were sent."""

    id: str
    method: str
    replies: list[Reply]
    sent: int
    result: Any = None
    error: type[ServiceClientError] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    status_code: int | None = None


TABLE = [
    # 1. Retry on connect errors, timeouts and retry_on_status.
    Row("get-503-then-ok", "GET", [E503, OK], sent=2, result={"ok": True}),
    Row("get-503-exhausted", "GET", [E503], sent=3, error=ServiceResponseError, status_code=503),
    Row("get-429-then-ok", "GET", [Reply(429), OK], sent=2, result={"ok": True}),
    Row(
        "get-500-502-504-then-ok", "GET", [Reply(500), Reply(502), OK], sent=3, result={"ok": True}
    ),
    Row("get-501-not-retried", "GET", [Reply(501)], sent=1, error=ServiceResponseError),
    Row("get-connect-then-ok", "GET", [Reply(failure="connect"), OK], sent=2, result={"ok": True}),
    Row(
        "get-connect-exhausted", "GET", [Reply(failure="connect")], 3, error=ServiceConnectionError
    ),
    Row(
        "get-read-timeout-exhausted",
        "GET",
        [Reply(failure="read_timeout")],
        3,
        error=ServiceTimeoutError,
    ),
    Row("get-reset-then-ok", "GET", [Reply(failure="reset"), OK], sent=2, result={"ok": True}),
    # 2. Idempotency: POST/PATCH only when the request never left, or with a key.
    Row("put-503-retried", "PUT", [E503, OK], sent=2, result={"ok": True}),
    Row("delete-503-retried", "DELETE", [E503, OK], sent=2, result={"ok": True}),
    Row("post-503-once", "POST", [E503, OK], sent=1, error=ServiceResponseError),
    Row("patch-503-once", "PATCH", [E503, OK], sent=1, error=ServiceResponseError),
    Row(
        "post-read-timeout-once",
        "POST",
        [Reply(failure="read_timeout"), OK],
        1,
        error=ServiceTimeoutError,
    ),
    Row(
        "post-reset-once",
        "POST",
        [Reply(failure="reset"), OK],
        sent=1,
        error=ServiceConnectionError,
    ),
    Row(
        "post-refused-retried", "POST", [Reply(failure="connect"), OK], sent=2, result={"ok": True}
    ),
    Row(
        "post-connect-timeout-retried",
        "POST",
        [Reply(failure="connect_timeout"), OK],
        2,
        {"ok": True},
    ),
    Row(
        "post-key-503-retried",
        "POST",
        [E503, OK],
        2,
        {"ok": True},
        kwargs={"idempotency_key": "k-1"},
    ),
    Row(
        "patch-key-timeout-retried",
        "PATCH",
        [Reply(failure="read_timeout"), OK],
        2,
        {"ok": True},
        kwargs={"idempotency_key": "k-2"},
    ),
    # 4. Errors and bodies.
    Row(
        "get-404-not-retried",
        "GET",
        [Reply(404, json={"detail": "no such user"})],
        1,
        error=ServiceResponseError,
        status_code=404,
    ),
    Row("get-400-text", "GET", [Reply(400, body=b"bad " * 200)], 1, error=ServiceResponseError),
    Row("get-204-none", "GET", [Reply(204)], sent=1, result=None),
    Row("get-empty-none", "GET", [Reply(200, body=b"")], sent=1, result=None),
    Row(
        "get-html-decode",
        "GET",
        [Reply(200, body=b"<html>502 Bad Gateway</html>")],
        1,
        error=ServiceDecodeError,
    ),
    Row(
        "get-truncated-decode",
        "GET",
        [Reply(200, body=b'{"items": [1, 2')],
        1,
        error=ServiceDecodeError,
    ),
    Row(
        "get-too-large",
        "GET",
        [Reply(200, body=b"[" + b"1," * 600 + b"1]")],
        1,
        error=ServiceResponseTooLargeError,
    ),
]


@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_behaviour_table(make_harness: MakeHarness, row: Row) -> None:
    harness = make_harness(ClientConfig(max_retries=3, max_response_bytes=1000))
    harness.script(row.method, "/api/items", row.replies)
    if row.error is None:
        assert harness.call(row.method, "/api/items", **row.kwargs) == row.result
    else:
        with pytest.raises(row.error) as caught:
            harness.call(row.method, "/api/items", **row.kwargs)
        error = caught.value
        assert type(error) is row.error
        assert error.attempts == row.sent
        assert error.method == row.method
        assert error.url == BASE_URL + "/api/items"
        assert error.target_service == harness.target
        if isinstance(error, ServiceResponseError):
            last = row.replies[min(row.sent, len(row.replies)) - 1]
            assert error.status_code == (row.status_code or last.status)
        if isinstance(error, (ServiceTimeoutError, ServiceConnectionError)):
            assert error.__cause__ is not None, "the transport exception is chained"
    assert len(harness.sent) == row.sent


def test_transport_exception_is_chained_not_raised(make_harness: MakeHarness) -> None:
    harness = make_harness(ClientConfig(max_retries=2))
    harness.script("GET", "/x", [Reply(failure="read_timeout")])
    with pytest.raises(ServiceTimeoutError) as caught:
        harness.call("GET", "/x")
    cause = caught.value.__cause__
    assert cause is not None
    assert type(cause).__module__.split(".")[0] == (
        "requests" if harness.facade == "sync" else "httpx"
    )


def test_error_detail_from_json_and_text(make_harness: MakeHarness) -> None:
    harness = make_harness()
    harness.script("GET", "/json", [Reply(422, json={"detail": [{"loc": "name"}]})])
    harness.script("GET", "/text", [Reply(400, body=b"x" * 2000)])
    with pytest.raises(ServiceResponseError) as from_json:
        harness.call("GET", "/json")
    assert from_json.value.detail == '[{"loc": "name"}]'
    assert from_json.value.response_body == b'{"detail": [{"loc": "name"}]}'
    with pytest.raises(ServiceResponseError) as from_text:
        harness.call("GET", "/text")
    assert from_text.value.detail == "x" * 500
    assert from_text.value.response_body == b"x" * 2000


def test_idempotency_key_is_the_same_on_every_attempt(make_harness: MakeHarness) -> None:
    harness = make_harness()
    harness.script("POST", "/api/batch-jobs/", [E503, E503, OK])
    result = harness.call("POST", "/api/batch-jobs/", json={"n": 1}, idempotency_key="job-7")
    assert result == {"ok": True}
    assert [sent.headers.get("idempotency-key") for sent in harness.sent] == ["job-7"] * 3
    assert {sent.body for sent in harness.sent} == {b'{"n": 1}'}


def test_4xx_does_not_count_for_the_breaker(make_harness: MakeHarness) -> None:
    harness = make_harness(ClientConfig(circuit_breaker_fail_max=2))
    harness.script("GET", "/missing", [Reply(404)])
    for _ in range(5):
        with pytest.raises(ServiceResponseError):
            harness.call("GET", "/missing")
    assert len(harness.sent) == 5
    assert harness.metric("http_client_circuit_breaker_state") == 0


def test_breaker_opens_after_fail_max_calls_and_fails_fast(make_harness: MakeHarness) -> None:
    harness = make_harness(ClientConfig(max_retries=2, circuit_breaker_fail_max=3))
    harness.script("GET", "/down", [E503])
    for _ in range(3):
        with pytest.raises(ServiceResponseError):
            harness.call("GET", "/down")
    # Two calls of two attempts; the third call's first failure opens the breaker, which
    # ends its retries there.
    assert len(harness.sent) == 5
    with pytest.raises(ServiceUnavailableError) as caught:
        harness.call("GET", "/down")
    assert len(harness.sent) == 5, "an open breaker sends nothing"
    assert 0 < caught.value.retry_after <= 30
    assert caught.value.attempts == 0
    assert harness.metric("http_client_circuit_breaker_state") == 2  # open
    assert (
        harness.metric(
            "http_client_requests_total", method="GET", route="/down", status="circuit_open"
        )
        == 1
    )


def test_drained_budget_surfaces_the_single_attempts_error(make_harness: MakeHarness) -> None:
    harness = make_harness(
        ClientConfig(retry_budget_max_tokens=0, retry_budget_ratio=0, retry_budget_min_per_second=0)
    )
    harness.script("GET", "/flaky", [E503, OK])
    with pytest.raises(ServiceResponseError) as caught:
        harness.call("GET", "/flaky")
    assert caught.value.status_code == 503
    assert caught.value.attempts == 1
    assert len(harness.sent) == 1


def test_path_params_are_quoted_and_the_template_is_the_endpoint(make_harness: MakeHarness) -> None:
    harness = make_harness()
    harness.script("GET", "/api/users/a%2Fb%20c", [OK])
    harness.call("GET", "/api/users/{user_id}", path_params={"user_id": "a/b c"})
    assert harness.sent[0].url == harness.wire_base_url + "/api/users/a%2Fb%20c"
    assert (
        harness.metric(
            "http_client_requests_total",
            method="GET",
            route="/api/users/{user_id}",
            status="success",
        )
        == 1
    )


@pytest.mark.parametrize(("value", "segment"), [(".", "%2E"), ("..", "%2E%2E")])
def test_dot_segment_path_params_stay_in_their_segment(
    make_harness: MakeHarness, value: str, segment: str
) -> None:
    """A transport resolves a bare ``.``/``..`` segment (``/a/../b`` is ``/b``): a path
    parameter holding one is sent percent-encoded, inside its segment."""
    harness = make_harness()
    harness.script("GET", f"/api/users/{segment}/end", [OK])
    harness.call("GET", "/api/users/{user_id}/end", path_params={"user_id": value})
    assert harness.sent[0].url == harness.wire_base_url + f"/api/users/{segment}/end"


def test_credentials_and_secrets_never_reach_errors_or_logs(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="commclient")
    harness = make_harness(
        ClientConfig(max_retries=1), base_url="http://user:hunter2@rest.test:8000"
    )
    harness.script("GET", "/private", [Reply(failure="connect")])
    with pytest.raises(ServiceConnectionError) as caught:
        harness.call(
            "GET",
            "/private",
            # sig: an Azure SAS or a signed URL's signature (semantic conventions' list)
            params={"api_key": "s3cr3t-key", "page": "2", "sig": "sas-signature"},
            headers={"Authorization": "Bearer tok-123"},
        )
    logged = [record.getMessage() + repr(vars(record)) for record in caplog.records]
    assert logged, "the failed call was logged"
    text = str(caught.value) + repr(caught.value.args) + caught.value.url + "".join(logged)
    for secret in ("hunter2", "s3cr3t-key", "tok-123", "sas-signature"):
        assert secret not in text
    assert (
        caught.value.url == "http://rest.test:8000/private?api_key=[REDACTED]&page=2&sig=[REDACTED]"
    )


def test_correlation_id_is_sent_on_every_attempt(make_harness: MakeHarness) -> None:
    harness = make_harness()
    harness.script("GET", "/c", [E503, OK])
    token = correlation_id_ctx.set("req-42")
    try:
        harness.call("GET", "/c")
    finally:
        correlation_id_ctx.reset(token)
    assert [sent.headers.get("x-correlation-id") for sent in harness.sent] == ["req-42", "req-42"]


@pytest.mark.parametrize("unsafe", ["a\r\nX-Admin: 1", "tab\there", "x" * 129, "é"])
def test_unsafe_correlation_id_is_replaced(make_harness: MakeHarness, unsafe: str) -> None:
    harness = make_harness()
    harness.script("GET", "/c", [OK])
    token = correlation_id_ctx.set(unsafe)
    try:
        harness.call("GET", "/c")
    finally:
        correlation_id_ctx.reset(token)
    sent = harness.sent[0].headers["x-correlation-id"]
    assert sent != unsafe
    assert len(sent) == 32
    assert sent.isalnum()


def test_no_correlation_header_without_an_id(make_harness: MakeHarness) -> None:
    harness = make_harness()
    harness.script("GET", "/c", [OK])
    harness.call("GET", "/c")
    assert "x-correlation-id" not in harness.sent[0].headers


def test_metrics_count_attempts_retries_and_durations(make_harness: MakeHarness) -> None:
    harness = make_harness()
    harness.script("GET", "/api/users/42/settings", [Reply(failure="read_timeout"), E503, OK])
    harness.call("GET", "/api/users/42/settings")
    endpoint = "/api/users/{id}/settings"
    for status in ("timeout", "503", "success"):
        assert (
            harness.metric(
                "http_client_requests_total", method="GET", route=endpoint, status=status
            )
            == 1
        )
    for error_type in ("timeout", "503"):
        assert (
            harness.metric(
                "http_client_retries_total", method="GET", route=endpoint, error_type=error_type
            )
            == 1
        )
    assert (
        harness.metric("http_client_request_duration_seconds_count", method="GET", route=endpoint)
        == 3
    )


def test_decode_error_is_its_own_status(make_harness: MakeHarness) -> None:
    harness = make_harness()
    harness.script("GET", "/html", [Reply(200, body=b"<html/>")])
    with pytest.raises(ServiceDecodeError):
        harness.call("GET", "/html")
    assert (
        harness.metric(
            "http_client_requests_total", method="GET", route="/html", status="decode_error"
        )
        == 1
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": {"X-Note": "a\r\nX-Admin: 1"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"X-Nul": "a\x00b"}},
        {"idempotency_key": "key\n2"},
    ],
)
def test_unsendable_headers_are_the_callers_error(
    make_harness: MakeHarness, kwargs: dict[str, Any]
) -> None:
    harness = make_harness(ClientConfig(circuit_breaker_fail_max=1))
    harness.script("POST", "/x", [OK])
    for _ in range(3):
        with pytest.raises(ValueError, match="header"):
            harness.call("POST", "/x", **kwargs)
    assert harness.sent == []
    assert harness.call("POST", "/x") == {"ok": True}, "the breaker did not count them"

"""Structured log records with the correlation id; the logging filter."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from commclient import ClientConfig, CorrelationIdFilter, correlation_id_ctx
from commclient._correlation import TransportRedactionFilter
from tests.unit.conftest import MakeHarness
from tests.unit.harness import Reply

FIELDS = (
    "service",
    "target_service",
    "method",
    "endpoint",
    "status",
    "attempt",
    "duration_ms",
    "correlation_id",
)


def test_every_record_of_a_call_is_structured(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="commclient")
    harness = make_harness(ClientConfig(max_retries=3))
    harness.script("GET", "/api/users/7", [Reply(503), Reply(200, json=1)])
    token = correlation_id_ctx.set("corr-7")
    try:
        harness.call("GET", "/api/users/{user_id}", path_params={"user_id": 7})
    finally:
        correlation_id_ctx.reset(token)
    records = [r for r in caplog.records if r.name == "commclient"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.WARNING, logging.DEBUG]
    for record in records:
        values = {name: getattr(record, name) for name in FIELDS}
        assert values["service"] == harness.service
        assert values["target_service"] == harness.target
        assert values["endpoint"] == "/api/users/{user_id}"
        assert values["correlation_id"] == "corr-7"
        assert values["method"] == "GET"
    assert [r.attempt for r in records] == [1, 1, 2]  # type: ignore[attr-defined]
    assert [r.status for r in records] == ["503", "503", "success"]  # type: ignore[attr-defined]
    assert all(r.duration_ms >= 0 for r in records)  # type: ignore[attr-defined]


def test_replacement_of_an_unsafe_id_is_logged(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness = make_harness()
    harness.script("GET", "/x", [Reply(200, json=1)])
    token = correlation_id_ctx.set("bad\r\nid")
    try:
        harness.call("GET", "/x")
    finally:
        correlation_id_ctx.reset(token)
    warnings = [r for r in caplog.records if "unsafe correlation id" in r.getMessage()]
    assert len(warnings) == 1
    assert "bad\r\nid" not in repr(vars(warnings[0]))
    assert warnings[0].correlation_id == harness.sent[0].headers["x-correlation-id"]  # type: ignore[attr-defined]


def test_filter_puts_the_id_on_any_record() -> None:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None)
    token = correlation_id_ctx.set("abc")
    try:
        assert CorrelationIdFilter().filter(record)
    finally:
        correlation_id_ctx.reset(token)
    assert record.correlation_id == "abc"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("HTTP Request: %s %s", ("GET", "http://u:S3cr3t@h/x?token=S3cr3t&n=1")),
        ("%s %s %d", ("GET", "/x?password=S3cr3t")),  # does not fit its format
    ],
)
def test_transport_records_lose_credentials_and_secret_values(
    msg: str, args: tuple[Any, ...]
) -> None:
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, msg, args, None)
    assert TransportRedactionFilter().filter(record)
    assert "S3cr3t" not in repr(vars(record))
    assert "GET" in record.getMessage()

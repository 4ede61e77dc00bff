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


def test_with_no_logging_set_up_the_libraries_print_nothing() -> None:
    import importlib.util
    import subprocess
    import sys

    packages = ["commclient", "compat"]
    if importlib.util.find_spec("apscheduler") is not None:  # the scheduler extra
        packages.append("cron_migration")
    script = (
        f"import logging, {', '.join(packages)}\n"
        f"for name in {[*packages, 'commclient.breaker']!r}:\n"
        "    logging.getLogger(name).warning('a failure the application did not ask to see')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""


def test_one_line_makes_correlation_ids_formattable_on_every_record() -> None:
    import io

    from commclient import log_correlation_ids

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(correlation_id)s %(name)s %(message)s"))
    app = logging.getLogger("an_application")
    app.addHandler(handler)
    app.propagate = False
    try:
        log_correlation_ids(handler)
        log_correlation_ids(handler)  # a second call adds no second filter
        app.warning("before any id")  # raised KeyError without the filter
        token = correlation_id_ctx.set("cid-42")
        try:
            app.warning("inside a request")
        finally:
            correlation_id_ctx.reset(token)
    finally:
        app.removeHandler(handler)
        app.propagate = True
    assert stream.getvalue().splitlines() == [
        "None an_application before any id",
        "cid-42 an_application inside a request",
    ]
    assert len(handler.filters) == 1


def test_a_client_asking_for_other_breaker_settings_is_told_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prometheus_client import CollectorRegistry

    from commclient._core import build_core

    def client(**settings: Any) -> None:
        build_core(
            "http://a.test",
            "warn-svc",
            "warn-tgt",
            ClientConfig(**settings),
            CollectorRegistry(),
            None,
        )

    caplog.set_level(logging.WARNING, logger="commclient.breaker")
    client(circuit_breaker_fail_max=5)
    client(circuit_breaker_fail_max=5)
    assert caplog.records == []
    client(circuit_breaker_fail_max=2, circuit_breaker_reset_timeout=5.0)
    client(circuit_breaker_fail_max=3)
    [record] = caplog.records
    message = record.getMessage()
    assert "circuit_breaker_fail_max=2 (the breaker has 5)" in message
    assert "circuit_breaker_reset_timeout=5.0 (the breaker has 30.0)" in message

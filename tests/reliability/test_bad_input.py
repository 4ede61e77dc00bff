"""Bad input, generated: configuration values, correlation ids, path templates and params,
response bodies. Every case ends in a value or a clear error; none in a foreign exception.

Hypothesis runs derandomized, so a run is reproducible and a failure is the same in CI as on
a laptop; ``RELIABILITY_FULL=1`` raises the number of examples.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from commclient import (
    AsyncServiceClient,
    ClientConfig,
    ServiceClientError,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponseError,
    ServiceResponseTooLargeError,
    SyncServiceClient,
    correlation_id_ctx,
)
from tests.http_server import ServerProcess
from tests.reliability._results import Row, sized
from tests.reliability.hostile_server import HostileServer

EXAMPLES = sized(30, 400)
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
_tally: dict[str, int] = {}


def _count(name: str) -> None:
    _tally[name] = _tally.get(name, 0) + 1


# -- ClientConfig --------------------------------------------------------------------------

NUMBER_FIELDS = (
    "timeout",
    "connect_timeout",
    "retry_min_wait",
    "retry_max_wait",
    "retry_after_max",
    "deadline",
    "circuit_breaker_reset_timeout",
    "retry_budget_ratio",
    "retry_budget_max_tokens",
)
INTEGER_FIELDS = (
    "max_retries",
    "circuit_breaker_fail_max",
    "max_response_bytes",
    "max_connections",
    "max_endpoints",
)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _assert_clear_rejection(name: str, value: object) -> ClientConfig | None:
    """Build a config with ``name=value``: accepted, or a ValueError/TypeError naming it."""
    try:
        built = ClientConfig(**{name: value})
    except (ValueError, TypeError) as error:
        message = str(error)
    else:
        _count("config accepted")
        return built
    assert name in message, f"{name}={value!r}: {message!r} does not name the field"
    _count("config rejected")
    return None


@PROPERTY
@given(name=st.sampled_from(NUMBER_FIELDS + INTEGER_FIELDS), value=ANY_VALUE)
def test_config_numbers_are_validated(name: str, value: object) -> None:
    built = _assert_clear_rejection(name, value)
    if built is None:
        return
    stored = getattr(built, name)
    if stored is None:
        assert name == "deadline"
        return
    assert not isinstance(stored, bool)
    assert isinstance(stored, (int, float))
    assert math.isfinite(stored)
    assert stored >= 0
    if name in INTEGER_FIELDS:
        assert isinstance(stored, int)
        assert stored >= 1


@PROPERTY
@given(name=st.sampled_from(("retry_on_status", "default_headers")), value=ANY_VALUE)
@example(name="retry_on_status", value=5)
@example(name="retry_on_status", value=[600, "x"])
@example(name="default_headers", value="ab")
@example(name="default_headers", value={"X-A": 5})
@example(name="default_headers", value=(("X-A", "a\r\nInjected: 1"),))
def test_config_collections_are_validated(name: str, value: object) -> None:
    built = _assert_clear_rejection(name, value)
    if built is None:
        return
    if name == "default_headers":
        for header, text in built.default_headers:
            assert isinstance(header, str)
            assert isinstance(text, str)
            assert "\r" not in text
            assert "\n" not in text


# -- requests built from caller input ------------------------------------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def _settings(**overrides: Any) -> dict[str, Any]:
    config = ClientConfig(
        timeout=5.0, max_retries=1, circuit_breaker_fail_max=1_000_000, **overrides
    )
    return {"service_name": "bad-input", "target_service": "bad-input-target", "config": config}


def _sync(url: str, **overrides: Any) -> SyncServiceClient:
    return SyncServiceClient(url, **_settings(**overrides))


def _async(url: str, **overrides: Any) -> AsyncServiceClient:
    return AsyncServiceClient(url, **_settings(**overrides))


@pytest.mark.facade_sync
@PROPERTY
@given(value=st.text(max_size=200))
@example(value="abc\r\nX-Injected: 1")
@example(value="x" * 129)
@example(value="é")
def test_correlation_id_values(http_server: ServerProcess, value: str) -> None:
    """Any correlation id: sent as it is when it is a safe header value, replaced otherwise;
    never an injected header, never an exception."""
    token = correlation_id_ctx.set(value)
    try:
        with _sync(http_server.base_url) as client:
            echoed = client.get("/echo")
    finally:
        correlation_id_ctx.reset(token)
    sent = echoed["headers"]["x-correlation-id"]
    assert "x-injected" not in echoed["headers"]
    safe = 0 < len(value) <= 128 and value.isascii() and value.isprintable()
    if safe and value == value.strip():
        assert sent == value
        _count("correlation id kept")
    elif not safe:
        assert len(sent) == 32
        assert sent != value
        _count("correlation id replaced")


SEGMENT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["{", "}", "{x}", "%2e%2e", "%2F", "a/../b", "?x=1", "#frag", "\\", "é", "\u202e"]
    ),
)


@pytest.mark.facade_sync
@PROPERTY
@given(value=SEGMENT.filter(lambda v: v not in (".", "..")))
def test_path_params_stay_one_segment(http_server: ServerProcess, value: str) -> None:
    """A path parameter fills exactly one segment of its template, whatever it holds."""
    with _sync(http_server.base_url) as client:
        echoed = client.get("/echo/{value}/end", path_params={"value": value})
    head, _, rest = echoed["path"].partition("/echo/")
    assert head == ""
    segment, _, tail = rest.partition("/")
    assert tail == "end"
    assert unquote(segment) == value
    _count("path param kept in its segment")


@pytest.mark.parametrize(
    "facade",
    [
        pytest.param("sync", marks=pytest.mark.facade_sync),
        pytest.param("async", marks=pytest.mark.facade_async),
    ],
)
@pytest.mark.parametrize("value", ["..", "."])
def test_dot_segments_stay_one_segment(http_server: ServerProcess, facade: str, value: str) -> None:
    if facade == "sync":
        with _sync(http_server.base_url) as client:
            echoed = client.get("/echo/{value}/end", path_params={"value": value})
    else:

        async def call() -> Any:
            async with _async(http_server.base_url) as client:
                return await client.get("/echo/{value}/end", path_params={"value": value})

        echoed = asyncio.run(call())
    assert echoed["path"].count("/") == 3, echoed["path"]


@pytest.mark.facade_sync
@PROPERTY
@given(
    template=st.text(max_size=30).map(lambda t: "/" + t),
    params=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_templates_fail_clearly(http_server: ServerProcess, template: str, params: Any) -> None:
    """Any template with any params: a response, a ServiceClientError, or a ValueError that
    names the template — never a KeyError, IndexError or AttributeError from formatting."""
    refusal = None
    with _sync(http_server.base_url) as client:
        try:
            client.get(template, path_params=params)
        except ServiceClientError:
            pass
        except ValueError as error:
            refusal = str(error)
    if refusal is None:
        _count("template sent")
    else:
        assert "template" in refusal or "path" in refusal, refusal
        _count("template refused")


# -- response bodies -----------------------------------------------------------------------

LIMIT = 256
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)
BODIES = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=LIMIT * 2),
    st.text(max_size=LIMIT * 2).map(str.encode),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()).flatmap(
        lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda n: b[:n])
    ),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/html", "text/plain; charset=latin-1", "", "application/xml"]
)


def _raw(status: int, body: bytes, content_type: str, announced: int) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {announced}", "Connection: close"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.facade_sync
@pytest.mark.facade_async
@PROPERTY
@given(
    body=BODIES,
    content_type=CONTENT_TYPES,
    status=st.sampled_from([200, 201, 404, 500]),
    truncated=st.booleans(),
    facade=st.sampled_from(["sync", "async"]),
)
@example(b"[1]" * LIMIT, "application/json", 200, False, "sync")
@example(b"[1]" * LIMIT, "application/json", 200, False, "async")
@example(b"<html>502</html>", "text/html", 200, False, "async")
@example(b'{"detail": "x"}', "text/html", 200, True, "sync")
def test_response_bodies(
    hostile: HostileServer,
    body: bytes,
    content_type: str,
    status: int,
    truncated: bool,
    facade: str,
) -> None:
    """Whatever body arrives, the call ends in the value it encodes or in the error that
    says what was wrong with it."""
    announced = len(body) + (10 if truncated else 0)
    hostile.script(_raw(status, body, content_type, announced))
    try:
        if facade == "sync":
            with _sync(hostile.url, max_response_bytes=LIMIT) as client:
                outcome: Any = client.get("/script")
        else:

            async def call() -> Any:
                async with _async(hostile.url, max_response_bytes=LIMIT) as client:
                    return await client.get("/script")

            outcome = asyncio.run(call())
    except ServiceClientError as error:
        outcome = error
    if status >= 400 and announced > LIMIT:
        # The status must reach the caller even with a body too large: 5xx and 429 as a
        # ServiceResponseError, other 4xx as a ServiceResponseTooLargeError naming it.
        if isinstance(outcome, ServiceResponseError):
            assert outcome.status_code == status
        else:
            assert isinstance(outcome, ServiceResponseTooLargeError), outcome
            assert f"status {status}" in str(outcome), outcome
        _count("error status, body over max_response_bytes")
    elif announced > LIMIT:
        assert isinstance(outcome, ServiceResponseTooLargeError), outcome
        _count("body over max_response_bytes")
    elif truncated:
        assert isinstance(outcome, ServiceConnectionError), outcome
        _count("truncated body")
    elif status >= 400:
        assert isinstance(outcome, ServiceResponseError), outcome
        assert outcome.status_code == status
        assert isinstance(outcome.detail, str)
        assert len(outcome.detail) <= 500
        _count("error status with odd body")
    elif not body.strip():
        assert outcome is None
    else:
        try:
            expected = json.loads(body)
        except ValueError:
            assert isinstance(outcome, ServiceDecodeError), outcome
            assert not isinstance(outcome, ServiceResponseTooLargeError)
            _count("not JSON")
        else:
            assert outcome == expected
            _count("JSON of any shape")


def test_summary(row: Row) -> None:
    if not _tally:
        pytest.skip("no property ran")
    row.scenario = "B1"
    row.title = "Bad input (hypothesis, derandomized)"
    row.load = (
        f"{EXAMPLES} examples per property: ClientConfig fields, correlation ids, path params, "
        "path templates, response bodies over both facades"
    )
    row.faults = (
        "any value of any type in config fields; CR/LF, unicode, over-long correlation ids; "
        "'{', '..', '/', '%', '?', '#', unicode in path params; non-JSON, truncated, "
        f"wrong-shape bodies, bodies over max_response_bytes ({LIMIT} B), odd content types"
    )
    row.outcome = ", ".join(f"{name}: {count}" for name, count in sorted(_tally.items()))
    row.lost = "-"
    row.figures = dict(_tally)

"""Hostile servers and careless callers, against a real server, on both facades alike.

Each test runs once per facade through :class:`Driver`, which calls either client
synchronously, so that one scenario proves the same behaviour on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import traceback
import tracemalloc
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    AsyncServiceClient,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponse,
    ServiceResponseError,
    ServiceResponseTooLargeError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    testing,
)
from commclient._breaker import breakers
from commclient._errors import ClientClosedError
from tests.http_server import ServerProcess
from tests.integration.conftest import Driver, Names, fast_config
from tests.reliability.hostile_server import HostileServer

# --- 1. the size limit applies to decoded bytes, read as they arrive -------------------------


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_a_gzip_bomb_stops_at_the_decoded_limit(make: Any, chunked: str) -> None:
    # A generous read timeout: the server compresses 30 MB before its first answer.
    call = make(fast_config(max_response_bytes=1_000_000, timeout=30.0))
    # About 30 kB on the wire, 30 MB once inflated.
    small = call("get", "/gzip", params={"bytes": "500000", "chunked": chunked})
    assert len(small) == 499_998
    tracemalloc.start()
    try:
        with pytest.raises(ServiceResponseTooLargeError):
            call("get", "/gzip", params={"bytes": "30000000", "chunked": chunked})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, peak
    assert call("get", "/echo")["method"] == "GET"


# --- 2. nested JSON cannot jam the breaker ---------------------------------------------------


def test_deeply_nested_json_is_a_decode_error_and_the_probe_is_judged(make: Any) -> None:
    call = make(fast_config(circuit_breaker_reset_timeout=0.2, max_retries=1))
    with pytest.raises(ServiceDecodeError):
        call("get", "/nested", params={"depth": "100000"})
    with pytest.raises(ServiceResponseError) as info:
        call("get", "/nested", params={"depth": "100000", "status": "503"})
    assert info.value.status_code == 503
    testing.force_open(call.names.service, call.names.target)
    time.sleep(0.3)
    # The probe gets a nested body: judged (a success: the target answered), not stuck.
    with pytest.raises(ServiceDecodeError):
        call("get", "/nested", params={"depth": "100000"})
    assert call.breaker == "closed"
    assert call("get", "/echo")["method"] == "GET"


# --- 3. the deadline bounds the whole attempt: headers, redirects ----------------------------


def test_deadline_bounds_response_headers_that_trickle_in(
    make: Any, http_server: ServerProcess, names: Names
) -> None:
    call = make(fast_config(timeout=5.0, max_retries=1))
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError):
        # Every read is quick (0.25 s); the headers take about 10 s.
        call("get", "/slowhead", params={"pieces": "40", "interval": "0.25"}, deadline=1.0)
    assert time.monotonic() - started < 6.0
    assert call.breaker == "closed"


def test_a_head_cut_off_between_whole_header_lines_is_a_timeout(
    make: Any, hostile: HostileServer
) -> None:
    """One whole header line every 0.5 s: when the deadline shuts the socket down between
    two lines, http.client takes the cut for the end of the head; that is no 200."""
    call = make(fast_config(timeout=5.0, max_retries=1), base_url=hostile.url)
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError):
        call("get", "/slow-headers", deadline=1.0)
    assert time.monotonic() - started < 6.0


def test_deadline_bounds_a_chain_of_redirects(make: Any) -> None:
    call = make(fast_config(timeout=5.0, max_retries=1, follow_redirects=True))
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError):
        call(
            "get",
            "/redirect",
            params={"n": "2", "to": "/slowhead?pieces=40&interval=0.25"},
            deadline=1.0,
        )
    assert time.monotonic() - started < 6.0


# --- 6. foreign exceptions from a hostile server ---------------------------------------------


def test_a_retry_after_that_is_not_ascii_digits_is_ignored(make: Any) -> None:
    call = make()
    # Not testing.no_wait(): the header must be parsed for the test to mean anything.
    with pytest.raises(ServiceResponseError) as info:
        call("get", "/reply", params={"status": "503", "header": "Retry-After:\u00b2"})
    assert info.value.attempts == 3


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.mark.parametrize(
    "path",
    ["/content-length-superscript", "/content-length-negative", "/content-length-conflict"],
)
def test_a_content_length_that_frames_no_body_is_a_bad_server(
    make: Any, hostile: HostileServer, path: str
) -> None:
    """RFC 9112 6.3: an unrecoverable error of the server, not a body read to the close
    (and returned as a value) nor the caller-bug ``ValueError``."""
    call = make(fast_config(max_retries=1), base_url=hostile.url)
    with pytest.raises((ServiceDecodeError, ServiceConnectionError)):
        call("get", path)


@pytest.mark.parametrize(
    "location", ["ftp://127.0.0.1/file", "http://[bad", "http://exa mple.test/"]
)
def test_a_redirect_the_client_cannot_follow_is_surfaced(make: Any, location: str) -> None:
    call = make(fast_config(follow_redirects=True))
    with pytest.raises(ServiceResponseError) as info:
        call("get", "/redirect", params={"to": location})
    assert info.value.status_code == 302
    assert info.value.headers["location"] == location
    assert call.breaker == "closed"


# --- 9. pool exhaustion is the client's saturation, not the target's failure -----------------


@pytest.mark.facade_async
def test_pool_timeout_is_not_a_target_failure(
    http_server: ServerProcess, names: Names, facade: str
) -> None:
    if facade != "async":
        pytest.skip("requests' pool never waits for a connection: it opens another")
    config = fast_config(
        max_connections=1,
        connect_timeout=1.0,
        pool_timeout=1.0,
        timeout=10.0,
        circuit_breaker_fail_max=1,
    )

    async def scenario() -> list[Any]:
        async with AsyncServiceClient(
            http_server.base_url,
            service_name=names.service,
            target_service=names.target,
            config=config,
            registry=CollectorRegistry(),
        ) as client:
            calls = [client.get("/slow", params={"seconds": "4"}) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert sum(isinstance(outcome, dict) for outcome in outcomes) == 1, outcomes
    waited = [outcome for outcome in outcomes if not isinstance(outcome, dict)]
    assert all(isinstance(outcome, ServiceTimeoutError) for outcome in waited), waited
    assert all(outcome.attempts == 1 for outcome in waited)
    assert testing.breaker_state(names.service, names.target) == "closed"


# --- 10. deadline edges ----------------------------------------------------------------------


@pytest.mark.parametrize("deadline", [0, -1, float("nan"), float("inf"), "1"])
def test_a_deadline_that_is_not_a_positive_number_is_refused(
    make: Any, http_server: ServerProcess, names: Names, deadline: Any
) -> None:
    call = make()
    key = names.key()
    with pytest.raises(ValueError, match="deadline"):
        call("get", "/echo", params={"key": key}, deadline=deadline)
    assert http_server.calls(key) == []


def test_a_deadline_spent_before_the_first_attempt_sends_nothing(
    make: Any, http_server: ServerProcess, names: Names
) -> None:
    call = make(fast_config(circuit_breaker_fail_max=1))
    key = names.key()
    with pytest.raises(ServiceTimeoutError):
        call("get", "/echo", params={"key": key}, deadline=1e-12)
    assert http_server.calls(key) == []
    assert call.breaker == "closed"


# --- 11. an oversized 5xx is a server error --------------------------------------------------


def test_an_oversized_5xx_counts_against_the_target(make: Any) -> None:
    call = make(fast_config(max_response_bytes=100_000, circuit_breaker_fail_max=2, max_retries=1))
    for _ in range(2):
        with pytest.raises(ServiceResponseError) as info:
            call("get", "/large", params={"bytes": "200000", "status": "503", "chunked": "1"})
        assert info.value.status_code == 503
    assert call.breaker == "open"
    with pytest.raises(ServiceUnavailableError):
        call("get", "/echo")


# --- 7. redirects ----------------------------------------------------------------------------


def test_redirects_are_not_followed_by_default(
    make: Any, http_server: ServerProcess, names: Names
) -> None:
    call = make()
    key = names.key()
    with pytest.raises(ServiceResponseError) as info:
        call("get", "/redirect", params={"to": f"/echo?key={key}"})
    assert info.value.status_code == 302
    assert info.value.headers["Location"] == f"/echo?key={key}"
    raw = call("request_raw", "GET", "/redirect", params={"to": "/echo"})
    assert raw.status_code == 302
    assert http_server.calls(key) == []


def test_a_followed_redirect_stays_inside_its_limits(
    make: Any, http_server: ServerProcess, names: Names
) -> None:
    call = make(fast_config(follow_redirects=True, max_redirects=3))
    key = names.key()
    assert call("get", "/redirect", params={"n": "2", "to": f"/echo?key={key}"})["path"] == "/echo"
    loop_key = names.key("loop")
    with pytest.raises(ServiceResponseError) as info:
        call("get", "/redirect", params={"key": loop_key, "n": "100"})
    assert info.value.status_code == 302
    # One request and three hops: the loop does not run on, and is no breaker failure.
    assert len(http_server.calls(loop_key)) == 4
    assert call.breaker == "closed"


@pytest.mark.parametrize("status", ["301", "302", "303"])
def test_a_post_answered_by_a_redirect_is_surfaced_not_resent_as_get(
    make: Any, http_server: ServerProcess, names: Names, status: str
) -> None:
    call = make(fast_config(follow_redirects=True))
    key = names.key()
    with pytest.raises(ServiceResponseError) as info:
        call("post", "/redirect", params={"status": status, "to": f"/echo?key={key}"}, json={})
    assert info.value.status_code == int(status)
    assert http_server.calls(key) == []


def test_307_repeats_the_method_and_the_body(make: Any) -> None:
    call = make(fast_config(follow_redirects=True))
    echo = call("post", "/redirect", params={"status": "307", "to": "/echo"}, json={"a": 1})
    assert (echo["method"], echo["body"]) == ("POST", {"a": 1})


def test_another_origin_never_gets_default_headers_or_credentials(
    facade: str, http_server: ServerProcess, names: Names
) -> None:
    config = fast_config(follow_redirects=True, default_headers=(("X-Api-Key", "k-123"),))
    driver = Driver(facade, http_server.base_url, names, config)
    try:
        same = driver("get", "/redirect", params={"to": "/echo"}, headers={"Authorization": "t"})
        assert same["headers"]["x-api-key"] == "k-123"
        assert same["headers"]["authorization"] == "t"
        other = f"http://localhost:{http_server.port}/echo"
        moved = driver("get", "/redirect", params={"to": other}, headers={"Authorization": "t"})
        assert "x-api-key" not in moved["headers"]
        assert "authorization" not in moved["headers"]
    finally:
        driver.close()


# --- 8. cookies ------------------------------------------------------------------------------


def test_no_cookie_is_kept_between_calls(make: Any) -> None:
    call = make()
    call("get", "/cookie", params={"value": "alice"})
    assert "cookie" not in call("get", "/echo")["headers"]


# --- 12. redaction ---------------------------------------------------------------------------


def test_a_query_in_the_path_is_merged_and_redacted(make: Any) -> None:
    call = make()
    with pytest.raises(ServiceResponseError) as info:
        call("get", "/status/404?token=s3cret&a=1", params={"b": "2"})
    assert info.value.url.count("?") == 1
    assert "s3cret" not in str(info.value)
    assert "token=[REDACTED]" in info.value.url
    assert "a=1" in info.value.url
    assert "b=2" in info.value.url


def test_the_chained_transport_error_hides_secret_query_values(
    facade: str, refused_port: int, names: Names
) -> None:
    driver = Driver(facade, f"http://127.0.0.1:{refused_port}", names, fast_config(max_retries=1))
    secret = "-".join(["s3", "cret"])
    try:
        with pytest.raises(ServiceConnectionError) as info:
            driver("get", "/x", params={"api_key": secret, "n": "1"})
    finally:
        driver.close()
    printed = "".join(traceback.format_exception(info.value))
    assert secret not in printed
    assert info.value.__cause__ is not None


def test_transport_log_records_carry_no_credentials_or_secret_query_values(
    make: Any, http_server: ServerProcess, refused_port: int
) -> None:
    """httpx logs each request at INFO, urllib3 each path and query at DEBUG: every record
    under the facade, at DEBUG, with all its fields, holds none of the secrets."""
    secrets = ("S3cr3tUserinfo", "S3cr3tToken", "S3cr3tPassword")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    params = {"token": "S3cr3tToken", "password": "S3cr3tPassword", "n": "1"}
    try:
        for port, path in ((http_server.port, "/echo"), (refused_port, "/echo")):
            call = make(base_url=f"http://svc:S3cr3tUserinfo@127.0.0.1:{port}")
            with contextlib.suppress(ServiceConnectionError):
                call("get", path, params=params)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    transport = [r for r in records if not r.name.startswith("commclient")]
    assert transport, "the transport logged nothing: the test would prove nothing"
    texts = [f"{r.getMessage()} {r.__dict__!r}" for r in records]
    texts += ["".join(traceback.format_exception(r.exc_info[1])) for r in records if r.exc_info]
    leaks = [(secret, text[:200]) for text in texts for secret in secrets if secret in text]
    assert not leaks, leaks[:3]


# --- 13. headers and params ------------------------------------------------------------------


def test_a_callers_lower_case_content_type_replaces_the_default_once(make: Any) -> None:
    call = make()
    echo = call("post", "/echo", json={"a": 1}, headers={"content-type": "application/vnd.x+json"})
    assert echo["headers"]["content-type"] == "application/vnd.x+json"
    assert echo["body"] == {"a": 1}


def test_params_as_pairs_in_errors_and_debug_logs(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    call = make()
    with (
        caplog.at_level(logging.DEBUG, logger="commclient"),
        testing.no_wait(),
        pytest.raises(ServiceResponseError) as info,
    ):
        call("get", "/status/503", params=[("a", "1"), ("a", "2"), ("token", "x")])
    assert info.value.url.endswith("/status/503?a=1&a=2&token=[REDACTED]")
    assert any("?a=1&a=2&token=[REDACTED]" in r.getMessage() for r in caplog.records)


# --- 14. lifecycle ---------------------------------------------------------------------------


def test_close_during_a_call_is_a_clear_error_not_a_target_failure(make: Any) -> None:
    call = make(fast_config(retry_min_wait=1.0, retry_max_wait=1.0, circuit_breaker_fail_max=2))
    client = call.client
    if call.loop is None:
        closer = threading.Timer(0.3, client.close)
        closer.start()
        with pytest.raises(ClientClosedError, match="closed during the call"):
            call("get", "/status/503")
        closer.join()
    else:

        async def scenario() -> None:
            task = asyncio.ensure_future(client.get("/status/503"))
            await asyncio.sleep(0.3)
            await client.close()
            with pytest.raises(ClientClosedError, match="closed during the call"):
                await task

        call.loop.run_until_complete(scenario())
    # The 503 counts; the close does not.
    assert call.breaker == "closed"
    assert breakers.find(call.names.service, call.names.target).circuit.fail_counter == 1


# --- 15. fork --------------------------------------------------------------------------------


def _calls_match(call: Any, who: str, count: int) -> int:
    """Make ``count`` calls; return how many got an answer that was not theirs."""
    wrong = 0
    for index in range(count):
        echo = call("get", "/echo", params={"who": who, "i": str(index)})
        if echo["query"] != {"who": who, "i": str(index)}:
            wrong += 1
    return wrong


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_parent_and_child_after_fork_each_get_their_own_responses(make: Any) -> None:
    call = make()
    assert call("get", "/echo")["method"] == "GET"  # a pooled keep-alive connection
    with warnings.catch_warnings():
        # Python 3.12 warns about fork() in a process with threads; it is the case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            if call.loop is not None:
                call.loop = asyncio.new_event_loop()
            os._exit(min(_calls_match(call, "child", 50), 100))
        except BaseException:
            os._exit(101)
    wrong = _calls_match(call, "parent", 50)
    _, status = os.waitpid(pid, 0)
    assert wrong == 0
    assert os.waitstatus_to_exitcode(status) == 0


def test_request_raw_returns_the_response(make: Any) -> None:
    call = make()
    created = call(
        "request_raw", "GET", "/reply", params={"status": "201", "header": "Location:/x/1"}
    )
    assert isinstance(created, ServiceResponse)
    assert (created.status_code, created.headers["location"], created.json()) == (201, "/x/1", {})
    not_modified = call("request_raw", "GET", "/reply", params={"status": "304"})
    assert not_modified.status_code == 304


def test_deadline_bounds_a_name_lookup_that_hangs(
    make: Any, http_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def hanging_resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("slow-dns.test", b"slow-dns.test"):
            time.sleep(8)
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_resolver)
    call = make(fast_config(max_retries=1), base_url=f"http://slow-dns.test:{http_server.port}")
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError):
        call("get", "/echo", deadline=1.0)
    assert time.monotonic() - started < 6.0


@pytest.mark.facade_async
def test_two_threads_opening_one_async_client_build_one_pool(
    http_server: ServerProcess, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    built: list[object] = []
    real_client = httpx.AsyncClient

    def slow_client(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # widens the window between the check and the claim
        built.append(object())
        return real_client(*args, **kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", slow_client)
    client = AsyncServiceClient(
        http_server.base_url,
        service_name=names.service,
        target_service=names.target,
        config=fast_config(),
        registry=CollectorRegistry(),
    )
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def in_its_own_loop() -> None:
        async def call() -> object:
            barrier.wait()
            try:
                return await client.get("/slow", params={"seconds": "1"})
            except RuntimeError as error:
                return error

        outcomes.append(asyncio.run(call()))

    threads = [threading.Thread(target=in_its_own_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(built) == 1
    errors = [outcome for outcome in outcomes if isinstance(outcome, RuntimeError)]
    assert len(errors) == 1
    assert "another event loop" in str(errors[0])

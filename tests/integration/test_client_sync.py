"""SyncServiceClient against a real HTTP server on loopback (mirrors test_client_async.py).

What a mock cannot show: real sockets timing out, a server that dies and comes back on the
same port, a connection reset after the request was read, and what the server really
received from each attempt (counted and timestamped at the server).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    ClientConfig,
    ServiceClientError,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponseError,
    ServiceResponseTooLargeError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    SyncServiceClient,
    correlation_id_ctx,
    testing,
)
from tests.http_server import ServerProcess
from tests.integration.conftest import MixedCalls, Names, fast_config

pytestmark = pytest.mark.facade_sync


def transport_errors() -> Any:
    """requests' exception module, imported only once the test runs (the marker skips it)."""
    import requests

    return requests.exceptions


def make_client(
    base_url: str,
    names: Names,
    config: ClientConfig | None = None,
    registry: CollectorRegistry | None = None,
) -> SyncServiceClient:
    return SyncServiceClient(
        base_url,
        service_name=names.service,
        target_service=names.target,
        config=config or fast_config(),
        registry=registry or CollectorRegistry(),
    )


def gaps(calls: list[dict[str, Any]]) -> list[float]:
    """Seconds between consecutive requests, by the server's clock."""
    return [later["t"] - earlier["t"] for earlier, later in itertools.pairwise(calls)]


@pytest.fixture
def correlation_id() -> Iterator[str]:
    value = f"corr-{time.monotonic_ns()}"
    token = correlation_id_ctx.set(value)
    yield value
    correlation_id_ctx.reset(token)


# --- Retry-After on a real 503 ------------------------------------------------------------


def test_retry_after_seconds_is_waited_between_attempts(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with make_client(http_server.base_url, names) as client:
        result = client.get("/flaky", params={"key": key, "first": "2", "retry_after": "1"})
    assert result["calls"] == 3
    received = http_server.calls(key)
    assert len(received) == 3
    # The backoff alone is at most retry_max_wait (0.05 s): only Retry-After explains 1 s.
    assert all(gap >= 0.99 for gap in gaps(received)), gaps(received)


def test_retry_after_http_date_is_waited_between_attempts(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with make_client(http_server.base_url, names) as client:
        result = client.get("/flaky", params={"key": key, "first": "1", "retry_after_date": "1"})
    assert result["calls"] == 2
    received = http_server.calls(key)
    assert len(received) == 2
    assert gaps(received)[0] >= 0.98


def test_retry_after_is_capped_by_retry_after_max(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    config = fast_config(retry_after_max=0.2)
    with make_client(http_server.base_url, names, config) as client:
        result = client.get("/flaky", params={"key": key, "first": "1", "retry_after": "30"})
    assert result["calls"] == 2
    assert 0.19 <= gaps(http_server.calls(key))[0] < 15


def test_503_exhausting_retries_is_a_response_error(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with (
        make_client(http_server.base_url, names) as client,
        testing.no_wait(),
        pytest.raises(ServiceResponseError) as info,
    ):
        client.get("/flaky", params={"key": key, "retry_after": "1"})
    assert info.value.status_code == 503
    assert info.value.attempts == 3
    assert info.value.detail == "try again later"
    assert len(http_server.calls(key)) == 3


# --- timeouts and the deadline ------------------------------------------------------------


def test_slow_endpoint_times_out_on_every_attempt(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    config = fast_config(timeout=0.3, max_retries=2)
    with (
        make_client(http_server.base_url, names, config) as client,
        testing.no_wait(),
        pytest.raises(ServiceTimeoutError) as info,
    ):
        client.get("/slow", params={"key": key, "seconds": "5"})
    assert info.value.attempts == 2
    assert isinstance(info.value.__cause__, transport_errors().Timeout)
    received = http_server.calls(key)
    assert len(received) == 2
    # The second attempt started only after the first had waited out its timeout.
    assert gaps(received)[0] >= 0.29


def test_deadline_cuts_the_attempt_timeout(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    config = fast_config(timeout=4.0, max_retries=5, deadline=1.0)
    with make_client(http_server.base_url, names, config) as client:
        started = time.monotonic()
        with pytest.raises(ServiceTimeoutError) as info:
            client.get("/slow", params={"key": key, "seconds": "10"})
        elapsed = time.monotonic() - started
    # Without the deadline: 5 attempts of 4 s. With it: one attempt cut to the 1 s left.
    assert 0.9 <= elapsed < 3.5
    assert info.value.attempts == 1
    assert len(http_server.calls(key)) == 1


def test_deadline_leaves_no_room_for_a_retry_after_wait(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with (
        make_client(http_server.base_url, names, fast_config(max_retries=5)) as client,
        pytest.raises(ServiceResponseError) as info,
    ):
        client.get("/flaky", params={"key": key, "retry_after": "1"}, deadline=1.6)
    # Attempt at 0 s, wait 1 s, attempt at 1 s; a second wait would end past 1.6 s.
    assert info.value.status_code == 503
    assert info.value.attempts == 2
    assert len(http_server.calls(key)) == 2


def test_deadline_bounds_a_response_that_trickles_in(
    http_server: ServerProcess, names: Names
) -> None:
    # Every read returns within the 0.5 s read timeout, but the whole body takes 6 s: only
    # the deadline can stop this call, and it must, at about 1 s.
    config = fast_config(timeout=0.5, deadline=1.0)
    with make_client(http_server.base_url, names, config) as client:
        started = time.monotonic()
        with pytest.raises(ServiceTimeoutError):
            client.get("/drip", params={"pieces": "20", "interval": "0.3"})
        elapsed = time.monotonic() - started
    assert elapsed < 3.5  # halfway between the 1 s deadline and the 6 s the body takes


# --- the server goes away and comes back --------------------------------------------------


def test_server_restart_opens_the_breaker_and_one_probe_closes_it(
    restartable_server: ServerProcess, names: Names
) -> None:
    server = restartable_server
    key = names.key()
    config = fast_config(
        max_retries=2,
        connect_timeout=0.5,
        circuit_breaker_fail_max=3,
        circuit_breaker_reset_timeout=3.0,
    )
    with make_client(server.base_url, names, config) as client, testing.no_wait():
        assert client.get("/echo", params={"key": key})["calls"] == 1

        server.stop()
        errors: list[ServiceClientError] = []
        for _ in range(6):
            with pytest.raises(ServiceClientError) as info:
                client.get("/echo", params={"key": key})
            errors.append(info.value)
        assert [type(error) for error in errors] == [ServiceConnectionError] * 3 + [
            ServiceUnavailableError
        ] * 3
        # The third call's first failure opens the breaker, which ends its retries.
        assert [error.attempts for error in errors[:3]] == [2, 2, 1]
        for error in errors[:3]:
            assert isinstance(error.__cause__, transport_errors().ConnectionError)
        assert all(error.attempts == 0 for error in errors[3:])
        assert testing.breaker_state(names.service, names.target) == "open"

        server.start()
        # Still open: rejected without a request reaching the restarted server.
        with pytest.raises(ServiceUnavailableError) as rejected:
            client.get("/echo", params={"key": key})
        assert 0 < rejected.value.retry_after <= 3.0
        assert server.calls(key) == []

        time.sleep(rejected.value.retry_after + 0.1)
        # Half-open: of eight simultaneous callers only the probe reaches the server.
        barrier = threading.Barrier(8)

        def call(_: int) -> object:
            barrier.wait()
            try:
                return client.get("/slow", params={"key": key, "seconds": "1"})
            except ServiceUnavailableError as error:
                return error

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(call, range(8)))
        succeeded = [outcome for outcome in outcomes if isinstance(outcome, dict)]
        assert len(succeeded) == 1, outcomes
        assert sum(isinstance(o, ServiceUnavailableError) for o in outcomes) == 7
        assert len(server.calls(key)) == 1
        assert testing.breaker_state(names.service, names.target) == "closed"
        assert client.get("/echo", params={"key": key})["calls"] == 2


def test_post_after_a_restart_does_not_reuse_the_dead_keep_alive_connection(
    restartable_server: ServerProcess, names: Names
) -> None:
    server = restartable_server
    key = names.key()
    with make_client(server.base_url, names) as client:
        assert client.post("/echo", params={"key": key}, json={"n": 1})["calls"] == 1
        # The pooled connection dies with the server; a POST on it would be lost unretried.
        server.restart()
        assert client.post("/echo", params={"key": key}, json={"n": 2})["calls"] == 1
    assert [request["body"] for request in server.calls(key)] == ['{"n": 2}']


# --- requests that must not be repeated ---------------------------------------------------


def test_post_read_timeout_is_not_repeated(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    config = fast_config(timeout=0.3)
    with (
        make_client(http_server.base_url, names, config) as client,
        testing.no_wait(),
        pytest.raises(ServiceTimeoutError) as info,
    ):
        client.post("/slow", params={"key": key, "seconds": "3"}, json={"job": 1})
    assert info.value.attempts == 1
    assert len(http_server.calls(key)) == 1


@pytest.mark.parametrize("how", ["reset", "close"])
def test_post_connection_lost_after_send_is_not_repeated(
    http_server: ServerProcess, names: Names, how: str
) -> None:
    key = names.key()
    with (
        make_client(http_server.base_url, names) as client,
        testing.no_wait(),
        pytest.raises(ServiceConnectionError) as info,
    ):
        client.post("/drop", params={"key": key, "how": how}, json={"job": 1})
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, transport_errors().ConnectionError)
    assert len(http_server.calls(key)) == 1


def test_get_connection_lost_after_send_is_repeated(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with (
        make_client(http_server.base_url, names) as client,
        testing.no_wait(),
        pytest.raises(ServiceConnectionError) as info,
    ):
        client.get("/drop", params={"key": key, "how": "reset"})
    assert info.value.attempts == 3
    assert len(http_server.calls(key)) == 3


def test_post_503_without_key_is_not_repeated(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    with (
        make_client(http_server.base_url, names) as client,
        testing.no_wait(),
        pytest.raises(ServiceResponseError) as info,
    ):
        client.post("/flaky", params={"key": key}, json={"job": 1})
    assert info.value.attempts == 1
    assert len(http_server.calls(key)) == 1


def test_post_with_idempotency_key_is_repeated_with_the_same_key(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    idempotency_key = f"job-{names.prefix}"
    with make_client(http_server.base_url, names) as client, testing.no_wait():
        result = client.post(
            "/flaky",
            params={"key": key, "first": "2"},
            json={"job": 1},
            idempotency_key=idempotency_key,
        )
    assert result["calls"] == 3
    assert result["headers"]["idempotency-key"] == idempotency_key
    received = http_server.calls(key)
    assert [request["idempotency_key"] for request in received] == [idempotency_key] * 3
    assert [request["body"] for request in received] == ['{"job": 1}'] * 3


def test_post_with_idempotency_key_is_repeated_after_a_read_timeout(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    config = fast_config(timeout=0.3)
    with make_client(http_server.base_url, names, config) as client, testing.no_wait():
        result = client.post(
            "/slow",
            params={"key": key, "seconds": "3", "first": "1"},
            json={"job": 1},
            idempotency_key="job-1",
        )
    assert result["calls"] == 2
    assert [request["idempotency_key"] for request in http_server.calls(key)] == ["job-1"] * 2


def test_post_to_a_refused_port_is_retried(refused_port: int, names: Names) -> None:
    with (
        make_client(f"http://127.0.0.1:{refused_port}", names) as client,
        testing.no_wait(),
        pytest.raises(ServiceConnectionError) as info,
    ):
        client.post("/echo", json={"job": 1})
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, transport_errors().ConnectionError)


def test_post_refused_then_accepted_reaches_the_server_once(
    restartable_server: ServerProcess, names: Names
) -> None:
    server = restartable_server
    server.stop()
    key = names.key()
    registry = CollectorRegistry()
    config = fast_config(max_retries=8, retry_min_wait=0.5, retry_max_wait=0.5)
    starter = threading.Timer(0.3, server.start)
    with make_client(server.base_url, names, config, registry) as client:
        starter.start()
        try:
            result = client.post("/echo", params={"key": key}, json={"job": 1})
        finally:
            starter.join()
    assert result["calls"] == 1
    assert len(server.calls(key)) == 1
    retried = registry.get_sample_value(
        "http_client_retries_total",
        {
            "source_service": names.service,
            "target_service": names.target,
            "method": "POST",
            "route": "/echo",
            "error_type": "connect_error",
        },
    )
    assert retried is not None
    assert retried >= 1


def test_retry_budget_bounds_attempts_against_a_failing_target(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    calls = 200
    # The default budget: 10 tokens to start with, 0.1 earned per call, one spent per retry.
    config = ClientConfig(max_retries=3, circuit_breaker_fail_max=10_000)
    started = time.monotonic()
    with make_client(http_server.base_url, names, config) as client, testing.no_wait():
        for _ in range(calls):
            with pytest.raises(ServiceResponseError):
                client.get("/status/503", params={"key": key})
    attempts = len(http_server.calls(key))
    elapsed = time.monotonic() - started
    # Naive retrying would make 3 x 200 = 600; the budget allows 200 + 10 + 200 x 0.1, plus
    # the floor of one retry per second (one to start with, one per second elapsed).
    assert calls < attempts <= calls + 10 + calls * 0.1 + 1 + math.ceil(elapsed)


# --- correlation id -----------------------------------------------------------------------


def test_correlation_id_is_sent_on_every_attempt(
    http_server: ServerProcess, names: Names, correlation_id: str
) -> None:
    key = names.key()
    with make_client(http_server.base_url, names) as client, testing.no_wait():
        client.get("/flaky", params={"key": key, "first": "2"})
    received = http_server.calls(key)
    assert [request["correlation_id"] for request in received] == [correlation_id] * 3


def test_unsafe_correlation_id_is_replaced_on_every_attempt(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    token = correlation_id_ctx.set("evil\r\nX-Injected: 1")
    try:
        with make_client(http_server.base_url, names) as client, testing.no_wait():
            result = client.get("/flaky", params={"key": key, "first": "1"})
    finally:
        correlation_id_ctx.reset(token)
    assert "x-injected" not in result["headers"]
    sent = [request["correlation_id"] for request in http_server.calls(key)]
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert sent[0] is not None
    assert sent[0].isprintable()
    assert "evil" not in sent[0]


# --- what the server answers --------------------------------------------------------------


def test_json_body_round_trip(http_server: ServerProcess, names: Names) -> None:
    with make_client(http_server.base_url, names) as client:
        result = client.put(
            "/echo/{item}", path_params={"item": "a b"}, json={"name": "x"}, params={"q": "1"}
        )
    assert result["method"] == "PUT"
    assert result["path"] == "/echo/a%20b"
    assert result["query"] == {"q": "1"}
    assert result["body"] == {"name": "x"}


def test_204_returns_none(http_server: ServerProcess, names: Names) -> None:
    with make_client(http_server.base_url, names) as client:
        assert client.delete("/status/204") is None


def test_404_is_raised_at_once(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    with (
        make_client(http_server.base_url, names) as client,
        pytest.raises(ServiceResponseError) as info,
    ):
        client.get("/status/404", params={"key": key})
    assert info.value.status_code == 404
    assert info.value.attempts == 1
    assert info.value.detail.startswith("status 404 for /status/404")
    assert len(http_server.calls(key)) == 1


def test_html_502_page_of_a_proxy(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    with (
        make_client(http_server.base_url, names) as client,
        testing.no_wait(),
        pytest.raises(ServiceResponseError) as info,
    ):
        client.get("/html/502", params={"key": key})
    assert info.value.status_code == 502
    assert info.value.attempts == 3
    assert info.value.detail.startswith("<html>")
    assert len(info.value.detail) == 500
    assert info.value.response_body.startswith(b"<html>")
    assert len(http_server.calls(key)) == 3


def test_html_page_with_200_is_a_decode_error(http_server: ServerProcess, names: Names) -> None:
    with (
        make_client(http_server.base_url, names) as client,
        pytest.raises(ServiceDecodeError) as info,
    ):
        client.get("/html/200")
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_large_body_is_refused(http_server: ServerProcess, names: Names, chunked: str) -> None:
    config = fast_config(max_response_bytes=100_000)
    with make_client(http_server.base_url, names, config) as client:
        assert len(client.get("/large", params={"bytes": "90000", "chunked": chunked})) == 89_998
        with pytest.raises(ServiceResponseTooLargeError):
            client.get("/large", params={"bytes": "5000000", "chunked": chunked})
        # The connection pool survives the refused body.
        assert client.get("/echo")["method"] == "GET"


def test_metrics_count_every_attempt_by_outcome(http_server: ServerProcess, names: Names) -> None:
    registry = CollectorRegistry()
    with make_client(http_server.base_url, names, registry=registry) as client, testing.no_wait():
        client.get("/flaky", params={"key": names.key(), "first": "2"})
    labels = {"source_service": names.service, "target_service": names.target, "method": "GET"}
    sample = registry.get_sample_value
    endpoint = {**labels, "route": "/flaky"}
    assert sample("http_client_requests_total", {**endpoint, "status": "503"}) == 2
    assert sample("http_client_requests_total", {**endpoint, "status": "success"}) == 1
    assert sample("http_client_retries_total", {**endpoint, "error_type": "503"}) == 2
    assert sample("http_client_request_duration_seconds_count", endpoint) == 3


# --- the caller's own mistakes -------------------------------------------------------------


def test_a_request_the_transport_refuses_to_send_is_not_a_target_failure(
    http_server: ServerProcess, names: Names
) -> None:
    # A header value with a line break is the caller's bug: the transport refuses it before
    # anything is sent. Like a 4xx, it must not count against the target: two such calls
    # must not open the breaker and cut every caller in the process off a healthy service.
    key = names.key()
    config = fast_config(circuit_breaker_fail_max=2)
    with make_client(http_server.base_url, names, config) as client, testing.no_wait():
        for _ in range(3):
            with pytest.raises((ValueError, ServiceClientError)) as info:
                client.get("/echo", params={"key": key}, headers={"X-Note": "a\nb"})
            # Not sent, so not retried: the next attempt would be refused the same way.
            assert getattr(info.value, "attempts", 0) <= 1
        assert testing.breaker_state(names.service, names.target) == "closed"
        assert client.get("/echo", params={"key": key})["calls"] == 1


# --- concurrency --------------------------------------------------------------------------


def test_sixteen_threads_on_one_client_each_get_their_own_outcome(
    mixed_calls: MixedCalls, names: Names
) -> None:
    threads, per_thread = 16, 7
    calls = [mixed_calls.call(index) for index in range(threads * per_thread)]
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(threads)

    def worker(first: int) -> None:
        barrier.wait()
        for call in calls[first::threads]:
            correlation_id_ctx.set(call.correlation_id)
            try:
                outcomes[call.index] = client.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    idempotency_key=call.idempotency_key,
                )
            except ServiceClientError as error:
                outcomes[call.index] = error

    with (
        make_client(mixed_calls.server.base_url, names, mixed_calls.config) as client,
        testing.no_wait(),
        ThreadPoolExecutor(threads) as pool,
    ):
        for future in [pool.submit(worker, first) for first in range(threads)]:
            future.result()
    assert sorted(outcomes) == [call.index for call in calls]
    for call in calls:
        mixed_calls.check(call, outcomes[call.index])

"""AsyncServiceClient against a real HTTP server on loopback (mirrors test_client_sync.py).

What a mock cannot show: real sockets timing out, a server that dies and comes back on the
same port, a connection reset after the request was read, and what the server really
received from each attempt (counted and timestamped at the server). Cancellation and
event loops have sections of their own here: sync code has neither.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    AsyncServiceClient,
    ClientConfig,
    ServiceClientError,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponseError,
    ServiceResponseTooLargeError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    correlation_id_ctx,
    testing,
)
from tests.http_server import ServerProcess
from tests.integration.conftest import MixedCall, MixedCalls, Names, fast_config

pytestmark = pytest.mark.facade_async


def transport_errors() -> Any:
    """httpx, imported only once the test runs (the marker skips it)."""
    import httpx

    return httpx


def make_client(
    base_url: str,
    names: Names,
    config: ClientConfig | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncServiceClient:
    return AsyncServiceClient(
        base_url,
        service_name=names.service,
        target_service=names.target,
        config=config or fast_config(),
        registry=registry or CollectorRegistry(),
    )


def gaps(calls: list[dict[str, Any]]) -> list[float]:
    """Seconds between consecutive requests, by the server's clock."""
    return [later["t"] - earlier["t"] for earlier, later in itertools.pairwise(calls)]


# --- Retry-After on a real 503 ------------------------------------------------------------


@pytest.mark.asyncio
async def test_retry_after_seconds_is_waited_between_attempts(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    async with make_client(http_server.base_url, names) as client:
        result = await client.get("/flaky", params={"key": key, "first": "2", "retry_after": "1"})
    assert result["calls"] == 3
    received = http_server.calls(key)
    assert len(received) == 3
    # The backoff alone is at most retry_max_wait (0.05 s): only Retry-After explains 1 s.
    assert all(gap >= 0.99 for gap in gaps(received)), gaps(received)


@pytest.mark.asyncio
async def test_retry_after_http_date_is_waited_between_attempts(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    async with make_client(http_server.base_url, names) as client:
        result = await client.get(
            "/flaky", params={"key": key, "first": "1", "retry_after_date": "1"}
        )
    assert result["calls"] == 2
    received = http_server.calls(key)
    assert len(received) == 2
    assert gaps(received)[0] >= 0.98


@pytest.mark.asyncio
async def test_retry_after_is_capped_by_retry_after_max(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    config = fast_config(retry_after_max=0.2)
    async with make_client(http_server.base_url, names, config) as client:
        result = await client.get("/flaky", params={"key": key, "first": "1", "retry_after": "30"})
    assert result["calls"] == 2
    assert 0.19 <= gaps(http_server.calls(key))[0] < 15


@pytest.mark.asyncio
async def test_503_exhausting_retries_is_a_response_error(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with testing.no_wait():
        async with make_client(http_server.base_url, names) as client:
            with pytest.raises(ServiceResponseError) as info:
                await client.get("/flaky", params={"key": key, "retry_after": "1"})
    assert info.value.status_code == 503
    assert info.value.attempts == 3
    assert info.value.detail == "try again later"
    assert len(http_server.calls(key)) == 3


# --- timeouts and the deadline ------------------------------------------------------------


@pytest.mark.asyncio
async def test_slow_endpoint_times_out_on_every_attempt(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    config = fast_config(timeout=0.3, max_retries=2)
    with testing.no_wait():
        async with make_client(http_server.base_url, names, config) as client:
            with pytest.raises(ServiceTimeoutError) as info:
                await client.get("/slow", params={"key": key, "seconds": "5"})
    assert info.value.attempts == 2
    assert isinstance(info.value.__cause__, transport_errors().TimeoutException)
    received = http_server.calls(key)
    assert len(received) == 2
    # The second attempt started only after the first had waited out its timeout.
    assert gaps(received)[0] >= 0.29


@pytest.mark.asyncio
async def test_deadline_cuts_the_attempt_timeout(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    config = fast_config(timeout=4.0, max_retries=5, deadline=1.0)
    async with make_client(http_server.base_url, names, config) as client:
        started = time.monotonic()
        with pytest.raises(ServiceTimeoutError) as info:
            await client.get("/slow", params={"key": key, "seconds": "10"})
        elapsed = time.monotonic() - started
    # Without the deadline: 5 attempts of 4 s. With it: one attempt cut to the 1 s left.
    assert 0.9 <= elapsed < 3.5
    assert info.value.attempts == 1
    assert len(http_server.calls(key)) == 1


@pytest.mark.asyncio
async def test_deadline_leaves_no_room_for_a_retry_after_wait(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    async with make_client(http_server.base_url, names, fast_config(max_retries=5)) as client:
        with pytest.raises(ServiceResponseError) as info:
            await client.get("/flaky", params={"key": key, "retry_after": "1"}, deadline=1.6)
    # Attempt at 0 s, wait 1 s, attempt at 1 s; a second wait would end past 1.6 s.
    assert info.value.status_code == 503
    assert info.value.attempts == 2
    assert len(http_server.calls(key)) == 2


@pytest.mark.asyncio
async def test_deadline_bounds_a_response_that_trickles_in(
    http_server: ServerProcess, names: Names
) -> None:
    # Every read returns within the 0.5 s read timeout, but the whole body takes 6 s: only
    # the deadline can stop this call, and it must, at about 1 s.
    config = fast_config(timeout=0.5, deadline=1.0)
    async with make_client(http_server.base_url, names, config) as client:
        started = time.monotonic()
        with pytest.raises(ServiceTimeoutError):
            await client.get("/drip", params={"pieces": "20", "interval": "0.3"})
        elapsed = time.monotonic() - started
    assert elapsed < 3.5  # halfway between the 1 s deadline and the 6 s the body takes


# --- the server goes away and comes back --------------------------------------------------


@pytest.mark.asyncio
async def test_server_restart_opens_the_breaker_and_one_probe_closes_it(
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
    with testing.no_wait():
        async with make_client(server.base_url, names, config) as client:
            assert (await client.get("/echo", params={"key": key}))["calls"] == 1

            server.stop()
            errors: list[ServiceClientError] = []
            for _ in range(6):
                with pytest.raises(ServiceClientError) as info:
                    await client.get("/echo", params={"key": key})
                errors.append(info.value)
            assert [type(error) for error in errors] == [ServiceConnectionError] * 3 + [
                ServiceUnavailableError
            ] * 3
            # The third call's first failure opens the breaker, which ends its retries.
            assert [error.attempts for error in errors[:3]] == [2, 2, 1]
            for error in errors[:3]:
                assert isinstance(error.__cause__, transport_errors().TransportError)
            assert all(error.attempts == 0 for error in errors[3:])
            assert testing.breaker_state(names.service, names.target) == "open"

            server.start()
            # Still open: rejected without a request reaching the restarted server.
            with pytest.raises(ServiceUnavailableError) as rejected:
                await client.get("/echo", params={"key": key})
            assert 0 < rejected.value.retry_after <= 3.0
            assert server.calls(key) == []

            await asyncio.sleep(rejected.value.retry_after + 0.1)
            # Half-open: of eight simultaneous callers only the probe reaches the server.
            outcomes = await asyncio.gather(
                *(client.get("/slow", params={"key": key, "seconds": "1"}) for _ in range(8)),
                return_exceptions=True,
            )
            succeeded = [outcome for outcome in outcomes if isinstance(outcome, dict)]
            assert len(succeeded) == 1, outcomes
            assert sum(isinstance(o, ServiceUnavailableError) for o in outcomes) == 7
            assert len(server.calls(key)) == 1
            assert testing.breaker_state(names.service, names.target) == "closed"
            assert (await client.get("/echo", params={"key": key}))["calls"] == 2


@pytest.mark.asyncio
async def test_post_after_a_restart_does_not_reuse_the_dead_keep_alive_connection(
    restartable_server: ServerProcess, names: Names
) -> None:
    server = restartable_server
    key = names.key()
    async with make_client(server.base_url, names) as client:
        assert (await client.post("/echo", params={"key": key}, json={"n": 1}))["calls"] == 1
        # The pooled connection dies with the server; a POST on it would be lost unretried.
        server.restart()
        assert (await client.post("/echo", params={"key": key}, json={"n": 2}))["calls"] == 1
    assert [request["body"] for request in server.calls(key)] == ['{"n": 2}']


# --- cancellation (asyncio only) ----------------------------------------------------------


async def _received(server: ServerProcess, key: str, count: int) -> None:
    """Wait until the server has received ``count`` requests under ``key``."""
    give_up = time.monotonic() + 10.0
    while len(server.calls(key)) < count:
        assert time.monotonic() < give_up, f"the server never received request {count}"
        await asyncio.sleep(0.01)


async def _cancel_in_flight(
    call: Awaitable[Any], server: ServerProcess, key: str, count: int
) -> None:
    """Cancel ``call`` once its request (the ``count``-th of ``key``) is at the server."""
    task = asyncio.ensure_future(call)
    await _received(server, key, count)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_cancelled_calls_are_not_breaker_failures(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    config = fast_config(circuit_breaker_fail_max=2)
    async with make_client(http_server.base_url, names, config) as client:
        for number in range(1, 5):
            call = client.get("/slow", params={"key": key, "seconds": "3"})
            await _cancel_in_flight(call, http_server, key, number)
        assert testing.breaker_state(names.service, names.target) == "closed"
        assert (await client.get("/echo", params={"key": key}))["calls"] == 5
    assert len(http_server.calls(key)) == 5


@pytest.mark.asyncio
async def test_a_cancelled_probe_lets_the_next_caller_probe(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    config = fast_config(circuit_breaker_fail_max=1, circuit_breaker_reset_timeout=0.3)
    async with make_client(http_server.base_url, names, config) as client:
        testing.force_open(names.service, names.target)
        await asyncio.sleep(0.4)
        probe = asyncio.ensure_future(client.get("/slow", params={"key": key, "seconds": "3"}))
        await _received(http_server, key, 1)
        assert testing.breaker_state(names.service, names.target) == "half-open"
        with pytest.raises(ServiceUnavailableError):
            await client.get("/echo", params={"key": key})
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        # The cancelled probe judged nothing: the next caller is the probe, and closes it.
        assert (await client.get("/echo", params={"key": key}))["calls"] == 2
        assert testing.breaker_state(names.service, names.target) == "closed"


@pytest.mark.asyncio
async def test_wait_for_timeout_cancels_the_call_cleanly(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    async with make_client(http_server.base_url, names) as client:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.get("/slow", params={"key": key, "seconds": "3"}), 0.5)
        # The connection of the cancelled call is not handed to the next one half-read: the
        # late answer of /slow must not be taken for the answer of /echo.
        result = await client.get("/echo", params={"key": key})
        assert result["path"] == "/echo"
        assert result["calls"] == len(http_server.calls(key))


@pytest.mark.asyncio
async def test_a_call_cancelled_while_its_response_closes_gives_back_its_connection(
    http_server: ServerProcess, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpcore hands the connection back to its pool only once the response is closed, and
    its shield does not hold against a task's cancel(): a cancellation arriving during
    that close left the request in the pool for good, holding its connection, and with
    one connection every later call waited out its pool timeout."""
    from commclient import _async

    trace = _async._Progress.trace
    callers: list[asyncio.Task[Any]] = []

    async def cancelled_while_closing(progress: _async._Progress, event: str, info: Any) -> None:
        await trace(progress, event, info)
        task = asyncio.current_task()
        assert task is not None
        if event == "http11.send_request_headers.started" and not callers:
            callers.append(task)
        elif event == "http11.response_closed.started" and callers and not callers[0].done():
            callers[0].cancel()
            await asyncio.sleep(0)  # the caller's cancellation is delivered

    monkeypatch.setattr(_async._Progress, "trace", cancelled_while_closing)
    config = fast_config(max_connections=1, pool_timeout=1.0)
    async with make_client(http_server.base_url, names, config) as client:
        call = asyncio.create_task(client.get("/ping", deadline=5.0))  # a deadline: traced
        with pytest.raises(asyncio.CancelledError):
            await call
        assert callers == [call]
        assert await client.get("/ping") == {"ok": True}


_NEEDS_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.11 and later")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
@pytest.mark.parametrize(
    "how",
    [
        "cancel",
        pytest.param("asyncio.timeout", marks=_NEEDS_311),
        pytest.param("TaskGroup", marks=_NEEDS_311),
        "anyio",
    ],
)
@pytest.mark.asyncio
async def test_a_call_cut_off_during_its_close_by_any_canceller_leaks_nothing(
    http_server: ServerProcess, names: Names, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """However the caller is cancelled while its response closes (a task's cancel(), the
    end of an asyncio.timeout block, a failing sibling in a TaskGroup; an anyio cancel
    scope is held off by httpcore's shield), the pool's one connection serves the next
    call at once, no request is left in the pool, and no socket stays open once the close
    it left behind has run. Without the repair of a cut-off close, the next call waited
    out its pool timeout after each of the first three."""
    import anyio

    from commclient import _async

    trace = _async._Progress.trace
    cut_off: list[Callable[[], object]] = []

    async def cut_off_while_closing(progress: _async._Progress, event: str, info: Any) -> None:
        await trace(progress, event, info)
        if event == "http11.response_closed.started" and cut_off:
            cut_off.pop()()
            await asyncio.sleep(0)  # the cancellation is delivered here, inside the close

    async def fail() -> None:
        raise KeyError("a sibling fails")

    async def call() -> Any:
        return await client.get("/large", params={"bytes": "200000"}, deadline=5.0)

    async def in_timeout_block(loop: asyncio.AbstractEventLoop) -> None:
        async with asyncio.timeout(None) as block:
            cut_off.append(lambda: block.reschedule(loop.time()))
            await call()

    async def in_task_group() -> None:
        async with asyncio.TaskGroup() as group:
            cut_off.append(lambda: group.create_task(fail()))
            group.create_task(call())

    monkeypatch.setattr(_async._Progress, "trace", cut_off_while_closing)
    config = fast_config(max_connections=1, pool_timeout=1.0, max_response_bytes=1_000_000)
    async with make_client(http_server.base_url, names, config) as client:
        assert await client.get("/ping") == {"ok": True}
        opened = _open_descriptors()
        loop = asyncio.get_running_loop()
        if how == "cancel":
            task = asyncio.create_task(call())
            cut_off.append(task.cancel)
            with pytest.raises(asyncio.CancelledError):
                await task
        elif how == "asyncio.timeout":
            with pytest.raises(TimeoutError):
                await in_timeout_block(loop)
        elif how == "TaskGroup":
            with pytest.raises(BaseException, match="unhandled errors in a TaskGroup"):
                await in_task_group()
        else:
            with anyio.CancelScope() as scope:
                cut_off.append(scope.cancel)
                body = await call()
            # httpcore's shield holds against anyio: the close and the call run to their end.
            assert scope.cancel_called
            assert not scope.cancelled_caught
            assert len(body) == 200_000 - 2
        assert cut_off == []  # the cancellation came during the close
        assert await client.get("/ping", deadline=0.9) == {"ok": True}  # within the pool timeout
        pool = client._client._transport._pool  # type: ignore[union-attr]
        assert pool._requests == []
        await asyncio.gather(*_async._closing)
        assert _open_descriptors() == opened


@pytest.mark.asyncio
async def test_calls_cancelled_at_every_step_leave_one_connection_usable(
    http_server: ServerProcess, names: Names
) -> None:
    """One connection, more callers admitted than connections (they queue in httpcore's
    pool, where the connection is promised to one of them at a time), and callers
    cancelled after each step of the event loop: whoever is left gets served, and the
    connection is handed out again, not kept by a promise to a request that is gone."""
    config = fast_config(max_connections=1, max_concurrency=8, pool_timeout=2.0)
    async with make_client(http_server.base_url, names, config) as client:
        for steps in range(12):
            calls = [asyncio.create_task(client.get("/ping")) for _ in range(8)]
            for _ in range(steps):
                await asyncio.sleep(0)
            for call in calls[::2]:
                call.cancel()
            results = await asyncio.gather(*calls, return_exceptions=True)
            for call, result in zip(calls, results, strict=True):
                assert result == {"ok": True} or call.cancelled(), result
        assert await client.get("/ping", deadline=2.0) == {"ok": True}


# --- one client, several event loops ------------------------------------------------------


def test_client_used_from_successive_event_loops_leaks_no_connection(
    http_server: ServerProcess, names: Names
) -> None:
    # Legacy code often calls asyncio.run() per call with one long-lived client: each new
    # loop needs fresh connections, and those of the closed loop must be closed, not leaked.
    client = make_client(http_server.base_url, names)
    key = names.key()
    gc.collect()  # what earlier tests left behind is not this test's leak
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for expected in (1, 2, 3):
            assert asyncio.run(client.get("/echo", params={"key": key}))["calls"] == expected
        asyncio.run(client.close())
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_calls_cut_off_in_their_close_as_each_loop_ends_leave_nothing_behind(
    http_server: ServerProcess,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job run by asyncio.run() returns while a background call is closing its response:
    asyncio.run() cancels the call there, and the close it leaves to a task of its own
    must end before that loop closes, in each of several loops one after another (no
    task of a closed loop kept for good, none destroyed pending, no socket left open)."""
    from commclient import _async

    trace = _async._Progress.trace
    closing: list[asyncio.Event] = []

    async def held_while_closing(progress: _async._Progress, event: str, info: Any) -> None:
        await trace(progress, event, info)
        if event == "http11.response_closed.started" and closing:
            closing.pop().set()
            await asyncio.get_running_loop().create_future()  # until asyncio.run() cancels

    async def job(client: AsyncServiceClient) -> None:
        reached = asyncio.Event()
        closing.append(reached)
        asyncio.create_task(client.get("/ping", deadline=5.0))  # noqa: RUF006 - left running
        await reached.wait()

    monkeypatch.setattr(_async._Progress, "trace", held_while_closing)
    client = make_client(http_server.base_url, names, fast_config(max_connections=1))
    gc.collect()
    opened = _open_descriptors()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for _ in range(3):
            asyncio.run(job(client))
            assert closing == []
            assert _async._closing == set()
        asyncio.run(client.close())
        gc.collect()
    assert _open_descriptors() == opened
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_a_call_leaves_no_reference_cycle(http_server: ServerProcess, names: Names) -> None:
    """httpx's response and its stream refer to each other: every call left some 36
    objects that only the cycle collector frees, and with a thousand tasks alive its
    collections took a tenth of the client's time. (Bare httpx still leaves them.)"""

    async def main() -> int:
        async with make_client(http_server.base_url, names) as client:
            await client.get("/ping")  # connection, pool and metrics set up
            gc.collect()
            gc.disable()
            try:
                for _ in range(20):
                    assert await client.get("/ping") == {"ok": True}
                    await client.post("/echo", json={"n": 1})
                return gc.collect()
            finally:
                gc.enable()

    assert asyncio.run(main()) == 0


# --- requests that must not be repeated ---------------------------------------------------


@pytest.mark.asyncio
async def test_post_read_timeout_is_not_repeated(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    config = fast_config(timeout=0.3)
    with testing.no_wait():
        async with make_client(http_server.base_url, names, config) as client:
            with pytest.raises(ServiceTimeoutError) as info:
                await client.post("/slow", params={"key": key, "seconds": "3"}, json={"job": 1})
    assert info.value.attempts == 1
    assert len(http_server.calls(key)) == 1


@pytest.mark.parametrize("how", ["reset", "close"])
@pytest.mark.asyncio
async def test_post_connection_lost_after_send_is_not_repeated(
    http_server: ServerProcess, names: Names, how: str
) -> None:
    key = names.key()
    with testing.no_wait():
        async with make_client(http_server.base_url, names) as client:
            with pytest.raises(ServiceConnectionError) as info:
                await client.post("/drop", params={"key": key, "how": how}, json={"job": 1})
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, transport_errors().TransportError)
    assert len(http_server.calls(key)) == 1


@pytest.mark.asyncio
async def test_get_connection_lost_after_send_is_repeated(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with testing.no_wait():
        async with make_client(http_server.base_url, names) as client:
            with pytest.raises(ServiceConnectionError) as info:
                await client.get("/drop", params={"key": key, "how": "reset"})
    assert info.value.attempts == 3
    assert len(http_server.calls(key)) == 3


@pytest.mark.asyncio
async def test_post_503_without_key_is_not_repeated(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    with testing.no_wait():
        async with make_client(http_server.base_url, names) as client:
            with pytest.raises(ServiceResponseError) as info:
                await client.post("/flaky", params={"key": key}, json={"job": 1})
    assert info.value.attempts == 1
    assert len(http_server.calls(key)) == 1


@pytest.mark.asyncio
async def test_post_with_idempotency_key_is_repeated_with_the_same_key(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    idempotency_key = f"job-{names.prefix}"
    with testing.no_wait():
        async with make_client(http_server.base_url, names) as client:
            result = await client.post(
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


@pytest.mark.asyncio
async def test_post_with_idempotency_key_is_repeated_after_a_read_timeout(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    config = fast_config(timeout=0.3)
    with testing.no_wait():
        async with make_client(http_server.base_url, names, config) as client:
            result = await client.post(
                "/slow",
                params={"key": key, "seconds": "3", "first": "1"},
                json={"job": 1},
                idempotency_key="job-1",
            )
    assert result["calls"] == 2
    assert [request["idempotency_key"] for request in http_server.calls(key)] == ["job-1"] * 2


@pytest.mark.asyncio
async def test_post_to_a_refused_port_is_retried(refused_port: int, names: Names) -> None:
    with testing.no_wait():
        async with make_client(f"http://127.0.0.1:{refused_port}", names) as client:
            with pytest.raises(ServiceConnectionError) as info:
                await client.post("/echo", json={"job": 1})
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, transport_errors().TransportError)


@pytest.mark.asyncio
async def test_post_refused_then_accepted_reaches_the_server_once(
    restartable_server: ServerProcess, names: Names
) -> None:
    server = restartable_server
    server.stop()
    key = names.key()
    registry = CollectorRegistry()
    config = fast_config(max_retries=8, retry_min_wait=0.5, retry_max_wait=0.5)
    starter = threading.Timer(0.3, server.start)
    async with make_client(server.base_url, names, config, registry) as client:
        starter.start()
        try:
            result = await client.post("/echo", params={"key": key}, json={"job": 1})
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


@pytest.mark.asyncio
async def test_retry_budget_bounds_attempts_against_a_failing_target(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    calls = 200
    # The default budget: 10 tokens to start with, 0.1 earned per call, one spent per retry.
    config = ClientConfig(max_retries=3, circuit_breaker_fail_max=10_000)
    started = time.monotonic()
    with testing.no_wait():
        async with make_client(http_server.base_url, names, config) as client:
            for _ in range(calls):
                with pytest.raises(ServiceResponseError):
                    await client.get("/status/503", params={"key": key})
    attempts = len(http_server.calls(key))
    elapsed = time.monotonic() - started
    # Naive retrying would make 3 x 200 = 600; the budget allows 200 + 10 + 200 x 0.1, plus
    # the floor of one retry per second (one to start with, one per second elapsed).
    assert calls < attempts <= calls + 10 + calls * 0.1 + 1 + math.ceil(elapsed)


# --- correlation id -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_correlation_id_is_sent_on_every_attempt(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    # The test runs in a task of its own context: setting the variable here leaks nowhere.
    correlation_id = f"corr-{names.prefix}"
    correlation_id_ctx.set(correlation_id)
    with testing.no_wait():
        async with make_client(http_server.base_url, names) as client:
            await client.get("/flaky", params={"key": key, "first": "2"})
    received = http_server.calls(key)
    assert [request["correlation_id"] for request in received] == [correlation_id] * 3


@pytest.mark.asyncio
async def test_unsafe_correlation_id_is_replaced_on_every_attempt(
    http_server: ServerProcess, names: Names
) -> None:
    key = names.key()
    token = correlation_id_ctx.set("evil\r\nX-Injected: 1")
    try:
        with testing.no_wait():
            async with make_client(http_server.base_url, names) as client:
                result = await client.get("/flaky", params={"key": key, "first": "1"})
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


@pytest.mark.asyncio
async def test_json_body_round_trip(http_server: ServerProcess, names: Names) -> None:
    async with make_client(http_server.base_url, names) as client:
        result = await client.put(
            "/echo/{item}", path_params={"item": "a b"}, json={"name": "x"}, params={"q": "1"}
        )
    assert result["method"] == "PUT"
    assert result["path"] == "/echo/a%20b"
    assert result["query"] == {"q": "1"}
    assert result["body"] == {"name": "x"}


@pytest.mark.asyncio
async def test_204_returns_none(http_server: ServerProcess, names: Names) -> None:
    async with make_client(http_server.base_url, names) as client:
        assert await client.delete("/status/204") is None


@pytest.mark.asyncio
async def test_404_is_raised_at_once(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    async with make_client(http_server.base_url, names) as client:
        with pytest.raises(ServiceResponseError) as info:
            await client.get("/status/404", params={"key": key})
    assert info.value.status_code == 404
    assert info.value.attempts == 1
    assert info.value.detail.startswith("status 404 for /status/404")
    assert len(http_server.calls(key)) == 1


@pytest.mark.asyncio
async def test_html_502_page_of_a_proxy(http_server: ServerProcess, names: Names) -> None:
    key = names.key()
    with testing.no_wait():
        async with make_client(http_server.base_url, names) as client:
            with pytest.raises(ServiceResponseError) as info:
                await client.get("/html/502", params={"key": key})
    assert info.value.status_code == 502
    assert info.value.attempts == 3
    assert info.value.detail.startswith("<html>")
    assert len(info.value.detail) == 500
    assert info.value.response_body.startswith(b"<html>")
    assert len(http_server.calls(key)) == 3


@pytest.mark.asyncio
async def test_html_page_with_200_is_a_decode_error(
    http_server: ServerProcess, names: Names
) -> None:
    async with make_client(http_server.base_url, names) as client:
        with pytest.raises(ServiceDecodeError) as info:
            await client.get("/html/200")
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("chunked", ["0", "1"])
@pytest.mark.asyncio
async def test_large_body_is_refused(
    http_server: ServerProcess, names: Names, chunked: str
) -> None:
    config = fast_config(max_response_bytes=100_000)
    async with make_client(http_server.base_url, names, config) as client:
        assert (
            len(await client.get("/large", params={"bytes": "90000", "chunked": chunked})) == 89_998
        )
        with pytest.raises(ServiceResponseTooLargeError):
            await client.get("/large", params={"bytes": "5000000", "chunked": chunked})
        # The connection pool survives the refused body.
        assert (await client.get("/echo"))["method"] == "GET"


@pytest.mark.asyncio
async def test_metrics_count_every_attempt_by_outcome(
    http_server: ServerProcess, names: Names
) -> None:
    registry = CollectorRegistry()
    with testing.no_wait():
        async with make_client(http_server.base_url, names, registry=registry) as client:
            await client.get("/flaky", params={"key": names.key(), "first": "2"})
    labels = {"source_service": names.service, "target_service": names.target, "method": "GET"}
    sample = registry.get_sample_value
    endpoint = {**labels, "route": "/flaky"}
    assert sample("http_client_requests_total", {**endpoint, "status": "503"}) == 2
    assert sample("http_client_requests_total", {**endpoint, "status": "success"}) == 1
    assert sample("http_client_retries_total", {**endpoint, "error_type": "503"}) == 2
    assert sample("http_client_request_duration_seconds_count", endpoint) == 3


# --- the caller's own mistakes -------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_request_the_transport_refuses_to_send_is_not_a_target_failure(
    http_server: ServerProcess, names: Names
) -> None:
    # A header value with a line break is the caller's bug: the transport refuses it before
    # anything is sent. Like a 4xx, it must not count against the target: two such calls
    # must not open the breaker and cut every caller in the process off a healthy service.
    key = names.key()
    config = fast_config(circuit_breaker_fail_max=2)
    with testing.no_wait():
        async with make_client(http_server.base_url, names, config) as client:
            for _ in range(3):
                with pytest.raises((ValueError, ServiceClientError)) as info:
                    await client.get("/echo", params={"key": key}, headers={"X-Note": "a\nb"})
                # Not sent, so not retried: the next attempt would be refused the same way.
                assert getattr(info.value, "attempts", 0) <= 1
            assert testing.breaker_state(names.service, names.target) == "closed"
            assert (await client.get("/echo", params={"key": key}))["calls"] == 1


# --- concurrency --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hundred_tasks_on_one_client_each_get_their_own_outcome(
    mixed_calls: MixedCalls, names: Names
) -> None:
    calls = [mixed_calls.call(index) for index in range(100)]

    async def one(call: MixedCall) -> Any:
        # Each task runs in its own copy of the context: this id is the task's alone.
        correlation_id_ctx.set(call.correlation_id)
        return await client.request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            idempotency_key=call.idempotency_key,
        )

    with testing.no_wait():
        async with make_client(mixed_calls.server.base_url, names, mixed_calls.config) as client:
            outcomes = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    assert len(outcomes) == len(calls)
    for call, outcome in zip(calls, outcomes, strict=True):
        mixed_calls.check(call, outcome)


@pytest.mark.parametrize("give_up", ["wait_for", "timeout", "fail_after"])
def test_a_caller_giving_up_during_the_backoff_keeps_the_targets_failures(
    http_server: ServerProcess, names: Names, give_up: str
) -> None:
    import anyio

    async def scenario() -> list[str]:
        client = make_client(
            http_server.base_url,
            names,
            fast_config(retry_min_wait=5.0, retry_max_wait=5.0, circuit_breaker_fail_max=5),
        )
        outcomes = []
        async with client:
            for _ in range(8):
                call = client.get("/status/503")
                try:
                    if give_up == "wait_for":
                        await asyncio.wait_for(call, 0.3)
                    elif give_up == "timeout":
                        async with asyncio.timeout(0.3):
                            await call
                    else:
                        with anyio.fail_after(0.3):
                            await call
                except (TimeoutError, asyncio.TimeoutError):
                    outcomes.append("gave up")
                except ServiceUnavailableError:
                    outcomes.append("rejected")
                except ServiceResponseError:
                    outcomes.append("failed")
        return outcomes

    if give_up == "timeout" and not hasattr(asyncio, "timeout"):
        pytest.skip("asyncio.timeout needs Python 3.11")
    outcomes = asyncio.run(scenario())
    # Four calls each got a 503 and gave up in the backoff; the fifth 503 opens the breaker,
    # so that call does not wait for a retry, and the next ones are rejected.
    assert outcomes == ["gave up"] * 4 + ["failed"] + ["rejected"] * 3
    assert testing.breaker_state(names.service, names.target) == "open"


# --- the admission line and the breaker -----------------------------------------------------


@pytest.mark.asyncio
async def test_callers_waiting_in_line_fail_fast_once_the_breaker_opens(
    http_server: ServerProcess, names: Names
) -> None:
    # Admitted while the breaker was closed, 40 callers queued behind two slots each
    # still sent their request to a target that had opened the breaker: a line of a
    # thousand behind a dead target hammers it for minutes and keeps every caller waiting.
    config = fast_config(max_retries=1, max_concurrency=2, circuit_breaker_fail_max=2)
    client = make_client(http_server.base_url, names, config)
    key = names.key("line")
    try:
        outcomes = await asyncio.gather(
            *(client.get("/status/503", params={"key": key}) for _ in range(40)),
            return_exceptions=True,
        )
    finally:
        await client.close()
    sent = len(http_server.calls(key))
    refused = [o for o in outcomes if isinstance(o, ServiceUnavailableError)]
    assert sent <= 4, sent
    assert len(refused) == 40 - sent
    assert all(o.attempts == 0 for o in refused)
    assert testing.breaker_state(names.service, names.target) == "open"

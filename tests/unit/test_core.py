"""The resilience core on its own: no sockets, no real clock, no sleeping."""

from __future__ import annotations

import email.utils
import gzip
import itertools
import os
import random
import signal
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    ClientConfig,
    ServiceClientError,
    ServiceResponseError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    testing,
)
from commclient._core import (
    Attempt,
    Core,
    Outcome,
    Request,
    Response,
    Sleep,
    TransportFailure,
    build_core,
)
from commclient._policy import (
    FailureKind,
    RetryBudget,
    backoff,
    parse_retry_after,
    retry_budgets,
)
from commclient._wire import BodyReader, declared_size

_pairs = itertools.count()


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


def make_core(clock: testing.FakeClock | None = None, **config: Any) -> Core:
    n = next(_pairs)
    return build_core(
        "http://svc.test",
        f"core-svc{n}",
        f"core-target{n}",
        ClientConfig(**config),
        CollectorRegistry(),
        clock or testing.FakeClock(),
    )


def status(code: int, **headers: str) -> Response:
    return Response(code, {k.lower(): v for k, v in headers.items()}, b"{}")


TIMEOUT = TransportFailure(FailureKind.READ_TIMEOUT, TimeoutError("read timed out"))


def drive(
    core: Core,
    outcomes: list[Outcome],
    *,
    method: str = "GET",
    attempt_seconds: float = 0.0,
    **kwargs: Any,
) -> tuple[list[Attempt | Sleep], Any]:
    """Run one call through the core, answering attempts from ``outcomes`` in order."""
    clock = core.clock
    assert isinstance(clock, testing.FakeClock)
    actions: list[Attempt | Sleep] = []
    flow = core.call(method, "/x", **kwargs).flow()
    replies = iter(outcomes)
    try:
        action = next(flow)
        while True:
            actions.append(action)
            if isinstance(action, Sleep):
                clock.advance(action.seconds)
                action = flow.send(None)
            else:
                clock.advance(attempt_seconds)
                action = flow.send(next(replies))
    except StopIteration as stop:
        return actions, stop.value
    except ServiceClientError as error:
        return actions, error


def sleeps(actions: list[Attempt | Sleep]) -> list[float]:
    return [a.seconds for a in actions if isinstance(a, Sleep)]


def attempts(actions: list[Attempt | Sleep]) -> list[Attempt]:
    return [a for a in actions if isinstance(a, Attempt)]


class TestBackoff:
    @pytest.mark.parametrize("attempt_number", [1, 2, 3, 4, 5, 8])
    def test_full_jitter_within_the_growing_window(self, attempt_number: int) -> None:
        config = ClientConfig(retry_min_wait=0.5, retry_max_wait=3.0)
        random.seed(attempt_number)
        waits = [backoff(attempt_number, config) for _ in range(500)]
        ceiling = min(3.0, 0.5 * 2 ** (attempt_number - 1))
        assert all(0.5 <= w <= ceiling for w in waits)
        if ceiling > 0.5:
            # Full jitter spreads retries over the window instead of synchronising them.
            assert max(waits) - min(waits) > (ceiling - 0.5) * 0.8

    def test_core_sleeps_the_backoff_between_attempts(self) -> None:
        core = make_core(retry_min_wait=1.0, retry_max_wait=1.0)
        actions, result = drive(core, [status(503), status(503), status(200)])
        assert result == {}
        assert sleeps(actions) == [1.0, 1.0]
        assert [a.number for a in attempts(actions)] == [1, 2, 3]


class TestRetryAfter:
    def test_seconds_replace_the_backoff(self) -> None:
        core = make_core(retry_min_wait=0.1, retry_max_wait=0.2)
        actions, _ = drive(core, [status(503, **{"Retry-After": "7"}), status(200)])
        assert sleeps(actions) == [7.0]

    def test_http_date(self) -> None:
        clock = testing.FakeClock(start=1_700_000_000.0)
        core = make_core(clock)
        date = email.utils.formatdate(clock.time() + 12, usegmt=True)
        actions, _ = drive(core, [status(429, **{"Retry-After": date}), status(200)])
        assert sleeps(actions) == [pytest.approx(12.0)]

    def test_capped_by_retry_after_max(self) -> None:
        core = make_core(retry_after_max=5.0)
        actions, _ = drive(core, [status(503, **{"Retry-After": "3600"}), status(200)])
        assert sleeps(actions) == [5.0]

    @pytest.mark.parametrize("value", ["soon", "", "-3", "Mon, 99 Foo 2020"])
    def test_garbage_is_ignored(self, value: str) -> None:
        assert parse_retry_after({"retry-after": value}, time.time()) is None

    def test_date_in_the_past_means_now(self) -> None:
        assert parse_retry_after({"retry-after": "Mon, 01 Jan 2001 00:00:00 GMT"}, time.time()) == 0


class TestDeadline:
    def test_attempt_timeouts_shrink_to_what_remains(self) -> None:
        core = make_core(
            timeout=10.0, connect_timeout=3.0, deadline=4.0, retry_min_wait=0.5, retry_max_wait=0.5
        )
        actions, _ = drive(core, [status(503), status(200)], attempt_seconds=1.0)
        first, second = attempts(actions)
        assert (first.connect_timeout, first.read_timeout) == (3.0, 4.0)
        # 1 s spent in the first attempt and 0.5 s asleep: 2.5 s remain.
        assert (second.connect_timeout, second.read_timeout) == (2.5, 2.5)

    def test_no_sleep_that_would_pass_the_deadline(self) -> None:
        core = make_core(deadline=2.0)
        actions, error = drive(
            core, [status(503, **{"Retry-After": "1"}), status(200)], attempt_seconds=1.5
        )
        assert isinstance(error, ServiceResponseError)
        assert error.attempts == 1
        assert sleeps(actions) == []

    def test_a_deadline_passed_before_an_attempt_is_counted_as_the_callers(self) -> None:
        """A sleep that overran the deadline: no attempt is made, and the call is counted
        with status ``deadline``, not ``timeout``, which the error ratio blames on the
        target."""
        registry = CollectorRegistry()
        clock = testing.FakeClock()
        core = build_core(
            "http://svc.test",
            "deadline-svc",
            "deadline-target",
            ClientConfig(deadline=2.0, retry_min_wait=0.5, retry_max_wait=0.5),
            registry,
            clock,
        )
        flow = core.call("GET", "/x").flow()
        assert isinstance(next(flow), Attempt)
        clock.advance(1.0)
        assert isinstance(flow.send(status(503)), Sleep)
        clock.advance(5.0)  # a loaded machine overslept
        with pytest.raises(ServiceClientError):
            flow.send(None)

        def count(status: str) -> float | None:
            return registry.get_sample_value(
                "http_client_requests_total",
                {
                    "source_service": "deadline-svc",
                    "target_service": "deadline-target",
                    "method": "GET",
                    "route": "/x",
                    "status": status,
                },
            )

        assert (count("503"), count("deadline"), count("timeout")) == (1.0, 1.0, 0.0)

    def test_a_timeout_cut_short_by_the_deadline_is_the_callers(self) -> None:
        """A healthy target slower than the caller's deadline: each attempt's read timeout
        is cut to the deadline and runs out. That is the caller's deadline, not the
        target's timeout: counted ``deadline``, kept out of the breaker (five calls leave it
        closed), and still a ServiceTimeoutError for the caller."""
        registry = CollectorRegistry()
        clock = testing.FakeClock()
        core = build_core(
            "http://svc.test",
            "deadline-svc",
            "deadline-target",
            ClientConfig(timeout=10.0, connect_timeout=3.0),
            registry,
            clock,
        )
        for _ in range(core.config.circuit_breaker_fail_max):
            flow = core.call("GET", "/x", deadline=0.3).flow()
            attempt = next(flow)
            assert isinstance(attempt, Attempt)
            assert attempt.read_timeout == pytest.approx(0.3)
            clock.advance(0.3)
            with pytest.raises(ServiceTimeoutError):
                flow.send(TIMEOUT)
        # A connect timeout cut short by the deadline, too.
        flow = core.call("GET", "/x", deadline=2.0).flow()
        next(flow)
        clock.advance(2.0)
        with pytest.raises(ServiceTimeoutError):
            flow.send(TransportFailure(FailureKind.CONNECT_TIMEOUT, TimeoutError("connect")))
        labels = {
            "source_service": "deadline-svc",
            "target_service": "deadline-target",
            "method": "GET",
            "route": "/x",
        }
        counts = {
            status: registry.get_sample_value(
                "http_client_requests_total", {**labels, "status": status}
            )
            for status in ("deadline", "timeout")
        }
        assert counts == {"deadline": 6.0, "timeout": 0.0}
        assert core.breaker.state == "closed"

    def test_a_timeout_within_the_deadline_is_the_targets(self) -> None:
        core = make_core(timeout=1.0, deadline=30.0, max_retries=1)
        _actions, error = drive(core, [TIMEOUT])
        assert isinstance(error, ServiceTimeoutError)
        assert core.breaker.circuit.fail_counter == 1

    def test_per_call_deadline_overrides_the_config(self) -> None:
        core = make_core(deadline=100.0)
        actions, _ = drive(core, [status(200)], deadline=0.25)
        assert attempts(actions)[0].read_timeout == 0.25

    def test_timeout_error_when_every_attempt_times_out(self) -> None:
        core = make_core(max_retries=4, retry_min_wait=0, retry_max_wait=0)
        _actions, error = drive(core, [TIMEOUT] * 4)
        assert isinstance(error, ServiceTimeoutError)
        assert error.attempts == 4
        assert error.__cause__ is TIMEOUT.error


class TestRetryBudget:
    def test_attempts_stay_below_1_2_per_call_when_the_target_always_fails(self) -> None:
        core = make_core(
            max_retries=3, retry_min_wait=0, retry_max_wait=0, circuit_breaker_fail_max=10**6
        )
        warm_up, measured = 100, 1000
        for _ in range(warm_up):
            drive(core, [status(503)] * 3)
        sent = sum(len(attempts(drive(core, [status(503)] * 3)[0])) for _ in range(measured))
        assert sent < 1.2 * measured
        assert sent >= measured

    def test_without_a_budget_naive_retry_triples_the_load(self) -> None:
        core = make_core(
            max_retries=3,
            retry_min_wait=0,
            retry_max_wait=0,
            circuit_breaker_fail_max=10**6,
            retry_budget_max_tokens=10**9,
        )
        sent = sum(len(attempts(drive(core, [status(503)] * 3)[0])) for _ in range(200))
        assert sent == 600

    def test_one_budget_per_target_for_every_client(self) -> None:
        first = build_core("http://a.test", "one", "shared-target", None, CollectorRegistry(), None)
        second = build_core(
            "http://b.test", "two", "shared-target", None, CollectorRegistry(), None
        )
        other = build_core("http://c.test", "one", "other-target", None, CollectorRegistry(), None)
        assert first.budget is second.budget
        assert first.budget is not other.budget

    def test_budget_gauge_reads_the_tokens(self) -> None:
        registry = CollectorRegistry()
        config = ClientConfig(retry_budget_max_tokens=2.0, retry_min_wait=0, retry_max_wait=0)
        core = build_core(
            "http://a.test", "svc", "gauge-target", config, registry, testing.FakeClock()
        )

        def gauge() -> float | None:
            return registry.get_sample_value(
                "http_client_retry_budget_tokens", {"target_service": "gauge-target"}
            )

        assert gauge() == 2.0
        drive(core, [status(503), status(503), status(200)])
        assert gauge() == pytest.approx(0.0)


class TestBreaker:
    def test_one_breaker_per_pair_shared_by_every_client(self) -> None:
        first = build_core("http://a.test", "svc", "tgt", None, CollectorRegistry(), None)
        second = build_core("http://b.test", "svc", "tgt", None, CollectorRegistry(), None)
        assert first.breaker is second.breaker

    def test_half_open_admits_exactly_one_probe(self) -> None:
        core = make_core(circuit_breaker_fail_max=1, circuit_breaker_reset_timeout=0.01)
        drive(core, [status(503)] * 3)
        assert core.breaker.state == "open"
        time.sleep(0.02)
        probe = core.call("GET", "/x").flow()
        assert isinstance(next(probe), Attempt)
        for _ in range(5):
            with pytest.raises(ServiceUnavailableError):
                next(core.call("GET", "/x").flow())
        with pytest.raises(StopIteration):
            probe.send(status(200))
        assert core.breaker.state == "closed"
        assert isinstance(next(core.call("GET", "/x").flow()), Attempt)

    def test_probe_makes_one_attempt_and_reopens_on_failure(self) -> None:
        core = make_core(circuit_breaker_fail_max=1, circuit_breaker_reset_timeout=0.01)
        drive(core, [status(503)] * 3)
        time.sleep(0.02)
        actions, error = drive(core, [status(503)] * 3)
        assert len(attempts(actions)) == 1
        assert isinstance(error, ServiceResponseError)
        assert core.breaker.state == "open"

    def test_a_cancelled_call_is_not_a_failure(self) -> None:
        core = make_core(circuit_breaker_fail_max=1)
        flow = core.call("GET", "/x").flow()
        next(flow)
        flow.close()  # what CancelledError / KeyboardInterrupt do to the facades' loops
        assert core.breaker.circuit.fail_counter == 0
        assert core.breaker.state == "closed"

    def test_a_failure_counts_before_the_backoff_even_if_the_caller_gives_up_then(
        self,
    ) -> None:
        core = make_core(circuit_breaker_fail_max=3)
        for _ in range(2):
            flow = core.call("GET", "/x").flow()
            assert isinstance(next(flow), Attempt)
            assert isinstance(flow.send(status(503)), Sleep)
            flow.close()  # the caller's timeout cancels it during the backoff
        assert core.breaker.circuit.fail_counter == 2
        # The third failure opens the breaker at once: the call does not retry into it.
        actions, error = drive(core, [status(503)] * 3)
        assert (len(actions), type(error)) == (1, ServiceResponseError)
        assert core.breaker.state == "open"

    def test_a_retry_that_succeeds_forgets_the_failure_of_its_call(self) -> None:
        core = make_core(circuit_breaker_fail_max=2)
        for _ in range(3):
            drive(core, [status(503), status(200)])
        assert core.breaker.state == "closed"
        assert core.breaker.circuit.fail_counter == 0

    def test_a_failed_call_counts_once_whatever_its_attempts(self) -> None:
        core = make_core(circuit_breaker_fail_max=2, max_retries=3)
        _, error = drive(core, [status(503)] * 3)
        assert isinstance(error, ServiceResponseError)
        assert core.breaker.circuit.fail_counter == 1
        assert core.breaker.state == "closed"

    def test_an_open_breaker_refuses_when_the_flow_is_made(self) -> None:
        core = make_core(circuit_breaker_fail_max=1)
        drive(core, [status(503)] * 3)
        call = core.call("GET", "/x", params={"token": "s3cret"})
        with pytest.raises(ServiceUnavailableError) as caught:
            call.flow()  # no generator is built for a rejection
        error = caught.value
        assert (error.method, error.attempts) == ("GET", 0)
        assert error.target_service == core.target_service
        assert "s3cret" not in error.url
        assert error.url.startswith("http://")
        assert error.retry_after > 0

    def test_an_unstarted_flow_holds_no_probe_permit(self) -> None:
        core = make_core(circuit_breaker_fail_max=1, circuit_breaker_reset_timeout=0.01)
        drive(core, [status(503)] * 3)
        time.sleep(0.02)
        core.call("GET", "/x").flow()  # made, never driven
        assert core.breaker.refusal() is None
        assert isinstance(next(core.call("GET", "/x").flow()), Attempt)

    def test_a_cancelled_probe_frees_the_probe_slot(self) -> None:
        core = make_core(circuit_breaker_fail_max=1, circuit_breaker_reset_timeout=0.01)
        drive(core, [status(503)] * 3)
        time.sleep(0.02)
        probe = core.call("GET", "/x").flow()
        next(probe)
        with pytest.raises(KeyboardInterrupt):
            probe.throw(KeyboardInterrupt)
        assert core.breaker.state == "half-open"
        assert isinstance(next(core.call("GET", "/x").flow()), Attempt)

    def test_retries_stop_when_the_breaker_opens_meanwhile(self) -> None:
        core = make_core(circuit_breaker_fail_max=1, retry_min_wait=0, retry_max_wait=0)
        flow = core.call("GET", "/x").flow()
        next(flow)
        core.breaker.force("open")
        with pytest.raises(ServiceResponseError) as caught:
            flow.send(status(503))
        assert caught.value.attempts == 1


def test_flow_refuses_a_missing_outcome() -> None:
    flow = make_core().call("GET", "/x").flow()
    next(flow)
    with pytest.raises(RuntimeError, match="without an outcome"):
        flow.send(None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path_params": {"other": 1}}, "do not fill the template"),
    ],
)
def test_bad_path_params_name_the_template(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_core().call("GET", "/api/users/{user_id}", **kwargs)


def test_path_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        make_core().call("GET", "api/users")


@pytest.mark.parametrize(
    ("base_url", "service", "target", "message"),
    [
        ("ftp://x", "a", "b", "base_url"),
        ("not a url", "a", "b", "base_url"),
        ("http://x", "", "b", "service_name"),
        ("http://x", "a", "", "target_service"),
    ],
)
def test_bad_constructor_arguments(base_url: str, service: str, target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_core(base_url, service, target, None, CollectorRegistry(), None)


def test_config_must_be_a_client_config() -> None:
    with pytest.raises(TypeError, match="ClientConfig"):
        build_core("http://x", "a", "b", {"timeout": 1}, CollectorRegistry(), None)  # type: ignore[arg-type]


def test_no_wait_mode_removes_every_sleep() -> None:
    core = make_core(retry_min_wait=5.0, retry_max_wait=5.0)
    with testing.no_wait():
        actions, _ = drive(core, [status(503, **{"Retry-After": "30"}), TIMEOUT, status(200)])
    assert sleeps(actions) == []
    assert len(attempts(actions)) == 3
    actions, _ = drive(core, [status(503), status(200)])
    assert sleeps(actions) == [5.0], "the switch is restored after the block"


class TestRetryBudgetFloor:
    def test_a_drained_bucket_still_allows_the_floor_per_second(self) -> None:
        budget = RetryBudget(ratio=0.1, max_tokens=0.0, min_per_second=1.0)
        assert budget.try_withdraw(now=100.0)
        assert not budget.try_withdraw(now=100.5)
        assert budget.try_withdraw(now=101.0)
        # A long quiet spell earns one second's worth, not a burst for every idle second.
        assert budget.try_withdraw(now=500.0)
        assert not budget.try_withdraw(now=500.1)

    def test_a_storm_gains_at_most_the_floor(self) -> None:
        budget = RetryBudget(ratio=0.0, max_tokens=0.0, min_per_second=2.0)
        granted = sum(budget.try_withdraw(now=1000.0 + i * 0.001) for i in range(10_000))
        # Ten seconds of attempts: the two-token start plus two per second.
        assert granted <= 2 + 2 * 10 + 1

    def test_zero_turns_the_floor_off(self) -> None:
        budget = RetryBudget(ratio=0.1, max_tokens=0.0, min_per_second=0.0)
        assert not budget.try_withdraw(now=1.0)
        assert not budget.try_withdraw(now=1000.0)

    def test_the_floor_is_configured_and_validated(self) -> None:
        assert ClientConfig().retry_budget_min_per_second == 1.0
        with pytest.raises(ValueError, match="retry_budget_min_per_second"):
            ClientConfig(retry_budget_min_per_second=-1)


class TestWire:
    def test_content_length_must_be_ascii_digits(self) -> None:
        assert declared_size({"content-length": "\u00b2"}) is None
        assert declared_size({"content-length": "12"}) == 12

    def test_retry_after_must_be_ascii_digits(self) -> None:
        assert parse_retry_after({"retry-after": "\u00b2"}, 0.0) is None


class TestAuth:
    def test_a_signer_signs_each_attempt_and_never_another_origin(self) -> None:
        core = make_core(follow_redirects=True)
        tokens = iter(["t1", "t2", "t3"])

        def sign(request: Request) -> dict[str, str]:
            return {"authorization": f"Bearer {next(tokens)}"}

        moved = status(307, Location="http://elsewhere.test/y")
        actions, _ = drive(core, [status(503), moved, status(200)], auth=sign)
        sent = [dict(a.request.headers) for a in attempts(actions)]
        assert [h.get("authorization") for h in sent] == ["Bearer t1", "Bearer t2", None]

    def test_a_fixed_credential_stays_with_the_client_origin(self) -> None:
        core = make_core(follow_redirects=True)
        moved = status(307, Location="http://elsewhere.test/y")
        actions, _ = drive(core, [moved, status(200)], auth=("u", "p"))
        sent = [a.request.headers for a in attempts(actions)]
        assert sent[0]["Authorization"] == "Basic dTpw"
        assert "Authorization" not in sent[1]


class TestBodyReader:
    """The decoded-size limit and the decoders, without a socket."""

    @staticmethod
    def read(body: bytes, headers: dict[str, str], limit: int, chunk: int = 1000) -> BodyReader:
        reader = BodyReader(headers, limit)
        for start in range(0, len(body), chunk):
            if not reader.feed(body[start : start + chunk]):
                break
        return reader

    def test_gzip_is_cut_at_the_limit_without_inflating_the_rest(self) -> None:
        bomb = gzip.compress(b"0" * 50_000_000)
        reader = self.read(bomb, {"content-encoding": "gzip"}, limit=1000, chunk=len(bomb))
        assert reader.too_large
        assert reader.body() == b""

    def test_several_gzip_members_and_raw_deflate(self) -> None:
        members = gzip.compress(b"abc") + gzip.compress(b"def")
        assert self.read(members, {"content-encoding": "gzip"}, 100, chunk=7).body() == b"abcdef"
        raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        deflated = raw.compress(b"hello") + raw.flush()
        assert self.read(deflated, {"content-encoding": "deflate"}, 100).body() == b"hello"
        assert self.read(zlib.compress(b"hi"), {"content-encoding": "deflate"}, 100).body() == b"hi"

    def test_a_corrupt_body_is_an_error_not_an_exception(self) -> None:
        reader = self.read(b"not gzip at all", {"content-encoding": "gzip"}, 100)
        assert reader.error is not None

    def test_an_encoding_not_asked_for_is_kept_as_it_came(self) -> None:
        assert self.read(b"\x1b\x00", {"content-encoding": "br"}, 100).body() == b"\x1b\x00"

    def test_the_limit_counts_decoded_bytes(self) -> None:
        body = gzip.compress(b"x" * 101)
        assert len(body) < 100
        assert self.read(body, {"content-encoding": "gzip"}, 100).too_large
        assert self.read(gzip.compress(b"x" * 100), {"content-encoding": "gzip"}, 100).body()

    def test_the_limit_of_a_doubly_encoded_body_is_on_the_decoded_bytes(self) -> None:
        exact = os.urandom(4096)
        twice = gzip.compress(gzip.compress(exact))
        headers = {"content-encoding": "gzip, gzip", "content-length": str(len(twice))}
        # Random bytes grow under gzip: the middle layer is larger than the limit.
        assert len(gzip.compress(exact)) > 4096
        assert self.read(twice, headers, 4096, chunk=100).body() == exact
        assert self.read(gzip.compress(gzip.compress(exact + b"!")), headers, 4096).too_large

    def test_a_bomb_in_the_middle_layer_stays_bounded(self) -> None:
        bomb = gzip.compress(gzip.compress(b"0" * 50_000_000))
        reader = self.read(bomb, {"content-encoding": "gzip, gzip"}, 1000, chunk=len(bomb))
        assert reader.too_large

    @pytest.mark.parametrize("wbits", [-zlib.MAX_WBITS, zlib.MAX_WBITS])
    def test_deflate_decodes_whatever_the_size_of_its_first_chunk(self, wbits: int) -> None:
        compressor = zlib.compressobj(wbits=wbits)
        deflated = compressor.compress(b"hello world" * 100) + compressor.flush()
        for chunk in (1, 2, 3):
            reader = self.read(deflated, {"content-encoding": "deflate"}, 10_000, chunk=chunk)
            assert reader.body() == b"hello world" * 100, chunk

    def test_an_encoded_body_is_not_refused_by_its_length_on_the_wire(self) -> None:
        body = os.urandom(4096)
        wire = gzip.compress(body)
        assert len(wire) > 4096
        headers = {"content-encoding": "gzip", "content-length": str(len(wire))}
        assert BodyReader(headers, 4096).wants_more
        assert self.read(wire, headers, 4096).body() == body
        # Unencoded, the announced size is the decoded size: refused before reading.
        assert BodyReader({"content-length": "4097"}, 4096).too_large
        # A length no encoding of the limit could need is refused unread too.
        assert BodyReader({"content-encoding": "gzip", "content-length": "9000"}, 4096).too_large


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_budget_locked_by_another_thread_at_fork_works_in_the_child() -> None:
    budget = retry_budgets.get("fork-target", ClientConfig(retry_budget_max_tokens=5))
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with budget._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: the case
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        signal.alarm(10)  # a lock never released here would hang the child: fail it instead
        os._exit(0 if budget.try_withdraw(now=1.0) else 1)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class _TransportTimeout(Exception):
    """A transport's timeout: its message names its own pool, or nothing at all."""


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (FailureKind.SATURATED, "no connection within the connect timeout, seen late"),
        (FailureKind.POOL_TIMEOUT, "no connection free within pool_timeout"),
    ],
)
def test_a_local_timeout_of_a_transport_reads_in_the_cores_words(
    kind: FailureKind, reason: str
) -> None:
    # Without words of their own these read 'saturated connect timeout: ConnectTimeout'
    # and 'pool timeout: PoolTimeout', the transport's class names.
    _, error = drive(make_core(), [TransportFailure(kind, _TransportTimeout())])
    assert isinstance(error, ServiceTimeoutError)
    assert reason in str(error)
    assert "_TransportTimeout" not in str(error)

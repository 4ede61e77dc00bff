"""The breaker under threads, forks and resets: no servers, a fake clock where time matters."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pybreaker
import pytest
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, ServiceResponseError, ServiceUnavailableError, testing
from commclient._breaker import Admission, Breaker, breakers
from commclient._core import Attempt, Core, Response, build_core
from tests.forking import in_forked_child, needs_fork

THREADS = 16
ROUNDS = 40


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so that races show up."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def _hammer(breaker: Breaker, outcome: str) -> list[Admission]:
    """THREADS threads call ``admit`` at once; the probe (if any) reports ``outcome`` at once."""
    barrier = threading.Barrier(THREADS)
    results: list[Admission | None] = [None] * THREADS

    def one(index: int) -> None:
        barrier.wait()
        admission = breaker.admit()
        if admission.probe and outcome == "success":
            breaker.record_success(admission)
        elif admission.probe and outcome == "failure":
            breaker.record_failure(admission)
        results[index] = admission

    threads = [threading.Thread(target=one, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


@pytest.mark.usefixtures("busy_switching")
@pytest.mark.parametrize("outcome", ["held", "success", "failure"])
def test_half_open_lets_exactly_one_of_many_threads_probe(outcome: str) -> None:
    clock = testing.FakeClock()
    breaker = Breaker("threads->target", 1, 10.0, clock=clock)
    for _ in range(ROUNDS):
        breaker.force("open")
        clock.advance(10.0)  # exactly the reset timeout: the next caller may probe
        admissions = _hammer(breaker, outcome)
        probes = [admission for admission in admissions if admission.probe]
        assert len(probes) == 1, admissions
        if outcome == "success":
            # Callers before the probe's success failed fast; those after it are
            # ordinary calls of a closed breaker.
            assert breaker.state == "closed"
        else:
            assert sum(admission.permitted for admission in admissions) == 1, admissions
            assert all(a.retry_after > 0 for a in admissions if not a.permitted)
            if outcome == "held":
                assert breaker.state == "half-open"
                breaker.release(probes[0])
            else:
                # The failed probe opened the breaker again for a whole reset timeout.
                assert breaker.state == "open"
                assert not breaker.admit().permitted


def test_a_breaker_reopened_by_a_failed_probe_waits_a_full_reset_timeout() -> None:
    clock = testing.FakeClock()
    breaker = Breaker("reopen->target", 1, 10.0, clock=clock)
    breaker.force("open")
    clock.advance(10.0)
    probe = breaker.admit()
    assert probe.probe
    clock.advance(3.0)
    breaker.record_failure(probe)
    refused = breaker.admit()
    assert not refused.permitted
    assert refused.retry_after == pytest.approx(10.0)
    clock.advance(9.9)
    assert not breaker.admit().permitted
    clock.advance(0.1)
    assert breaker.admit().probe


def test_each_transition_is_logged_once_by_the_breaker_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = testing.FakeClock()
    breaker = Breaker("logged->target", 1, 10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="commclient.breaker"):
        breaker.record_failure(breaker.admit())
        clock.advance(10.0)
        breaker.record_success(breaker.admit())
    seen = [
        (r.levelname, r.old_state, r.new_state)  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "breaker", None) == "logged->target"
    ]
    assert seen == [
        ("INFO", "closed", "open"),
        ("INFO", "open", "half-open"),
        ("INFO", "half-open", "closed"),
    ]


def _trip(core: Core) -> None:
    for _ in range(core.config.circuit_breaker_fail_max):
        flow = core.call("GET", "/x").flow()
        assert isinstance(next(flow), Attempt)
        with pytest.raises(ServiceResponseError):
            flow.send(Response(503, {}, b"{}"))


def _state_gauge(registry: CollectorRegistry, service: str, target: str) -> float | None:
    return registry.get_sample_value(
        "http_client_circuit_breaker_state", {"source_service": service, "target_service": target}
    )


def test_reset_gives_live_clients_the_fresh_breaker() -> None:
    registry = CollectorRegistry()
    config = ClientConfig(circuit_breaker_fail_max=2, max_retries=1)
    live = build_core("http://a.test", "reset-svc", "reset-tgt", config, registry, None)
    _trip(live)
    with pytest.raises(ServiceUnavailableError):
        next(live.call("GET", "/x").flow())
    assert _state_gauge(registry, "reset-svc", "reset-tgt") == 2  # open

    testing.reset()

    assert testing.breaker_state("reset-svc", "reset-tgt") == "closed"
    assert isinstance(next(live.call("GET", "/x").flow()), Attempt)
    assert _state_gauge(registry, "reset-svc", "reset-tgt") == 0
    # The first client after the reset configures the breaker, and shares it with the
    # live one: whatever happens to the pair, both see it.
    fresh = build_core(
        "http://b.test",
        "reset-svc",
        "reset-tgt",
        ClientConfig(circuit_breaker_fail_max=7),
        CollectorRegistry(),
        None,
    )
    assert fresh.breaker is live.breaker
    assert live.breaker.fail_max == 7
    testing.force_open("reset-svc", "reset-tgt")
    with pytest.raises(ServiceUnavailableError):
        next(live.call("GET", "/x").flow())
    assert _state_gauge(registry, "reset-svc", "reset-tgt") == 2  # open


def test_a_probe_admitted_before_a_reset_cannot_move_the_fresh_breaker() -> None:
    clock = testing.FakeClock()
    breaker = breakers.get(
        "stale-svc", "stale-tgt", ClientConfig(circuit_breaker_fail_max=3), clock
    )
    breaker.force("open")
    clock.advance(30.0)
    stale = breaker.admit()
    assert stale.probe
    testing.reset()
    breaker.record_failure(stale)
    assert breaker.state == "closed"
    breaker.force("open")
    clock.advance(30.0)
    probe = breaker.admit()
    breaker.record_success(stale)
    assert breaker.state == "half-open"
    breaker.record_success(probe)
    assert breaker.state == "closed"


def test_reset_forgets_breakers_no_client_holds() -> None:
    breakers.get("gone-svc", "gone-tgt", ClientConfig())
    testing.reset()
    import gc

    gc.collect()
    with pytest.raises(LookupError, match="gone-svc"):
        testing.breaker_state("gone-svc", "gone-tgt")


@needs_fork
def test_a_breaker_used_before_fork_works_in_the_child() -> None:
    config = ClientConfig(circuit_breaker_fail_max=1, circuit_breaker_reset_timeout=0.01)
    breaker = breakers.get("fork-svc", "fork-tgt", config)
    breaker.force("open")
    time.sleep(0.05)
    parent_probe = breaker.admit()
    assert parent_probe.probe
    # At the moment of the fork another thread is inside the breaker, holding its lock.
    inside, leave = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with breaker._lock:
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert inside.wait(10)

    def child() -> int:
        # The parent's probe has no thread here to finish it: a child caller probes.
        admission = breaker.admit()
        if not admission.probe:
            return 1
        breaker.record_failure(admission)
        return 0 if breaker.state == "open" else 2

    try:
        assert in_forked_child(child) == 0
    finally:
        leave.set()
        holder.join(10)
    # The child's failed probe stayed in the child: the parent's probe is still the one.
    assert breaker.state == "half-open"
    assert not breaker.admit().permitted
    breaker.record_success(parent_probe)
    assert breaker.state == "closed"


def test_a_redis_storage_is_refused_with_the_setting_to_use_instead() -> None:
    class NotMemory(pybreaker.CircuitBreakerStorage):
        pass

    with pytest.raises(TypeError, match="pass redis_url"):
        Breaker("storage->target", 1, 1.0, storage=NotMemory("other"))  # type: ignore[arg-type]


def test_a_url_that_is_not_redis_names_the_setting_without_the_password() -> None:
    with pytest.raises(ValueError, match="circuit_breaker_redis_url") as caught:
        Breaker("url->target", 1, 1.0, redis_url="http://user:hunter2@cache.test:6379/0")
    assert "hunter2" not in str(caught.value)


def test_an_unreachable_redis_is_one_warning_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on: connecting is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    breaker = Breaker("pw->target", 1, 1.0, redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    mirror = breaker._mirror
    assert mirror is not None
    with caplog.at_level(logging.INFO, logger="commclient.breaker"):
        for _ in range(3):
            breaker.record_failure(breaker.admit())
            mirror.push_now()
    warnings = [
        r for r in caplog.records if r.name == "commclient.breaker" and not hasattr(r, "new_state")
    ]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert f"127.0.0.1:{port}" in message
    assert "hunter2" not in message
    # The local state carries on: the breaker opened on its own failures.
    assert breaker.state == "open"
    breaker.reset()


def test_watch_breaker_tells_every_transition_even_one_shorter_than_a_poll() -> None:
    clock = testing.FakeClock()
    breaker = breakers.get(
        "watch-svc", "watch-tgt", ClientConfig(circuit_breaker_fail_max=2), clock
    )
    told: list[tuple[str, str]] = []
    stop = testing.watch_breaker("watch-svc", "watch-tgt", lambda old, new: told.append((old, new)))
    for _ in range(2):
        breaker.record_failure(breaker.admit())
    clock.advance(60.0)
    breaker.record_failure(breaker.admit())  # a failed probe: open again
    clock.advance(60.0)
    breaker.record_success(breaker.admit())  # half-open and closed within one call
    testing.force_closed("watch-svc", "watch-tgt")  # closed already: no transition
    assert told == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    stop()
    testing.force_open("watch-svc", "watch-tgt")
    assert len(told) == 5


def test_a_failing_watcher_is_logged_and_the_breaker_still_moves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = breakers.get("watch2-svc", "watch2-tgt", ClientConfig(circuit_breaker_fail_max=1))

    def broken(old: str, new: str) -> None:
        raise RuntimeError("watcher bug")

    stop = testing.watch_breaker("watch2-svc", "watch2-tgt", broken)
    with caplog.at_level(logging.ERROR, logger="commclient.breaker"):
        breaker.record_failure(breaker.admit())
    stop()
    assert breaker.state == "open"
    assert "a breaker watcher failed" in caplog.text

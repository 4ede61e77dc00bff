"""Breaker state shared through a real Redis: paused, killed, absent, and across processes.

Callers never wait on Redis (a background thread synchronises the local state), so the
timing checks below only bound what a Redis round trip in the caller's path would break:
each would cost at least the 0.25 s socket timeout, usually several.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, Gauge

from commclient import (
    AsyncServiceClient,
    ClientConfig,
    ServiceClientError,
    ServiceConnectionError,
    ServiceUnavailableError,
    SyncServiceClient,
    testing,
)
from commclient._breaker import Breaker, breakers
from tests.forking import in_forked_child, needs_fork
from tests.redis_server import RedisServer, free_port, require_redis_server

pytestmark = [pytest.mark.redis_server, pytest.mark.facade_sync, pytest.mark.facade_async]

SYNC_INTERVAL = 0.05
#: Far above any event-loop lag or thread run time without a Redis round trip in the
#: caller's path, far below what one (0.25 s timeout, per call) costs.
LOOP_LAG_LIMIT = 1.0
THREADS_LIMIT = 15.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer() as started:
        yield started


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.INFO, logger="commclient.breaker")

    def collected() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "commclient.breaker" and record.levelno == logging.WARNING
        ]

    return collected


def _config(url: str, **overrides: Any) -> ClientConfig:
    settings: dict[str, Any] = {
        "circuit_breaker_redis_url": url,
        "circuit_breaker_fail_max": 3,
        "circuit_breaker_redis_sync_interval": SYNC_INTERVAL,
        "max_retries": 1,
        "connect_timeout": 1.0,
    }
    settings.update(overrides)
    return ClientConfig(**settings)


def _names(test: str) -> tuple[str, str]:
    return f"{test}-{os.getpid()}-{time.monotonic_ns()}", "shared"


def _state_key(service: str, target: str) -> str:
    return f"commclient:{service}:{target}:pybreaker:state"


def _eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def _remote_state(server: RedisServer, service: str, target: str) -> bytes | None:
    connection = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        value: bytes | None = connection.get(_state_key(service, target))
        return value
    finally:
        connection.close()


def _wait_remote(server: RedisServer, service: str, target: str, state: bytes, what: str) -> None:
    _eventually(lambda: _remote_state(server, service, target) == state, what)


def _client_of_nowhere(
    url: str, service: str, target: str, dead: str | None = None, **overrides: Any
) -> SyncServiceClient:
    """A client whose every call is refused at once (nothing listens on ``dead``)."""
    return SyncServiceClient(
        dead or f"http://127.0.0.1:{free_port()}",
        service_name=service,
        target_service=target,
        config=_config(url, **overrides),
        registry=CollectorRegistry(),
    )


def _trip(client: SyncServiceClient, fail_max: int = 3) -> None:
    for _ in range(fail_max):
        with pytest.raises(ServiceConnectionError):
            client.get("/x")
    with pytest.raises(ServiceUnavailableError):
        client.get("/x")


def test_a_paused_redis_never_stalls_the_event_loop(
    server: RedisServer, warnings_logged: Callable[[], list[str]]
) -> None:
    service, target = _names("loop")
    dead = f"http://127.0.0.1:{free_port()}"
    config = _config(server.url, circuit_breaker_reset_timeout=0.2)

    async def scenario() -> tuple[float, int, int]:
        lag = 0.0
        running = True

        async def ticker() -> None:
            nonlocal lag
            while running:
                before = time.monotonic()
                await asyncio.sleep(0.005)
                lag = max(lag, time.monotonic() - before - 0.005)

        async with AsyncServiceClient(
            dead,
            service_name=service,
            target_service=target,
            config=config,
            registry=CollectorRegistry(),
        ) as client:
            await asyncio.to_thread(
                _wait_remote, server, service, target, b"closed", "the first synchronisation"
            )
            server.pause()
            tick = asyncio.create_task(ticker())
            refused = unavailable = 0
            # Calls that trip the breaker, probe, and trip it again: every transition
            # wakes the sync thread, which then waits on the frozen Redis.
            finish = time.monotonic() + 2.0
            while time.monotonic() < finish:
                try:
                    await client.get("/x")
                except ServiceUnavailableError:
                    unavailable += 1
                except ServiceConnectionError:
                    refused += 1
                await asyncio.sleep(0.01)
            running = False
            await tick
        return lag, refused, unavailable

    lag, refused, unavailable = asyncio.run(scenario())
    print(f"longest event-loop lag with Redis paused: {lag * 1000:.1f} ms")
    assert lag < LOOP_LAG_LIMIT, f"the event loop stalled {lag:.3f} s"
    # The breaker worked on local state meanwhile: it opened and probed again.
    assert refused > 3, refused
    assert unavailable > 0, unavailable
    server.resume()
    _wait_remote(server, service, target, b"open", "the state opened meanwhile reaches Redis")
    assert len(warnings_logged()) == 1, warnings_logged()


def test_sixteen_threads_do_not_queue_on_a_paused_redis(server: RedisServer) -> None:
    service, target = _names("threads")
    client = _client_of_nowhere(server.url, service, target)
    _wait_remote(server, service, target, b"closed", "the first synchronisation")
    server.pause()
    outcomes: list[type[BaseException]] = []
    barrier = threading.Barrier(16)

    def caller() -> None:
        barrier.wait()
        for _ in range(20):
            try:
                client.get("/x")
            except ServiceClientError as error:
                outcomes.append(type(error))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    print(f"16 threads x 20 calls with Redis paused: {elapsed:.2f} s")
    server.resume()
    client.close()
    assert len(outcomes) == 16 * 20
    assert elapsed < THREADS_LIMIT, f"16 threads took {elapsed:.1f} s"
    assert ServiceUnavailableError in outcomes


def test_redis_down_at_start_falls_back_to_local_state_with_one_warning(
    warnings_logged: Callable[[], list[str]],
) -> None:
    require_redis_server()
    port = free_port()
    later = RedisServer(port=port)
    service, target = _names("down")
    client = _client_of_nowhere(later.url, service, target)
    _trip(client)
    time.sleep(20 * SYNC_INTERVAL)  # many synchronisations fail meanwhile
    [warning] = warnings_logged()
    assert f"127.0.0.1:{port}" in warning
    assert "cannot be reached" in warning
    # When Redis comes, it learns the state this process arrived at on its own.
    with later:
        _wait_remote(later, service, target, b"open", "the local state reaches the new Redis")
        assert len(warnings_logged()) == 1
        client.close()


def test_redis_killed_later_falls_back_and_catches_up_after_restart(
    server: RedisServer, warnings_logged: Callable[[], list[str]]
) -> None:
    service, target = _names("killed")
    client = _client_of_nowhere(server.url, service, target)
    _wait_remote(server, service, target, b"closed", "the first synchronisation")
    server.kill()
    _trip(client)
    time.sleep(20 * SYNC_INTERVAL)
    assert len(warnings_logged()) == 1, warnings_logged()
    server.start()  # empty: nothing is persisted
    _wait_remote(server, service, target, b"open", "the restarted Redis learns the state")
    client.close()
    assert len(warnings_logged()) == 1, warnings_logged()


OTHER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from commclient import ClientConfig, ServiceClientError, SyncServiceClient, testing

    config = ClientConfig(
        circuit_breaker_redis_url=sys.argv[1], circuit_breaker_fail_max=2,
        circuit_breaker_redis_sync_interval=0.05, max_retries=1,
    )
    client = SyncServiceClient(
        sys.argv[2], service_name=sys.argv[3], target_service="shared", config=config
    )
    deadline = time.monotonic() + 20
    while testing.breaker_state(sys.argv[3], "shared") != sys.argv[4]:
        if time.monotonic() > deadline:
            sys.exit("the shared state never arrived")
        time.sleep(0.02)
    try:
        client.get("/never-sent")
    except ServiceClientError as error:
        print(type(error).__name__, error.attempts)
    """
)


def _other_process(server: RedisServer, dead: str, service: str, expected: str) -> list[str]:
    other = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, server.url, dead, service, expected],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.returncode == 0, other.stderr
    return other.stdout.split()


def test_a_breaker_opened_in_one_process_is_open_in_another(server: RedisServer) -> None:
    service, _ = _names("replica")
    dead = f"http://127.0.0.1:{free_port()}"
    client = _client_of_nowhere(server.url, service, "shared", dead, circuit_breaker_fail_max=2)
    _trip(client, fail_max=2)
    assert _other_process(server, dead, service, "open") == ["ServiceUnavailableError", "0"]
    # Closing it here closes it for every replica.
    testing.force_closed(service, "shared")
    _wait_remote(server, service, "shared", b"closed", "the close")
    assert _other_process(server, dead, service, "closed") == ["ServiceConnectionError", "1"]
    client.close()


def test_failures_of_several_processes_add_up_in_redis(server: RedisServer) -> None:
    service, target = _names("adding")
    config = _config(server.url, circuit_breaker_fail_max=4)
    here = breakers.get(service, target, config)
    # Another process's breaker on the same Redis, as a second object in this one.
    there = Breaker(
        f"{service}->{target}", 4, 30.0, redis_url=server.url, sync_interval=SYNC_INTERVAL
    )
    there.start_sync()
    registry = CollectorRegistry()
    here.attach_gauge(Gauge("breaker_state", "state of here", registry=registry))
    for breaker in (here, there, here, there):
        breaker.record_failure(breaker.admit())
    _eventually(lambda: here.state == "open" and there.state == "open", "the shared trip")
    # Each saw two failures, below fail_max: the trip came from their sum in Redis.
    assert here.circuit.fail_counter == there.circuit.fail_counter == 2
    # A state taken from Redis reaches the metric like a local transition.
    assert registry.get_sample_value("breaker_state") == 2  # open
    there.reset()


@needs_fork
def test_a_forked_child_pushes_only_its_own_events(server: RedisServer) -> None:
    service, target = _names("fork")
    # A long interval: the parent's failures stay unpushed across the fork.
    config = _config(server.url, circuit_breaker_fail_max=5, circuit_breaker_redis_sync_interval=60)
    breaker = breakers.get(service, target, config)
    _wait_remote(server, service, target, b"closed", "the first synchronisation")
    for _ in range(3):
        breaker.record_failure(breaker.admit())

    def child() -> int:
        breaker.record_failure(breaker.admit())
        testing.reset()  # pushes this process's events now
        return 0

    assert in_forked_child(child) == 0
    testing.reset()
    connection = redis.Redis.from_url(server.url)
    counter = connection.get(f"commclient:{service}:{target}:pybreaker:fail_counter")
    state = connection.get(_state_key(service, target))
    connection.close()
    # 3 here + 1 there; the parent's 3 pushed twice would make 7 and open it.
    assert (counter, state) == (b"4", b"closed")


def test_a_wrong_redis_password_is_an_auth_error_logged_once_and_not_retried(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="commclient.breaker")
    admin = redis.Redis.from_url(server.url, socket_timeout=2)
    admin.config_set("requirepass", "right")
    admin = redis.Redis.from_url(server.url, password="right", socket_timeout=2)
    wrong = server.url.replace("redis://", "redis://:wrong@")
    service, target = _names("auth")
    client = _client_of_nowhere(wrong, service, target)
    try:
        _trip(client)

        def refused() -> list[logging.LogRecord]:
            # The breaker's own transition records (information) are not about Redis.
            return [
                r
                for r in caplog.records
                if r.name == "commclient.breaker" and not hasattr(r, "new_state")
            ]

        _eventually(lambda: bool(refused()), "the refusal is logged")
        connections = admin.info("stats")["total_connections_received"]
        time.sleep(20 * SYNC_INTERVAL)  # many synchronisations would be due meanwhile
        [record] = refused()
        assert record.levelno == logging.ERROR
        message = record.getMessage()
        assert "refused the credentials" in message
        assert "cannot be reached" not in message
        assert "wrong" not in message
        # Not asked again: the only new connection is the one reading the statistics.
        assert admin.info("stats")["total_connections_received"] - connections <= 1
        assert testing.breaker_state(service, target) == "open"
    finally:
        client.close()
        admin.close()

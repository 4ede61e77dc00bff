"""Fixtures for the client integration tests: a real HTTP server on loopback, in its own process.

The shared server serves every test; a test that kills and restarts its server gets its own.
Every test gets fresh names (breakers and retry budgets are per process, keyed by them) and
its own keys in the server's request logs, so tests never see each other's state.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
    ServiceTimeoutError,
    SyncServiceClient,
    testing,
)
from tests.http_server import ServerProcess
from tests.unit.conftest import facade

__all__ = ["facade"]  # runs a test once per facade (through Driver and make)


@pytest.fixture(autouse=True)
def _isolated_client_state() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


@pytest.fixture(scope="session")
def http_server() -> Iterator[ServerProcess]:
    """The shared server; its request logs are keyed, so tests do not reset it."""
    with ServerProcess() as server:
        yield server


@pytest.fixture
def restartable_server() -> Iterator[ServerProcess]:
    """A server of this test alone, which it may stop and start on the same port."""
    server = ServerProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Names:
    """Names unique to one test: the client's pair and a prefix for server log keys."""

    service: str
    target: str
    prefix: str

    def key(self, suffix: str = "") -> str:
        return f"{self.prefix}-{suffix}" if suffix else self.prefix


@pytest.fixture
def names() -> Names:
    unique = uuid.uuid4().hex[:10]
    return Names(f"caller-{unique}", f"target-{unique}", f"k{unique}")


@pytest.fixture
def refused_port() -> int:
    """A loopback port that nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fast_config(**overrides: Any) -> ClientConfig:
    """Short timeouts and waits; a breaker and a budget too large to interfere."""
    settings: dict[str, Any] = {
        "timeout": 2.0,
        "connect_timeout": 1.0,
        "max_retries": 3,
        "retry_min_wait": 0.01,
        "retry_max_wait": 0.05,
        "circuit_breaker_fail_max": 10_000,
        "retry_budget_max_tokens": 10_000.0,
    }
    settings.update(overrides)
    return ClientConfig(**settings)


@dataclass(frozen=True)
class MixedCall:
    """One call of the concurrency tests, and what it alone must get back."""

    index: int
    kind: str
    method: str
    path: str
    params: dict[str, str]
    json: Any
    idempotency_key: str | None
    correlation_id: str
    expected_server_calls: int


MIXED_KINDS = ("ok", "not_found", "unavailable", "timeout", "html", "reset", "idempotent_retry")


class MixedCalls:
    """Calls of every outcome interleaved on one client, each checked against its own index.

    The read timeout (1 s) is well below the slow endpoint's 3 s, and well above what an
    answered request takes even on a loaded machine; statuses and timeouts are retried once
    (``max_retries=2``).
    """

    config = fast_config(timeout=1.0, max_retries=2)

    def __init__(self, server: ServerProcess, names: Names) -> None:
        self.server = server
        self.names = names

    def call(self, index: int) -> MixedCall:
        kind = MIXED_KINDS[index % len(MIXED_KINDS)]
        params = {"key": self.names.key(str(index)), "i": str(index)}
        method, path, body, idempotency_key, expected = "GET", "/echo", None, None, 1
        if kind == "not_found":
            path = "/status/404"
        elif kind == "unavailable":
            path, expected = "/status/503", 2
        elif kind == "timeout":
            path, expected = "/slow", 2
            params["seconds"] = "3"
        elif kind == "html":
            path = "/html/200"
        elif kind == "reset":
            method, path, body = "POST", "/drop", {"i": index}
            params["how"] = "reset"
        elif kind == "idempotent_retry":
            method, path, body, expected = "POST", "/flaky", {"i": index}, 2
            idempotency_key = f"idem-{self.names.prefix}-{index}"
            params["first"] = "1"
        return MixedCall(
            index,
            kind,
            method,
            path,
            params,
            body,
            idempotency_key,
            f"cid-{self.names.prefix}-{index}",
            expected,
        )

    def check(self, call: MixedCall, outcome: object) -> None:
        """Assert that ``outcome`` is exactly what ``call`` alone should have produced."""
        index, kind = call.index, call.kind
        if kind in ("ok", "idempotent_retry"):
            assert isinstance(outcome, dict), (index, kind, outcome)
            assert outcome["query"]["i"] == str(index)
            assert outcome["headers"]["x-correlation-id"] == call.correlation_id
            assert outcome["body"] == call.json
        else:
            assert isinstance(outcome, ServiceClientError), (index, kind, outcome)
            assert f"i={index}" in outcome.url
            expected_type = {
                "not_found": ServiceResponseError,
                "unavailable": ServiceResponseError,
                "timeout": ServiceTimeoutError,
                "html": ServiceDecodeError,
                "reset": ServiceConnectionError,
            }[kind]
            assert type(outcome) is expected_type, (index, kind, outcome)
            assert outcome.attempts == call.expected_server_calls
            if isinstance(outcome, ServiceResponseError):
                assert outcome.status_code == (404 if kind == "not_found" else 503)
                assert f"i={index}" in outcome.detail
        received = self.server.calls(call.params["key"])
        assert len(received) == call.expected_server_calls, (index, kind, received)
        for request in received:
            assert request["correlation_id"] == call.correlation_id
            assert request["idempotency_key"] == call.idempotency_key
            assert request["query"]["i"] == str(index)


@pytest.fixture
def mixed_calls(http_server: ServerProcess, names: Names) -> MixedCalls:
    return MixedCalls(http_server, names)


class Driver:
    """A client of one facade, called synchronously (the async one on its own loop)."""

    def __init__(
        self, facade: str, base_url: str, names: Names, config: ClientConfig, **options: Any
    ) -> None:
        self.facade = facade
        self.names = names
        cls = SyncServiceClient if facade == "sync" else AsyncServiceClient
        self.loop = asyncio.new_event_loop() if facade == "async" else None
        self.client: Any = cls(
            base_url,
            service_name=names.service,
            target_service=names.target,
            config=config,
            registry=CollectorRegistry(),
            **options,
        )

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        if self.loop is not None:
            result = self.loop.run_until_complete(result)
        return result

    def close(self) -> None:
        self("close")
        if self.loop is not None:
            self.loop.close()

    @property
    def breaker(self) -> str:
        return testing.breaker_state(self.names.service, self.names.target)


@pytest.fixture
def make(facade: str, http_server: ServerProcess, names: Names) -> Iterator[Any]:
    drivers: list[Driver] = []

    def make_driver(
        config: ClientConfig | None = None, base_url: str | None = None, **options: Any
    ) -> Driver:
        driver = Driver(
            facade, base_url or http_server.base_url, names, config or fast_config(), **options
        )
        drivers.append(driver)
        return driver

    yield make_driver
    for driver in drivers:
        driver.close()

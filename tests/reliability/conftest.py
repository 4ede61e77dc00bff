"""Fixtures of the reliability scenarios: a real HTTP server, the fault proxy, report rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from commclient import ClientConfig
from tests.fault_proxy import FaultProxy
from tests.http_server import ServerProcess
from tests.integration.conftest import _isolated_client_state, http_server
from tests.reliability._results import FULL, Row

# Shared with the integration tests: fresh breakers and budgets per test, one HTTP server.
__all__ = ["_isolated_client_state", "http_server"]

_OUTCOME = pytest.StashKey[str]()
#: Seconds one scenario may take: the suite-wide 120 s is too short for full sizes, and for
#: the properties on a machine shared by many processes.
TIMEOUT = 3600 if FULL else 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = str(__file__).rpartition("/")[0]
    for item in items:
        if str(item.path).startswith(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        result = report.outcome
        if hasattr(report, "wasxfail"):
            result = f"xfail ({report.wasxfail})" if report.skipped else "XPASS"
        item.stash[_OUTCOME] = result


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Iterator[Row]:
    """The test's row of RELIABILITY.md, written after the test with its result."""
    entry = Row(scenario="", test=request.node.nodeid)
    yield entry
    entry.result = request.node.stash.get(_OUTCOME, "error")
    if entry.scenario:
        entry.write()


@pytest.fixture
def proxy(http_server: ServerProcess) -> Iterator[FaultProxy]:
    with FaultProxy(http_server.port) as running:
        yield running


@pytest.fixture
def names() -> tuple[str, str]:
    unique = uuid.uuid4().hex[:10]
    return f"caller-{unique}", f"target-{unique}"


def config(**overrides: Any) -> ClientConfig:
    """Short waits for loopback; timeouts no loaded machine reaches on a healthy attempt;
    everything else as documented defaults."""
    settings: dict[str, Any] = {
        "timeout": 5.0,
        "connect_timeout": 2.0,
        "retry_min_wait": 0.01,
        "retry_max_wait": 0.05,
    }
    settings.update(overrides)
    return ClientConfig(**settings)

"""Fixtures that run one behaviour table against both facades."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from commclient import ClientConfig, testing
from tests.unit.harness import BASE_URL, AsyncHarness, Harness, SyncHarness

MakeHarness = Callable[..., Harness]


@pytest.fixture(autouse=True)
def _isolated_breakers() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


@pytest.fixture(
    params=[
        pytest.param("sync", marks=pytest.mark.facade_sync),
        pytest.param("async", marks=pytest.mark.facade_async),
    ]
)
def facade(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_harness(facade: str) -> Iterator[MakeHarness]:
    """Build a client of the facade under test, answered by that facade's mock."""
    made: list[Harness] = []

    def make(config: ClientConfig | None = None, base_url: str = BASE_URL) -> Harness:
        cls = SyncHarness if facade == "sync" else AsyncHarness
        harness = cls(config, base_url)
        made.append(harness)
        return harness

    with testing.no_wait():
        yield make
    for harness in made:
        harness.close()

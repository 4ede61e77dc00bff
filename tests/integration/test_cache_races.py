"""Races between real processes, driven by events rather than sleeps: a loader's failure
reaches every process waiting for that load at once (not one after another)."""

from __future__ import annotations

import multiprocessing
import warnings
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient.cache import CacheConfig, LoaderFailedError, SyncRedisCache
from tests import conftest_cache
from tests.forking import needs_fork

pytestmark = [pytest.mark.redis_server, needs_fork]

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix

WAITERS = 5
CONFIG = CacheConfig(operation_timeout=2.0, loader_failure_ttl=30.0)


def _process(
    url: str, prefix: str, index: int, events: dict[str, Any], results: Any
) -> None:  # pragma: no cover - runs in a child process
    """Process 0 loads and fails once every other process is asking; each reports what
    its call raised and whether its own loader ran."""
    loaded: list[int] = []

    def failing() -> str:
        events["loading"].set()
        for asking in events["asking"]:
            asking.wait(30)
        raise RuntimeError("database down")

    def loader() -> str:
        loaded.append(index)
        return "loaded"

    with SyncRedisCache.from_url(url, prefix, config=CONFIG, registry=CollectorRegistry()) as cache:
        try:
            if index == 0:
                cache.get_or_set("settings:1", failing)
            else:
                events["loading"].wait(30)
                events["asking"][index - 1].set()
                cache.get_or_set("settings:1", loader)
            outcome = "no error"
        except Exception as error:
            outcome = type(error).__name__
    results.put((index, outcome, bool(loaded)))


def test_a_loader_failure_reaches_every_waiting_process_together(
    redis_url: str, prefix: str
) -> None:
    context = multiprocessing.get_context("fork")
    events = {"loading": context.Event(), "asking": [context.Event() for _ in range(WAITERS)]}
    results = context.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        processes = [
            context.Process(target=_process, args=(redis_url, prefix, index, events, results))
            for index in range(WAITERS + 1)
        ]
        for process in processes:
            process.start()
    outcomes = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=10)
    assert outcomes[0] == (0, "RuntimeError", False)
    assert outcomes[1:] == [
        (index, LoaderFailedError.__name__, False) for index in range(1, WAITERS + 1)
    ]

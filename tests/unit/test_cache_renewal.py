"""A cache miss starts no thread (sync) and no task (async) for a loader that returns
before its lease needs renewing; a slow loader's lease is still renewed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from commclient.cache import _io_async, _io_sync
from commclient.cache._config import CacheConfig
from tests import conftest_cache

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix


@pytest.fixture
def thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads started while the test runs."""
    started: list[str] = []
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def test_quick_sync_loads_start_no_thread(thread_starts: list[str]) -> None:
    renewed = threading.Event()
    with _io_sync.renewing(0.05, renewed.set):
        pass  # the process's renewer may start once, here
    thread_starts.clear()
    for _ in range(50):
        with _io_sync.renewing(0.05, renewed.set):
            pass
    assert thread_starts == []


def test_quick_sync_loads_leave_no_lease_behind() -> None:
    from commclient.cache._renewer import lease_renewer

    renewed = threading.Event()
    with _io_sync.renewing(60.0, renewed.set), _io_sync.renewing(60.0, renewed.set):
        assert len(lease_renewer._leases) >= 2
    for _ in range(100):
        with _io_sync.renewing(60.0, renewed.set):
            pass
    assert not lease_renewer._leases
    assert not renewed.is_set()


def test_a_slow_sync_load_is_renewed_by_the_shared_renewer(thread_starts: list[str]) -> None:
    renewals: list[int] = []
    twice = threading.Event()

    def renew() -> None:
        renewals.append(1)
        if len(renewals) >= 2:
            twice.set()

    with _io_sync.renewing(0.01, renew):
        assert twice.wait(10), "the lease of a slow loader was not renewed"
    count = len(renewals)
    with _io_sync.renewing(0.01, renew):
        pass
    assert len(thread_starts) <= 1
    # Unregistered: renewing stops with the load (a renewal in progress may finish).
    assert len(renewals) <= count + 1


def test_a_renewal_that_raises_does_not_stop_the_others() -> None:
    renewed = threading.Event()

    def broken() -> None:
        raise RuntimeError("renewal failed")

    with _io_sync.renewing(0.01, broken), _io_sync.renewing(0.01, renewed.set):
        assert renewed.wait(10)
        renewed.clear()
        assert renewed.wait(10), "the renewer stopped after a failed renewal"


def test_quick_async_loads_start_no_task() -> None:
    async def main() -> list[int]:
        calls: list[int] = []

        async def renew() -> None:
            calls.append(1)

        counts = []
        for _ in range(20):
            before = len(asyncio.all_tasks())
            async with _io_async.renewing(0.05, renew):
                counts.append(len(asyncio.all_tasks()) - before)
        return counts + calls

    assert asyncio.run(main()) == [0] * 20


def test_a_slow_async_load_is_renewed() -> None:
    async def main() -> int:
        twice = asyncio.Event()
        calls: list[int] = []

        async def renew() -> None:
            calls.append(1)
            if len(calls) >= 2:
                twice.set()

        async with _io_async.renewing(0.01, renew):
            await asyncio.wait_for(twice.wait(), 10)
        count = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == count, "renewal went on after the load"
        return count

    assert asyncio.run(main()) >= 2


@pytest.mark.facade_sync
def test_a_sync_get_or_set_miss_starts_no_thread(
    redis_url: str, prefix: str, thread_starts: list[str]
) -> None:
    from commclient.cache import SyncRedisCache

    cache: Any = SyncRedisCache.from_url(redis_url, prefix, config=CacheConfig(lease_ttl=5.0))
    try:
        assert cache.get_or_set("warm:0", lambda: "v") == "v"
        thread_starts.clear()
        for i in range(20):
            assert cache.get_or_set(f"miss:{i}", lambda: "v") == "v"
    finally:
        cache.close()
    assert thread_starts == []

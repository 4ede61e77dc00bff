"""The memory caches after ``os.fork()``: a child never serves what it inherited.

A memory store lives in one process. A forked child (gunicorn ``--preload``, Celery
prefork, ``multiprocessing``) inherited the parent's values, which the parent may change or
delete at any time without the child ever hearing of it; and a lock another thread of the
parent held at the fork would stay held in the child for ever.
"""

from __future__ import annotations

import asyncio
import threading

from commclient.cache import AsyncMemoryCache, MemoryStore, SyncMemoryCache
from tests.forking import in_forked_child, needs_fork

pytestmark = needs_fork


def test_a_forked_child_starts_from_an_empty_store_with_a_free_lock() -> None:
    store = MemoryStore()
    cache = SyncMemoryCache("settings", store=store)
    async_cache = AsyncMemoryCache("settings", store=store)
    assert cache.set("global:1", "from the parent") is True
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with store.lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert held.wait(10)

    def child() -> int:
        if cache.get("global:1") is not None:
            return 1  # the parent may delete it now, and this process would never know
        if cache.set("global:1", "from the child") is not True:
            return 2
        if cache.get("global:1") != "from the child":
            return 3
        return 0 if asyncio.run(async_cache.get("global:1")) == "from the child" else 4

    try:
        assert in_forked_child(child, timeout=10) == 0
    finally:
        release.set()
        holder.join()
    assert cache.get("global:1") == "from the parent"
    cache.close()

"""Drive many calls through both facades at once: sync threads and asyncio tasks side by side."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class Outcome:
    """What one call ended in: its value or the exception it raised, and how long it took."""

    key: str
    facade: str
    value: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0


def run_both(
    sync_call: Callable[[str], Any],
    async_call: Callable[[str], Awaitable[Any]],
    sync_keys: Sequence[str],
    async_keys: Sequence[str],
    *,
    threads: int = 8,
    tasks: int = 16,
) -> list[Outcome]:
    """Call ``sync_call`` from ``threads`` threads and ``async_call`` from ``tasks`` tasks
    concurrently, once per key; every exception is kept, whatever its type."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def keep(outcome: Outcome) -> None:
        with lock:
            outcomes.append(outcome)

    def one_sync(key: str) -> None:
        started = time.monotonic()
        try:
            value = sync_call(key)
        except BaseException as exc:
            keep(Outcome(key, "sync", error=exc, elapsed=time.monotonic() - started))
        else:
            keep(Outcome(key, "sync", value=value, elapsed=time.monotonic() - started))

    async def all_async() -> None:
        gate = asyncio.Semaphore(tasks)

        async def one(key: str) -> None:
            async with gate:
                started = time.monotonic()
                try:
                    value = await async_call(key)
                except BaseException as exc:
                    keep(Outcome(key, "async", error=exc, elapsed=time.monotonic() - started))
                else:
                    keep(Outcome(key, "async", value=value, elapsed=time.monotonic() - started))

        await asyncio.gather(*(one(key) for key in async_keys))

    async_thread = threading.Thread(target=asyncio.run, args=(all_async(),), name="async-load")
    async_thread.start()
    with ThreadPoolExecutor(threads, thread_name_prefix="sync-load") as pool:
        list(pool.map(one_sync, sync_keys))
    async_thread.join()
    return outcomes

"""A process that keeps a cache with a local tier busy, for scenario 4 (run with ``python -m``).

``python -m tests.reliability.cache_traffic FACADE URL PREFIX``: reads, read-throughs and
writes over 20 keys without pause, counting every call and every exception, while it answers
commands on stdin, one JSON line each:

``get KEY``   ``{"value": ...}``: what the cache serves for KEY now
``stop``      ``{"calls": N, "exceptions": {type: count}, "samples": [...]}`` and exit
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any

from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache

CONFIG = CacheConfig(local_tier_size=100, local_tier_ttl=60.0, operation_timeout=0.5)
KEYS = [f"k{i}" for i in range(20)]


class Tally:
    def __init__(self) -> None:
        self.calls = 0
        self.exceptions: Counter[str] = Counter()
        self.samples: list[str] = []
        self.stop = threading.Event()

    def failed(self, error: BaseException) -> None:
        self.exceptions[type(error).__name__] += 1
        if len(self.samples) < 3:
            self.samples.append("".join(traceback.format_exception(error))[-800:])

    def report(self) -> dict[str, Any]:
        return {"calls": self.calls, "exceptions": dict(self.exceptions), "samples": self.samples}


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def run_sync(url: str, prefix: str) -> None:
    cache = SyncRedisCache.from_url(url, prefix, config=CONFIG)
    cache.start()
    tally = Tally()

    def traffic() -> None:
        number = 0
        while not tally.stop.is_set():
            key = KEYS[number % len(KEYS)]
            try:
                if number % 10 == 0:
                    cache.set(key, {"n": number}, ttl=60)
                elif number % 3 == 0:
                    cache.get_or_set(key, lambda n=number: {"n": n}, ttl=60)
                else:
                    cache.get(key)
            except BaseException as error:
                tally.failed(error)
            tally.calls += 1
            number += 1
            time.sleep(0.001)

    worker = threading.Thread(target=traffic)
    worker.start()
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "get":
            emit({"value": cache.get(argument)})
        elif command == "stop":
            break
    tally.stop.set()
    worker.join()
    cache.close()
    emit(tally.report())


async def run_async(url: str, prefix: str) -> None:
    cache = AsyncRedisCache.from_url(url, prefix, config=CONFIG)
    await cache.start()
    tally = Tally()

    async def traffic() -> None:
        number = 0
        while not tally.stop.is_set():
            key = KEYS[number % len(KEYS)]
            try:
                if number % 10 == 0:
                    await cache.set(key, {"n": number}, ttl=60)
                elif number % 3 == 0:

                    async def load(n: int = number) -> dict[str, int]:
                        return {"n": n}

                    await cache.get_or_set(key, load, ttl=60)
                else:
                    await cache.get(key)
            except BaseException as error:
                tally.failed(error)
            tally.calls += 1
            number += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(traffic())
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command, _, argument = line.strip().partition(" ")
        if command == "get":
            emit({"value": await cache.get(argument)})
        elif command == "stop" or not line:
            break
    tally.stop.set()
    await task
    await cache.aclose()
    emit(tally.report())


def main() -> None:
    facade, url, prefix = sys.argv[1:4]
    if facade == "sync":
        run_sync(url, prefix)
    else:
        asyncio.run(run_async(url, prefix))


if __name__ == "__main__":
    main()

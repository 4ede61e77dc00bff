"""Jobs moved to async def, their blocking calls handed to threads as CM003 advises."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

import requests

from compat import run_blocking

from . import carrier
from .carrier import SESSION

POOL = ThreadPoolExecutor(4)


async def refresh_tracking(parcel_ids: list[str]) -> None:
    for parcel_id in parcel_ids:
        await run_blocking(carrier.track, parcel_id)  # expect: CM004


async def post_labels(labels: list[dict[str, str]]) -> None:
    for label in labels:
        await asyncio.to_thread(requests.post, "http://labels/print", json=label)  # expect: CM001


async def ping_depots(urls: list[str]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(POOL, SESSION.head, url) for url in urls))  # expect: CM001


def warm_cache(urls: list[str]) -> None:
    fetch = functools.partial(SESSION.get, timeout=2)
    for url in urls:
        POOL.submit(fetch, url)  # expect: CM001

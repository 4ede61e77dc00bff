"""Async checks, awaited by the jobs through the helpers."""

from __future__ import annotations

import asyncio


async def disk_usage() -> float:
    await asyncio.sleep(0)
    return 0.5


async def queue_depth() -> int:
    await asyncio.sleep(0)
    return 3

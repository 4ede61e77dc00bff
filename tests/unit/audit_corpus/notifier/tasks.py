"""Jobs, some async already; the scheduler object lives here."""

import asyncio
import time

import httpx
import requests
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from cron_migration import migrated_job
from notifier.push import fetch_templates, send_push, send_push_async

scheduler = AsyncIOScheduler()
state: dict[str, int] = {}


@scheduler.scheduled_job("interval", minutes=1)
async def deliver_due() -> None:
    templates = fetch_templates()  # expect: CM003 CM004
    for user_id in (1, 2, 3):
        send_push(user_id, templates["due"])  # expect: CM003 CM004
    time.sleep(0.5)  # expect: CM003
    async with httpx.AsyncClient(base_url="http://push:9000") as client:
        await send_push_async(client, 4, "hi")  # expect: CM004


@migrated_job(timeout=30)
def legacy_digest() -> None:
    async def collect() -> list[dict]:
        session = requests.Session()
        rows = session.get("http://digest:8000/rows").json()  # expect: CM001 CM003
        await asyncio.sleep(0)
        return rows

    loop = asyncio.new_event_loop()  # expect: CM002
    loop.run_until_complete(collect())  # expect: CM002


@scheduler.scheduled_job("cron", hour=6)
def morning() -> None:
    state["runs"] = state.get("runs", 0) + 1
    requests.get("http://health:8000/ping", timeout=1)  # cron-migration: ignore[CM001]


def helper_not_a_job() -> None:
    asyncio.get_event_loop()

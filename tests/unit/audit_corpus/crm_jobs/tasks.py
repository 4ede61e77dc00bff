"""Jobs: a decorated async job, a blocking export inside it."""

import time

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from crm_jobs.client import CrmClient

scheduler = AsyncIOScheduler()


@scheduler.scheduled_job("interval", minutes=15)
async def sync_contacts() -> int:
    async with CrmClient("http://crm:8000") as crm:
        contacts = await crm.contacts()  # expect: CM004
        crm.export_now()  # expect: CM003 CM004
    time.sleep(1)  # expect: CM003
    return len(contacts)


def nightly() -> None:
    try:
        httpx.get("http://crm:8000/ping")  # expect: CM001
    except httpx.HTTPError as exc:
        raise httpx.HTTPStatusError("down", request=exc.request, response=None) from exc
    time.sleep(5)

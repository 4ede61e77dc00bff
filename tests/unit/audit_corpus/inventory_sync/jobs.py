"""Sync jobs, registered with partials and a lambda."""

import asyncio
import functools

from apscheduler.schedulers.background import BackgroundScheduler

from .warehouse import Warehouse, catalogue

scheduler = BackgroundScheduler()
WAREHOUSE = Warehouse()


async def push_to_shop(items: list) -> None:
    await asyncio.sleep(0)


def sync_sku(sku: str) -> None:
    quantity = WAREHOUSE.stock(sku)  # expect: CM004
    asyncio.run(push_to_shop([(sku, quantity)]))  # expect: CM002


def full_sync() -> None:
    items = catalogue()  # expect: CM004
    loop = asyncio.get_event_loop()  # expect: CM002
    loop.run_until_complete(push_to_shop(items))  # expect: CM002


scheduler.add_job(functools.partial(sync_sku, "A-1"), "interval", minutes=10)
scheduler.add_job(full_sync, "interval", hours=1)
scheduler.add_job(lambda: asyncio.run(push_to_shop([])), "interval", hours=6)  # expect: CM002

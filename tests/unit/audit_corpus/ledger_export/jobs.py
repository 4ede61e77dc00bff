"""The export jobs."""

from __future__ import annotations

import csv
import io
import time

from apscheduler.schedulers.blocking import BlockingScheduler

from .client import LedgerClient, fetch_rates

LEDGER = LedgerClient("http://ledger:8000", token="t")
scheduler = BlockingScheduler()


@scheduler.scheduled_job("cron", hour=2)
def export_yesterday() -> None:
    rows = LEDGER.entries("yesterday")  # expect: CM004
    rates = fetch_rates()  # expect: CM004
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([row["id"], row["amount"] * rates.get(row["currency"], 1.0)])
    LEDGER.upload("yesterday.csv", out.getvalue().encode())  # expect: CM004


async def export_now() -> None:
    LEDGER.entries("today")  # expect: CM003 CM004
    time.sleep(1)  # expect: CM003

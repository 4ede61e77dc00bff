"""The jobs; the scheduler registers them from scheduler.py."""

import asyncio
import logging

from . import http
from .client import LEDGER
from .http import post_charge

logger = logging.getLogger(__name__)


def charge_due() -> int:
    charged = 0
    for invoice in http.get_invoices("due"):  # expect: CM004
        post_charge(invoice["id"], invoice["amount"])  # expect: CM004
        LEDGER.book(invoice["account"], -invoice["amount"])  # expect: CM004
        charged += 1
    return charged


def sync_invoices() -> None:
    if not http.healthcheck():  # expect: CM004
        return
    logger.info("ledger: %s", LEDGER.describe())
    logger.info("balance %s", LEDGER.balance("house"))  # expect: CM004


async def _reconcile() -> int:
    await asyncio.sleep(0)
    return 0


def nightly_report() -> int:
    return asyncio.run(_reconcile())  # expect: CM002


def not_scheduled() -> int:
    return asyncio.run(_reconcile())

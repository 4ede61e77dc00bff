"""The cron jobs."""

from __future__ import annotations

import asyncio
import logging

from .clients import http
from .clients.payments import PAYMENTS, PaymentsApi

logger = logging.getLogger(__name__)


def settle_pending() -> int:
    settled = 0
    for payment in PAYMENTS.pending():  # expect: CM004
        PAYMENTS.settle(payment["id"])  # expect: CM004
        settled += 1
    return settled


async def reconcile(api: PaymentsApi) -> int:
    pending = api.pending()  # expect: CM003 CM004
    await asyncio.sleep(0)
    return len(pending)


def reconcile_job() -> int:
    return asyncio.run(reconcile(PAYMENTS))  # expect: CM002


def healthcheck() -> None:
    if not http.ping("http://payments/health"):  # expect: CM004
        logger.error("payments unhealthy")

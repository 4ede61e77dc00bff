"""The jobs, sync, registered by the scheduler module."""

from __future__ import annotations

import logging

from . import checks
from .utils import run_async, run_sync_compat

logger = logging.getLogger(__name__)


def check_disk() -> None:
    if run_async(checks.disk_usage()) > 0.9:  # expect: CM002
        logger.error("disk almost full")


def check_queue() -> None:
    depth = run_sync_compat(checks.queue_depth())  # expect: CM002
    logger.info("queue depth %d", depth)


def report() -> None:
    check_disk()  # expect: CM002

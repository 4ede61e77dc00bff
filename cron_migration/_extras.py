"""The message that names the extra to install when APScheduler is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from commclient._extras import import_extra


def import_needing_scheduler(module_name: str, package: str) -> ModuleType:
    """Import ``module_name`` (relative to ``package``), which needs APScheduler 3."""
    try:
        return importlib.import_module(module_name, package)
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "apscheduler":
            raise
        # Raises the error that names the extra; APScheduler is missing, so it cannot return.
        import_extra(
            "apscheduler",
            extra="scheduler",
            feature="cron_migration (to migrate, run or shut down a scheduler)",
        )
        raise

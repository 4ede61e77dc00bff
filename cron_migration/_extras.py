"""The message that names the extra to install when APScheduler is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

SCHEDULER_EXTRA = "pip install 'commclient[scheduler]'"


def import_needing_scheduler(module_name: str, package: str) -> ModuleType:
    """Import ``module_name`` (relative to ``package``), which needs APScheduler 3."""
    try:
        return importlib.import_module(module_name, package)
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "apscheduler":
            raise
        raise ImportError(
            f"cron_migration needs APScheduler 3 to migrate, run or shut down a scheduler: "
            f"{SCHEDULER_EXTRA} ({exc})",
            name=exc.name,
        ) from exc

"""APScheduler 3 comes with the ``scheduler`` extra: importing the package without it says so.

Imported first by ``cron_migration/__init__.py``, before any module that imports APScheduler.
"""

from __future__ import annotations

from commclient._extras import import_extra

import_extra("apscheduler", extra="scheduler", feature="cron_migration")

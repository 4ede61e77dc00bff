"""The cron service after the migration: ``AsyncIOScheduler``, ``CronRestClient``, the cache.

``client`` holds ``CronRestClient``; ``jobs`` the jobs already moved to async; ``service``
puts them, and the legacy jobs not yet moved, on one ``AsyncIOScheduler``.
"""

from examples.cron_service.client import CronRestClient

__all__ = ["CronRestClient"]

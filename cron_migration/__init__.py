"""Run cron jobs unchanged on the legacy and the asyncio scheduler while they are migrated.

The public API (``migrated_job``, ``migrate_scheduler``, ``shutdown_gracefully``) lands with
its own issue; the package exists now so that packaging, typing and tests cover it.
"""

__all__: list[str] = []

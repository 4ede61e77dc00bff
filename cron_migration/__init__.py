"""Run cron jobs unchanged on the legacy and the asyncio scheduler while they are migrated."""

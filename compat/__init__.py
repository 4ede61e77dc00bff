"""Bridges between synchronous and asynchronous code during the migration to asyncio."""

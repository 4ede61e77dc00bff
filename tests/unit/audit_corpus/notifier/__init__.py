"""A notification service half-way through its move to asyncio."""

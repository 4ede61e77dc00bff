"""A half-migrated shipping service: blocking calls moved off the loop, still raw requests."""

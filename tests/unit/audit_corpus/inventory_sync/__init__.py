"""Inventory synchronisation between the warehouse and the shop (held back: second set)."""

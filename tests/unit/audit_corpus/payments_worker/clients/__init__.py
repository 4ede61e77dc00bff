"""The old HTTP clients."""

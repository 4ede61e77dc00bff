"""A ledger export: a client whose session is a lazy property, and an untyped factory."""

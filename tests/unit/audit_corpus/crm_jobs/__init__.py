"""CRM jobs with an async client class of their own (held back: second set)."""

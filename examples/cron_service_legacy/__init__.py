"""The cron service before the migration: blocking REST helpers and the jobs that use them.

``rest_client`` is the old module-level API on ``requests`` (a new connection per call,
``[]`` or ``None`` on any error); ``jobs`` holds the old call sites. Both are kept as
they were so that compat's legacy shim can be shown to run the jobs unchanged.
"""

"""The cron service before the migration: ``requests`` helpers, sync jobs, ``BlockingScheduler``.

``rest_client`` is the old module-level API on ``requests`` (a new connection per call,
``[]`` or ``None`` on any error); ``jobs`` holds the old call sites; ``scheduler`` puts
them on a ``BlockingScheduler``. They are kept as they were so that the migration
(``examples.cron_service``) and compat's legacy shim can be shown to run them unchanged.
"""

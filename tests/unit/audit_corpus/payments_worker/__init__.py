"""A payments worker: a layered API client (public methods over one _request) and cron jobs."""

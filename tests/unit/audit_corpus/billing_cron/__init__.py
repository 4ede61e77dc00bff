"""A billing service's cron jobs, as written before the migration."""

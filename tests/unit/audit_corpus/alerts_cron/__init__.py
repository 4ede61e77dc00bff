"""An alerting cron: sync jobs reach async code through a helper that makes a loop."""

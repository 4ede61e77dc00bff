"""The scheduler: jobs registered by reference, by keyword and by string."""

from apscheduler.schedulers.blocking import BlockingScheduler

from billing_cron import jobs

scheduler = BlockingScheduler(timezone="UTC")
scheduler.add_job(jobs.charge_due, "interval", minutes=5, id="charge_due")
scheduler.add_job(func=jobs.sync_invoices, trigger="interval", hours=1, id="sync")
scheduler.add_job("billing_cron.jobs:nightly_report", "cron", hour=2, id="nightly")

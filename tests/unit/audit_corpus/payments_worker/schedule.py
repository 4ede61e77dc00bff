"""The scheduler as the service builds it."""

from apscheduler.schedulers.background import BackgroundScheduler

from . import jobs

scheduler = BackgroundScheduler(timezone="UTC")
scheduler.add_job(jobs.settle_pending, "interval", minutes=10, id="settle")
scheduler.add_job(jobs.reconcile_job, trigger="cron", hour=1, id="reconcile")
scheduler.add_job(jobs.healthcheck, "interval", minutes=1, id="health")

"""Wires the jobs up."""

from apscheduler.schedulers.background import BackgroundScheduler

from reports_service import jobs
from reports_service.api import make_client

scheduler = BackgroundScheduler()
client = make_client()
scheduler.add_job(jobs.build_daily, "cron", hour=1, args=[client])
scheduler.add_job(jobs.build_weekly, "cron", day_of_week="mon")
scheduler.add_job(jobs.Exporter(client).export, "interval", hours=6)

"""The scheduler."""

from apscheduler.schedulers.background import BackgroundScheduler

from .jobs import check_disk, check_queue, report

scheduler = BackgroundScheduler()
scheduler.add_job(check_disk, "interval", minutes=1)
scheduler.add_job(check_queue, "interval", minutes=1)
scheduler.add_job(report, "cron", hour=8)

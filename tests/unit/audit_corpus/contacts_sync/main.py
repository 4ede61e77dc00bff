"""The scheduler."""

from apscheduler.schedulers.blocking import BlockingScheduler

from .jobs import MAILER, WelcomeNewContacts, sync_contacts

scheduler = BlockingScheduler(timezone="UTC")
scheduler.add_job(sync_contacts, "interval", minutes=15, id="sync_contacts")
scheduler.add_job(WelcomeNewContacts(MAILER), "interval", minutes=5, id="welcome")

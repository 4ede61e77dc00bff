"""The jobs: one plain function, one object called by the scheduler."""

from __future__ import annotations

import asyncio

from .clients import CrmClient, Mailer, directory_lookup

CRM = CrmClient("http://crm:8000")
MAILER = Mailer()


def sync_contacts() -> int:
    synced = 0
    for contact in CRM.contacts(page=1):  # expect: CM004
        directory_lookup(contact["email"])  # expect: CM004
        synced += 1
    return synced


class WelcomeNewContacts:
    """Called by the scheduler: the job is its __call__."""

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    def __call__(self) -> None:
        asyncio.run(self.welcome_all())  # expect: CM002

    async def welcome_all(self) -> None:
        for contact in CRM.contacts(page=1):  # expect: CM003 CM004
            self.mailer.welcome(contact["email"])  # expect: CM003 CM004

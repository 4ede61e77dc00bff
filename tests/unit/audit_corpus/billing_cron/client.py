"""The ledger client: a class wrapping its own session."""

from __future__ import annotations

import requests


class LedgerClient:
    def __init__(self, base_url: str, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()

    def balance(self, account: str) -> int:
        response = self.session.get(f"{self.base_url}/accounts/{account}")  # expect: CM001
        response.raise_for_status()
        return int(response.json()["balance"])

    def book(self, account: str, amount: int) -> None:
        self.session.post(  # expect: CM001
            f"{self.base_url}/entries", json={"account": account, "amount": amount}
        )

    def describe(self) -> str:
        return f"LedgerClient({self.base_url})"


LEDGER = LedgerClient("http://ledger:8000")

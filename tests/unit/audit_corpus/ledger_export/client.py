"""The ledger client: its session is made on first use."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import httpx
import requests


def make_session(token):
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    return session


class LedgerClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = make_session(self.token)
        return self._session

    @cached_property
    def exports(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.base_url}/exports", timeout=30.0)

    def entries(self, day: str) -> list[dict[str, Any]]:
        return self.session.get(f"{self.base_url}/entries", params={"day": day}).json()  # expect: CM001

    def upload(self, name: str, body: bytes) -> None:
        self.exports.put(f"/{name}", content=body)  # expect: CM001


def fetch_rates() -> dict[str, float]:
    return make_session("public").get("http://rates/today").json()  # expect: CM001

"""The clients, as dataclasses and typed attributes with untyped factories."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import requests


def build_session(user_agent: str):
    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    return session


def build_http():
    return httpx.Client(base_url="http://mailer:8000", timeout=5.0)


DEFAULT_SESSION: requests.Session = build_session("contacts-sync/2.3")


@dataclass
class CrmClient:
    base_url: str
    session: requests.Session = field(default_factory=requests.Session)
    page_size: int = 100

    def contacts(self, page: int) -> list[dict[str, Any]]:
        response = self.session.get(  # expect: CM001
            f"{self.base_url}/contacts", params={"page": page, "size": self.page_size}
        )
        response.raise_for_status()
        return response.json()


class Mailer:
    def __init__(self) -> None:
        self.http: httpx.Client = build_http()

    def welcome(self, email: str) -> None:
        self.http.post("/welcome", json={"email": email})  # expect: CM001


def directory_lookup(email: str) -> dict[str, Any]:
    return DEFAULT_SESSION.get(  # expect: CM001
        "http://directory/lookup", params={"email": email}
    ).json()

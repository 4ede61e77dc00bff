"""The warehouse API: a class-level session and a module-level alias."""

from typing import Optional

import requests
import requests.adapters

fetch = requests.get


class Warehouse:
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(max_retries=3))

    def stock(self, sku: str) -> int:
        response = self.session.get(f"http://warehouse:8000/stock/{sku}")  # expect: CM001
        return int(response.json()["quantity"])

    def reserve(self, sku: str, quantity: int, session: Optional[requests.Session] = None) -> None:
        http = session or self.session
        http.post("http://warehouse:8000/reservations", json={"sku": sku, "n": quantity})  # expect: CM001

    def call(self, method: str, path: str) -> requests.Response:
        return getattr(self.session, method)(f"http://warehouse:8000{path}")  # expect: CM001


def catalogue() -> list:
    return fetch("http://warehouse:8000/catalogue", timeout=5).json()  # expect: CM001


def raw(method: str, url: str) -> requests.Response:
    try:
        return requests.request(method, url, timeout=3)  # expect: CM001
    except (requests.Timeout, requests.ConnectionError):
        raise

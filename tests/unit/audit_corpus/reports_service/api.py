"""The API client: the old code subclassed requests.Session."""

from __future__ import annotations

from typing import Any

import requests


class ApiClient(requests.Session):
    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def fetch_report(self, report_id: str) -> dict[str, Any]:
        return self.get(f"{self.base_url}/reports/{report_id}").json()  # expect: CM001

    def upload(self, name: str, body: bytes) -> None:
        with requests.Session() as upload_session:
            upload_session.put(f"{self.base_url}/files/{name}", data=body)  # expect: CM001


def make_client(base_url: str = "http://reports:8000") -> ApiClient:
    return ApiClient(base_url)

"""Report jobs, registered on the scheduler by main.py."""

from __future__ import annotations

import subprocess
import urllib.request

from . import api as api_module
from .api import ApiClient


def build_daily(client: ApiClient) -> None:
    report = client.fetch_report("daily")  # expect: CM004
    client.upload("daily.json", repr(report).encode())  # expect: CM004
    subprocess.run(["gzip", "-k", "daily.json"], check=True)


async def build_weekly() -> None:
    client = api_module.make_client()
    raw = client.get("http://reports:8000/reports/weekly")  # expect: CM001 CM003
    with urllib.request.urlopen("http://archive:8000/weekly") as response:  # expect: CM003
        raw = response.read() or raw


class Exporter:
    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def export(self) -> None:
        self.client.upload("export.csv", b"")  # expect: CM004

    def status(self) -> int:
        return len({"a": 1}.get("a", "x") * 2)

"""Jobs on the service client, with look-alike names that are not requests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import requests

from commclient import AsyncServiceClient, SyncServiceClient
from compat import run_blocking
from cron_migration import migrated_job

CLIENT = AsyncServiceClient("http://rest:8000", service_name="cron", target_service="rest")
CACHE: dict[str, Any] = {}
TIMEOUT = httpx.Timeout(5.0)
RETRYABLE = (requests.exceptions.ConnectionError, httpx.ConnectError)


def legacy_lookup(key: str) -> Any:
    with SyncServiceClient("http://rest:8000", service_name="cron", target_service="rest") as rest:
        return rest.get(f"/api/items/{key}")


@migrated_job(timeout=60)
async def refresh() -> None:
    settings = await CLIENT.get("/api/global-settings")
    CACHE.get("settings")
    CACHE["settings"] = settings
    item = await run_blocking(legacy_lookup, "a")
    await asyncio.sleep(1)
    if item is None:
        raise requests.exceptions.HTTPError("no item")


def parse(response: requests.Response | httpx.Response) -> dict[str, Any]:
    status: int = response.status_code
    return {"status": status, "ok": status == requests.codes.ok}

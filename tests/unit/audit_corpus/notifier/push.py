"""Push notifications: sync helpers and an async client used properly."""

import time

import httpx
import requests

PUSH_URL = "http://push:9000"


def send_push(user_id: int, text: str) -> bool:
    for attempt in range(3):
        try:
            requests.post(f"{PUSH_URL}/push", json={"user": user_id, "text": text})  # expect: CM001
            return True
        except requests.RequestException:
            time.sleep(2**attempt)
    return False


async def send_push_async(client: httpx.AsyncClient, user_id: int, text: str) -> None:
    await client.post("/push", json={"user": user_id, "text": text})  # expect: CM001


def fetch_templates() -> dict:
    with httpx.Client(base_url=PUSH_URL, timeout=httpx.Timeout(5.0)) as client:
        return client.get("/templates").json()  # expect: CM001

"""One shared session for the whole service, as the old code had it."""

import logging

import requests
from requests.exceptions import ConnectionError as RequestsConnectionError

logger = logging.getLogger(__name__)

BASE_URL = "http://billing:8000"
SESSION = requests.Session()
SESSION.headers.update({"User-Agent": "billing-cron/1.0"})


def get_invoices(status: str) -> list[dict]:
    try:
        response = SESSION.get(f"{BASE_URL}/invoices", params={"status": status})  # expect: CM001
    except RequestsConnectionError:
        logger.warning("billing unreachable")
        return []
    if response.status_code != requests.codes.ok:
        raise requests.exceptions.HTTPError(f"status {response.status_code}")
    return response.json()


def post_charge(invoice_id: int, amount: int) -> requests.Response:
    return SESSION.post(  # expect: CM001
        f"{BASE_URL}/charges", json={"invoice": invoice_id, "amount": amount}, timeout=10
    )


def healthcheck() -> bool:
    return requests.head(BASE_URL, timeout=2).ok  # expect: CM001

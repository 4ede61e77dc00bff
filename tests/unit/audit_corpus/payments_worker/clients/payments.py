"""The payments API."""

from __future__ import annotations

import os
from typing import Any

from .http import ApiClient


class PaymentsApi(ApiClient):
    def pending(self) -> list[dict[str, Any]]:
        return self.get_json("/payments", status="pending")  # expect: CM004

    def settle(self, payment_id: str) -> None:
        self.post_json(f"/payments/{payment_id}/settle", {})  # expect: CM004


PAYMENTS = PaymentsApi(os.environ.get("PAYMENTS_URL", "http://payments"), token="dev")

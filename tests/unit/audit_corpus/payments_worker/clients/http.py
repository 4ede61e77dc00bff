"""The base client every API client of the service derives from."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def shared_session() -> requests.Session:
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=3))
    return session


class ApiClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = shared_session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(  # expect: CM001
                method, f"{self.base_url}{path}", timeout=10, **kwargs
            )
        except requests.exceptions.Timeout:
            logger.warning("%s %s timed out", method, path)
            raise
        response.raise_for_status()
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params).json()

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, json=body).json()


def ping(url: str) -> bool:
    return shared_session().get(url, timeout=2).ok  # expect: CM001

"""An async CRM client that owns an httpx.AsyncClient."""

from __future__ import annotations

import httpx


class CrmClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> CrmClient:
        self._http = httpx.AsyncClient(base_url=self.base_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None
        await self._http.aclose()

    async def contacts(self) -> list:
        assert self._http is not None
        response = await self._http.get("/contacts")  # expect: CM001
        return response.json()

    def export_now(self) -> bytes:
        return httpx.post(f"{self.base_url}/export").content  # expect: CM001

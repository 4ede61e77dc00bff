"""AsyncServiceClient: the core driven over an ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ._config import ClientConfig
from ._core import (
    Attempt,
    JsonParams,
    Outcome,
    Response,
    Sleep,
    TooLarge,
    TransportFailure,
    build_core,
    declared_size,
)
from ._correlation import redact_text
from ._policy import Clock, FailureKind

if TYPE_CHECKING:
    import httpx


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(
            "AsyncServiceClient needs httpx: pip install 'commclient[async]'"
        ) from exc
    return httpx


class AsyncServiceClient:
    """An asyncio client for one target service.

    Its ``httpx.AsyncClient`` is made on first use inside the running event loop and
    belongs to that loop: connections cannot move between loops.
    """

    def __init__(
        self,
        base_url: str,
        *,
        service_name: str,
        target_service: str,
        config: ClientConfig | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._httpx = _import_httpx()
        self._core = build_core(base_url, service_name, target_service, config, registry, clock)
        self._client: httpx.AsyncClient | None = None
        self._closer: AsyncGenerator[None, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[float, float], httpx.Timeout] = {}
        self._closed = False

    @property
    def config(self) -> ClientConfig:
        return self._core.config

    async def request(
        self,
        method: str,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Call ``method path`` with retries and the breaker; return the decoded JSON body.

        ``path`` may be a template (``/api/users/{user_id}``) filled from ``path_params``;
        the template is then the metrics' endpoint label. ``deadline`` (seconds) bounds
        the whole call and overrides the config's.
        """
        client = self._client
        if client is None or self._loop is not asyncio.get_running_loop():
            client = await self._open()
        flow = self._core.call(
            method,
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        ).flow()
        try:
            action = next(flow)
            while True:
                outcome = None
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                else:
                    outcome = await self._send(client, action)
                action = flow.send(outcome)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def _send(self, client: httpx.AsyncClient, attempt: Attempt) -> Outcome:
        if attempt.time_limit is None:
            return await self._exchange(client, attempt)
        try:
            return await asyncio.wait_for(self._exchange(client, attempt), attempt.time_limit)
        except asyncio.TimeoutError as exc:
            return TransportFailure(FailureKind.READ_TIMEOUT, exc)

    async def _exchange(self, client: httpx.AsyncClient, attempt: Attempt) -> Outcome:
        request = attempt.request
        httpx = self._httpx
        try:
            response = await client.send(
                client.build_request(
                    request.method,
                    request.url,
                    params=request.params,
                    content=request.content,
                    headers=request.headers,
                    timeout=self._timeout(attempt.connect_timeout, attempt.read_timeout),
                ),
                stream=True,
            )
            try:
                status, headers = response.status_code, response.headers
                size = declared_size(headers)
                limit = request.max_response_bytes
                if size is not None and size > limit:
                    return TooLarge(status, size)
                if size is not None:
                    return Response(status, headers, await response.aread())
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        return TooLarge(status, None)
                return Response(status, headers, bytes(body))
            finally:
                await response.aclose()
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            # Refused before sending: the caller's bug, never the target's failure.
            raise ValueError(f"the request cannot be sent: {redact_text(str(exc))}") from exc
        except httpx.HTTPError as exc:
            return TransportFailure(_classify(exc, httpx), exc)

    def _timeout(self, connect: float, read: float) -> httpx.Timeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._httpx.Timeout(read, connect=connect, pool=connect)
            if len(self._timeouts) < 64:
                self._timeouts[(connect, read)] = timeout
        return timeout

    async def _open(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("this AsyncServiceClient is closed; create a new one")
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError(
                "this AsyncServiceClient belongs to another event loop that is still running; "
                "create one client per event loop, or call it from that loop "
                "(compat.sync_proxy runs a client on one shared loop for sync code)"
            )
        # First use, or the previous loop is gone and its connections with it.
        limits = self._httpx.Limits(max_connections=self.config.max_connections)
        client: httpx.AsyncClient = self._httpx.AsyncClient(limits=limits, follow_redirects=True)
        # asyncio.run() finalises the async generators of its loop before closing it: this
        # one closes the pool then, so a client used from successive asyncio.run() calls
        # leaves no sockets open behind it.
        closer = _close_with_loop(client)
        await closer.asend(None)
        self._client, self._loop, self._closer = client, loop, closer
        return client

    async def get(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``GET`` through :meth:`request`."""
        return await self.request(
            "GET",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    async def post(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``POST`` through :meth:`request`.

        Repeated only when it never reached the server, or with ``idempotency_key``.
        """
        return await self.request(
            "POST",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    async def put(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``PUT`` through :meth:`request`."""
        return await self.request(
            "PUT",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    async def patch(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``PATCH`` through :meth:`request`.

        Repeated only when it never reached the server, or with ``idempotency_key``.
        """
        return await self.request(
            "PATCH",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    async def delete(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``DELETE`` through :meth:`request`."""
        return await self.request(
            "DELETE",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    async def close(self) -> None:
        """Close the connection pool; calling it again does nothing."""
        self._closed = True
        closer, self._closer, self._client = self._closer, None, None
        if closer is not None and self._loop is asyncio.get_running_loop():
            await closer.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _close_with_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


def _classify(exc: Exception, httpx: Any) -> FailureKind:
    """Map httpx's exceptions onto what the core needs to know: did the request leave?"""
    if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        return FailureKind.CONNECT_TIMEOUT
    if isinstance(exc, httpx.TimeoutException):
        return FailureKind.READ_TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return FailureKind.CONNECT
    return FailureKind.CONNECTION_LOST

"""One interface over both facades and their mocking libraries, for behaviour tables.

A behaviour is written once as scripted replies (a status, a body, or a transport
failure) and run against ``SyncServiceClient`` with ``responses`` and against
``AsyncServiceClient`` with ``respx``. Transports are imported lazily so that each
tox environment only needs its own.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from commclient import ClientConfig

BASE_URL = "http://rest.test:8000"
_names = itertools.count()


@dataclass(frozen=True)
class Reply:
    """A scripted reply: an HTTP response, or a transport failure when ``failure`` is set."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    failure: str | None = None  # connect | connect_timeout | read_timeout | reset


@dataclass(frozen=True)
class Sent:
    """A request as the mock saw it; header names are lower-cased."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class Harness:
    """A client of one facade plus the mock that answers it, driven synchronously."""

    facade: str

    def __init__(self, config: ClientConfig | None, base_url: str) -> None:
        self.service = f"svc{next(_names)}"
        self.target = f"target{next(_names)}"
        self.registry = CollectorRegistry()
        self.config = config
        self.base_url = base_url
        self.wire_base_url = self._wire_url(base_url)
        self.sent: list[Sent] = []

    def _wire_url(self, base_url: str) -> str:
        return base_url

    def script(self, method: str, path: str, replies: list[Reply]) -> None:
        raise NotImplementedError

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(
            name, {"source_service": self.service, "target_service": self.target, **labels}
        )
        return 0.0 if value is None else value

    def _replies(self, replies: list[Reply]) -> Iterator[Reply]:
        # The last reply repeats, like a server stuck in one state.
        yield from replies[:-1]
        while True:
            yield replies[-1]


class SyncHarness(Harness):
    facade = "sync"

    def __init__(self, config: ClientConfig | None, base_url: str = BASE_URL) -> None:
        import responses

        from commclient import SyncServiceClient

        super().__init__(config, base_url)
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        self.mock.start()
        self.client = SyncServiceClient(
            base_url,
            service_name=self.service,
            target_service=self.target,
            config=config,
            registry=self.registry,
        )

    def script(self, method: str, path: str, replies: list[Reply]) -> None:
        replies_iter = self._replies(replies)

        def callback(request: Any) -> tuple[int, dict[str, str], bytes]:
            body = request.body or b""
            self.sent.append(
                Sent(
                    request.method,
                    request.url,
                    {k.lower(): v for k, v in request.headers.items()},
                    body.encode() if isinstance(body, str) else body,
                )
            )
            reply = next(replies_iter)
            if reply.failure is not None:
                raise _requests_failure(reply.failure)
            return reply.status, reply.headers, _body(reply)

        url = re.compile(re.escape(self.wire_base_url + path) + r"(\?.*)?$")
        self.mock.add_callback(method, url, callback=callback)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, **kwargs)

    def close(self) -> None:
        self.client.close()
        self.mock.stop()
        self.mock.reset()


class AsyncHarness(Harness):
    facade = "async"

    def __init__(self, config: ClientConfig | None, base_url: str = BASE_URL) -> None:
        import respx

        from commclient import AsyncServiceClient

        super().__init__(config, base_url)
        self.loop = asyncio.new_event_loop()
        self.mock = respx.mock(assert_all_called=False)
        self.mock.start()
        self.client = AsyncServiceClient(
            base_url,
            service_name=self.service,
            target_service=self.target,
            config=config,
            registry=self.registry,
        )

    def _wire_url(self, base_url: str) -> str:
        # httpx moves URL credentials into an Authorization header.
        return re.sub(r"//[^@/]*@", "//", base_url)

    def script(self, method: str, path: str, replies: list[Reply]) -> None:
        import httpx

        replies_iter = self._replies(replies)

        def side_effect(request: httpx.Request) -> httpx.Response:
            self.sent.append(
                Sent(
                    request.method,
                    str(request.url),
                    {k.lower(): v for k, v in request.headers.items()},
                    request.content,
                )
            )
            reply = next(replies_iter)
            if reply.failure is not None:
                raise _httpx_failure(reply.failure, request)
            return httpx.Response(reply.status, headers=reply.headers, content=_body(reply))

        self.mock.route(method=method, url__regex=_url_regex(self.wire_base_url + path)).mock(
            side_effect=side_effect
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.loop.run_until_complete(self.client.request(method, path, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()
        self.mock.stop()


def _url_regex(url: str) -> str:
    return "^" + re.escape(url) + r"(\?.*)?$"


def _body(reply: Reply) -> bytes:
    import json

    if reply.body is not None:
        return reply.body
    return b"" if reply.json is None else json.dumps(reply.json).encode()


def _requests_failure(kind: str) -> Exception:
    import requests
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

    if kind == "connect":
        reason = NewConnectionError(None, "Failed to establish a new connection: refused")  # type: ignore[arg-type]
        return requests.exceptions.ConnectionError(MaxRetryError(None, "/", reason))  # type: ignore[arg-type]
    if kind == "connect_timeout":
        return requests.exceptions.ConnectTimeout("connect timed out")
    if kind == "read_timeout":
        return requests.exceptions.ReadTimeout("read timed out")
    if kind == "reset":
        return requests.exceptions.ConnectionError(
            ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer"))
        )
    raise ValueError(kind)


def _httpx_failure(kind: str, request: Any) -> Exception:
    import httpx

    errors: dict[str, Callable[[], Exception]] = {
        "connect": lambda: httpx.ConnectError("refused", request=request),
        "connect_timeout": lambda: httpx.ConnectTimeout("connect timed out", request=request),
        "read_timeout": lambda: httpx.ReadTimeout("read timed out", request=request),
        "reset": lambda: httpx.RemoteProtocolError("peer closed connection", request=request),
    }
    return errors[kind]()

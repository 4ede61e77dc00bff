"""CacheInvalidationMiddleware under a real ASGI server (uvicorn on loopback) with a tiny
pure-ASGI app: a successful PUT drops the cached data, a failed one does not."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from commclient.asgi import (
    CacheInvalidationMiddleware,
    InvalidationRule,
    Receive,
    Scope,
    Send,
)
from commclient.cache import AsyncRedisCache, SyncRedisCache
from examples.invalidation_rules import INVALIDATION_RULES
from tests import conftest_cache
from tests.redis_server import free_port

uvicorn = pytest.importorskip("uvicorn")

pytestmark = [pytest.mark.redis_server, pytest.mark.facade_async]

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix


async def rest_app(scope: Scope, receive: Receive, send: Send) -> None:
    """PUT /api/... answers 200, or 500 when the JSON body asks for a failure."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    document = json.loads(body or b"{}")
    status = 500 if document.get("fail") else 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send(
        {"type": "http.response.body", "body": json.dumps({"saved": status == 200}).encode()}
    )


class Server:
    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def put(self, path: str, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(document).encode(),
            method="PUT",
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def reader(redis_url: str, prefix: str) -> Iterator[SyncRedisCache]:
    with SyncRedisCache.from_url(redis_url, prefix) as cache:
        yield cache


@pytest.fixture
def server(redis_url: str, prefix: str) -> Iterator[Server]:
    cache = AsyncRedisCache.from_url(redis_url, prefix)
    with Server(CacheInvalidationMiddleware(rest_app, cache, INVALIDATION_RULES)) as running:
        yield running


def test_successful_put_invalidates_and_failed_put_does_not(
    server: Server, reader: SyncRedisCache
) -> None:
    reader.set("global_settings", {"timezone": "UTC"})
    reader.set("assistant:1", {"name": "a"})

    assert server.put("/api/global-settings/", {"fail": True}) == (500, {"saved": False})
    assert reader.get("global_settings") == {"timezone": "UTC"}

    assert server.put("/api/global-settings/", {"timezone": "CET"}) == (200, {"saved": True})
    # Invalidated before the response left: no waiting needed.
    assert reader.get("global_settings") is None
    assert reader.get("assistant:1") == {"name": "a"}

    assert server.put("/api/assistants/1", {"name": "b"}) == (200, {"saved": True})
    assert reader.get("assistant:1") is None


def test_an_unreachable_cache_does_not_break_the_response(reader: SyncRedisCache) -> None:
    dead = AsyncRedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", "dead")
    with Server(CacheInvalidationMiddleware(rest_app, dead, INVALIDATION_RULES)) as running:
        for _ in range(3):
            assert running.put("/api/global-settings/", {"timezone": "CET"}) == (
                200,
                {"saved": True},
            )


@pytest.mark.parametrize(
    "rules",
    [
        INVALIDATION_RULES,
        (InvalidationRule("/api/global-settings", patterns=("global_settings",)),),
    ],
    ids=["group", "pattern"],
)
def test_an_invalidation_that_failed_is_applied_once_redis_is_back(
    prefix: str, rules: tuple[InvalidationRule, ...]
) -> None:
    from commclient.cache import CacheConfig
    from tests.redis_server import RedisServer

    with RedisServer() as redis_server_alone:
        config = CacheConfig(operation_timeout=0.2, breaker_cooldown=0.2)
        cache = AsyncRedisCache.from_url(redis_server_alone.url, prefix, config=config)
        middleware = CacheInvalidationMiddleware(rest_app, cache, rules, retry_max_wait=0.3)
        with (
            Server(middleware) as running,
            SyncRedisCache.from_url(redis_server_alone.url, prefix) as writer,
        ):
            writer.set("global_settings", {"timezone": "UTC"})
            redis_server_alone.pause()
            try:
                assert running.put("/api/global-settings/", {"timezone": "CET"})[0] == 200
            finally:
                redis_server_alone.resume()
            # No other request comes: the middleware itself retries what failed.
            deadline = time.monotonic() + 10
            while writer.get("global_settings") is not None:
                assert time.monotonic() < deadline, "the failed invalidation was forgotten"
                time.sleep(0.05)
            assert middleware.pending == 0

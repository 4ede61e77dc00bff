"""CacheInvalidationMiddleware as pure ASGI, driven directly (no server, no framework)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from commclient.asgi import (
    CacheInvalidationMiddleware,
    InvalidationRule,
    Message,
    Receive,
    Scope,
    Send,
)
from commclient.cache import AsyncMemoryCache, CacheUnavailableError
from examples.invalidation_rules import INVALIDATION_RULES
from tests.conftest_cache import run


class RecordingCache:
    """Records what the middleware asks for; can fail like an unreachable Redis."""

    def __init__(self, *, fail: bool = False, raise_error: bool = False, delay: float = 0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail
        self.raise_error = raise_error
        self.delay = delay

    async def invalidate(self, pattern: str, *parts: object, strict: bool = False) -> int:
        await self._maybe_fail()
        self.calls.append(("pattern", pattern))
        if self.fail and strict:
            raise CacheUnavailableError("redis unavailable")
        return 0 if self.fail else 1

    async def invalidate_group(self, group: str) -> bool:
        await self._maybe_fail()
        self.calls.append(("group", group))
        return not self.fail

    async def _maybe_fail(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.raise_error:
            raise RuntimeError("cache exploded")


def app_returning(status: int, events: list[str] | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if events is not None:
                events.append("lifespan")
            return
        await send({"type": "http.response.start", "status": status, "headers": []})
        if events is not None:
            events.append("started")
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    return app


def http_scope(method: str, path: str, root_path: str = "") -> Scope:
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}


async def call(middleware: CacheInvalidationMiddleware, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("method", "path", "status", "expected"),
    [
        ("PUT", "/api/global-settings/", 200, [("group", "global_settings")]),
        ("PATCH", "/api/assistants/5", 204, [("group", "assistant")]),
        ("POST", "/api/tools", 201, [("group", "tool"), ("group", "assistant")]),
        ("DELETE", "/api/users/5", 200, [("group", "user"), ("group", "user_secretary")]),
        ("PUT", "/api/user-secretaries/5", 200, [("group", "user_secretary")]),
        ("PUT", "/api/global-settings/", 500, []),
        ("PUT", "/api/global-settings/", 422, []),
        ("PUT", "/api/global-settings/", 302, []),
        ("GET", "/api/global-settings/", 200, []),
        ("PUT", "/api/users-archive/5", 200, []),
        ("PUT", "/api/other", 200, []),
    ],
)
def test_default_rules(
    method: str, path: str, status: int, expected: list[tuple[str, str]]
) -> None:
    cache = RecordingCache()
    middleware = CacheInvalidationMiddleware(app_returning(status), cache, INVALIDATION_RULES)
    sent = run(call(middleware, http_scope(method, path)))
    assert cache.calls == expected
    assert sent[0]["status"] == status


def test_invalidation_happens_before_the_response_leaves() -> None:
    events: list[str] = []

    class OrderedCache(RecordingCache):
        async def invalidate_group(self, group: str) -> bool:
            events.append("invalidated")
            return True

    middleware = CacheInvalidationMiddleware(
        app_returning(200, events), OrderedCache(), INVALIDATION_RULES
    )
    run(call(middleware, http_scope("PUT", "/api/assistants/1")))
    assert events == ["invalidated", "started"]


@pytest.mark.parametrize("cache", [RecordingCache(fail=True), RecordingCache(raise_error=True)])
def test_a_failing_invalidation_never_changes_the_response(
    cache: RecordingCache, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = CacheInvalidationMiddleware(app_returning(200), cache, INVALIDATION_RULES)
    with caplog.at_level(logging.ERROR, logger="commclient.cache"):
        sent = run(call(middleware, http_scope("PUT", "/api/assistants/1")))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert "cache invalidation after a successful request failed" in caplog.text


def test_a_slow_invalidation_is_bounded() -> None:
    middleware = CacheInvalidationMiddleware(
        app_returning(200), RecordingCache(delay=10), INVALIDATION_RULES, timeout=0.05
    )
    sent = run(asyncio.wait_for(call(middleware, http_scope("PUT", "/api/assistants/1")), 5))
    assert sent[0]["status"] == 200


USER_PATTERN = InvalidationRule("/api/users/{user_id}", patterns=("user:{user_id}",))


@pytest.mark.parametrize(
    "cache", [RecordingCache(fail=True), RecordingCache(delay=10)], ids=["unavailable", "slow"]
)
def test_a_pattern_invalidation_that_failed_is_kept_and_retried(
    cache: RecordingCache, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis did not complete it, or the middleware's timeout cut the scan short: the
    pattern stays pending, is logged, and is run again until it completes."""

    async def scenario() -> None:
        middleware = CacheInvalidationMiddleware(
            app_returning(200), cache, [USER_PATTERN], timeout=0.05, retry_max_wait=0.05
        )
        with caplog.at_level(logging.ERROR, logger="commclient.cache"):
            sent = await call(middleware, http_scope("PATCH", "/api/users/5"))
        assert sent[0]["status"] == 200
        assert middleware.pending == 1
        assert middleware.failures == 1
        assert "'user:5'" in str([r.__dict__.get("patterns") for r in caplog.records])
        cache.fail, cache.delay = False, 0  # Redis is back
        while middleware.pending:  # noqa: ASYNC110  # polls the middleware's own state
            await asyncio.sleep(0.01)
        assert cache.calls[-1] == ("pattern", "user:5")

    run(asyncio.wait_for(scenario(), 10))


def test_patterns_capture_path_segments_and_escape_them() -> None:
    rule = InvalidationRule(
        "/api/users/{user_id}/secretary",
        patterns=("user_secretary:{user_id}", "user:{user_id}:*"),
        methods=frozenset({"put"}),
    )
    cache = RecordingCache()
    middleware = CacheInvalidationMiddleware(app_returning(200), cache, [rule])
    run(call(middleware, http_scope("PUT", "/api/users/4*/secretary")))
    assert cache.calls == [("pattern", "user_secretary:4\\*"), ("pattern", "user:4\\*:*")]
    cache.calls.clear()
    run(call(middleware, http_scope("POST", "/api/users/4/secretary")))
    run(call(middleware, http_scope("PUT", "/api/users/4")))
    assert cache.calls == []


def test_root_path_is_understood() -> None:
    cache = RecordingCache()
    middleware = CacheInvalidationMiddleware(app_returning(200), cache, INVALIDATION_RULES)
    run(call(middleware, http_scope("PUT", "/rest/api/assistants/1", root_path="/rest")))
    assert cache.calls == [("group", "assistant")]


def test_other_scopes_pass_through() -> None:
    events: list[str] = []
    cache = RecordingCache()
    middleware = CacheInvalidationMiddleware(app_returning(200, events), cache, INVALIDATION_RULES)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    run(middleware({"type": "lifespan"}, receive, send))
    assert events == ["lifespan"]
    assert cache.calls == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "api/x", "groups": ("a",)}, "start with"),
        ({"path": "/api/x"}, "invalidates nothing"),
        ({"path": "/api/x", "groups": ("a:b",)}, "segment"),
        ({"path": "/api/x", "patterns": ("user:{user_id}",)}, "does not capture"),
        ({"path": "/api/x", "patterns": ("a#b",)}, "#"),
    ],
)
def test_rule_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InvalidationRule(**kwargs)


def test_works_with_the_memory_cache() -> None:
    cache = AsyncMemoryCache("app")

    async def scenario() -> None:
        await cache.set("global_settings", {"timezone": "UTC"})
        await cache.set("assistant:1", {"name": "a"})
        middleware = CacheInvalidationMiddleware(app_returning(200), cache, INVALIDATION_RULES)
        await call(middleware, http_scope("PUT", "/api/global-settings"))
        assert await cache.get("global_settings") is None
        assert await cache.get("assistant:1") == {"name": "a"}

    run(scenario())


def test_the_middleware_has_no_rules_of_its_own() -> None:
    import commclient.asgi

    assert not hasattr(commclient.asgi, "DEFAULT_INVALIDATION_RULES")
    with pytest.raises(TypeError, match="rules"):
        CacheInvalidationMiddleware(app_returning(200), RecordingCache())  # type: ignore[call-arg]
    cache = RecordingCache()
    middleware = CacheInvalidationMiddleware(app_returning(200), cache, [])
    run(call(middleware, http_scope("PUT", "/api/global-settings")))
    assert cache.calls == []  # no rules: nothing is invalidated

"""CacheInvalidationMiddleware: drop cached data the moment the REST service changes it.

Pure ASGI (no framework import): wrap any ASGI app, FastAPI and Starlette included::

    app.add_middleware(CacheInvalidationMiddleware, cache=cache)   # Starlette/FastAPI
    app = CacheInvalidationMiddleware(app, cache)                   # any ASGI app

After a mutating request (POST, PUT, PATCH, DELETE) whose response is 2xx, the groups and
patterns of every matching rule are invalidated. This happens when the app starts its
response and *before* the response leaves, so a client that reads right after its own
write never reads the old value. An invalidation that fails (Redis down or paused, or
the middleware's ``timeout`` cutting a long pattern scan short) is logged, the response
goes out unchanged, and the group or pattern is kept pending: the middleware runs it
again in the background, with growing pauses up to ``retry_max_wait``, until Redis
completes it, so an old value cannot outlive the outage by its whole TTL. Invalidating
twice is harmless (it only invalidates again). The cache counts each failure in
``redis_cache_invalidations_total{direction="failed"}``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import string
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from commclient._inbound import CorrelationIdMiddleware
from commclient.cache._exceptions import CacheUnavailableError
from commclient.cache._io_async import start_background
from commclient.cache._keys import build_pattern, validate_group, validate_pattern

Scope = MutableMapping[str, Any]
"""An ASGI connection scope (``type``, ``method``, ``path``, ``headers``...)."""
Message = MutableMapping[str, Any]
"""An ASGI event, received or sent (``http.request``, ``http.response.start``...)."""
Receive = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable."""
Send = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable."""
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI application: ``await app(scope, receive, send)``."""

MUTATING_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})

__all__ = [  # plain sorted(), as the packaging test checks
    "ASGIApp",
    "CacheInvalidationMiddleware",
    "CorrelationIdMiddleware",
    "InvalidationRule",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "SupportsInvalidation",
]

logger = logging.getLogger("commclient.cache")


class SupportsInvalidation(Protocol):
    """What the middleware needs of a cache (any async cache of ``commclient.cache``)."""

    async def invalidate(self, pattern: str, *parts: object, strict: bool = False) -> int:
        """Drop the keys matching ``pattern``; the number dropped (``strict``: raise if not all)."""
        ...

    async def invalidate_group(self, group: str) -> bool:
        """Drop every key of ``group`` at once (a new generation)."""
        ...


@dataclass(frozen=True)
class InvalidationRule:
    """After a 2xx response to ``methods`` on a path under ``path``, invalidate.

    ``path`` is a prefix matched segment by segment (``/api/users`` matches
    ``/api/users`` and ``/api/users/5``, not ``/api/users-archive``); a ``{name}``
    segment matches any one segment and captures it. ``groups`` are invalidated whole
    (one INCR each); ``patterns`` are globs over keys whose ``{name}`` fields are filled
    with the captured segments, escaped so that a ``*`` in a URL cannot widen them.
    """

    path: str
    groups: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    methods: frozenset[str] = MUTATING_METHODS
    _segments: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("groups", "patterns", "methods"):
            value = getattr(self, name)
            if isinstance(value, str):
                # A string is iterable: its characters would be the groups (or methods).
                raise TypeError(
                    f"rule for {self.path!r}: {name} takes a collection of strings, "
                    f"got the string {value!r}; write ({value!r},)"
                )
        if not self.path.startswith("/"):
            raise ValueError(f"rule path must start with '/': {self.path!r}")
        if not self.groups and not self.patterns:
            raise ValueError(f"rule for {self.path!r} invalidates nothing")
        for group in self.groups:
            validate_group(group)
        captures = {s[1:-1] for s in _segments(self.path) if s.startswith("{") and s.endswith("}")}
        for pattern in self.patterns:
            validate_pattern(pattern)
            names = {
                name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None
            }
            if not names <= captures:
                raise ValueError(
                    f"pattern {pattern!r} uses {sorted(names - captures)}, "
                    f"which {self.path!r} does not capture"
                )
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        object.__setattr__(self, "_segments", _segments(self.path))

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The captured segments if this rule applies to the request, else ``None``."""
        if method.upper() not in self.methods:
            return None
        segments = _segments(path)
        if len(segments) < len(self._segments):
            return None
        captured: dict[str, str] = {}
        for expected, actual in zip(self._segments, segments, strict=False):
            if expected.startswith("{") and expected.endswith("}"):
                captured[expected[1:-1]] = actual
            elif expected != actual:
                return None
        return captured

    def targets(self, captured: dict[str, str]) -> tuple[list[str], list[str]]:
        """The groups and the filled-in patterns to invalidate."""
        patterns = [_fill(pattern, captured) for pattern in self.patterns]
        return list(self.groups), patterns


def _segments(path: str) -> tuple[str, ...]:
    return tuple(segment for segment in path.split("/") if segment)


def _fill(template: str, captured: dict[str, str]) -> str:
    names = list(captured)
    positional = template
    for index, name in enumerate(names):
        positional = positional.replace("{" + name + "}", "{" + str(index) + "}")
    return build_pattern(positional, *(captured[name] for name in names))


def _check_arguments(cache: object, rules: Sequence[object], timeout: float | None) -> None:
    """Refuse at set-up what would fail on the first mutating request, or never invalidate."""
    for rule in rules:
        if not isinstance(rule, InvalidationRule):
            raise TypeError(
                f"rules takes InvalidationRule objects, got {type(rule).__name__} {rule!r}"
            )
    for name in ("invalidate", "invalidate_group"):
        method = getattr(cache, name, None)
        # unwrap: a coroutine function behind a functools.wraps decorator counts.
        if not callable(method) or not inspect.iscoroutinefunction(inspect.unwrap(method)):
            raise TypeError(
                f"the cache's {name} must be a coroutine function (an async cache of "
                f"commclient.cache, such as AsyncRedisCache); {type(cache).__name__} has "
                + ("a blocking one" if callable(method) else "none")
            )
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 or None (no bound), got {timeout!r}")


class CacheInvalidationMiddleware:
    """Invalidate cache groups and patterns after successful mutating requests.

    ``rules``: which paths invalidate which groups and patterns, the application's own
    (an empty list invalidates nothing; there are no built-in rules).

    ``timeout`` bounds the invalidation of one request (each Redis call is bounded by
    the cache's own operation timeout too); ``None`` waits for it to finish.
    ``retry_max_wait`` is the longest pause between retries of failed group bumps.
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: SupportsInvalidation,
        rules: Iterable[InvalidationRule],
        *,
        timeout: float | None = 5.0,
        retry_max_wait: float = 30.0,
    ) -> None:
        if retry_max_wait <= 0:
            raise ValueError(f"retry_max_wait must be > 0: {retry_max_wait!r}")
        self.app = app
        self.cache = cache
        self.rules: Sequence[InvalidationRule] = tuple(rules)
        self.timeout = timeout
        self.retry_max_wait = retry_max_wait
        _check_arguments(cache, self.rules, timeout)
        self._methods = frozenset().union(*(rule.methods for rule in self.rules))
        self._pending: dict[tuple[str, str], None] = {}
        self._retrier: asyncio.Task[None] | None = None
        self.failures = 0
        """Invalidations (a group or a pattern, first tries and retries) that did not
        complete; the cache counts those Redis failed in its own metrics as well."""

    @property
    def pending(self) -> int:
        """Groups and patterns whose invalidation failed and is being retried."""
        return len(self._pending)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "").upper() not in self._methods:
            await self.app(scope, receive, send)
            return
        groups, patterns = self._targets(scope)
        if not groups and not patterns:
            await self.app(scope, receive, send)
            return
        started = False

        async def send_after_invalidating(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                if 200 <= int(message["status"]) < 300:
                    await self._invalidate(scope, groups, patterns)
            await send(message)

        await self.app(scope, receive, send_after_invalidating)

    def _targets(self, scope: Scope) -> tuple[list[str], list[str]]:
        method = str(scope["method"])
        path = str(scope.get("path", ""))
        root_path = str(scope.get("root_path", ""))
        candidates = [path]
        if root_path and path.startswith(root_path):
            candidates.append(path[len(root_path) :] or "/")
        groups: list[str] = []
        patterns: list[str] = []
        for rule in self.rules:
            for candidate in candidates:
                captured = rule.match(method, candidate)
                if captured is not None:
                    rule_groups, rule_patterns = rule.targets(captured)
                    groups += [g for g in rule_groups if g not in groups]
                    patterns += [p for p in rule_patterns if p not in patterns]
                    break
        return groups, patterns

    async def _invalidate(self, scope: Scope, groups: list[str], patterns: list[str]) -> None:
        targets = [("group", group) for group in groups] + [("pattern", p) for p in patterns]
        failed: list[tuple[str, str]] = []
        try:
            failed = await asyncio.wait_for(self._run(targets), self.timeout)
            error: BaseException = ConnectionError("the cache could not reach redis")
        except Exception as timeout_or_failure:
            failed, error = targets, timeout_or_failure  # any of them may be incomplete
        if not failed:
            return
        self.failures += len(failed)
        self._pending.update(dict.fromkeys(failed))
        self._retry_later()
        logger.error(
            "cache invalidation after a successful request failed; the response is sent "
            "and the invalidation retried",
            extra={
                "method": scope.get("method"),
                "path": scope.get("path"),
                "groups": [name for kind, name in failed if kind == "group"],
                "patterns": [name for kind, name in failed if kind == "pattern"],
                "error_type": type(error).__name__,
                "error": str(error)[:300],
            },
        )

    async def _run(self, targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Invalidate every target; the ones Redis did not complete."""
        return [target for target in targets if not await self._apply(target)]

    async def _apply(self, target: tuple[str, str]) -> bool:
        kind, name = target
        if kind == "group":
            return await self.cache.invalidate_group(name)
        try:
            await self.cache.invalidate(name, strict=True)
        except CacheUnavailableError:
            return False
        return True

    def _retry_later(self) -> None:
        if self._retrier is None or self._retrier.done():
            # In an empty context: the retries outlive the request whose invalidation
            # failed, and are no part of its trace or its correlation id.
            self._retrier = start_background(
                self._retry_pending, name="commclient-cache-invalidation-retry"
            )

    async def _retry_pending(self) -> None:
        """Run the pending invalidations again until Redis completes every one of them."""
        wait = min(0.1, self.retry_max_wait)
        while self._pending:
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.retry_max_wait)
            for target in list(self._pending):
                kind, name = target
                try:
                    done = await self._apply(target)
                except Exception:
                    logger.exception("retrying a cache invalidation failed", extra={kind: name})
                    done = False
                if not done:
                    self.failures += 1
                else:
                    del self._pending[target]
                    logger.info("pending cache invalidation applied", extra={kind: name})

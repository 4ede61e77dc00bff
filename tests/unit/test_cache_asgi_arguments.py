"""CacheInvalidationMiddleware and InvalidationRule refuse, at set-up, what would fail on the
first mutating request or silently invalidate the wrong thing."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pytest

from commclient.asgi import CacheInvalidationMiddleware, InvalidationRule, Scope
from commclient.cache import AsyncMemoryCache, SyncMemoryCache

T = TypeVar("T")
P = ParamSpec("P")


async def app(scope: Scope, receive: Any, send: Any) -> None:
    return None


RULE = InvalidationRule("/api/things", groups=("thing",))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # Each string was taken character by character: groups "t", "h", ... were bumped,
        # and methods {"P", "O", "S", "T"} matched no request at all.
        ({"groups": "thing"}, r"groups takes a collection of strings, got the string 'thing'"),
        ({"patterns": "thing:*"}, r"patterns takes a collection of strings"),
        ({"groups": ("thing",), "methods": "POST"}, r"methods .* the string 'POST'; write"),
    ],
)
def test_a_string_where_a_collection_is_expected_is_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        InvalidationRule("/api/things", **kwargs)


def test_a_rule_that_is_not_an_invalidation_rule_is_refused() -> None:
    with pytest.raises(TypeError, match=r"rules takes InvalidationRule objects, got tuple"):
        CacheInvalidationMiddleware(app, AsyncMemoryCache("app"), [("/api/things", "thing")])  # type: ignore[list-item]


def test_a_blocking_cache_is_refused() -> None:
    # It was accepted; the first successful POST then raised "object bool can't be used in
    # 'await' expression", and the retry loop logged that error forever.
    cache = SyncMemoryCache("app")
    try:
        with pytest.raises(TypeError, match=r"invalidate must be a coroutine function.*blocking"):
            CacheInvalidationMiddleware(app, cache, [RULE])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"object has none"):
            CacheInvalidationMiddleware(app, object(), [RULE])  # type: ignore[arg-type]
    finally:
        cache.close()


def logged(function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    # A plain function returning the coroutine: iscoroutinefunction sees it only unwrapped.
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        return function(*args, **kwargs)

    return wrapper


class DecoratedCache:
    @logged
    async def invalidate(self, pattern: str, *parts: object) -> int:
        return 0

    @logged
    async def invalidate_group(self, group: str) -> bool:
        return True


def test_an_async_cache_behind_decorators_and_no_rules_are_accepted() -> None:
    middleware = CacheInvalidationMiddleware(app, DecoratedCache(), [RULE])
    assert middleware.rules == (RULE,)
    assert CacheInvalidationMiddleware(app, DecoratedCache(), []).rules == ()


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_timeout_that_fails_every_invalidation_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be > 0 or None"):
        CacheInvalidationMiddleware(app, DecoratedCache(), [RULE], timeout=timeout)

"""``@cache.cached(key=..., ttl=..., group=...)``: the decorator form of ``get_or_set``, for
sync and async functions, on Redis and in memory."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel, Field

from tests import conftest_cache
from tests.conftest_cache import Facade, run

if TYPE_CHECKING:
    from tests.unit.test_cache_decorator import User as TypeCheckedUser

pytestmark = pytest.mark.redis_server

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix
any_facade = conftest_cache.any_facade


class User(BaseModel):
    id: int
    display_name: str = Field(alias="displayName")


def _user_functions(cache: Any, kind: str, calls: list[Any]) -> tuple[Any, Any]:
    """``load_user(user_id, lang="en") -> User`` and ``count(day) -> int``, cached."""
    lock = threading.Lock()

    def record(*args: Any) -> None:
        with lock:
            calls.append(args)

    if kind == "async":

        @cache.cached(key="user:{user_id}:{lang}", ttl=300)
        async def load_user(user_id: int, lang: str = "en") -> User:
            record(user_id, lang)
            await asyncio.sleep(0.05)  # concurrent callers find it in flight
            return User(id=user_id, displayName=f"user {user_id}")

        @cache.cached(key="{day}", group="counts")
        async def count(day: str) -> int:
            record(day)
            return len(calls)

        return load_user, count

    @cache.cached(key="user:{user_id}:{lang}", ttl=300)
    def sync_load_user(user_id: int, lang: str = "en") -> User:
        record(user_id, lang)
        threading.Event().wait(0.05)
        return User(id=user_id, displayName=f"user {user_id}")

    @cache.cached(key="{day}", group="counts")
    def sync_count(day: str) -> int:
        record(day)
        return len(calls)

    return sync_load_user, sync_count


async def _call(kind: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    result = function(*args, **kwargs)
    return await result if kind == "async" else result


async def _concurrently(kind: str, count: int, function: Any, *args: Any) -> list[Any]:
    if kind == "async":
        return list(await asyncio.gather(*(function(*args) for _ in range(count))))
    barrier = threading.Barrier(count)

    def call() -> Any:
        barrier.wait()
        return function(*args)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(), range(count)))


def test_a_cached_function_loads_once_and_returns_its_model(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    calls: list[Any] = []

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as harness:
            kind = harness.kind
            load_user, count = _user_functions(harness.cache, kind, calls)
            assert load_user.__name__ in ("load_user", "sync_load_user")  # wraps
            users = await _concurrently(kind, 10, load_user, 5)
            assert users == [User(id=5, displayName="user 5")] * 10
            assert calls == [(5, "en")]
            # A hit returns the same model as the miss did; defaults are in the key.
            assert await _call(kind, load_user, 5) == User(id=5, displayName="user 5")
            assert await _call(kind, load_user, user_id=5, lang="en") == users[0]
            assert await harness.get("user:5:en", User) == users[0]
            await _call(kind, load_user, 5, lang="de")
            assert calls == [(5, "en"), (5, "de")]
            # Invalidation is the cache's own: a key, or the group.
            assert await harness.delete("user:5:en") is True
            await _call(kind, load_user, 5)
            assert calls[-1] == (5, "en")
            assert await _call(kind, count, "2026-12-06") == 4
            assert await _call(kind, count, "2026-12-06") == 4
            assert await harness.get("counts:2026-12-06") == 4
            assert await harness.invalidate_group("counts") is True
            assert await _call(kind, count, "2026-12-06") == 5

    run(scenario())


def test_decoration_errors_are_clear(any_facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as harness:
            cache = harness.cache
            with pytest.raises(ValueError, match=r"uses \{user\}, which is not a parameter"):

                @cache.cached(key="user:{user}")
                def by_id(user_id: int) -> int:
                    return user_id

            if harness.kind == "async":
                with pytest.raises(TypeError, match="decorates coroutine functions"):

                    @cache.cached(key="user:{user_id}")
                    def plain(user_id: int) -> int:
                        return user_id

            else:
                with pytest.raises(TypeError, match="is a coroutine function"):

                    @cache.cached(key="user:{user_id}")
                    async def coroutine(user_id: int) -> int:
                        return user_id

            with pytest.raises(ValueError, match="ttl must be positive"):
                cache.cached(key="user:{user_id}", ttl=0)

    run(scenario())


# -- early refresh ----------------------------------------------------------------------


def test_early_refresh_reloads_a_hot_key_before_it_expires(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    """XFetch: a read refreshes with probability e**(-remaining / early_refresh); the
    draw is fixed here (the core's ``random``) to show both sides of it."""

    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix) as harness,
            any_facade.open(redis_url, prefix) as other,
        ):
            core = harness.cache._core
            assert await harness.get_or_set("hot:1", lambda: "v1", 60) == "v1"
            core.random = lambda: 0.0  # the luckiest draw: refresh only at the very end
            assert await harness.get_or_set("hot:1", lambda: "v2", 60, early_refresh=10) == "v1"
            core.random = lambda: 1 - 1e-12  # -10 * ln(1e-12) = 276 s >= 60 s left
            assert await harness.get_or_set("hot:1", lambda: "v2", 60) == "v1"  # not asked
            assert await harness.get_or_set("hot:1", lambda: "v2", 60, early_refresh=10) == "v2"
            assert await other.get("hot:1") == "v2"
            # Within its window the draw would have to be 1 - e**(-6): near 1 as well.
            core.random = lambda: 0.5  # -10 * ln(0.5) = 6.9 s < 60 s left
            assert await harness.get_or_set("hot:1", lambda: "v3", 60, early_refresh=10) == "v2"

    run(scenario())


def test_early_refresh_through_the_decorator(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    calls: list[int] = []

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as harness:
            harness.cache._core.random = lambda: 1 - 1e-12
            if harness.kind == "async":

                @harness.cache.cached(key="hot:{n}", ttl=60, early_refresh=10)
                async def load(n: int) -> int:
                    calls.append(n)
                    return len(calls)

            else:

                @harness.cache.cached(key="hot:{n}", ttl=60, early_refresh=10)
                def load(n: int) -> int:
                    calls.append(n)
                    return len(calls)

            assert await _call(harness.kind, load, 1) == 1
            assert await _call(harness.kind, load, 1) == 2  # refreshed early

    run(scenario())


def test_model_stands_for_an_annotation_that_does_not_resolve(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    """A return type imported under ``TYPE_CHECKING`` (or defined further down) cannot be
    resolved at decoration; ``model=`` is what the error asks for, and is enough."""

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as harness:
            cached = harness.cache.cached
            if harness.kind == "async":

                async def load_user(user_id: int) -> TypeCheckedUser:
                    return User(id=user_id, displayName="five")

            else:

                def load_user(user_id: int) -> TypeCheckedUser:
                    return User(id=user_id, displayName="five")

            with pytest.raises(TypeError, match="pass model= to cached"):
                cached(key="user:{user_id}")(load_user)
            if harness.kind == "async":

                async def by_name(name: TypeCheckedUser, user_id: int) -> User:
                    return User(id=user_id, displayName="five")

            else:

                def by_name(name: TypeCheckedUser, user_id: int) -> User:
                    return User(id=user_id, displayName="five")

            # Only the return annotation is the cache's business: a parameter's that
            # does not resolve is no error.
            assert cached(key="named:{user_id}")(by_name) is not None
            cached_load = cached(key="user:{user_id}", model=User)(load_user)
            assert await _call(harness.kind, cached_load, 5) == User(id=5, displayName="five")
            assert await harness.get("user:5", User) == User(id=5, displayName="five")

    run(scenario())


def test_a_key_holding_an_objects_address_is_refused(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    """``{account}`` of an object without ``__str__`` is ``<Account object at 0x...>``:
    another account gets that address once this one is gone (and forked workers' objects
    share addresses), so its cached value would be served for the wrong account."""

    class Account:
        def __init__(self, balance: int) -> None:
            self.id = balance
            self.balance = balance

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as harness:
            cached = harness.cache.cached
            if harness.kind == "async":

                async def balance(account: Account) -> int:
                    return account.balance

            else:

                def balance(account: Account) -> int:
                    return account.balance

            by_address = cached(key="balance:{account}")(balance)
            with pytest.raises(TypeError, match=r"holds an object's address.*\{account\.id\}"):
                await _call(harness.kind, by_address, Account(100))
            by_id = cached(key="balance:{account.id}")(balance)
            assert await _call(harness.kind, by_id, Account(100)) == 100
            assert await harness.get("balance:100") == 100

    run(scenario())

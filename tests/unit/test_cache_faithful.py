"""What a reader gets is what the writer stored: models whatever their alias configuration,
values JSON would change refused when stored, a cached ``None`` told from a miss; on Redis
and in memory, sync and async."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any, NamedTuple

import pytest
import redis
import redis.asyncio
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, field_serializer

from commclient.cache import (
    AsyncRedisCache,
    CacheClosedError,
    CacheConfig,
    CacheSerializationError,
    InvalidCacheKeyError,
    LoaderFailedError,
    SyncRedisCache,
)
from commclient.cache._core import is_outage
from commclient.cache._memory import AsyncMemoryClient, MemoryClient
from tests import conftest_cache
from tests.conftest_cache import AsyncHarness, Facade, eventually, run

pytestmark = pytest.mark.redis_server

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix
any_facade = conftest_cache.any_facade
facade = conftest_cache.facade


class Aliased(BaseModel):
    user_name: str = Field(alias="userName")
    age: int


class PopulatedByName(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    user_name: str = Field(alias="userName")


class SerializedByAlias(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    user_name: str = Field(serialization_alias="UserName")


class ChoiceAliases(BaseModel):
    user_name: str = Field(validation_alias=AliasChoices("name", "login"))


class NameOnly(BaseModel):
    model_config = ConfigDict(validate_by_alias=False, validate_by_name=True)

    user_name: str = Field(alias="userName")


@dataclasses.dataclass
class Pair:
    left: tuple[int, int]
    right: dict[int, str]


class Lossy(BaseModel):
    when: float

    @field_serializer("when")
    def _rounded(self, value: float) -> int:
        return round(value)


class Strict(BaseModel):
    """Extras forbidden, and a computed field: its dump carries the computed field, which
    its own validation refuses as an extra, unless it is stored without it."""

    model_config = ConfigDict(extra="forbid")
    cents: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def euros(self) -> float:
        return self.cents / 100


MODELS = [
    Aliased(userName="ann", age=3),
    PopulatedByName(userName="bob"),
    SerializedByAlias(user_name="cid"),
    ChoiceAliases(login="dan"),
    NameOnly(user_name="eve"),
    Pair((1, 2), {3: "three"}),
    Strict(cents=250),
]


@pytest.mark.parametrize("value", MODELS, ids=lambda value: type(value).__name__)
def test_models_round_trip_whatever_their_aliases(
    any_facade: Facade, redis_url: str, prefix: str, value: Any
) -> None:
    model = type(value)
    loads: list[int] = []

    def loader() -> Any:
        loads.append(1)
        return value

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            assert await cache.set("user:1", value) is True
            assert await cache.get("user:1", model) == value
            for _ in range(5):
                assert await cache.get_or_set("user:2", loader, 300, model) == value
            assert len(loads) == 1

    run(scenario())


class Point(NamedTuple):
    x: int
    y: int


@pytest.mark.parametrize(
    ("model", "value"),
    [
        (Point, Point(1, 2)),
        (tuple[int, str], (1, "one")),
        (dict[int, str], {1: "low"}),
        (list[Point], [Point(3, 4)]),
    ],
    ids=["NamedTuple", "tuple", "int keys", "list of NamedTuple"],
)
def test_a_model_that_reads_back_a_tuple_or_int_keys_is_cached(
    any_facade: Facade, redis_url: str, prefix: str, model: Any, value: Any
) -> None:
    """JSON turns tuples into lists and int keys into str, so such plain values are refused;
    but a model that declares them reads them back as they were, and a loader's value of
    that model was refused too: get_or_set loaded on every call."""
    loads: list[int] = []

    def loader() -> Any:
        loads.append(1)
        return value

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            for _ in range(3):
                assert await cache.get_or_set("user:1", loader, 300, model) == value
            assert len(loads) == 1
            read = await cache.get("user:1", model)
            assert read == value
            assert type(read) is type(value)
            with pytest.raises(CacheSerializationError, match="would not read back"):
                await cache.set("user:2", value)  # no model: a plain reader gets a list

    run(scenario())


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({1: "low"}, "int key 1"),
        ((1, 2), "tuple"),
        ({"a": [1, (2,)]}, r"\['a'\]\[1\] is a tuple"),
        ({"a": {"b": {True: 1}}}, "bool key"),
        ({"v": math.nan}, "NaN|JSON"),
        ({1, 2}, "set|JSON"),
        (Lossy(when=1.5), "does not validate back"),
    ],
)
def test_values_json_would_change_are_refused_when_stored(
    any_facade: Facade, redis_url: str, prefix: str, value: Any, problem: str
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            with pytest.raises(CacheSerializationError, match=problem):
                await cache.set("config:1", value)
            assert await cache.get_raw("config:1") is None

    run(scenario())


@pytest.mark.parametrize("value", [{1: "low"}, (1, 2), {"v": math.nan}])
def test_an_unstorable_loaded_value_is_returned_each_time_not_raised(
    any_facade: Facade, redis_url: str, prefix: str, value: Any
) -> None:
    loads: list[int] = []

    def loader() -> Any:
        loads.append(1)
        return value

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            first = await cache.get_or_set("config:1", loader)
            second = await cache.get_or_set("config:1", loader)
            # The same value on every call (never a hit of another shape).
            assert repr(first) == repr(second) == repr(value)
            assert len(loads) == 2

    run(scenario())


def test_without_a_model_a_miss_returns_what_a_hit_returns(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            load = lambda: {"user": Aliased(userName="ann", age=3), "ok": True}  # noqa: E731
            miss = await cache.get_or_set("user:1", load)
            hit = await cache.get_or_set("user:1", load)
            assert miss == hit == {"user": {"user_name": "ann", "age": 3}, "ok": True}

    run(scenario())


def test_a_cached_none_is_a_hit(any_facade: Facade, redis_url: str, prefix: str) -> None:
    absent = object()
    loads: list[int] = []

    def loader() -> None:
        loads.append(1)

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            assert await cache.get("user:1", default=absent) is absent
            assert await cache.set("user:1", None) is True
            assert await cache.get("user:1", default=absent) is None
            assert await cache.get("user:1") is None
            assert await cache.get("user:2", Aliased, default=absent) is absent
            for _ in range(3):
                assert await cache.get_or_set("user:3", loader) is None
            assert len(loads) == 1

    run(scenario())


# -- writes never go back in time --------------------------------------------------------

GAVE_UP_AT_ONCE = CacheConfig(operation_timeout=2.0, lease_wait=0.0)


def _hold_lease(facade: Facade, url: str, prefix: str, key: str) -> None:
    """Another process's load of ``key`` in flight, holding its lease (a minute)."""
    lease_key = f"{{{prefix}}}:{key}#L"
    if facade.backend == "memory":
        facade.store.set(lease_key, "holder-token", px=60_000)
    else:
        redis.Redis.from_url(url).set(lease_key, "holder-token", px=60_000)


def _change(cache: Any, key: str, change: str) -> Any:
    """Make ``change`` to ``key`` through ``cache`` (a coroutine for an async cache)."""
    if change == "set":
        return cache.set(key, "new")
    if change == "delete":
        return cache.delete(key)
    if change == "invalidate":
        return cache.invalidate("user:*")
    return cache.get(key)


async def _load_while(cache: Any, other: Any, key: str, change: str) -> Any:
    """``get_or_set(key)`` whose loader reads "old", then lets ``other`` make ``change``."""
    if cache.kind == "async":

        async def load() -> str:
            await _change(other.cache, key, change)
            return "old"

        return await cache.cache.get_or_set(key, load)

    def sync_load() -> str:
        _change(other.cache, key, change)
        return "old"

    return cache.cache.get_or_set(key, sync_load)


@pytest.mark.parametrize("change", ["set", "delete", "invalidate", "nothing"])
def test_a_load_that_gave_up_waiting_never_undoes_a_later_write(
    any_facade: Facade, redis_url: str, prefix: str, change: str
) -> None:
    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix, config=GAVE_UP_AT_ONCE) as cache,
            any_facade.open(redis_url, prefix, config=GAVE_UP_AT_ONCE) as other,
        ):
            _hold_lease(any_facade, redis_url, prefix, "user:1")
            assert await _load_while(cache, other, "user:1", change) == "old"
            expected = {"set": "new", "delete": None, "invalidate": None, "nothing": "old"}
            assert await cache.get("user:1") == expected[change]

    run(scenario())


# -- generations never go back ----------------------------------------------------------


def _evict_generation(facade: Facade, url: str, prefix: str, group: str) -> None:
    """What ``allkeys-*`` eviction (or a restart that lost the key) does to a group."""
    generation_key = f"{{{prefix}}}!gen:{group}"
    if facade.backend == "memory":
        facade.store.delete(generation_key)
    else:
        redis.Redis.from_url(url).delete(generation_key)


def test_an_evicted_generation_never_resurrects_invalidated_values(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            assert await cache.set("user:1", "old") is True
            assert await cache.invalidate_group("user") is True
            _evict_generation(any_facade, redis_url, prefix, "user")
            assert await cache.get("user:1") is None
            assert await cache.get_or_set("user:1", lambda: "loaded") == "loaded"
            assert await cache.get("user:1") == "loaded"
            # Evicted again after a bump: still none of the older values comes back.
            assert await cache.invalidate_group("user") is True
            _evict_generation(any_facade, redis_url, prefix, "user")
            assert await cache.set("user:2", "new") is True
        async with any_facade.open(redis_url, prefix) as fresh:  # remembers no generation
            assert await fresh.get("user:1") is None
            assert await fresh.get("user:2") == "new"

    run(scenario())


# -- keys that cannot be sent -----------------------------------------------------------


def test_a_key_that_is_not_utf8_is_the_callers_error_never_an_outage(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    """A lone surrogate (what ``json.loads('"\\\\ud800"')`` returns) is refused up front; the
    breaker, which opens after one failure here, stays closed for every other key."""
    config = CacheConfig(operation_timeout=2.0, breaker_failure_threshold=1)
    bad = "user:\ud800"

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, config=config) as cache:
            for call in (
                lambda: cache.get(bad),
                lambda: cache.set(bad, 1),
                lambda: cache.delete(bad),
                lambda: cache.get_or_set(bad, lambda: 1),
                lambda: cache.invalidate("user:\udfff*"),
                lambda: cache.invalidate_group("\ud800"),
            ):
                with pytest.raises(InvalidCacheKeyError, match="UTF-8"):
                    await call()
            assert await cache.set("user:1", 1) is True
            assert await cache.get("user:1") == 1

    run(scenario())


def test_an_argument_the_client_cannot_encode_is_no_outage() -> None:
    assert not is_outage(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert not is_outage(redis.exceptions.DataError("Invalid input of type: 'object'"))
    assert is_outage(redis.exceptions.ConnectionError("gone"))


# -- broadcast with the delete ----------------------------------------------------------

LOCAL = CacheConfig(operation_timeout=2.0, local_tier_size=100)


def _client_whose_publish_fails(facade: Facade, url: str) -> Any:
    """A client on which a PUBLISH of its own fails (the connection dropped at PUBLISH);
    the scripts still run."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ConnectionError("connection dropped at PUBLISH")

    async def fail_async(*args: Any, **kwargs: Any) -> Any:
        fail()

    if facade.backend == "memory":
        inner = MemoryClient(facade.store)
        client: Any = inner if facade.kind == "sync" else AsyncMemoryClient(facade.store)
        inner.publish = fail  # type: ignore[method-assign]
        if facade.kind == "async":
            client._client.publish = fail
        return client
    if facade.kind == "sync":
        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        client.publish = fail  # type: ignore[method-assign]
        return client
    client = redis.asyncio.Redis.from_url(url)
    client.publish = fail_async  # type: ignore[method-assign]
    return client


def test_a_delete_and_an_invalidation_are_broadcast_in_the_same_step(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        client = _client_whose_publish_fails(any_facade, redis_url)
        async with (
            any_facade.open(redis_url, prefix, config=LOCAL, client=client) as cache,
            any_facade.open(redis_url, prefix, config=LOCAL) as other,
        ):
            assert await other.start()
            for key in ("user:1", "user:2"):
                assert await other.set(key, "old") is True
                assert await other.get(key) == "old"  # held in other's local tier
            assert await cache.delete("user:1") is True
            assert await cache.invalidate("user:2*") == 1

            async def both_dropped() -> bool:
                return await other.get("user:1") is None and await other.get("user:2") is None

            await eventually(both_dropped, timeout=5.0)

    run(scenario())


def test_a_change_redis_cannot_broadcast_is_not_applied(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    """An ACL user without channel permissions (Redis 7's default for new users,
    ``acl-pubsub-default resetchannels``): the scripts' PUBLISH is refused. A script is
    not undone by an error, so a change made before its PUBLISH stayed, unannounced,
    while the call reported failure: every script publishes before it changes anything."""
    admin = redis.Redis.from_url(redis_url)
    user = f"nochannels-{prefix}"
    admin.acl_setuser(
        user, enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all"], reset=True
    )
    assert admin.acl_getuser(user)["channels"] in ([], "")  # no channel permitted
    restricted = redis_url.replace("redis://", f"redis://{user}:secret@")

    async def scenario() -> None:
        async with (
            facade.open(redis_url, prefix) as writer,
            facade.open(restricted, prefix) as cache,
        ):
            assert await writer.set("user:1", "old") is True
            assert await cache.get("user:1") == "old"  # reads are allowed
            assert await cache.set("user:1", "new") is False
            assert await writer.get("user:1") == "old"  # False: surely not applied
            assert await cache.delete("user:1") is False
            assert await writer.get("user:1") == "old"
            assert await cache.invalidate("user:*") == 0
            assert await writer.get("user:1") == "old"
            assert await cache.invalidate_group("user") is False
            assert await writer.get("user:1") == "old"

    try:
        run(scenario())
    finally:
        admin.acl_deluser(user)
        admin.close()


# -- a loader's failure is shared -------------------------------------------------------

SHARED_FAILURE = CacheConfig(operation_timeout=2.0, loader_failure_ttl=30.0)


async def _fail_while_another_waits(first: Any, second: Any) -> tuple[Any, Any, list[int]]:
    """``first`` loads and fails once ``second`` (another process: its own flights) is
    asking for the same key; what each call raised, and ``second``'s loader calls."""
    second_loads: list[int] = []

    def second_loader() -> str:
        second_loads.append(1)
        return "loaded"

    if first.kind == "async":
        first_loading, second_asking = asyncio.Event(), asyncio.Event()

        async def failing() -> str:
            first_loading.set()
            await second_asking.wait()
            raise RuntimeError("database down")

        async def ask() -> Any:
            await first_loading.wait()
            second_asking.set()
            return await second.cache.get_or_set("user:1", second_loader)

        outcomes = await asyncio.gather(
            first.cache.get_or_set("user:1", failing), ask(), return_exceptions=True
        )
        return outcomes[0], outcomes[1], second_loads

    loading, asking = threading.Event(), threading.Event()

    def sync_failing() -> str:
        loading.set()
        asking.wait(10)
        raise RuntimeError("database down")

    def sync_ask() -> Any:
        loading.wait(10)
        asking.set()
        return second.cache.get_or_set("user:1", second_loader)

    def outcome(call: Any) -> Any:
        try:
            return call()
        except Exception as error:
            return error

    with ThreadPoolExecutor(2) as pool:
        first_outcome = pool.submit(outcome, lambda: first.cache.get_or_set("user:1", sync_failing))
        second_outcome = pool.submit(outcome, sync_ask)
        return first_outcome.result(), second_outcome.result(), second_loads


def test_a_loader_failure_reaches_the_processes_waiting_for_it(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix, config=SHARED_FAILURE) as first,
            any_facade.open(redis_url, prefix, config=SHARED_FAILURE) as second,
        ):
            first_outcome, second_outcome, second_loads = await _fail_while_another_waits(
                first, second
            )
            assert isinstance(first_outcome, RuntimeError)
            assert isinstance(second_outcome, LoaderFailedError)
            assert "RuntimeError: database down" in str(second_outcome)
            assert second_loads == []  # failed with the first, not after a load of its own
            # A set (or a delete) ends the failure at once.
            assert await first.set("user:1", "fixed") is True
            assert await second.get_or_set("user:1", lambda: "not called") == "fixed"

    run(scenario())


def test_a_loader_failure_is_not_shared_when_switched_off(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    config = CacheConfig(operation_timeout=2.0, loader_failure_ttl=0)

    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix, config=config) as first,
            any_facade.open(redis_url, prefix, config=config) as second,
        ):
            first_outcome, second_outcome, second_loads = await _fail_while_another_waits(
                first, second
            )
            assert isinstance(first_outcome, RuntimeError)
            assert second_outcome == "loaded"
            assert second_loads == [1]

    run(scenario())


# -- bounds and lifecycle ---------------------------------------------------------------


@pytest.mark.parametrize("ttl", [1e16, 10 * 365 * 24 * 3600 + 1, timedelta(days=3651), 0, -1])
def test_ttl_bounds_are_the_same_on_every_backend(
    any_facade: Facade, redis_url: str, prefix: str, ttl: Any
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            with pytest.raises(ValueError, match="ttl must be positive and at most"):
                await cache.set("user:1", 1, ttl)
            with pytest.raises(ValueError, match="ttl must be positive and at most"):
                await cache.get_or_set("user:1", lambda: 1, ttl)
            with pytest.raises(ValueError, match="stale_ttl must be positive and at most"):
                await cache.get_or_set("user:1", lambda: 1, 60, stale_ttl=ttl or -1)
            assert await cache.set("user:1", 1, timedelta(days=3650)) is True

    run(scenario())


def test_a_closed_cache_raises_instead_of_reconnecting(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> Any:
        async with any_facade.open(redis_url, prefix, config=LOCAL) as cache:
            assert await cache.set("user:1", 1) is True
        for call in (
            lambda: cache.get("user:1"),
            lambda: cache.set("user:1", 2),
            lambda: cache.delete("user:1"),
            lambda: cache.invalidate("user:*"),
            lambda: cache.invalidate_group("user"),
            lambda: cache.get_or_set("user:2", lambda: 2),
            lambda: cache.start(),
        ):
            with pytest.raises(CacheClosedError, match="is closed"):
                await call()

    run(scenario())


def test_a_call_in_flight_when_the_cache_closes_returns_its_loaded_value(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    """Shutting down (a lifespan's exit, SIGTERM) closes the cache while requests still
    run: their loaders succeed, and they return what was loaded, not stored, rather than
    fail with CacheClosedError after the work was done."""

    async def scenario() -> None:
        loading = threading.Event()
        finish = threading.Event()

        def loader() -> dict[str, int]:
            loading.set()
            finish.wait(10)
            return {"id": 1}

        async with any_facade.open(redis_url, prefix, config=LOCAL) as harness:
            cache = harness.cache
            with ThreadPoolExecutor(1) as pool:
                if harness.kind == "async":
                    in_flight: Any = asyncio.ensure_future(
                        cache.get_or_set("user:1", partial(asyncio.to_thread, loader))
                    )
                    await asyncio.to_thread(loading.wait, 10)
                    await cache.aclose()
                    finish.set()
                    assert await in_flight == {"id": 1}
                else:
                    future = pool.submit(cache.get_or_set, "user:1", loader)
                    assert loading.wait(10)
                    cache.close()
                    finish.set()
                    assert future.result(10) == {"id": 1}
            with pytest.raises(CacheClosedError, match="is closed"):
                await harness.get_or_set("user:1", lambda: {"id": 2})
        async with any_facade.open(redis_url, prefix, config=LOCAL) as other:
            assert await other.get("user:1") is None  # loaded after close: not stored

    run(scenario())


# -- resources --------------------------------------------------------------------------


def test_the_local_tier_is_bounded_in_bytes(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    config = CacheConfig(
        operation_timeout=2.0, local_tier_size=1000, local_tier_max_bytes=1024 * 1024
    )
    big = "x" * 200_000

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, config=config) as cache:
            assert await cache.start()
            local = cache.cache._core.local
            for index in range(12):
                assert await cache.set(f"doc:{index}", big) is True
                assert await cache.get(f"doc:{index}") == big
                assert local.bytes <= config.local_tier_max_bytes
            assert 3 <= len(local) <= 5
            assert local.bytes == sum(len(entry.data) for entry in local._entries.values())
            # Larger than the whole tier: served from Redis, never held.
            huge = "y" * (config.local_tier_max_bytes + 1)
            wide = CacheConfig(**{**vars(config), "max_value_bytes": 2 * 1024 * 1024})
            async with any_facade.open(redis_url, prefix, config=wide) as other:
                assert await other.start()
                assert await other.set("doc:huge", huge) is True
                assert await other.get("doc:huge") == huge
                assert "doc:huge" not in other.cache._core.local._entries

    run(scenario())


def _pubsub_connections(url: str) -> int:
    return sum(
        1
        for client in redis.Redis.from_url(url).client_list()
        if client["cmd"] in ("subscribe", "ping") and int(client.get("sub", 0)) > 0
    )


def test_a_cache_dropped_without_close_is_not_kept_by_the_shared_listener(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    """Caches made per request on one shared client and never closed: the shared listener
    kept every one of them, local tier included, and applied each message to all (200
    such caches, each holding one 100 KB value, kept 20 MiB for ever)."""
    cache_class = SyncRedisCache if facade.kind == "sync" else AsyncRedisCache

    async def scenario() -> None:
        if facade.kind == "sync":
            client: Any = redis.Redis.from_url(redis_url, socket_timeout=2.0)
        else:
            client = redis.asyncio.Redis.from_url(redis_url)
        async with facade.open(redis_url, prefix, config=LOCAL, client=client) as kept:
            assert await kept.set("user:1", "x" * 100_000) is True
            cores = []
            for _ in range(3):
                cache = cache_class(client, prefix, config=LOCAL)
                harness = conftest_cache.SyncHarness if facade.kind == "sync" else AsyncHarness
                one = harness(cache, facade.kind)
                assert await one.start()
                assert await one.get("user:1") == "x" * 100_000  # held in its local tier
                cores.append(weakref.ref(cache._core))
                del cache, one

            async def all_gone() -> bool:
                # The async cache's deadline timer may still hold one until it ticks.
                gc.collect()
                return [core() for core in cores] == [None, None, None]

            await eventually(all_gone)
            assert await kept.get("user:1") == "x" * 100_000  # the listener still serves
            assert await kept.delete("user:1") is True
            assert await kept.get("user:1") is None
        if facade.kind == "async":
            await client.aclose()
        else:
            client.close()

    run(scenario())


def test_caches_on_one_client_share_one_listener(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    """Fifty caches with local tiers on one client: one listener (thread or task) and one
    Pub/Sub connection, and each message still reaches only the caches of its prefix."""
    count = 50

    async def scenario() -> None:
        if facade.kind == "sync":
            # The caller's client has no socket timeouts: the caches share one bounded copy.
            client: Any = redis.Redis.from_url(redis_url)
            threads_before = threading.active_count()
        else:
            client = redis.asyncio.Redis.from_url(redis_url)
        pubsub_before = _pubsub_connections(redis_url)
        opened = [
            facade.open(redis_url, f"{prefix}-{index % 10}", config=LOCAL, client=client)
            for index in range(count)
        ]
        caches = [await context.__aenter__() for context in opened]
        try:
            for cache in caches:
                assert await cache.start()
            if facade.kind == "sync":
                assert threading.active_count() - threads_before == 1
            else:
                listeners = [
                    task
                    for task in asyncio.all_tasks()
                    if task.get_name() == "commclient-cache-listener"
                ]
                assert len(listeners) == 1
            assert _pubsub_connections(redis_url) - pubsub_before == 1
            async with facade.open(redis_url, f"{prefix}-0", config=LOCAL) as writer:
                assert await writer.set("user:1", "old") is True
                assert await caches[0].get("user:1") == "old"  # held locally
                assert await caches[10].get("user:1") == "old"  # same prefix, held too
                assert await caches[1].set("user:1", "other prefix") is True
                assert await caches[1].get("user:1") == "other prefix"
                assert await writer.delete("user:1") is True

                async def dropped() -> bool:
                    return (
                        await caches[0].get("user:1") is None
                        and await caches[10].get("user:1") is None
                    )

                await eventually(dropped)
                assert await caches[1].get("user:1") == "other prefix"
        finally:
            for context in opened:
                await context.__aexit__(None, None, None)
        if facade.kind == "sync":
            assert threading.active_count() == threads_before

    run(scenario())

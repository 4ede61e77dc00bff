"""The local tier against a real Redis: served without a round trip, dropped on every
invalidation from elsewhere, flushed and bypassed while its listener is disconnected."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import redis
from pydantic import BaseModel, ConfigDict

from commclient.cache import CacheConfig
from tests import conftest_cache
from tests.conftest_cache import Facade, Harness, LogCapture, data_key, eventually, run

pytestmark = pytest.mark.redis_server

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix
facade = conftest_cache.facade
any_facade = conftest_cache.any_facade
cache_logs = conftest_cache.cache_logs

DISCONNECTED = "cache invalidation listener disconnected; local tier flushed and bypassed"
RESUBSCRIBED = "cache invalidation listener resubscribed"

LOCAL = CacheConfig(
    local_tier_size=100, local_tier_ttl=30.0, listener_ping_interval=0.2, operation_timeout=2.0
)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: int


class Mutable(BaseModel):
    values: list[int]


def script_calls(url: str) -> int:
    """Script calls Redis has served: every cache read is one (a local hit is none)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def started(cache: Harness) -> None:
    assert await cache.start() is True


def test_local_hits_do_not_reach_redis(facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix, config=LOCAL) as cache:
            await started(cache)
            await cache.set("settings", {"a": 1})
            assert await cache.get("settings") == {"a": 1}  # from Redis, now local
            before = script_calls(redis_url)
            for _ in range(20):
                assert await cache.get("settings") == {"a": 1}
                assert await cache.get_or_set("settings", lambda: {"a": 2}) == {"a": 1}
            assert script_calls(redis_url) == before

    run(scenario())


def test_local_tier_is_bypassed_until_subscribed(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix, config=LOCAL) as cache:
            assert cache.cache.local_tier_active is False
            await cache.set("settings", 1)
            before = script_calls(redis_url)
            assert await cache.get("settings") == 1
            assert script_calls(redis_url) == before + 1
            await started(cache)

    run(scenario())


@pytest.mark.parametrize("change", ["set", "delete", "invalidate", "invalidate_group"])
def test_changes_elsewhere_drop_local_copies(
    facade: Facade, redis_url: str, prefix: str, change: str
) -> None:
    async def scenario() -> None:
        async with (
            facade.open(redis_url, prefix, config=LOCAL) as reader,
            facade.open(redis_url, prefix) as writer,
        ):
            await started(reader)
            await writer.set("assistant:1", "old")
            assert await reader.get("assistant:1") == "old"  # now held locally
            if change == "set":
                await writer.set("assistant:1", "new")
            elif change == "delete":
                await writer.delete("assistant:1")
            elif change == "invalidate":
                assert await writer.invalidate("assistant:*") == 1
            else:
                assert await writer.invalidate_group("assistant")
            expected = "new" if change == "set" else None

            async def dropped() -> bool:
                return await reader.get("assistant:1") == expected

            await eventually(dropped, timeout=2.0, interval=0.001)

    run(scenario())


def test_own_invalidations_apply_at_once_and_are_not_applied_twice(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix, config=LOCAL) as cache:
            await started(cache)
            await cache.set("assistant:1", "old")
            assert await cache.get("assistant:1") == "old"
            assert await cache.invalidate_group("assistant")
            # Applied locally before the call returned: no waiting for the message.
            assert await cache.get("assistant:1") is None
            await cache.set("assistant:1", "new")
            assert await cache.get("assistant:1") == "new"  # held locally again
            await cache.sleep(0.2)  # our own messages arrive meanwhile and are recognised
            before = script_calls(redis_url)
            assert await cache.get("assistant:1") == "new"
            assert script_calls(redis_url) == before

    run(scenario())


def test_listener_disconnect_flushes_and_bypasses_the_local_tier(
    facade: Facade, redis_url: str, prefix: str, cache_logs: LogCapture
) -> None:
    admin = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        async with facade.open(redis_url, prefix, config=LOCAL) as cache:
            await started(cache)
            await cache.set("settings", "old")
            assert await cache.get("settings") == "old"  # held locally
            # Drop every Pub/Sub connection, then change the value behind the cache's back:
            # no message can tell this cache about the change.
            admin.client_kill_filter(_type="pubsub")
            admin.set(data_key(admin, prefix, "settings"), b'"new"')

            async def noticed() -> bool:
                return DISCONNECTED in cache_logs.messages()

            async def reactivated() -> bool:
                return bool(cache.cache.local_tier_active)

            await eventually(noticed, timeout=5.0)
            # From the moment the listener noticed, the old copy is gone for good.
            assert await cache.get("settings") == "new"
            await eventually(reactivated, timeout=5.0)
            assert await cache.get("settings") == "new"
            assert RESUBSCRIBED in cache_logs.messages()

    run(scenario())


def test_local_ttl_is_capped(facade: Facade, redis_url: str, prefix: str) -> None:
    config = CacheConfig(local_tier_size=10, local_tier_ttl=0.2, operation_timeout=2.0)

    async def scenario() -> None:
        async with facade.open(redis_url, prefix, config=config) as cache:
            await started(cache)
            await cache.set("settings", 1, ttl=300)
            assert await cache.get("settings") == 1
            before = script_calls(redis_url)
            assert await cache.get("settings") == 1
            assert script_calls(redis_url) == before
            await cache.sleep(0.3)
            assert await cache.get("settings") == 1
            assert script_calls(redis_url) == before + 1

    run(scenario())


def test_only_frozen_values_are_shared_between_callers(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix, config=LOCAL) as cache:
            await started(cache)
            await cache.set("frozen", Frozen(value=1))
            await cache.set("mutable", Mutable(values=[1]))
            assert await cache.get("frozen", Frozen) is await cache.get("frozen", Frozen)
            first = await cache.get("mutable", Mutable)
            first.values.append(2)  # a caller mutating its copy ...
            assert await cache.get("mutable", Mutable) == Mutable(values=[1])  # ... alone

    run(scenario())


class Tool(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    args: list[str]


@dataclasses.dataclass
class Meta:
    items: list[int]


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)
    features: list[str]
    tool: Tool
    limits: dict[str, list[int]]
    flags: set[str]
    meta: Meta


def test_what_a_caller_mutates_never_reaches_the_next_caller(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    stored = Settings(
        features=["a"],
        tool=Tool(name="t", args=["-v"]),
        limits={"x": [1]},
        flags={"f"},
        meta=Meta(items=[1]),
    )

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, config=LOCAL) as cache:
            await started(cache)
            await cache.set("settings", stored)
            loaded = await cache.get_or_set(
                "loaded", lambda: stored.model_copy(deep=True), model=Settings
            )
            assert await cache.get("settings", Settings) == stored  # from Redis, now local
            before = script_calls(redis_url)
            for key in ("settings", "settings", "loaded", "loaded"):
                value = await cache.get(key, Settings)
                assert value == stored
                assert value.model_dump() == stored.model_dump()
                value.features.append("b")
                value.tool.args.append("-q")
                value.limits["x"].append(2)
                value.flags.add("g")
                value.meta.items.append(2)
            loaded.features.append("c")  # the loader's caller changes what it was given
            assert await cache.get("loaded", Settings) == stored
            if any_facade.backend == "redis":
                assert script_calls(redis_url) == before  # all served by the local tier

    run(scenario())


def test_callers_sharing_one_load_get_objects_of_their_own(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    stored = Settings(
        features=["a"],
        tool=Tool(name="t", args=[]),
        limits={},
        flags=set(),
        meta=Meta(items=[]),
    )
    calls: list[str] = []

    def loader(key: str) -> Any:
        calls.append(key)
        return stored.model_copy(deep=True) if key == "model" else {"items": [1]}

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, config=LOCAL) as cache:
            await started(cache)
            for key, model in (("model", Settings), ("plain", None)):
                values = await cache.many_get_or_set(
                    3, key, lambda key=key: loader(key), delay=0.3, model=model
                )
                assert calls.count(key) == 1  # one load for the three callers
                assert len({id(value) for value in values}) == 3
                first, *others = values
                if model is None:
                    first["items"].append(2)
                    assert all(other == {"items": [1]} for other in others)
                else:
                    first.features.append("b")
                    first.meta.items.append(1)
                    assert all(other == stored for other in others)

    run(scenario())


@pytest.mark.facade_async
def test_a_loop_that_was_stopped_does_not_serve_before_its_listener_runs(
    redis_url: str, prefix: str
) -> None:
    """A loop kept between jobs (``run_until_complete`` per Celery task, say) is stopped
    in between, and so is the listener task on it: an invalidation published meanwhile
    waits in its socket, and the next job's first read was a local hit of the value
    invalidated, however long ago. The local tier serves only while its listener has
    run within ``LISTENER_SILENCE`` (the tier's clock is moved here instead of waiting)."""
    from commclient.cache import AsyncRedisCache, SyncRedisCache
    from commclient.cache._local import LISTENER_SILENCE

    cache = AsyncRedisCache.from_url(redis_url, prefix, config=LOCAL)
    other = SyncRedisCache.from_url(redis_url, prefix, config=LOCAL)
    moved = [0.0]
    tier = cache._core.local
    real_clock = tier._clock
    tier._clock = lambda: real_clock() + moved[0]
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(cache.start()) is True
        assert other.set("settings:1", "v1") is True
        assert loop.run_until_complete(cache.get("settings:1")) == "v1"
        assert loop.run_until_complete(cache.get("settings:1")) == "v1"  # a local hit
        assert other.set("settings:1", "v2") is True  # its message waits in the socket
        moved[0] += 2 * LISTENER_SILENCE  # the loop stayed stopped that long
        assert loop.run_until_complete(cache.get("settings:1")) == "v2"
        loop.run_until_complete(cache.aclose())
    finally:
        other.close()
        loop.close()

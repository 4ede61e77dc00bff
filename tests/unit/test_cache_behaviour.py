"""One behaviour table, run against the sync and async caches (and the memory backend where
the behaviour is not about Redis), on a real redis-server started for the session."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any, get_origin

import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict

from commclient.cache import (
    AsyncMemoryCache,
    AsyncRedisCache,
    CacheConfig,
    CacheLoopError,
    CacheSerializationError,
    CacheValueTooLargeError,
    Glob,
    InvalidationMessage,
    InvalidCacheKeyError,
    LoaderFailedError,
    MemoryStore,
)
from commclient.cache import _flows as flows
from tests import conftest_cache
from tests.conftest_cache import RELAXED, Facade, data_key, eventually, metric, run

pytestmark = pytest.mark.redis_server

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix
registry = conftest_cache.registry
facade = conftest_cache.facade
any_facade = conftest_cache.any_facade
cache_logs = conftest_cache.cache_logs


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    timezone: str
    reminder_minutes: int
    features: list[str] = []


class Assistant(BaseModel):
    id: int
    name: str
    tools: list[str]


@dataclasses.dataclass
class Secretary:
    user_id: int
    secretary_id: int
    active: bool = True


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def set_commands(url: str) -> int:
    """SET commands Redis has served (commands run by scripts included)."""
    return int(raw_client(url).info("commandstats").get("cmdstat_set", {}).get("calls", 0))


# -- typed round trips ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "model", "expected"),
    [
        (Settings(timezone="UTC", reminder_minutes=5), Settings, None),
        (Assistant(id=1, name="a", tools=["x"]), Assistant, None),
        (Secretary(user_id=4, secretary_id=9), Secretary, None),
        (
            {"timezone": "UTC", "reminder_minutes": 5},
            Settings,
            Settings(timezone="UTC", reminder_minutes=5),
        ),
        ([Assistant(id=1, name="a", tools=[])], list[Assistant], None),
        ({"a": [1, 2.5, None, True, "é"]}, None, None),
        ("text", None, None),
        (0, None, None),
        (False, None, None),
        ([], None, None),
    ],
)
def test_typed_round_trip(
    any_facade: Facade, redis_url: str, prefix: str, value: Any, model: Any, expected: Any
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            assert await cache.set("config:1", value) is True
            got = await cache.get("config:1", model)
            assert got == (value if expected is None else expected)
            if model is not None and get_origin(model) is None:
                assert isinstance(got, model)

    run(scenario())


def test_get_raw_returns_json_without_validation(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            await cache.set("settings", Settings(timezone="UTC", reminder_minutes=5))
            assert await cache.get_raw("settings") == {
                "timezone": "UTC",
                "reminder_minutes": 5,
                "features": [],
            }
            assert await cache.get_raw("absent") is None
            assert await cache.get("absent", Settings) is None

    run(scenario())


def test_values_are_stored_as_json(facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix) as cache:
            await cache.set("user_secretary:4", Secretary(user_id=4, secretary_id=9))
        client = raw_client(redis_url)
        stored = client.get(data_key(client, prefix, "user_secretary:4"))
        assert stored is not None
        assert json.loads(stored) == {"user_id": 4, "secretary_id": 9, "active": True}

    run(scenario())


def test_unsafe_values_are_refused(any_facade: Facade, redis_url: str, prefix: str) -> None:
    config = CacheConfig(max_value_bytes=100, operation_timeout=2.0)

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, config=config) as cache:
            with pytest.raises(CacheValueTooLargeError, match="max_value_bytes"):
                await cache.set("big", "x" * 200)
            with pytest.raises(CacheSerializationError):
                await cache.set("object", object())
            with pytest.raises(CacheSerializationError):
                await cache.set("nan", {"value": math.nan})
            with pytest.raises(CacheSerializationError, match="'deep'"):
                await cache.set("deep", _nested_lists(100_000))
            with pytest.raises(InvalidCacheKeyError):
                await cache.set("has#hash", 1)
            with pytest.raises(InvalidCacheKeyError):
                await cache.get("")
            assert await cache.get("big") is None

    run(scenario())


# -- TTL --------------------------------------------------------------------------------


def test_ttl_expiry(any_facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            assert await cache.set("short", 1, ttl=0.2)
            assert await cache.set("long", 2, ttl=timedelta(minutes=5))
            assert await cache.get("short") == 1

            async def expired() -> bool:
                return await cache.get("short") is None

            await eventually(expired, timeout=3.0)
            assert await cache.get("long") == 2

    run(scenario())


def test_ttl_is_set_in_redis(facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix) as cache:
            await cache.set("settings", 1, ttl=timedelta(seconds=300))
        client = raw_client(redis_url)
        ttl_ms = client.pttl(data_key(client, prefix, "settings"))
        assert 295_000 < ttl_ms <= 300_000

    run(scenario())


@pytest.mark.parametrize("ttl", [0, -1, math.inf])
def test_invalid_ttl_is_refused(
    any_facade: Facade, redis_url: str, prefix: str, ttl: float
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            with pytest.raises(ValueError, match="ttl"):
                await cache.set("k", 1, ttl=ttl)

    run(scenario())


# -- invalidation -----------------------------------------------------------------------


def test_invalidate_counts_exactly_the_matching_keys(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            for index in range(2500):  # more than one SCAN page
                await cache.set(f"user:{index}", index)
            for key in ("users:1", "user", "assistant:1", "xuser:1", "user_secretary:1"):
                await cache.set(key, key)
            assert await cache.invalidate("user:*") == 2500
            assert await cache.get("user:7") is None
            for key in ("users:1", "user", "assistant:1", "xuser:1", "user_secretary:1"):
                assert await cache.get(key) == key
            assert await cache.invalidate("user:*") == 0

    run(scenario())


def test_invalidate_escapes_caller_supplied_parts(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            for key in ("user:*", "user:1", "user:2", "user:[1]"):
                await cache.set(key, key)
            # A part such as an id taken from a URL never widens the pattern ...
            assert await cache.invalidate("user:{}", "*") == 1
            assert await cache.get("user:1") == "user:1"
            assert await cache.invalidate("user:{}", "[1]") == 1
            assert await cache.get("user:1") == "user:1"
            # ... unless the caller asks for a glob.
            assert await cache.invalidate("user:{}", Glob("*")) == 2

    run(scenario())


def test_invalidate_group_is_one_increment(facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix) as cache:
            for index in range(50):
                await cache.set(f"assistant:{index}", index)
            await cache.set("assistant", "bare")
            await cache.set("tool:1", "tool")
            await cache.invalidate_group("warmup")  # loads the script into Redis
            before = raw_client(redis_url).info("commandstats")
            generation = int(raw_client(redis_url).get(f"{{{prefix}}}!gen:assistant") or 0)
            assert await cache.invalidate_group("assistant") is True
            after = raw_client(redis_url).info("commandstats")
            # One script call, whatever the size of the group.
            assert after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"] == 1
            assert raw_client(redis_url).get(f"{{{prefix}}}!gen:assistant") == b"%d" % (
                generation + 1
            )
            assert await cache.get("assistant:3") is None
            assert await cache.get("assistant") is None
            assert await cache.get("tool:1") == "tool"
            await cache.set("assistant:3", "new")
            assert await cache.get("assistant:3") == "new"

    run(scenario())


def test_group_invalidation_by_another_cache_is_seen_at_once(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix) as reader,
            any_facade.open(redis_url, prefix) as writer,
        ):
            await writer.set("assistant:1", "old")
            assert await reader.get("assistant:1") == "old"  # the reader knows generation 0
            assert await writer.invalidate_group("assistant")
            assert await reader.get("assistant:1") is None
            await writer.set("assistant:1", "new")  # generation 1
            assert await reader.get("assistant:1") == "new"
            assert await writer.invalidate_group("assistant")
            assert await writer.invalidate_group("assistant")
            await writer.set("assistant:1", "newer")  # generation 3
            assert await reader.get("assistant:1") == "newer"

    run(scenario())


LOCAL_TIER = CacheConfig(local_tier_size=100, operation_timeout=2.0, listener_ping_interval=0.2)


def lease_held(facade: Facade, url: str, prefix: str, key: str) -> bool:
    lease_key = f"{{{prefix}}}:{key}#L"
    if facade.backend == "memory":
        return facade.store.get(lease_key) is not None
    return bool(raw_client(url).exists(lease_key))


async def run_flow(harness: Any, flow: Any, loader: Any) -> Any:
    """Drive one of the cache's flows to its end with the cache's own driver."""
    result = harness.cache._run(flow, loader)
    return await result if inspect.isawaitable(result) else result


@pytest.mark.parametrize("config", [None, LOCAL_TIER], ids=["redis-tier", "local-tier"])
def test_every_operation_acts_on_the_current_generation_when_it_moved_elsewhere(
    any_facade: Facade,
    redis_url: str,
    prefix: str,
    registry: CollectorRegistry,
    config: CacheConfig | None,
) -> None:
    """Another process bumps the group, so the generation this cache remembers (the one
    its scripts' declared data key is built with) is stale: each operation notices,
    learns the current generation and acts on it."""

    async def fresh_get(key: str) -> Any:
        async with any_facade.open(redis_url, prefix) as fresh:
            return await fresh.get(key)

    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix, config=config, registry=registry) as cache,
            any_facade.open(redis_url, prefix) as other,
        ):
            if config is not None:
                assert await cache.start()
            assert await other.invalidate_group("assistant")  # cache has no guess yet
            assert await cache.set("assistant:1", "v1") is True
            assert await fresh_get("assistant:1") == "v1"

            assert await other.invalidate_group("assistant")
            assert await other.set("assistant:1", "v2") is True
            assert await cache.delete("assistant:1") is True
            assert await fresh_get("assistant:1") is None

            assert await other.invalidate_group("assistant")
            assert await other.set("assistant:1", "v3") is True
            assert await cache.get("assistant:1") == "v3"  # MGET, or the read script

            assert await other.invalidate_group("assistant")
            assert await other.set("assistant:2", "v4") is True
            not_called = "the loader of a value that is there"
            assert await cache.get_or_set("assistant:2", lambda: not_called, stale_ttl=5) == "v4"

            assert await other.invalidate_group("assistant")
            assert await cache.get_or_set("assistant:3", lambda: "loaded") == "loaded"
            assert await fresh_get("assistant:3") == "loaded"
            assert not lease_held(any_facade, redis_url, prefix, "assistant:3")

            # The group moves between this cache's read and its read-or-lease: the
            # lease is not taken at the old generation (the second attempt takes it at
            # once, rather than waiting for it to expire); the value lands at the new one.
            heard = {"cache_name": prefix, "kind": "group", "direction": "received"}
            assert await other.invalidate_group("assistant")  # the sixth bump by `other`
            core = cache.cache._core
            if config is not None:
                # The listener learns the new generation from the message: wait for it
                # (and for the five before it, which a busy listener may still be on),
                # then give this cache the stale guess of one that has not heard it yet.

                async def arrived() -> bool:
                    total = metric(registry, "redis_cache_invalidations_total", **heard)
                    return total == 6

                await eventually(arrived)
            core.remember_generation("assistant", "0")
            labels = {"cache_name": prefix, "operation": "lease_acquire"}
            attempts = metric(registry, "redis_cache_operations_duration_seconds_count", **labels)
            plan = core.plan("assistant:4")
            job = flows.ReadThrough(plan, 60_000, 0.0, None, core.local_epoch())
            filled = await run_flow(cache, flows.fill(core, job), lambda: "filled")
            assert filled == "filled"
            assert (
                metric(registry, "redis_cache_operations_duration_seconds_count", **labels)
                == attempts + 2
            )
            assert await fresh_get("assistant:4") == "filled"
            assert not lease_held(any_facade, redis_url, prefix, "assistant:4")

    run(scenario())


async def set_in_one_call(cache: Any, registry: CollectorRegistry, prefix: str, value: int) -> None:
    """``cache.set`` succeeds with one write script call: it named the current generation."""
    labels = {"cache_name": prefix, "operation": "set"}
    before = metric(registry, "redis_cache_operations_duration_seconds_count", **labels)
    assert await cache.set("assistant:1", value) is True
    after = metric(registry, "redis_cache_operations_duration_seconds_count", **labels)
    assert after == before + 1


def test_a_cache_addresses_the_generation_its_own_group_invalidation_made(
    any_facade: Facade, redis_url: str, prefix: str, registry: CollectorRegistry
) -> None:
    """The bump answers the new generation: the next write names it at once, rather
    than being told the group moved on and sent again."""

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, registry=registry) as cache:
            for round_number in range(3):
                assert await cache.invalidate_group("assistant")
                await set_in_one_call(cache, registry, prefix, round_number)
                assert await cache.get("assistant:1") == round_number

    run(scenario())


def test_a_group_message_gives_other_caches_the_new_generation(
    any_facade: Facade, redis_url: str, prefix: str, registry: CollectorRegistry
) -> None:
    """A cache whose listener heard another cache's group invalidation addresses the new
    generation at once: its next write is not told that the group moved on."""

    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix, config=LOCAL_TIER, registry=registry) as cache,
            any_facade.open(redis_url, prefix) as other,
        ):
            assert await cache.start()
            heard = {"cache_name": prefix, "kind": "group", "direction": "received"}
            for round_number in range(1, 4):
                assert await other.invalidate_group("assistant")

                async def arrived(expected: int = round_number) -> bool:
                    return metric(registry, "redis_cache_invalidations_total", **heard) == expected

                await eventually(arrived)
                await set_in_one_call(cache, registry, prefix, round_number)
                assert await other.get("assistant:1") == round_number

    run(scenario())


class RestlessStore(MemoryStore):
    """A store whose group generations move every time they are read."""

    def get(self, key: Any) -> bytes | None:
        name = key if isinstance(key, bytes) else str(key).encode()
        with self.lock:
            if b"!gen:" in name:
                self.incr(name, 1)
            return super().get(key)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_generation_that_never_settles_fails_like_redis_would(
    kind: str, prefix: str, registry: CollectorRegistry, cache_logs: Any
) -> None:
    """After a few attempts each operation gives up as a failed Redis call does: counted,
    logged, a miss or ``False``; the loader's value is still returned."""

    async def scenario() -> None:
        facade = Facade(kind, "memory")
        facade.store = RestlessStore()
        async with facade.open(None, prefix, registry=registry) as cache:
            assert await cache.set("assistant:1", "v") is False
            assert await cache.get("assistant:1") is None
            assert await cache.delete("assistant:1") is False
            assert await cache.get_or_set("assistant:1", lambda: "loaded") == "loaded"
            core = cache.cache._core
            job = flows.ReadThrough(core.plan("assistant:2"), 60_000, 0.0, None, 0)
            assert await run_flow(cache, flows.fill(core, job), lambda: "filled") == "filled"
            assert not lease_held(facade, "", prefix, "assistant:2")
        given_up = {"set": 1, "get": 2, "delete": 1, "lease_acquire": 1}  # get_or_set reads first
        for operation, count in given_up.items():
            labels = {"operation": operation, "error_type": "generation_moved"}
            assert (
                metric(registry, "redis_cache_errors_total", cache_name=prefix, **labels) == count
            )
        warnings = [
            getattr(record, "operation", None)
            for record in cache_logs.records
            if record.levelno == logging.WARNING and "kept moving" in record.getMessage()
        ]
        assert sorted(warnings) == sorted(o for o, n in given_up.items() for _ in range(n))

    run(scenario())


def test_group_invalidation_in_memory(any_facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            await cache.set("assistant:1", 1)
            await cache.set("tool:1", 2)
            assert await cache.invalidate_group("assistant") is True
            assert await cache.get("assistant:1") is None
            assert await cache.get("tool:1") == 2
            with pytest.raises(InvalidCacheKeyError):
                await cache.invalidate_group("a:b")

    run(scenario())


def test_delete(any_facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            await cache.set("user:1", 1)
            assert await cache.delete("user:1") is True
            assert await cache.get("user:1") is None
            assert await cache.delete("user:1") is False

    run(scenario())


# -- read-through ------------------------------------------------------------------------


def test_get_or_set_loads_once_then_serves(any_facade: Facade, redis_url: str, prefix: str) -> None:
    calls: list[int] = []

    def loader() -> dict[str, object]:
        calls.append(1)
        return {"timezone": "UTC", "reminder_minutes": len(calls)}

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            first = await cache.get_or_set("global_settings", loader, 300, Settings)
            second = await cache.get_or_set("global_settings", loader, 300, Settings)
            assert first == second == Settings(timezone="UTC", reminder_minutes=1)
            assert isinstance(second, Settings)
            assert len(calls) == 1

    run(scenario())


def test_fifty_concurrent_misses_call_the_loader_once(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def loader() -> dict[str, int]:
        with lock:
            calls.append(1)
        return {"value": 42}

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            sets_before = set_commands(redis_url)
            results = await cache.many_get_or_set(50, "cold:key", loader, delay=0.2)
            assert results == [{"value": 42}] * 50
            assert len(calls) == 1
            if any_facade.backend == "redis":
                # The 49 others waited in the process: one SET created the group's
                # generation, one took the lease and one (inside the write script) stored
                # the value; 50 callers asking for it would be 52.
                assert set_commands(redis_url) - sets_before == 3

    run(scenario())


def test_loader_error_reaches_every_waiter(any_facade: Facade, redis_url: str, prefix: str) -> None:
    calls: list[int] = []

    def failing() -> object:
        calls.append(1)
        raise LookupError("rest service said no")

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            results = await cache.many_get_or_set(20, "cold:key", failing, delay=0.1)
            assert all(isinstance(result, LookupError) for result in results), results
            assert len(calls) == 1
            # Nothing was cached; for loader_failure_ttl the failure stands in for the
            # value (other processes fail with it rather than load in turn) ...
            with pytest.raises(LoaderFailedError, match="LookupError: rest service said no"):
                await cache.get_or_set("cold:key", lambda: "ok")
            # ... unless the key is written or deleted: then the next caller loads at once.
            await cache.delete("cold:key")
            assert await cache.get_or_set("cold:key", lambda: "ok") == "ok"

    run(scenario())


def test_two_caches_share_one_load_through_the_lease(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    """Two cache instances have separate in-process flights: only the lease joins them."""
    calls: list[int] = []
    lock = threading.Lock()

    def loader() -> str:
        with lock:
            calls.append(1)
        return "loaded"

    async def scenario() -> None:
        async with (
            facade.open(redis_url, prefix) as first,
            facade.open(redis_url, prefix) as second,
        ):
            if facade.kind == "async":
                import asyncio

                results = await asyncio.gather(
                    first.get_or_set("cold:key", loader, delay=0.3),
                    second.get_or_set("cold:key", loader, delay=0.3),
                )
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(2) as pool:
                    futures = [
                        pool.submit(c.cache.get_or_set, "cold:key", _slow(loader, 0.3))
                        for c in (first, second)
                    ]
                    results = [f.result() for f in futures]
            assert results == ["loaded", "loaded"]
            assert len(calls) == 1

    run(scenario())


def _slow(loader: Any, seconds: float) -> Any:
    import time

    def load() -> Any:
        time.sleep(seconds)
        return loader()

    return load


def test_a_load_overtaken_by_a_group_invalidation_is_not_stored(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix) as cache,
            any_facade.open(redis_url, prefix) as other,
        ):
            # The REST service changes the data while the old version is being loaded.
            if cache.kind == "async":

                async def load() -> str:
                    await other.invalidate_group("assistant")
                    return "old"

                assert await cache.cache.get_or_set("assistant:1", load) == "old"
            else:

                def sync_load() -> str:
                    other.cache.invalidate_group("assistant")
                    return "old"

                assert await cache.get_or_set("assistant:1", sync_load) == "old"
            assert await cache.get("assistant:1") is None

    run(scenario())


def test_a_load_overtaken_by_a_delete_is_not_stored(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix) as cache, facade.open(redis_url, prefix) as other:
            if cache.kind == "async":

                async def load() -> str:
                    await other.delete("user:1")
                    return "old"

                assert await cache.cache.get_or_set("user:1", load) == "old"
            else:

                def sync_load() -> str:
                    other.cache.delete("user:1")
                    return "old"

                assert await cache.get_or_set("user:1", sync_load) == "old"
            assert await cache.get("user:1") is None

    run(scenario())


@pytest.mark.parametrize("misses_dominate", [False, True], ids=["read-first", "lease-first"])
def test_a_caller_after_an_invalidation_never_joins_the_load_it_overtook(
    any_facade: Facade, redis_url: str, prefix: str, misses_dominate: bool
) -> None:
    """Without a local tier no listener tells this process of another's invalidation,
    so a miss asked after it found the older load in flight and joined it: it got a
    value read before the invalidation had returned. The load's write is refused then;
    the callers that joined it load again (its first caller asked before, and keeps it)."""

    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix) as cache,
            any_facade.open(redis_url, prefix) as other,
        ):
            loading, finish, joined = threading.Event(), threading.Event(), threading.Event()
            if misses_dominate:  # the first caller reads with the lease (``lead``)
                cache.cache._core.miss_rate = 1.0
            flights = cache.cache._flights
            join = flights.join

            def watched_join(*args: Any) -> Any:
                if args[0] in flights:
                    joined.set()
                return join(*args)

            flights.join = watched_join

            def old_load() -> str:
                loading.set()
                finish.wait(10)
                return "old"

            with ThreadPoolExecutor(2) as pool:
                if cache.kind == "async":
                    first: Any = asyncio.ensure_future(
                        cache.cache.get_or_set("user:1", partial(asyncio.to_thread, old_load))
                    )
                    await asyncio.to_thread(loading.wait, 10)
                    assert await other.invalidate_group("user") is True
                    second: Any = asyncio.ensure_future(cache.get_or_set("user:1", lambda: "new"))
                    await asyncio.to_thread(joined.wait, 10)
                    finish.set()
                    assert await first == "old"  # asked before the invalidation
                    assert await second == "new"
                else:
                    sync_first = pool.submit(cache.cache.get_or_set, "user:1", old_load)
                    assert loading.wait(10)
                    assert await other.invalidate_group("user") is True
                    sync_second = pool.submit(cache.cache.get_or_set, "user:1", lambda: "new")
                    assert joined.wait(10)
                    finish.set()
                    assert sync_first.result(10) == "old"
                    assert sync_second.result(10) == "new"
            assert await other.get("user:1") == "new"

    run(scenario())


@pytest.mark.facade_async
@pytest.mark.redis_server
def test_an_async_cache_used_from_a_second_running_loop_says_so(
    redis_url: str, prefix: str
) -> None:
    """One async cache used from two event loops at once (``asyncio.run`` in two threads):
    the second loop's calls failed inside redis-py ("attached to a different loop"),
    counted as a Redis outage that opened the breaker for the first loop too, and the
    second loop took over the deadline timer of the first loop's calls. Now the second
    loop gets a clear CacheLoopError, the first is untouched, and once the first loop
    has ended the cache serves the next one."""
    cache = AsyncRedisCache.from_url(redis_url, prefix, config=RELAXED)
    loading, finish = threading.Event(), threading.Event()

    async def first() -> Any:
        async def load() -> str:
            loading.set()
            await asyncio.to_thread(finish.wait, 10)
            return "loaded"

        return await cache.get_or_set("user:1", load)

    async def second() -> list[str]:
        await asyncio.to_thread(loading.wait, 10)
        errors = []
        for _ in range(RELAXED.breaker_failure_threshold + 1):
            with pytest.raises(CacheLoopError, match="another event loop, which is still running"):
                await cache.get("user:2")
            errors.append("refused")
        return errors

    with ThreadPoolExecutor(2) as pool:
        loaded = pool.submit(asyncio.run, first())
        refused = pool.submit(asyncio.run, second()).result(20)
        finish.set()
        assert loaded.result(20) == "loaded"
    assert len(refused) == RELAXED.breaker_failure_threshold + 1

    async def later() -> Any:
        try:
            return await cache.get("user:1")
        finally:
            await cache.aclose()

    assert asyncio.run(later()) == "loaded"  # stored, and no outage was counted


@pytest.mark.facade_async
@pytest.mark.redis_server
def test_an_async_cache_used_in_turn_by_loops_that_stay_open(
    redis_url: str, prefix: str, registry: CollectorRegistry
) -> None:
    """A loop per worker thread, run with ``run_until_complete`` and never closed: each
    call on the other loop than the last reused connections opened on a loop that was
    only stopped, and every write failed as a Redis outage (RuntimeError)."""
    cache = AsyncRedisCache.from_url(redis_url, prefix, config=RELAXED, registry=registry)
    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
    try:
        for turn in range(6):
            loop = loops[turn % 2]
            assert loop.run_until_complete(cache.set("user:1", turn)) is True
            assert loop.run_until_complete(cache.get("user:1")) == turn
        errors = [
            sample
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "redis_cache_errors_total" and sample.value
        ]
        assert errors == []
        loops[0].run_until_complete(cache.aclose())
    finally:
        for loop in loops:
            loop.close()


@pytest.mark.facade_async
def test_a_memory_cache_serves_two_running_loops_at_once(prefix: str) -> None:
    """The memory cache has no connections bound to a loop: two loops may use it at once
    (the example's REST service and its client share one). A miss on the second loop
    found the first loop's load in flight and awaited its task, which raised
    RuntimeError ("attached to a different loop"); each loop has its flights now, and
    the lease makes the second wait for the first's value."""
    cache = AsyncMemoryCache(prefix, config=RELAXED)
    loading, finish, second_joined = threading.Event(), threading.Event(), threading.Event()
    join = cache._flights.join
    calls: list[int] = []

    def watched_join(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            second_joined.set()
        return join(*args)

    cache._flights.join = watched_join  # type: ignore[method-assign]

    async def first() -> Any:
        async def load() -> str:
            loading.set()
            await asyncio.to_thread(finish.wait, 10)
            return "loaded once"

        return await cache.get_or_set("user:1", load)

    async def second() -> Any:
        await asyncio.to_thread(loading.wait, 10)

        async def load() -> str:
            return "loaded twice"

        return await cache.get_or_set("user:1", load)

    with ThreadPoolExecutor(2) as pool:
        outcomes = [pool.submit(asyncio.run, first()), pool.submit(asyncio.run, second())]
        assert second_joined.wait(10)
        finish.set()
        assert [outcome.result(20) for outcome in outcomes] == ["loaded once"] * 2
    asyncio.run(cache.aclose())


def test_serve_stale_while_one_caller_refreshes(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def loader() -> int:
        with lock:
            calls.append(1)
            return len(calls)

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            assert await cache.get_or_set("settings", loader, 0.3, stale_ttl=30) == 1
            await cache.sleep(0.5)
            results = await cache.many_get_or_set(
                10, "settings", loader, delay=0.3, ttl=0.3, stale_ttl=30
            )
            # One caller refreshed; the others were answered with the stale value.
            assert sorted(results) == [1] * 9 + [2]
            assert len(calls) == 2
            assert await cache.get_or_set("settings", loader, 0.3, stale_ttl=30) == 2

    run(scenario())


def test_a_failed_refresh_serves_the_stale_value(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    def failing() -> int:
        raise LookupError("down")

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            assert await cache.get_or_set("settings", lambda: 1, 0.2, stale_ttl=30) == 1
            await cache.sleep(0.4)
            assert await cache.get_or_set("settings", failing, 0.2, stale_ttl=30) == 1

    run(scenario())


def test_oversized_load_is_returned_not_cached(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    calls: list[int] = []

    def loader() -> str:
        calls.append(1)
        return "x" * 500

    async def scenario() -> None:
        async with any_facade.open(
            redis_url, prefix, config=CacheConfig(max_value_bytes=100, operation_timeout=2.0)
        ) as cache:
            assert await cache.get_or_set("big", loader) == "x" * 500
            assert await cache.get_or_set("big", loader) == "x" * 500
            assert len(calls) == 2

    run(scenario())


# -- corrupt values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "model"),
    [
        (b"{not json", None),
        (b"\x80\x04\x95pickle", None),
        (b"{not json", Settings),
    ],
)
def test_corrupt_value_is_a_miss_deleted_and_logged(
    facade: Facade,
    redis_url: str,
    prefix: str,
    registry: CollectorRegistry,
    cache_logs: conftest_cache.LogCapture,
    stored: bytes,
    model: Any,
) -> None:
    client = raw_client(redis_url)
    stored_key = data_key(client, prefix, "global_settings")
    client.set(stored_key, stored)

    async def scenario() -> None:
        async with facade.open(redis_url, prefix, registry=registry) as cache:
            assert await cache.get("global_settings", model) is None
            assert client.exists(stored_key) == 0
            assert (
                metric(
                    registry,
                    "redis_cache_errors_total",
                    cache_name=prefix,
                    operation="get",
                    error_type="corrupt_value",
                )
                == 1
            )
            assert "corrupt cache value dropped" in cache_logs.messages(logging.WARNING)
            # get_or_set treats it as a miss too, and replaces it.
            client.set(stored_key, stored)
            loaded = {"timezone": "UTC", "reminder_minutes": 1}
            value = await cache.get_or_set("global_settings", lambda: loaded, model=model)
            assert value == (loaded if model is None else Settings(**loaded))
            assert json.loads(client.get(stored_key) or b"") == (
                loaded if model is None else {**loaded, "features": []}
            )

    run(scenario())


NESTED_JSON = b"[" * 100_000 + b"]" * 100_000


def _nested_lists(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


@pytest.mark.parametrize("model", [None, Settings])
def test_deeply_nested_json_is_a_corrupt_value_not_an_exception(
    any_facade: Facade,
    redis_url: str,
    prefix: str,
    registry: CollectorRegistry,
    cache_logs: conftest_cache.LogCapture,
    model: Any,
) -> None:
    """JSON nested deeper than the parsers go (planted by anyone who can write to Redis) is
    a corrupt value: a miss, counted, logged once and deleted; never a RecursionError or
    pydantic's ValidationError."""

    def plant() -> None:
        store = any_facade.store if any_facade.backend == "memory" else raw_client(redis_url)
        store.set(data_key(store, prefix, "nested"), NESTED_JSON)

    def errors() -> float:
        return metric(
            registry,
            "redis_cache_errors_total",
            cache_name=prefix,
            operation="get",
            error_type="corrupt_value",
        )

    plant()

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, registry=registry) as cache:
            assert await cache.get("nested", model) is None
            assert await cache.get("nested", model) is None  # deleted: a plain miss now
            assert errors() == 1
            misses = metric(
                registry, "redis_cache_misses_total", cache_name=prefix, key_pattern="nested"
            )
            assert misses == 2
            dropped = cache_logs.messages(logging.WARNING).count("corrupt cache value dropped")
            assert dropped == 1
            plant()
            loaded = {"timezone": "UTC", "reminder_minutes": 1}
            value = await cache.get_or_set("nested", lambda: loaded, model=model)
            assert value == (loaded if model is None else Settings(**loaded))
            assert await cache.get("nested", model) == value
            assert errors() == 2

    run(scenario())


# -- Pub/Sub ----------------------------------------------------------------------------


def test_subscribers_get_every_message_with_its_origin(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with (
            any_facade.open(redis_url, prefix) as cache,
            any_facade.open(redis_url, prefix) as other,
        ):
            received: list[InvalidationMessage] = []
            failures: list[int] = []

            def callback(message: InvalidationMessage) -> None:
                if message.prefix != prefix:
                    return
                if not failures:
                    failures.append(1)
                    raise RuntimeError("a failing callback does not stop the subscription")
                received.append(message)

            stop = await cache.subscribe(callback)
            try:
                await cache.sleep(0.3)  # subscribed
                await cache.set("warmup:1", 1)  # consumed by the failing first call

                async def subscribed() -> bool:
                    return bool(failures)

                await eventually(subscribed)
                await cache.set("user:1", 1)
                await cache.set("user:2", 2)
                assert await cache.invalidate("user:*") == 2
                assert await cache.invalidate_group("assistant")
                assert await other.delete("user:9") is False

                async def all_arrived() -> bool:
                    return len(received) >= 5

                await eventually(all_arrived)
            finally:
                await stop()
            kinds = [(m.kind, m.pattern, m.group, m.count) for m in received]
            assert kinds == [
                ("key", "user:1", None, 1),
                ("key", "user:2", None, 1),
                ("pattern", "user:*", None, 2),
                ("group", None, "assistant", -1),
                ("key", "user:9", None, 0),
            ]
            origins = [m.origin for m in received]
            assert origins[:4] == [cache.cache.origin] * 4
            assert origins[4] == other.cache.origin != cache.cache.origin
            # Redis adds the group's new generation to a group message (a fresh group:
            # its random start).
            generations = [m.generation for m in received]
            assert generations[:3] == [None] * 3
            assert generations[4] is None
            assert isinstance(generations[3], int)
            assert 0 < generations[3] < 2**40

    run(scenario())


def test_async_callbacks_are_awaited(redis_url: str, prefix: str) -> None:
    import asyncio

    from commclient.cache import AsyncRedisCache

    async def scenario() -> None:
        cache = AsyncRedisCache.from_url(redis_url, prefix)
        received: list[str] = []

        async def callback(message: InvalidationMessage) -> None:
            await asyncio.sleep(0)
            if message.prefix == prefix:
                received.append(message.kind)

        task = asyncio.get_running_loop().create_task(cache.subscribe_invalidation(callback))
        await asyncio.sleep(0.3)
        await cache.invalidate_group("tool")

        async def arrived() -> bool:
            return received == ["group"]

        await eventually(arrived)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await cache.aclose()

    run(scenario())


test_async_callbacks_are_awaited = pytest.mark.facade_async(test_async_callbacks_are_awaited)


# -- metrics ----------------------------------------------------------------------------


def test_metrics(
    any_facade: Facade, redis_url: str, prefix: str, registry: CollectorRegistry
) -> None:
    config = CacheConfig(max_key_patterns=2, operation_timeout=2.0)

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix, config=config, registry=registry) as cache:
            await cache.set("assistant:1", 1)
            await cache.get("assistant:1")
            await cache.get("assistant:1")
            await cache.get("assistant:2")
            await cache.get("tool:1")
            await cache.get("user:1")  # a third group: over the bound
            await cache.get("global_settings")
            await cache.invalidate("assistant:*")
            await cache.invalidate_group("tool")

    run(scenario())
    labels = {"cache_name": prefix}
    assert metric(registry, "redis_cache_hits_total", key_pattern="assistant", **labels) == 2
    assert metric(registry, "redis_cache_misses_total", key_pattern="assistant", **labels) == 1
    assert metric(registry, "redis_cache_misses_total", key_pattern="tool", **labels) == 1
    assert metric(registry, "redis_cache_misses_total", key_pattern="other", **labels) == 2
    assert metric(registry, "redis_cache_misses_total", key_pattern="user", **labels) == 0
    assert (
        metric(registry, "redis_cache_operations_duration_seconds_count", operation="get", **labels)
        >= 5
    )
    assert (
        metric(
            registry, "redis_cache_invalidations_total", kind="pattern", direction="sent", **labels
        )
        == 1
    )
    assert (
        metric(
            registry, "redis_cache_invalidations_total", kind="group", direction="sent", **labels
        )
        == 1
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_value_of_another_model_is_logged_with_its_key_and_model_in_the_text(
    kind: str, prefix: str, registry: CollectorRegistry, cache_logs: Any
) -> None:
    """With logging's default format the message is all a reader sees: it names both."""

    async def scenario() -> None:
        async with Facade(kind, "memory").open(None, prefix, registry=registry) as cache:
            await cache.set("settings:global", {"id": 1, "name": "a", "tools": []})
            loaded = await cache.get_or_set(
                "settings:global",
                lambda: Settings(timezone="UTC", reminder_minutes=5),
                model=Settings,
            )
            assert loaded == Settings(timezone="UTC", reminder_minutes=5)
        warnings = [m for m in cache_logs.messages(logging.WARNING) if "does not fit" in m]
        assert warnings == [
            "cached value of 'settings:global' does not fit the model Settings; treated as a"
            " miss and kept"
        ]

    run(scenario())


@pytest.mark.parametrize("misses_dominate", [False, True], ids=["read-first", "lease-first"])
def test_a_loader_asking_for_its_own_key_fails_instead_of_waiting_for_ever(
    any_facade: Facade, redis_url: str, prefix: str, misses_dominate: bool
) -> None:
    """Single flight made a loader that asks for its own key wait for its own load: the
    call hung for ever (the async one until a timeout cut it)."""

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as harness:
            cache = harness.cache
            if misses_dominate:  # the first call reads with the lease (``lead``)
                cache._core.miss_rate = 1.0
            if harness.kind == "async":

                async def loader() -> Any:
                    return await cache.get_or_set("user:1", loader)

                with pytest.raises(RecursionError, match="'user:1' asked for that key again"):
                    await asyncio.wait_for(cache.get_or_set("user:1", loader), 10)
            else:

                def sync_loader() -> Any:
                    return cache.get_or_set("user:1", sync_loader)

                outcome: list[BaseException] = []

                def call() -> None:
                    try:
                        cache.get_or_set("user:1", sync_loader)
                    except BaseException as error:
                        outcome.append(error)

                caller = threading.Thread(target=call, daemon=True)  # a hang must not hang us
                caller.start()
                caller.join(10)
                assert not caller.is_alive()
                assert isinstance(outcome[0], RecursionError)
                assert "'user:1' asked for that key again" in str(outcome[0])
            assert await harness.get("user:1") is None  # nothing was stored

    run(scenario())

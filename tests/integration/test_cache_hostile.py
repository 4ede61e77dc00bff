"""The cache against a real redis-server from the hostile side: fork, a paused server,
another writer, other models, wrong-typed keys, nested prefixes, non-ASCII keys, slow
loaders. Each test here failed before the fix it guards."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pydantic
import pytest
import redis

from commclient.cache import CacheConfig, SyncRedisCache
from tests import conftest_cache
from tests.conftest_cache import Facade, Harness, data_key, eventually, run
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix
facade = conftest_cache.facade
own_redis_server = conftest_cache.own_redis_server

LOCAL = CacheConfig(
    local_tier_size=100, local_tier_ttl=60.0, operation_timeout=2.0, listener_ping_interval=0.2
)


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@asynccontextmanager
async def two_local_tiers(
    facade: Facade, url: str, prefix: str
) -> AsyncIterator[tuple[Harness, Harness]]:
    """Two caches of one prefix (as two processes would have), their local tiers serving."""
    async with (
        facade.open(url, prefix, config=LOCAL) as writer,
        facade.open(url, prefix, config=LOCAL) as reader,
    ):
        assert await writer.start()
        assert await reader.start()
        yield writer, reader


# -- 1. fork --------------------------------------------------------------------------------


def test_forked_child_never_serves_what_no_listener_can_invalidate(
    redis_url: str, prefix: str
) -> None:
    cache = SyncRedisCache.from_url(redis_url, prefix, config=LOCAL)
    try:
        assert cache.start()
        cache.set("settings:1", "v1")
        assert cache.get("settings:1") == "v1"  # now held in the local tier
        changed_read, changed_write = os.pipe()
        result_read, result_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.read(changed_read, 1)
                deadline = time.monotonic() + 5.0
                value = cache.get("settings:1")
                while value != "v2" and time.monotonic() < deadline:
                    time.sleep(0.01)
                    value = cache.get("settings:1")
                os.write(result_write, json.dumps(value).encode())
                code = 0
            finally:
                os._exit(code)
        cache.set("settings:1", "v2")  # another process writes after the fork
        os.write(changed_write, b"x")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert json.loads(os.read(result_read, 1024)) == "v2"
    finally:
        cache.close()


def test_forked_child_gets_its_own_origin(redis_url: str, prefix: str) -> None:
    # A child keeping the parent's origin id would ignore the parent's messages as its own.
    cache = SyncRedisCache.from_url(redis_url, prefix, config=LOCAL)
    try:
        parent_origin = cache.origin
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            os.write(write_end, cache.origin.encode())
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read_end, 1024).decode() != parent_origin
    finally:
        cache.close()


# -- 2. serve-stale with a local tier ---------------------------------------------------------


def test_refreshed_value_reaches_other_local_tiers(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with two_local_tiers(facade, redis_url, prefix) as (writer, reader):
            await writer.get_or_set("settings:1", lambda: "v1", ttl=0.5, stale_ttl=5)
            assert await reader.get("settings:1") == "v1"  # held locally by the reader
            await asyncio.sleep(0.7)  # v1 is stale now
            assert await writer.get_or_set("settings:1", lambda: "v2", ttl=0.5, stale_ttl=5) in (
                "v1",
                "v2",
            )

            async def reader_sees_v2() -> bool:
                return bool(await reader.get("settings:1") == "v2")

            await eventually(reader_sees_v2, timeout=3.0)

    run(scenario())


def test_stale_local_copy_is_refreshed_by_its_own_process(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with two_local_tiers(facade, redis_url, prefix) as (writer, reader):
            await writer.get_or_set("settings:1", lambda: "v1", ttl=0.5, stale_ttl=5)
            assert await reader.get("settings:1") == "v1"  # held locally by the reader
            await asyncio.sleep(0.7)
            loads: list[int] = []

            def loader() -> str:
                loads.append(1)
                return "v2"

            await reader.get_or_set("settings:1", loader, ttl=0.5, stale_ttl=5)
            assert loads == [1]  # past its ttl: refreshed, not served from the local tier
            assert await reader.get("settings:1") == "v2"

    run(scenario())


# -- 3. values handed out from the local tier ---------------------------------------------


class FrozenAssistant(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    name: str
    tools: list[str]


@dataclasses.dataclass(frozen=True)
class FrozenRecord:
    name: str
    tags: dict[str, str]


def test_a_callers_mutation_never_reaches_the_next_caller(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix, config=LOCAL) as cache:
            assert await cache.start()
            await cache.set("assistant:1", {"name": "a", "tools": ["search"]})
            await cache.set("record:1", {"name": "r", "tags": {"k": "v"}})
            first = await cache.get("assistant:1", FrozenAssistant)
            first.tools.append("rm -rf")
            record = await cache.get("record:1", FrozenRecord)
            record.tags["k"] = "changed"
            assert (await cache.get("assistant:1", FrozenAssistant)).tools == ["search"]
            assert (await cache.get("record:1", FrozenRecord)).tags == {"k": "v"}

    run(scenario())


# -- 4. a value of another model ---------------------------------------------------------------


class SettingsV1(pydantic.BaseModel):
    theme: str


class SettingsV2(pydantic.BaseModel):
    theme: str
    language: str


def test_a_value_of_another_model_is_a_miss_not_deleted(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix) as old, facade.open(redis_url, prefix) as new:
            await old.set("global_settings", SettingsV1(theme="dark"))
            assert await new.get("global_settings", SettingsV2) is None
            loaded = await new.get_or_set(
                "global_settings", lambda: {"theme": "x", "language": "en"}, model=SettingsV2
            )
            assert loaded == SettingsV2(theme="x", language="en")
            # What the old-model process wrote is still there for it.
            assert await old.get("global_settings", SettingsV1) == SettingsV1(theme="dark")

    run(scenario())


def test_invalid_json_is_still_dropped(facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix) as cache:
            stored_key = data_key(raw_client(redis_url), prefix, "broken")
            raw_client(redis_url).set(stored_key, b"{not json")
            assert await cache.get("broken") is None
            assert raw_client(redis_url).exists(stored_key) == 0

    run(scenario())


# -- 5. a client passed in keeps to the operation timeout ----------------------------------


def test_sync_cache_on_a_callers_client_is_bounded_by_the_operation_timeout(
    own_redis_server: RedisServer, prefix: str
) -> None:
    client = redis.Redis.from_url(own_redis_server.url)  # no socket timeout of its own
    cache = SyncRedisCache(client, prefix, config=CacheConfig(operation_timeout=0.2))
    cache.set("settings:1", "v1")
    results: list[Any] = []
    reader = threading.Thread(target=lambda: results.append(cache.get("settings:1")), daemon=True)
    own_redis_server.pause()
    try:
        reader.start()
        reader.join(timeout=3.0)
        assert not reader.is_alive(), "get() blocked on a paused Redis"
        assert results == [None]
    finally:
        own_redis_server.resume()
        reader.join(timeout=10)
        cache.close()
        client.close()


# -- 6. one wrong-typed key -----------------------------------------------------------------


def test_a_wrong_typed_key_stays_a_problem_of_that_key(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        config = CacheConfig(operation_timeout=2.0, breaker_failure_threshold=2)
        async with facade.open(redis_url, prefix, config=config) as cache:
            await cache.set("settings:ok", "fine")
            data_key = cache.cache._core.layout.data_key("settings:bad", "0")
            raw_client(redis_url).rpush(data_key, "a list, not a string")
            for _ in range(5):
                loaded = await cache.get_or_set("settings:bad", lambda: "loaded", stale_ttl=5)
                assert loaded == "loaded"
            assert await cache.get("settings:ok") == "fine"

    run(scenario())


# -- 7. non-ASCII keys and one-character globs --------------------------------------------------


def test_local_tiers_drop_what_redis_matched_byte_by_byte(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        async with two_local_tiers(facade, redis_url, prefix) as (writer, reader):
            await writer.set("u:é", 1)
            assert await reader.get("u:é") == 1
            assert await writer.invalidate("u:?") == 0  # "é" is two bytes: Redis keeps it
            assert await writer.get("u:é") == 1
            assert await writer.invalidate("u:??") == 1

            async def reader_dropped_it() -> bool:
                return await reader.get("u:é") is None

            await eventually(reader_dropped_it, timeout=3.0)
            assert await writer.get("u:é") is None

    run(scenario())


# -- 8. counts of logical keys ------------------------------------------------------------------


def test_invalidate_counts_logical_keys(facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with facade.open(redis_url, prefix) as cache:
            for key in ("a:1", "a:2", "a:3"):
                await cache.set(key, key)
            assert await cache.invalidate_group("a")
            for key in ("a:1", "a:2", "a:3"):
                await cache.set(key, key)
            assert await cache.invalidate("a:*") == 3

    run(scenario())


# -- 10. nested prefixes ------------------------------------------------------------------------


def test_nested_prefixes_do_not_see_each_other(facade: Facade, redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with (
            facade.open(redis_url, prefix) as outer,
            facade.open(redis_url, f"{prefix}:tenant") as inner,
        ):
            await inner.set("x:1", "inner")
            assert await outer.get("tenant:x:1") is None
            assert await outer.invalidate("*") == 0
            assert await inner.get("x:1") == "inner"

    run(scenario())


# -- 11. a loader slower than the lease ------------------------------------------------------


def test_a_loader_slower_than_the_lease_still_loads_once(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    config = CacheConfig(operation_timeout=2.0, lease_ttl=0.3, lease_wait=10.0)
    calls: list[int] = []
    lock = threading.Lock()

    def loader() -> str:
        with lock:
            calls.append(1)
        return "loaded"

    async def scenario() -> list[Any]:
        async with (
            facade.open(redis_url, prefix, config=config) as first,
            facade.open(redis_url, prefix, config=config) as second,
        ):

            async def call(cache: Any, delay: float) -> Any:
                await asyncio.sleep(delay)
                return await cache.get_or_set("global_settings", loader, delay=1.2)

            if facade.kind == "async":
                return list(await asyncio.gather(call(first, 0), call(second, 0.1)))
            results: list[Any] = []
            threads = [
                threading.Thread(target=lambda c=c, d=d: results.append(run(call(c, d))))
                for c, d in ((first, 0.0), (second, 0.1))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return results

    assert run(scenario()) == ["loaded", "loaded"]
    assert len(calls) == 1


def test_async_cache_serves_locally_again_on_a_new_event_loop(redis_url: str, prefix: str) -> None:
    from commclient.cache import AsyncRedisCache

    cache = AsyncRedisCache.from_url(redis_url, prefix, config=LOCAL)

    async def first_job() -> None:
        assert await cache.start()
        await cache.set("settings:1", "v1")

    async def second_job() -> bool:
        # The first loop is closed and its listener with it: a new one starts here.
        assert await cache.get("settings:1") == "v1"
        return await cache.start()

    asyncio.run(first_job())
    try:
        assert asyncio.run(second_job())
    finally:
        asyncio.run(cache.aclose())


def test_forked_child_of_an_async_cache_uses_its_own_connections(
    redis_url: str, prefix: str
) -> None:
    from commclient.cache import AsyncRedisCache

    cache = AsyncRedisCache.from_url(redis_url, prefix, config=LOCAL)

    async def before_fork() -> None:
        assert await cache.start()
        await cache.set("settings:1", "v1")
        assert await cache.get("settings:1") == "v1"

    async def in_child() -> Any:
        deadline = time.monotonic() + 5.0
        value = await cache.get("settings:1")
        while value != "v2" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            value = await cache.get("settings:1")
        return value

    asyncio.run(before_fork())
    changed_read, changed_write = os.pipe()
    result_read, result_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.read(changed_read, 1)
            os.write(result_write, json.dumps(asyncio.run(in_child())).encode())
            code = 0
        finally:
            os._exit(code)
    writer = SyncRedisCache.from_url(redis_url, prefix)
    writer.set("settings:1", "v2")
    writer.close()
    os.write(changed_write, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(os.read(result_read, 1024)) == "v2"
    asyncio.run(cache.aclose())

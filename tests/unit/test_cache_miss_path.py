"""The path of a ``get_or_set`` miss: two round trips once misses dominate (the read is the
read-or-lease script), a plain ``MGET`` for hits while hits dominate, no task (async) and
no wake-up of the renewer thread (sync) for a quick loader, and the read-through's
guarantees kept on that path: single flight, the lease, shared failures, cancellation.
Round trips are counted with a client that counts the commands it sends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from commclient.cache import CacheConfig, LoaderFailedError, _scripts
from commclient.cache._core import LEASE_FIRST_ABOVE, MISS_RATE_WEIGHT
from commclient.cache._keys import KeyLayout
from commclient.cache._renewer import lease_renewer
from tests import conftest_cache
from tests.conftest_cache import RELAXED, Facade, metric, run

pytestmark = pytest.mark.redis_server

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix
registry = conftest_cache.registry
facade = conftest_cache.facade
any_facade = conftest_cache.any_facade

# Misses in a row after which get_or_set reads with the lease (the running miss rate, from
# 0, passes LEASE_FIRST_ABOVE).
SWITCH = next(n for n in range(1, 100) if 1 - (1 - MISS_RATE_WEIGHT) ** n > LEASE_FIRST_ABOVE)


SCRIPTS = [
    text for name, text in vars(_scripts).items() if name.isupper() and isinstance(text, str)
]


class CountingRedis(redis.Redis):
    """A ``redis.Redis`` that records the name of every command it sends."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


class CountingAsyncRedis(redis.asyncio.Redis):
    """A ``redis.asyncio.Redis`` that records the name of every command it sends."""

    sent: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return await super().execute_command(*args, **options)


def counting_client(kind: str, url: str) -> Any:
    # Socket timeouts within the operation timeout: the sync cache uses this very client.
    timeout = RELAXED.operation_timeout
    cls: Any = CountingRedis if kind == "sync" else CountingAsyncRedis
    client = cls.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    client.sent = []
    return client


def load_scripts(url: str) -> None:
    """Every script in Redis's script cache: no call of the test loads one first."""
    client = redis.Redis.from_url(url)
    try:
        for text in SCRIPTS:
            client.script_load(text)
    finally:
        client.close()


async def close_client(client: Any) -> None:
    result = client.aclose() if isinstance(client, redis.asyncio.Redis) else client.close()
    if asyncio.iscoroutine(result):
        await result


def test_misses_take_two_round_trips_once_they_dominate_and_hits_stay_a_plain_mget(
    facade: Facade, redis_url: str, prefix: str, registry: CollectorRegistry
) -> None:
    client = counting_client(facade.kind, redis_url)
    load_scripts(redis_url)
    labels = {"cache_name": prefix, "key_pattern": "warm"}

    async def scenario() -> None:
        async with facade.open(None, prefix, client=client, registry=registry) as cache:
            await cache.set("warm:0", 0)  # the group's generation exists and is known
            per_miss = []
            for number in range(1, SWITCH + 4):
                client.sent.clear()
                assert await cache.get_or_set(f"warm:{number}", lambda n=number: n) == number
                per_miss.append(list(client.sent))
            read, lease, write = ["MGET", "EVALSHA", "EVALSHA"], ["EVALSHA"], ["EVALSHA"]
            # A plain read first, until the misses dominate; then the lease is the read.
            assert per_miss[:SWITCH] == [read] * SWITCH, per_miss
            assert per_miss[SWITCH:] == [lease + write] * 3, per_miss
            # A hit on that path is one round trip too, and counted as a hit.
            hits_before = metric(registry, "redis_cache_hits_total", **labels)
            client.sent.clear()
            assert await cache.get_or_set("warm:1", lambda: "not called") == 1
            assert client.sent == ["EVALSHA"]
            assert metric(registry, "redis_cache_hits_total", **labels) == hits_before + 1
            # Once hits dominate again, a hit is a plain MGET (no script).
            for _ in range(30):
                assert await cache.get_or_set("warm:1", lambda: "not called") == 1
            client.sent.clear()
            assert await cache.get_or_set("warm:1", lambda: "not called") == 1
            assert client.sent == ["MGET"]
        await close_client(client)
        misses = metric(registry, "redis_cache_misses_total", **labels)
        assert misses == SWITCH + 3  # every miss counted once, on either path

    run(scenario())


async def warm_up(cache: Any) -> None:
    """Misses enough for get_or_set to read with the lease from now on."""
    for number in range(SWITCH + 1):
        await cache.get_or_set(f"warm:{number}", lambda n=number: n)


def test_concurrent_misses_share_one_load_on_the_lease_path(
    any_facade: Facade, redis_url: str, prefix: str
) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def loader() -> dict[str, int]:
        with lock:
            calls.append(1)
        return {"value": 42}

    def failing() -> object:
        with lock:
            calls.append(1)
        raise LookupError("rest service said no")

    async def scenario() -> None:
        async with any_facade.open(redis_url, prefix) as cache:
            await warm_up(cache)
            results = await cache.many_get_or_set(30, "cold:key", loader, delay=0.2)
            assert results == [{"value": 42}] * 30
            assert len(calls) == 1
            # Each caller has its own copy.
            results[0]["value"] = 0
            assert results[1] == {"value": 42}
            calls.clear()
            failures = await cache.many_get_or_set(20, "cold:other", failing, delay=0.1)
            assert all(isinstance(failure, LookupError) for failure in failures), failures
            assert len(calls) == 1
            with pytest.raises(LoaderFailedError):
                await cache.get_or_set("cold:other", lambda: "ok")

    run(scenario())


def test_the_lease_path_waits_for_another_processs_load(
    facade: Facade, redis_url: str, prefix: str
) -> None:
    """Two caches (two processes' worth): the second reads with the lease, finds it taken,
    and is served the first one's value instead of loading. The first load ends only once
    the second has counted its miss (it found the lease taken)."""
    calls: list[str] = []
    second_registry = CollectorRegistry()
    labels = {"cache_name": prefix, "key_pattern": "shared"}

    def second_missed() -> bool:
        return metric(second_registry, "redis_cache_misses_total", **labels) >= 1

    def first_loader() -> str:
        calls.append("first")
        deadline = threading.Event()
        for _ in range(2000):
            if second_missed():
                break
            deadline.wait(0.005)
        return "loaded once"

    async def first_async_loader() -> str:
        calls.append("first")

        async def missed() -> bool:
            return second_missed()

        await conftest_cache.eventually(missed, timeout=10)
        return "loaded once"

    def never() -> str:
        calls.append("second")
        return "loaded twice"

    async def scenario() -> None:
        async with (
            facade.open(redis_url, prefix) as first,
            facade.open(redis_url, prefix, registry=second_registry) as second,
        ):
            await warm_up(second)
            loop = asyncio.get_running_loop()
            if facade.kind == "async":
                loading: Any = loop.create_task(
                    first.cache.get_or_set("shared:key", first_async_loader)
                )
            else:
                loading = loop.run_in_executor(
                    None, lambda: first.cache.get_or_set("shared:key", first_loader)
                )
            # The first cache holds the lease before the second asks.
            await conftest_cache.eventually(lambda: _exists(redis_url, prefix, "shared:key"))
            if facade.kind == "async":
                assert await second.get_or_set("shared:key", never) == "loaded once"
            else:
                reply = await loop.run_in_executor(
                    None, lambda: second.cache.get_or_set("shared:key", never)
                )
                assert reply == "loaded once"
            assert await loading == "loaded once"
            assert calls == ["first"]

    run(scenario())


async def _exists(url: str, prefix: str, key: str) -> bool:
    """Whether ``key``'s lease is held."""
    client = redis.Redis.from_url(url)
    try:
        return bool(client.exists(KeyLayout(prefix).lease_key(key)))
    finally:
        client.close()


@pytest.mark.facade_async
def test_an_uncontended_async_miss_creates_no_task(redis_url: str, prefix: str) -> None:
    from commclient.cache import AsyncRedisCache

    async def scenario() -> tuple[int, list[bool]]:
        loop = asyncio.get_running_loop()
        created: list[Any] = []

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            # Before Python 3.12, asyncio.wait_for wraps every bounded Redis call in a task
            # of its own: only the tasks the cache makes for itself count.
            code = getattr(coro, "cr_code", None)
            if code is not None and "commclient" in code.co_filename:
                created.append(coro)
            return asyncio.Task(coro, loop=loop, **kwargs)

        in_caller: list[bool] = []
        cache = AsyncRedisCache.from_url(redis_url, prefix, config=RELAXED)
        try:
            await cache.get_or_set("warm:0", lambda: 0)
            caller = asyncio.current_task()

            def loader() -> int:
                in_caller.append(asyncio.current_task() is caller)
                return 1

            loop.set_task_factory(factory)
            for number in range(2 * SWITCH):  # on both read paths
                assert await cache.get_or_set(f"miss:{number}", loader) == 1
            loop.set_task_factory(None)
        finally:
            await cache.aclose()
        return len(created), in_caller

    created, in_caller = run(scenario())
    assert created == 0
    assert in_caller == [True] * (2 * SWITCH)


@pytest.mark.facade_async
def test_a_cancelled_leader_leaves_its_followers_to_load(redis_url: str, prefix: str) -> None:
    """The caller running a load is cancelled: the lease is released, and the callers that
    waited for its load get a value (one of them loads it) rather than the cancellation."""
    from commclient.cache import AsyncRedisCache

    async def scenario() -> None:
        cache = AsyncRedisCache.from_url(redis_url, prefix, config=RELAXED)
        loading = asyncio.Event()
        calls: list[str] = []

        async def stuck() -> str:
            calls.append("leader")
            loading.set()
            await asyncio.Event().wait()
            return "never"

        async def quick() -> str:
            calls.append("follower")
            return "loaded"

        try:
            await warm_up(cache)
            leader = asyncio.get_running_loop().create_task(cache.get_or_set("k:1", stuck))
            await loading.wait()
            followers = [
                asyncio.get_running_loop().create_task(cache.get_or_set("k:1", quick))
                for _ in range(3)
            ]

            async def joined() -> bool:  # they read, missed and wait for the load in flight
                on_loop = (asyncio.get_running_loop(), ("k:1", None))
                flight = cache._flights._flights.get(on_loop)
                return flight is not None and len(flight.followers) == 3

            await conftest_cache.eventually(joined)
            leader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader
            assert await asyncio.gather(*followers) == ["loaded"] * 3
            assert calls == ["leader", "follower"]
            assert not await _exists(redis_url, prefix, "k:1")
        finally:
            await cache.aclose()

    run(scenario())


@pytest.mark.facade_async
def test_a_caller_cancelled_while_the_lease_is_granted_releases_it(
    redis_url: str, prefix: str
) -> None:
    """Redis granted the lease but the caller was cancelled before it heard so: the lease
    is released at once, not left for every other process to wait out."""
    from commclient.cache import AsyncRedisCache

    class Stalling(CountingAsyncRedis):
        granted: asyncio.Event
        stall = False

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            reply = await super().execute_command(*args, **options)
            if self.stall and isinstance(reply, bytes) and reply.endswith(b" L"):
                self.granted.set()
                await asyncio.Event().wait()  # the reply is never heard
            return reply

    async def scenario() -> None:
        client = Stalling.from_url(redis_url)
        client.sent = []
        client.granted = asyncio.Event()
        cache = AsyncRedisCache(client, prefix, config=CacheConfig(operation_timeout=5.0))
        try:
            await warm_up(cache)
            client.stall = True
            task = asyncio.get_running_loop().create_task(cache.get_or_set("warm:x", lambda: 1))
            await client.granted.wait()
            assert await _exists(redis_url, prefix, "warm:x")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.sent[-2:] == ["EVALSHA", "EVALSHA"]  # the lease, its release
            assert not await _exists(redis_url, prefix, "warm:x")
        finally:
            await cache.aclose()
            await client.aclose()

    run(scenario())


@pytest.mark.facade_sync
def test_quick_sync_misses_do_not_wake_the_renewer(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commclient.cache import SyncRedisCache

    cache: Any = SyncRedisCache.from_url(redis_url, prefix, config=RELAXED)
    try:
        cache.get_or_set("warm:0", lambda: 0)
        cache.get_or_set("warm:1", lambda: 1)  # the renewer is started and asleep
        condition = lease_renewer._condition
        wake_ups: list[int] = []
        notify = condition.notify

        def counted(n: int = 1) -> None:
            wake_ups.append(n)
            notify(n)

        monkeypatch.setattr(condition, "notify", counted)
        for number in range(2, 30):
            assert cache.get_or_set(f"warm:{number}", lambda n=number: n) == number
        assert wake_ups == []
    finally:
        cache.close()

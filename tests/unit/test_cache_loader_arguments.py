"""A loader or callback that is not a function is refused at the call, naming the mistake."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

from commclient.cache import create_async_cache, create_sync_cache


async def load_settings() -> dict[str, str]:
    return {"tz": "UTC"}


def load_settings_blocking() -> dict[str, str]:
    return {"tz": "UTC"}


def passing_a_call() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the coroutine is never awaited
        return load_settings()


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        (passing_a_call, r"get_or_set\(\) takes a function .*not an awaitable.*not a call"),
        (lambda: None, r"get_or_set\(\) takes a function; got NoneType None"),
        (lambda: {"tz": "UTC"}, r"get_or_set\(\) takes a function; got dict"),
    ],
    ids=["coroutine-object", "none", "value"],
)
def test_the_async_cache_refuses_a_loader_that_is_not_a_function(loader: Any, message: str) -> None:
    async def main() -> None:
        cache = create_async_cache(None, prefix="loader")
        refused = loader()
        try:
            with pytest.raises(TypeError, match=message):
                await cache.get_or_set("settings", refused, ttl=60)
            assert await cache.get_raw("settings") is None
            # A coroutine function and a blocking one both serve.
            assert await cache.get_or_set("a", load_settings, ttl=60) == {"tz": "UTC"}
            assert await cache.get_or_set("b", load_settings_blocking, ttl=60) == {"tz": "UTC"}
        finally:
            if asyncio.iscoroutine(refused):
                refused.close()
            await cache.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (passing_a_call, r"SyncMemoryCache.get_or_set\(\) takes a blocking function .*awaitable"),
        (lambda: None, r"get_or_set\(\) takes a blocking function; got NoneType"),
        (lambda: load_settings, r"'load_settings' is an async function: use the async cache"),
    ],
    ids=["coroutine-object", "none", "async-function"],
)
def test_the_sync_cache_refuses_a_loader_it_cannot_call(make: Any, message: str) -> None:
    cache = create_sync_cache(None, prefix="loader")
    loader = make()
    try:
        with pytest.raises(TypeError, match=message):
            cache.get_or_set("settings", loader, ttl=60)
        assert cache.get_raw("settings") is None
        assert cache.get_or_set("settings", load_settings_blocking, ttl=60) == {"tz": "UTC"}
    finally:
        cache.close()
        if asyncio.iscoroutine(loader):
            loader.close()


def test_subscribe_invalidation_refuses_a_call_before_listening() -> None:
    async def on_message(message: object) -> None:
        pass

    async def main() -> None:
        cache = create_async_cache(None, prefix="loader")
        call = on_message(None)
        try:
            # Refused at once: it would otherwise listen forever and fail on the first message.
            with pytest.raises(TypeError, match=r"subscribe_invalidation\(\) takes a function"):
                await asyncio.wait_for(cache.subscribe_invalidation(call), timeout=30)
        finally:
            call.close()
            await cache.aclose()

    asyncio.run(main())
    sync_cache = create_sync_cache(None, prefix="loader")
    try:
        with pytest.raises(TypeError, match="on_message' is an async function"):
            sync_cache.subscribe_invalidation(on_message)
    finally:
        sync_cache.close()

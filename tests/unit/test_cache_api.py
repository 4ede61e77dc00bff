"""The public surface of ``commclient.cache``: names, imports, factories."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import commclient.cache
from commclient.cache import (
    AsyncMemoryCache,
    AsyncRedisCache,
    RedisCache,
    SyncMemoryCache,
    SyncRedisCache,
    create_async_cache,
    create_sync_cache,
)


def test_all_is_sorted_and_complete() -> None:
    public = {
        name
        for name, value in vars(commclient.cache).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert commclient.cache.__all__ == sorted(commclient.cache.__all__)
    assert set(commclient.cache.__all__) == public


def test_redis_cache_is_the_async_cache() -> None:
    assert RedisCache is AsyncRedisCache


def test_importing_the_cache_imports_no_optional_dependency() -> None:
    code = (
        "import sys, commclient.cache, commclient.asgi; "
        "print(sorted(m for m in ('redis', 'pydantic', 'httpx', 'requests', 'starlette') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_factories_pick_memory_without_a_url() -> None:
    assert isinstance(create_async_cache(None), AsyncMemoryCache)
    assert isinstance(create_async_cache(""), AsyncMemoryCache)
    assert isinstance(create_sync_cache(None, "app"), SyncMemoryCache)


@pytest.mark.facade_async
def test_async_factory_builds_a_redis_cache_from_a_url() -> None:
    cache = create_async_cache("redis://127.0.0.1:1/0", "app")
    assert isinstance(cache, AsyncRedisCache)
    assert cache.prefix == "app"


@pytest.mark.facade_sync
def test_sync_factory_builds_a_redis_cache_from_a_url() -> None:
    cache = create_sync_cache("redis://127.0.0.1:1/0", "app")
    assert isinstance(cache, SyncRedisCache)
    cache.close()

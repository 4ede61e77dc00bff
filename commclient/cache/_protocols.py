"""What every cache offers, for code that takes "a cache" (Redis or in memory)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from ._config import CacheConfig
from ._memory import AsyncMemoryCache, SyncMemoryCache
from ._messages import InvalidationMessage


class AsyncCache(Protocol):
    """The API of :class:`AsyncRedisCache` and :class:`AsyncMemoryCache`."""

    @property
    def origin(self) -> str: ...

    async def get(self, key: str, model: Any = None) -> Any: ...

    async def get_raw(self, key: str) -> Any: ...

    async def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool: ...

    async def delete(self, key: str) -> bool: ...

    async def invalidate(self, pattern: str, *parts: object) -> int: ...

    async def invalidate_group(self, group: str) -> bool: ...

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float | timedelta = 0,
    ) -> Any: ...

    async def subscribe_invalidation(
        self, callback: Callable[[InvalidationMessage], object]
    ) -> None: ...

    async def aclose(self) -> None: ...


class SyncCache(Protocol):
    """The API of :class:`SyncRedisCache` and :class:`SyncMemoryCache`."""

    @property
    def origin(self) -> str: ...

    def get(self, key: str, model: Any = None) -> Any: ...

    def get_raw(self, key: str) -> Any: ...

    def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool: ...

    def delete(self, key: str) -> bool: ...

    def invalidate(self, pattern: str, *parts: object) -> int: ...

    def invalidate_group(self, group: str) -> bool: ...

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float | timedelta = 0,
    ) -> Any: ...

    def subscribe_invalidation(
        self,
        callback: Callable[[InvalidationMessage], object],
        *,
        stop: threading.Event | None = None,
    ) -> None: ...

    def close(self) -> None: ...


def create_async_cache(
    url: str | None,
    prefix: str = "cache",
    *,
    config: CacheConfig | None = None,
    name: str | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncCache:
    """An :class:`AsyncRedisCache` for a Redis URL, or an :class:`AsyncMemoryCache` for
    ``None`` or ``""`` (no Redis configured)."""
    if not url:
        return AsyncMemoryCache(prefix, config=config, name=name, registry=registry)
    from ._async import AsyncRedisCache

    return AsyncRedisCache.from_url(url, prefix, config=config, name=name, registry=registry)


def create_sync_cache(
    url: str | None,
    prefix: str = "cache",
    *,
    config: CacheConfig | None = None,
    name: str | None = None,
    registry: CollectorRegistry | None = None,
) -> SyncCache:
    """A :class:`SyncRedisCache` for a Redis URL, or a :class:`SyncMemoryCache` for
    ``None`` or ``""`` (no Redis configured)."""
    if not url:
        return SyncMemoryCache(prefix, config=config, name=name, registry=registry)
    from ._sync import SyncRedisCache

    return SyncRedisCache.from_url(url, prefix, config=config, name=name, registry=registry)

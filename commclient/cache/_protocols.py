"""The type of "a cache" (Redis or in memory), and factories that pick one from a URL.

There is one API per world: the memory caches are the Redis caches on another store, so
the names below are the Redis classes themselves, not a second declaration of the API.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ._async import AsyncRedisCache
from ._config import CacheConfig
from ._memory import AsyncMemoryCache, SyncMemoryCache
from ._sync import SyncRedisCache

AsyncCache = AsyncRedisCache
"""Any async cache: :class:`AsyncRedisCache`, or :class:`AsyncMemoryCache` (a subclass
running the same code on an in-process store)."""

SyncCache = SyncRedisCache
"""Any sync cache: :class:`SyncRedisCache`, or :class:`SyncMemoryCache`."""


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
    return SyncRedisCache.from_url(url, prefix, config=config, name=name, registry=registry)

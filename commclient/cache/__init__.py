"""A JSON configuration cache in Redis, sync and async, with an in-memory fallback.

``AsyncRedisCache`` (``redis.asyncio``; also exported as ``RedisCache``) and
``SyncRedisCache`` (``redis``) share one sans-I/O core for keys, serialization,
invalidation messages and metrics. ``AsyncMemoryCache`` / ``SyncMemoryCache`` offer the
same API without Redis; ``create_async_cache(url)`` / ``create_sync_cache(url)`` pick one
from a URL or ``None``. Importing this package imports neither redis nor pydantic.
"""

from ._async import AsyncRedisCache
from ._config import CacheConfig
from ._exceptions import (
    CacheClosedError,
    CacheError,
    CacheLoopError,
    CacheSerializationError,
    CacheUnavailableError,
    CacheValueTooLargeError,
    InvalidCacheKeyError,
    LoaderFailedError,
)
from ._keys import Glob, build_pattern, escape_glob, glob_matches, group_of
from ._memory import AsyncMemoryCache, MemoryStore, SyncMemoryCache
from ._messages import InvalidationMessage
from ._protocols import AsyncCache, SyncCache, create_async_cache, create_sync_cache
from ._sync import SyncRedisCache

RedisCache = AsyncRedisCache
"""The same class as :class:`AsyncRedisCache` (the name the plan uses)."""

__all__ = [
    "AsyncCache",
    "AsyncMemoryCache",
    "AsyncRedisCache",
    "CacheClosedError",
    "CacheConfig",
    "CacheError",
    "CacheLoopError",
    "CacheSerializationError",
    "CacheUnavailableError",
    "CacheValueTooLargeError",
    "Glob",
    "InvalidCacheKeyError",
    "InvalidationMessage",
    "LoaderFailedError",
    "MemoryStore",
    "RedisCache",
    "SyncCache",
    "SyncMemoryCache",
    "SyncRedisCache",
    "build_pattern",
    "create_async_cache",
    "create_sync_cache",
    "escape_glob",
    "glob_matches",
    "group_of",
]

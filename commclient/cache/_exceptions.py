"""Errors raised to callers of the cache.

Redis failures never reach the caller (they become misses); these are the caller's own
mistakes, raised at once so they are found in development::

    CacheError
    ├── InvalidCacheKeyError (also ValueError)   a key, group or pattern that cannot be stored
    ├── CacheSerializationError (also TypeError) a value that is not JSON-serialisable
    ├── CacheValueTooLargeError (also ValueError) a value above ``max_value_bytes``
    ├── CacheClosedError (also RuntimeError)     a cache used after ``close()``
    ├── CacheLoopError (also RuntimeError)       an async cache used from a second event
    │                                            loop while the first still runs
    ├── CacheUnavailableError                    only where asked for (``strict=True``):
    │                                            an invalidation Redis did not complete
    └── LoaderFailedError                        ``get_or_set``: the loader failed in
                                                 another process moments ago
"""

from __future__ import annotations


class CacheError(Exception):
    """Base class of the errors the cache raises to its caller."""


class InvalidCacheKeyError(CacheError, ValueError):
    """The key, group or pattern cannot be used."""


class CacheSerializationError(CacheError, TypeError):
    """The value cannot be stored as JSON (the cache never pickles)."""


class CacheValueTooLargeError(CacheError, ValueError):
    """The value's JSON is larger than the configured limit."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(
            f"value for cache key {key!r} is {size} bytes of JSON, above the limit of "
            f"{limit} bytes (CacheConfig.max_value_bytes)"
        )
        self.key = key
        self.size = size
        self.limit = limit


class CacheUnavailableError(CacheError):
    """Redis could not be reached to complete an invalidation (raised only when the
    caller asked to know, with ``strict=True``; otherwise a failure is a miss)."""


class LoaderFailedError(CacheError):
    """The load ``get_or_set`` waited for (or would have repeated) failed in another
    process less than ``CacheConfig.loader_failure_ttl`` ago; ``detail`` is its error."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"loading cache key {key!r} failed in another process: {detail}")
        self.key = key
        self.detail = detail


class CacheClosedError(CacheError, RuntimeError):
    """The cache was closed: it opens no connection again."""


class CacheLoopError(CacheError, RuntimeError):
    """The async cache was used from an event loop while the loop it is bound to still
    runs (``asyncio.run`` in two threads at once): its connections and deadlines belong
    to one running loop. Use a cache per loop, or the sync cache from threads."""

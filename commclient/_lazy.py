"""pybreaker without the redis import it makes at its own import.

pybreaker imports redis whenever redis is installed, for its ``CircuitRedisStorage``;
redis in turn imports its asyncio client, its command tables and, when installed,
OpenTelemetry: about half of the import time of a facade, paid by every cron job and
CLI at start whether it uses Redis or not. This library keeps shared breaker state in
Redis by its own means (``_breaker._RedisMirror``, imported when a Redis URL is set)
and never uses ``CircuitRedisStorage``, so pybreaker is imported with redis hidden from
the importing thread only, and its Redis support is restored the first time anyone
builds a ``CircuitRedisStorage``: code of the application that uses it sees no change.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any


class _HideRedis(importlib.abc.MetaPathFinder):
    """Makes ``import redis`` fail in one thread (other threads import it as usual)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if threading.get_ident() == self.thread and (
            fullname == "redis" or fullname.startswith("redis.")
        ):
            raise ModuleNotFoundError(f"{fullname} is imported when first needed", name=fullname)
        return


def import_pybreaker() -> ModuleType:
    """``import pybreaker``, without importing redis unless something imported it already."""
    module = sys.modules.get("pybreaker")
    if module is not None:
        return module
    if "redis" in sys.modules or importlib.util.find_spec("redis") is None:
        import pybreaker

        return pybreaker
    finder = _HideRedis()
    sys.meta_path.insert(0, finder)
    try:
        import pybreaker
    finally:
        sys.meta_path.remove(finder)
    if not pybreaker.HAS_REDIS_SUPPORT:
        _restore_redis_support_on_first_use(pybreaker)
    return pybreaker


def _restore_redis_support_on_first_use(pybreaker: Any) -> None:
    storage = pybreaker.CircuitRedisStorage
    original_init = storage.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        restore_redis_support(pybreaker)
        original_init(self, *args, **kwargs)

    __init__.__wrapped__ = original_init  # type: ignore[attr-defined]
    storage.__init__ = __init__


def restore_redis_support(pybreaker: Any) -> None:
    """Give pybreaker the redis names its import would have bound."""
    if pybreaker.HAS_REDIS_SUPPORT:
        return
    from redis import Redis
    from redis.client import Pipeline
    from redis.exceptions import RedisError

    pybreaker.Redis, pybreaker.Pipeline, pybreaker.RedisError = Redis, Pipeline, RedisError
    pybreaker.HAS_REDIS_SUPPORT = True

"""The in-memory backend: the caches' API with no Redis, for a single process.

It is the embedded default when no Redis URL is configured (the demo, tests, one-process
deployments). Values are stored as JSON bytes like in Redis, so a caller never shares a
mutable object with the cache and the same values are accepted or refused. Group
generations make ``invalidate_group`` O(1) here too, and invalidation messages reach
every subscriber of the same :class:`MemoryStore` in this process.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, overload

from prometheus_client import CollectorRegistry

from ._config import CacheConfig, ttl_seconds
from ._core import MISMATCH, CacheCore, CoreFacade, KeyPlan, Read
from ._exceptions import CacheValueTooLargeError
from ._io_async import Flights as TaskFlights
from ._io_sync import Flights as ThreadFlights
from ._keys import build_pattern, glob_matches, group_of, validate_pattern
from ._local import MISSING
from ._messages import InvalidationMessage

T = TypeVar("T")
InvalidationCallback = Callable[[InvalidationMessage], object]

DEFAULT_MAX_ENTRIES = 10_000


@dataclass
class _Stored:
    data: bytes
    expires_at: float
    stale_at: float
    generation: int


class MemoryStore:
    """Thread-safe storage shared by the memory caches of one process.

    Bounded to ``max_entries`` (least recently used first out); ``clock`` is injectable
    so that TTL behaviour can be tested without sleeping.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be > 0")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Stored] = OrderedDict()
        self._generations: dict[tuple[str, str], int] = {}
        self._subscribers: list[Callable[[bytes], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def read(self, prefix: str, key: str) -> tuple[bytes, bool] | None:
        """The stored JSON and whether it is still fresh, or ``None``."""
        with self._lock:
            entry = self._entries.get((prefix, key))
            if entry is None:
                return None
            now = self._clock()
            generation = self._generations.get((prefix, group_of(key)), 0)
            if entry.expires_at <= now or entry.generation != generation:
                del self._entries[(prefix, key)]
                return None
            self._entries.move_to_end((prefix, key))
            return entry.data, now < entry.stale_at

    def write(
        self,
        prefix: str,
        key: str,
        data: bytes,
        ttl: float,
        stale: float = 0.0,
        generation: int | None = None,
    ) -> bool:
        """Store ``data``; refused (``False``) if ``generation`` is no longer current."""
        with self._lock:
            current = self._generations.get((prefix, group_of(key)), 0)
            if generation is not None and generation != current:
                return False
            now = self._clock()
            self._entries[(prefix, key)] = _Stored(data, now + ttl + stale, now + ttl, current)
            self._entries.move_to_end((prefix, key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return True

    def generation(self, prefix: str, group: str) -> int:
        with self._lock:
            return self._generations.get((prefix, group), 0)

    def remove(self, prefix: str, key: str) -> bool:
        with self._lock:
            return self._entries.pop((prefix, key), None) is not None

    def remove_matching(self, prefix: str, pattern: str) -> int:
        with self._lock:
            doomed = [
                stored
                for stored in self._entries
                if stored[0] == prefix and glob_matches(pattern, stored[1])
            ]
            for stored in doomed:
                del self._entries[stored]
            return len(doomed)

    def bump(self, prefix: str, group: str) -> int:
        with self._lock:
            generation = self._generations.get((prefix, group), 0) + 1
            self._generations[(prefix, group)] = generation
            return generation

    def publish(self, data: bytes) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for deliver in subscribers:
            deliver(data)

    def subscribe(self, deliver: Callable[[bytes], None]) -> Callable[[], None]:
        """Register ``deliver``; return the function that unregisters it."""
        with self._lock:
            self._subscribers.append(deliver)

        def unsubscribe() -> None:
            with self._lock:
                if deliver in self._subscribers:
                    self._subscribers.remove(deliver)

        return unsubscribe


class _MemoryBase(CoreFacade):
    """What both memory caches share: the core for keys, JSON and metrics, and the store."""

    def __init__(
        self,
        prefix: str,
        store: MemoryStore | None,
        config: CacheConfig | None,
        name: str | None,
        registry: CollectorRegistry | None,
    ) -> None:
        self._core = CacheCore(prefix, config, name, registry)
        self._store = store if store is not None else MemoryStore()

    @property
    def local_tier_active(self) -> bool:
        """Always ``False``: the store is itself in process; there is no second tier."""
        return False

    @property
    def store(self) -> MemoryStore:
        return self._store

    def _lookup(self, plan: KeyPlan, model: Any) -> tuple[Any, bool]:
        """The value and whether it is fresh; ``(MISSING, False)`` on a miss."""
        core = self._core
        started = time.perf_counter()
        found = self._store.read(core.prefix, plan.key)
        core.metrics.observe("get", time.perf_counter() - started)
        read = Read("", None if found is None else found[0], -2)
        value = core.decode_read(plan, read, model, 0)
        if value is MISMATCH:
            # Another model's value (the store only holds valid JSON): a miss, kept.
            return MISSING, False
        return value, found is not None and found[1]

    def _set(self, key: str, value: object, ttl: float | timedelta) -> bool:
        core = self._core
        plan = core.plan(key)
        seconds = ttl_seconds(ttl)
        data = core.encode(key, value)
        self._store.write(core.prefix, plan.key, data, seconds)
        self._store.publish(core.key_message(plan, 1).encode())
        return True

    def _delete(self, key: str) -> bool:
        core = self._core
        plan = core.plan(key)
        removed = self._store.remove(core.prefix, plan.key)
        self._broadcast(core.key_message(plan, int(removed)))
        return removed

    def _invalidate(self, pattern: str, parts: tuple[object, ...]) -> int:
        core = self._core
        if parts:
            pattern = build_pattern(pattern, *parts)
        count = self._store.remove_matching(core.prefix, validate_pattern(pattern))
        self._broadcast(core.pattern_message(pattern, count))
        return count

    def _invalidate_group(self, group: str) -> bool:
        core = self._core
        message = core.group_message(group)
        self._store.bump(core.prefix, group)
        self._broadcast(message)
        return True

    def _broadcast(self, message: InvalidationMessage) -> None:
        self._store.publish(message.encode())
        self._core.sent(message)

    def _store_loaded(
        self, plan: KeyPlan, value: Any, ttl: float, stale: float, generation: int
    ) -> Any:
        """Store a loader's validated value (unless too large); return it."""
        core = self._core
        try:
            data = core.encode(plan.key, value)
        except CacheValueTooLargeError as error:
            core.oversized_load(plan, error)
            return value
        self._store.write(core.prefix, plan.key, data, ttl, stale, generation)
        return value


class AsyncMemoryCache(_MemoryBase):
    """:class:`AsyncRedisCache`'s API on a :class:`MemoryStore` (default: a new one)."""

    def __init__(
        self,
        prefix: str = "cache",
        *,
        store: MemoryStore | None = None,
        config: CacheConfig | None = None,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(prefix, store, config, name, registry)
        self._flights = TaskFlights()

    @overload
    async def get(self, key: str, model: None = None) -> Any: ...

    @overload
    async def get(self, key: str, model: type[T]) -> T | None: ...

    async def get(self, key: str, model: Any = None) -> Any:
        """The value at ``key`` validated as ``model`` (plain JSON without), or ``None``."""
        value, _ = self._lookup(self._core.plan(key), model)
        return None if value is MISSING else value

    async def get_raw(self, key: str) -> Any:
        """The decoded JSON at ``key`` without model validation, or ``None``."""
        return await self.get(key)

    async def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool:
        """Store ``value`` for ``ttl`` seconds; always ``True``."""
        return self._set(key, value, ttl)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; ``True`` if it existed."""
        return self._delete(key)

    async def invalidate(self, pattern: str, *parts: object) -> int:
        """Delete every key matching the glob ``pattern``; return how many, then broadcast."""
        return self._invalidate(pattern, parts)

    async def invalidate_group(self, group: str) -> bool:
        """Invalidate every key of ``group`` at once, then broadcast."""
        return self._invalidate_group(group)

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | timedelta = 300,
        model: None = None,
        *,
        stale_ttl: float | timedelta = 0,
    ) -> T: ...

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[object]],
        ttl: float | timedelta,
        model: type[T],
        *,
        stale_ttl: float | timedelta = 0,
    ) -> T: ...

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[object]],
        *,
        model: type[T],
        ttl: float | timedelta = 300,
        stale_ttl: float | timedelta = 0,
    ) -> T: ...

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float | timedelta = 0,
    ) -> Any:
        """The cached value, or ``loader()``'s result stored for ``ttl`` seconds.

        Concurrent misses share one ``loader`` call; its error reaches all of them.
        With ``stale_ttl``, a value past ``ttl`` is served while one caller refreshes it.
        """
        core = self._core
        plan = core.plan(key)
        seconds = ttl_seconds(ttl)
        stale = ttl_seconds(stale_ttl) if stale_ttl else 0.0
        flight_key = (key, model)
        busy = flight_key in self._flights
        value, fresh = self._lookup(plan, model)
        if value is not MISSING and (fresh or busy):
            return value
        generation = self._store.generation(core.prefix, plan.group)
        load = partial(self._load, plan, loader, model, seconds, stale, generation)
        if value is MISSING:
            return await self._flights.join(flight_key, 0, load)
        try:
            return await self._flights.join(flight_key, 0, load)
        except Exception as error:
            # The stale value is what this caller gets if the refresh fails.
            core.refresh_failed(plan, error)
            return value

    async def _load(
        self,
        plan: KeyPlan,
        loader: Callable[[], Awaitable[Any]],
        model: Any,
        ttl: float,
        stale: float,
        generation: int,
    ) -> Any:
        result = loader()
        if inspect.isawaitable(result):
            result = await result
        return self._store_loaded(plan, self._core.validate(result, model), ttl, stale, generation)

    async def subscribe_invalidation(self, callback: InvalidationCallback) -> None:
        """Hand every invalidation message of the store to ``callback`` until cancelled."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[bytes] = asyncio.Queue()

        def deliver(data: bytes) -> None:
            # The publisher may be a sync cache on another thread.
            loop.call_soon_threadsafe(inbox.put_nowait, data)

        unsubscribe = self._store.subscribe(deliver)
        try:
            while True:
                message = InvalidationMessage.decode(await inbox.get())
                if message is None:
                    continue
                try:
                    result = callback(message)
                    if inspect.isawaitable(result):
                        await result
                except Exception as error:
                    self._core.callback_failed(error)
        finally:
            unsubscribe()

    async def start(self, timeout: float = 5.0) -> bool:
        """Nothing to start; ``False`` (there is no local tier)."""
        return False

    async def aclose(self) -> None:
        """Nothing to release; present for API parity."""

    async def __aenter__(self) -> AsyncMemoryCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncMemoryCache(_MemoryBase):
    """:class:`SyncRedisCache`'s API on a :class:`MemoryStore` (default: a new one)."""

    def __init__(
        self,
        prefix: str = "cache",
        *,
        store: MemoryStore | None = None,
        config: CacheConfig | None = None,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(prefix, store, config, name, registry)
        self._flights = ThreadFlights()

    @overload
    def get(self, key: str, model: None = None) -> Any: ...

    @overload
    def get(self, key: str, model: type[T]) -> T | None: ...

    def get(self, key: str, model: Any = None) -> Any:
        """The value at ``key`` validated as ``model`` (plain JSON without), or ``None``."""
        value, _ = self._lookup(self._core.plan(key), model)
        return None if value is MISSING else value

    def get_raw(self, key: str) -> Any:
        """The decoded JSON at ``key`` without model validation, or ``None``."""
        return self.get(key)

    def set(self, key: str, value: object, ttl: float | timedelta = 300) -> bool:
        """Store ``value`` for ``ttl`` seconds; always ``True``."""
        return self._set(key, value, ttl)

    def delete(self, key: str) -> bool:
        """Delete ``key``; ``True`` if it existed."""
        return self._delete(key)

    def invalidate(self, pattern: str, *parts: object) -> int:
        """Delete every key matching the glob ``pattern``; return how many, then broadcast."""
        return self._invalidate(pattern, parts)

    def invalidate_group(self, group: str) -> bool:
        """Invalidate every key of ``group`` at once, then broadcast."""
        return self._invalidate_group(group)

    @overload
    def get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        ttl: float | timedelta = 300,
        model: None = None,
        *,
        stale_ttl: float | timedelta = 0,
    ) -> T: ...

    @overload
    def get_or_set(
        self,
        key: str,
        loader: Callable[[], object],
        ttl: float | timedelta,
        model: type[T],
        *,
        stale_ttl: float | timedelta = 0,
    ) -> T: ...

    @overload
    def get_or_set(
        self,
        key: str,
        loader: Callable[[], object],
        *,
        model: type[T],
        ttl: float | timedelta = 300,
        stale_ttl: float | timedelta = 0,
    ) -> T: ...

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | timedelta = 300,
        model: Any = None,
        *,
        stale_ttl: float | timedelta = 0,
    ) -> Any:
        """The cached value, or ``loader()``'s result stored for ``ttl`` seconds.

        Concurrent misses share one ``loader`` call; its error reaches all of them.
        With ``stale_ttl``, a value past ``ttl`` is served while one caller refreshes it.
        """
        core = self._core
        plan = core.plan(key)
        seconds = ttl_seconds(ttl)
        stale = ttl_seconds(stale_ttl) if stale_ttl else 0.0
        flight_key = (key, model)
        busy = flight_key in self._flights
        value, fresh = self._lookup(plan, model)
        if value is not MISSING and (fresh or busy):
            return value
        generation = self._store.generation(core.prefix, plan.group)
        load = partial(self._load, plan, loader, model, seconds, stale, generation)
        if value is MISSING:
            return self._flights.join(flight_key, 0, load)
        try:
            return self._flights.join(flight_key, 0, load)
        except Exception as error:
            # The stale value is what this caller gets if the refresh fails.
            core.refresh_failed(plan, error)
            return value

    def _load(
        self,
        plan: KeyPlan,
        loader: Callable[[], Any],
        model: Any,
        ttl: float,
        stale: float,
        generation: int,
    ) -> Any:
        value = self._core.validate(loader(), model)
        return self._store_loaded(plan, value, ttl, stale, generation)

    def subscribe_invalidation(
        self, callback: InvalidationCallback, *, stop: threading.Event | None = None
    ) -> None:
        """Hand every invalidation message of the store to ``callback`` until ``stop``."""
        stop = stop or threading.Event()
        inbox: queue.Queue[bytes] = queue.Queue()
        unsubscribe = self._store.subscribe(inbox.put)
        try:
            while not stop.is_set():
                try:
                    data = inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                message = InvalidationMessage.decode(data)
                if message is None:
                    continue
                try:
                    callback(message)
                except Exception as error:
                    self._core.callback_failed(error)
        finally:
            unsubscribe()

    def start(self, timeout: float = 5.0) -> bool:
        """Nothing to start; ``False`` (there is no local tier)."""
        return False

    def close(self) -> None:
        """Nothing to release; present for API parity."""

    def __enter__(self) -> SyncMemoryCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

"""The in-memory backend: the Redis caches' own code on an in-process store.

:class:`AsyncMemoryCache` and :class:`SyncMemoryCache` are the Redis caches driving a
:class:`MemoryStore` instead of a server: the store answers the few commands and the
scripts of :mod:`._scripts` the caches send, with Redis's semantics, in Python. So
``get_or_set``, serve-stale, single flight, leases, groups and invalidation messages are
one piece of code for both backends. It is the embedded default when no Redis URL is
configured (the demo, tests, one-process deployments). Values are JSON bytes as in
Redis, so a caller never shares a mutable object with the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from . import _scripts
from ._async import AsyncRedisCache
from ._config import CacheConfig
from ._keys import glob_matches
from ._sync import SyncRedisCache

DEFAULT_MAX_ENTRIES = 10_000

Value = bytes | str | int | float


def _bytes(value: Value) -> bytes:
    """An argument as Redis stores it."""
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else str(value).encode()


_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _empty_stores_after_fork() -> None:
    for store in list(_stores):
        store._start_empty()


os.register_at_fork(after_in_child=_empty_stores_after_fork)


class MemoryStore:
    """Thread-safe storage shared by the memory caches of one process (a forked child
    starts with it empty: see :meth:`_start_empty`).

    Bounded to ``max_entries`` values (least recently used first out; group counters
    are kept apart and never evicted, so that an old generation cannot come back);
    ``clock`` is injectable so that TTL behaviour can be tested without sleeping.
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
        self._start_empty()
        _stores.add(self)

    def _start_empty(self) -> None:
        """Empty, with a free lock: a new store, or the one a forked child inherited. The
        child must not serve the parent's values (the parent may change or delete them
        without the child ever hearing of it), nor wait on a lock that a thread of the
        parent held at the fork."""
        self.lock = threading.RLock()
        self._values: OrderedDict[bytes, tuple[bytes, float | None]] = OrderedDict()
        self._counters: dict[bytes, int] = {}
        self._subscribers: dict[bytes, list[queue.SimpleQueue[dict[str, Any]]]] = {}

    def __len__(self) -> int:
        return len(self._values)

    # Each method below is one Redis command; callers that need several at once (the
    # scripts) hold ``lock`` around them, as Redis runs a script atomically.

    def get(self, key: Value) -> bytes | None:
        """``GET``: the value, or ``None`` when absent or expired (a counter reads as text)."""
        name = _bytes(key)
        with self.lock:
            if name in self._counters:
                return str(self._counters[name]).encode()
            entry = self._values.get(name)
            if entry is None:
                return None
            if entry[1] is not None and entry[1] <= self._clock():
                del self._values[name]
                return None
            self._values.move_to_end(name)
            return entry[0]

    def set(self, key: Value, value: Value, px: Value | None = None, nx: bool = False) -> bool:
        """``SET [PX ms] [NX]``: store ``value``; ``False`` when ``nx`` and the key holds one."""
        name = _bytes(key)
        with self.lock:
            if nx and self.get(name) is not None:
                return False
            expires_at = None if px is None else self._clock() + int(px) / 1000
            self._values[name] = (_bytes(value), expires_at)
            self._values.move_to_end(name)
            while len(self._values) > self.max_entries:
                self._values.popitem(last=False)
            return True

    def pttl(self, key: Value) -> int:
        """``PTTL``: milliseconds left, ``-1`` without expiry, ``-2`` when absent."""
        name = _bytes(key)
        with self.lock:
            if self.get(name) is None:
                return -2
            expires_at = self._values[name][1] if name in self._values else None
            return -1 if expires_at is None else max(0, round((expires_at - self._clock()) * 1000))

    def pexpire(self, key: Value, px: Value) -> int:
        """``PEXPIRE``: set the expiry of a live key (1), or nothing (0)."""
        name = _bytes(key)
        with self.lock:
            value = self.get(name)
            return 0 if value is None else int(self.set(name, value, px=px))

    def delete(self, *keys: Value) -> int:
        """``DEL``: remove ``keys`` (values and counters); the number that were live."""
        with self.lock:
            removed = 0
            for key in keys:
                name = _bytes(key)
                live = self.get(name) is not None
                removed += live
                self._values.pop(name, None)
                self._counters.pop(name, None)
            return removed

    def incr(self, key: Value, start: Value) -> int:
        """``INCR``, except that a missing counter starts at ``start``."""
        name = _bytes(key)
        with self.lock:
            counter = self._counters.get(name)
            self._counters[name] = int(start) if counter is None else counter + 1
            return self._counters[name]

    def generation(self, key: Value, fresh: Value | None = None) -> bytes:
        """The counter at ``key`` ('' if none), created as ``fresh`` if given and missing."""
        with self.lock:
            current = self.get(key)
            if current is None and fresh is not None:
                self._counters[_bytes(key)] = int(fresh)
                current = _bytes(fresh)
            return current or b""

    def scan(self, match: str) -> list[bytes]:
        """``SCAN MATCH``: every name matching the glob, at once."""
        with self.lock:
            names = [*self._values, *self._counters]
            return [name for name in names if glob_matches(match, name.decode())]

    def publish(self, channel: Value, message: Value) -> int:
        """``PUBLISH``: hand ``message`` to every subscriber of ``channel``; their number."""
        with self.lock:
            inboxes = list(self._subscribers.get(_bytes(channel), ()))
        for inbox in inboxes:
            inbox.put({"type": "message", "channel": _bytes(channel), "data": _bytes(message)})
        return len(inboxes)

    def subscribe(self, channel: Value, inbox: queue.SimpleQueue[dict[str, Any]]) -> None:
        """``SUBSCRIBE``: deliver ``channel``'s messages into ``inbox`` (as redis-py's dicts)."""
        with self.lock:
            self._subscribers.setdefault(_bytes(channel), []).append(inbox)

    def unsubscribe(self, inbox: queue.SimpleQueue[dict[str, Any]]) -> None:
        """Stop delivering into ``inbox``, on every channel."""
        with self.lock:
            for inboxes in self._subscribers.values():
                if inbox in inboxes:
                    inboxes.remove(inbox)


# -- the scripts of ._scripts, in Python ------------------------------------------------


def _read(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> bytes:
    generation = store.generation(keys[0])
    if generation != _bytes(args[0]):
        return generation
    value = store.get(keys[1])
    if value is None:
        return generation
    return generation + b" " + str(store.pttl(keys[1])).encode() + b" " + value


def _write(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> int | bytes:
    data, px, wanted, kind, token, channel, message, fresh = map(_bytes, args)
    generation = store.generation(keys[0], fresh)
    if kind == b"2":
        if store.get(keys[1]) != token or store.get(keys[2]) is not None:
            return 0
    elif token:
        if store.get(keys[1]) != token:
            return 0
        store.delete(keys[1])
    elif kind == b"1":
        store.delete(keys[1])
    if wanted != generation:
        return generation if kind == b"1" else 0
    store.set(keys[2], data, px=px)
    if message:
        store.publish(channel, message)
    return 1


def _delete(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> int | bytes:
    generation = store.generation(keys[0])
    if generation != _bytes(args[0]):
        return generation
    store.delete(keys[1])
    deleted = store.delete(keys[2])
    message = {**json.loads(_bytes(args[2])), "count": deleted}
    store.publish(args[1], json.dumps(message, separators=(",", ":")))
    return deleted


def _unlink_and_publish(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> int:
    removed = store.delete(*keys)
    store.publish(args[0], args[1])
    return removed


def _bump_generation(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> int:
    generation = store.incr(keys[0], args[2])
    message = {**json.loads(_bytes(args[1])), "generation": generation}
    store.publish(args[0], json.dumps(message, separators=(",", ":")))
    return generation


def _release_lease(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> int:
    token, failure, px = args
    if store.get(keys[0]) != _bytes(token):
        return 0
    if not failure:
        return store.delete(keys[0])
    return int(store.set(keys[0], failure, px=px))


def _renew_lease(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> int:
    return store.pexpire(keys[0], args[1]) if store.get(keys[0]) == _bytes(args[0]) else 0


def _delete_if_equal(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> int:
    return store.delete(keys[0]) if store.get(keys[0]) == _bytes(args[0]) else 0


def _read_or_lease(store: MemoryStore, keys: Sequence[Value], args: Sequence[Value]) -> bytes:
    generation = store.generation(keys[0], args[3])
    if generation != _bytes(args[0]):
        return generation
    value = store.get(keys[2])
    if value is not None:
        return b"%s V %d %s" % (generation, store.pttl(keys[2]), value)
    if store.set(keys[1], args[1], px=args[2], nx=True):
        return generation + b" L"
    return generation + b" H " + (store.get(keys[1]) or b"")


ScriptBody = Callable[[MemoryStore, Sequence[Value], Sequence[Value]], Any]

SCRIPTS: dict[str, ScriptBody] = {
    _scripts.READ: _read,
    _scripts.WRITE: _write,
    _scripts.DELETE: _delete,
    _scripts.UNLINK_AND_PUBLISH: _unlink_and_publish,
    _scripts.BUMP_GENERATION: _bump_generation,
    _scripts.RELEASE_LEASE: _release_lease,
    _scripts.RENEW_LEASE: _renew_lease,
    _scripts.DELETE_IF_EQUAL: _delete_if_equal,
    _scripts.READ_OR_LEASE: _read_or_lease,
}


class _Script:
    """A registered script: called like redis-py's ``Script``, run atomically."""

    def __init__(self, store: MemoryStore, text: str) -> None:
        self._store = store
        self._body = SCRIPTS[text]
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, keys: Sequence[Value] = (), args: Sequence[Value] = ()) -> Any:
        with self._store.lock:
            return self._body(self._store, keys, args)


class _PubSub:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def subscribe(self, channel: Value) -> None:
        self._store.subscribe(channel, self._inbox)
        self._inbox.put({"type": "subscribe", "channel": _bytes(channel), "data": 1})

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        try:
            return self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return None

    def ping(self) -> None:
        self._inbox.put({"type": "pong", "channel": None, "data": b""})

    def close(self) -> None:
        self._store.unsubscribe(self._inbox)


class MemoryClient:
    """The subset of ``redis.Redis`` the caches use, answered by a :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._scripts: dict[str, _Script] = {}

    def register_script(self, text: str) -> _Script:
        script = _Script(self._store, text)
        self._scripts[script.sha] = script
        return script

    def execute_command(self, name: str, *args: Value) -> Any:
        if name == "MGET":
            return self.mget(args)
        if name == "EVALSHA":
            count = int(args[1])
            keys, rest = args[2 : 2 + count], args[2 + count :]
            return self._scripts[str(args[0])](keys, rest)
        raise NotImplementedError(f"the memory store does not run {name}")

    def mget(self, keys: Sequence[Value]) -> list[bytes | None]:
        with self._store.lock:
            return [self._store.get(key) for key in keys]

    def set(self, key: Value, value: Value, *, nx: bool = False, px: Value | None = None) -> bool:
        return self._store.set(key, value, px=px, nx=nx)

    def scan(self, cursor: int = 0, *, match: str = "*", count: int = 0) -> tuple[int, list[bytes]]:
        return 0, self._store.scan(match)

    def delete(self, *keys: Value) -> int:
        return self._store.delete(*keys)

    unlink = delete

    def publish(self, channel: Value, message: Value) -> int:
        return self._store.publish(channel, message)

    def pubsub(self) -> _PubSub:
        return _PubSub(self._store)


def _coroutine_function(function: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return call


class _AsyncPubSub:
    POLL_INTERVAL = 0.002

    def __init__(self, pubsub: _PubSub) -> None:
        self._pubsub = pubsub
        self.subscribe = _coroutine_function(pubsub.subscribe)
        self.ping = _coroutine_function(pubsub.ping)
        self.aclose = _coroutine_function(pubsub.close)

    async def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """Poll the inbox (a thread may publish): never block the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._pubsub.get_message()
            if message is not None or time.monotonic() >= deadline:
                return message
            await asyncio.sleep(self.POLL_INTERVAL)


class AsyncMemoryClient:
    """:class:`MemoryClient` with coroutine methods, as ``redis.asyncio.Redis`` has."""

    def __init__(self, store: MemoryStore) -> None:
        self._client = MemoryClient(store)

    def __getattr__(self, name: str) -> Any:
        return _coroutine_function(getattr(self._client, name))

    def register_script(self, text: str) -> Any:
        script = self._client.register_script(text)
        wrapper = _coroutine_function(script)
        wrapper.sha = script.sha  # type: ignore[attr-defined]
        return wrapper

    def pubsub(self) -> _AsyncPubSub:
        return _AsyncPubSub(self._client.pubsub())


class AsyncMemoryCache(AsyncRedisCache):
    """:class:`AsyncRedisCache` on a :class:`MemoryStore` (default: a new one), which any
    number of event loops may use at once."""

    _connections_bound_to_a_loop = False

    def __init__(
        self,
        prefix: str = "cache",
        *,
        store: MemoryStore | None = None,
        config: CacheConfig | None = None,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        client: Any = AsyncMemoryClient(self.store)
        super().__init__(client, prefix, config=config, name=name, registry=registry)


class SyncMemoryCache(SyncRedisCache):
    """:class:`SyncRedisCache` on a :class:`MemoryStore` (default: a new one)."""

    def __init__(
        self,
        prefix: str = "cache",
        *,
        store: MemoryStore | None = None,
        config: CacheConfig | None = None,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        client: Any = MemoryClient(self.store)
        super().__init__(client, prefix, config=config, name=name, registry=registry)

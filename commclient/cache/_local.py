"""The local tier: a size-bounded, TTL-capped LRU in front of Redis, kept honest by Pub/Sub.

Pub/Sub delivers at most once, so the tier is only *active* while its listener is
subscribed: a disconnect flushes and deactivates it, and the subscribe confirmation
that follows a reconnect activates it again (messages sent in between are lost, and
the flush is what makes losing them safe).

A read that went to Redis stores its result only if no invalidation was applied since
the read began (the ``epoch`` check): otherwise a value read just before an
invalidation could be stored just after it and outlive it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ._codec import Codec, is_immutable
from ._keys import group_of
from ._messages import InvalidationMessage

MISSING: Any = object()


class _Entry:
    __slots__ = ("data", "decoded", "expires_at", "model", "redis_expires_at")

    def __init__(
        self, data: bytes, expires_at: float, redis_expires_at: float, model: Any, decoded: Any
    ) -> None:
        self.data = data
        self.expires_at = expires_at
        self.redis_expires_at = redis_expires_at
        self.model = model
        self.decoded = decoded


class LocalTier:
    """An LRU of JSON bytes (plus a shared decoded object for immutable models)."""

    def __init__(
        self,
        max_entries: int,
        max_ttl: float,
        codec: Codec,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._codec = codec
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._active = False
        self.epoch = 0

    @property
    def active(self) -> bool:
        return self._active

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, model: Any, stale_seconds: float = 0.0) -> Any:
        """Return the value for ``key`` decoded as ``model``, or :data:`MISSING`.

        With ``stale_seconds``, also :data:`MISSING` when the value is in the last
        ``stale_seconds`` of its life in Redis (its serve-stale window).
        """
        if not self._active:
            return MISSING
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return MISSING
            now = self._clock()
            if entry.expires_at <= now:
                del self._entries[key]
                return MISSING
            if stale_seconds and entry.redis_expires_at - stale_seconds <= now:
                return MISSING
            self._entries.move_to_end(key)
        if entry.model is model and entry.decoded is not MISSING:
            return entry.decoded
        return self._codec.decode(entry.data, model)

    def put(self, key: str, data: bytes, ttl: float, model: Any, value: Any, epoch: int) -> None:
        """Store ``data`` (``ttl``: its remaining life in Redis) unless an invalidation was
        applied since ``epoch`` was read."""
        if ttl <= 0:
            return
        decoded = value if is_immutable(model) else MISSING
        now = self._clock()
        entry = _Entry(data, now + min(ttl, self.max_ttl), now + ttl, model, decoded)
        with self._lock:
            if not self._active or epoch != self.epoch:
                return
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop(self, message: InvalidationMessage) -> int:
        """Drop the entries ``message`` invalidates; return how many."""
        with self._lock:
            self.epoch += 1
            if message.kind == "group":
                doomed = [key for key in self._entries if group_of(key) == message.group]
            else:
                doomed = [key for key in self._entries if message.matches(key)]
            for key in doomed:
                del self._entries[key]
            return len(doomed)

    def activate(self) -> None:
        """Start serving, from empty: called when the listener has (re)subscribed."""
        with self._lock:
            self.epoch += 1
            self._entries.clear()
            self._active = True

    def deactivate(self) -> None:
        """Flush and stop serving: called when the listener lost its subscription."""
        with self._lock:
            self.epoch += 1
            self._entries.clear()
            self._active = False

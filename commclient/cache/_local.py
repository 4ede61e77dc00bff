"""The local tier: bounded in entries and bytes, TTL-capped, kept honest by Pub/Sub.

Pub/Sub delivers at most once, so the tier is only *active* while its listener is
subscribed: a disconnect flushes and deactivates it, and the subscribe confirmation
that follows a reconnect activates it again (messages sent in between are lost, and
the flush is what makes losing them safe).

A read that went to Redis stores its result only if no invalidation was applied since
the read began (the ``epoch`` check): otherwise a value read just before an
invalidation could be stored just after it and outlive it.

A hit takes no lock: it reads the dictionary (which only the lock's holders change) and
marks the entry used. Eviction is LRU's "second chance" approximation: the oldest
entry goes unless it was used since it was last looked at, then it moves to the end.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ._codec import (
    Codec,
    Copier,
    CorruptValueError,
    ModelMismatchError,
    copier,
    private_copy,
)
from ._keys import group_of
from ._messages import InvalidationMessage

MISSING: Any = object()

LISTENER_SILENCE = 0.25
"""How long the local tier serves after its listener last ran (it runs at least every
0.1 s, see ``poll_timeout``). A listener that stopped running (the event loop it is on
was stopped between ``run_until_complete`` calls, or blocked) may have invalidations
waiting in its socket: the tier must not serve until it has read them."""


class _Entry:
    __slots__ = ("copy", "data", "decoded", "expires_at", "model", "redis_expires_at", "used")

    def __init__(
        self,
        data: bytes,
        expires_at: float,
        redis_expires_at: float,
        model: Any,
        decoded: Any,
        copy: Copier | None,
    ) -> None:
        self.data = data
        self.expires_at = expires_at
        self.redis_expires_at = redis_expires_at
        self.model = model
        self.decoded = decoded  # this tier's own object: no caller ever holds it
        self.copy = copy
        self.used = False


class LocalTier:
    """Entries of JSON bytes and of a decoded object that no caller holds: a hit hands
    out that object when its model is immutable all the way down, else a copy of its
    mutable parts (see :func:`~commclient.cache._codec.copier`), else a fresh decode."""

    def __init__(
        self,
        max_entries: int,
        max_ttl: float,
        codec: Codec,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 0,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes or float("inf")
        self.bytes = 0  # of JSON held (the decoded objects come on top)
        self.max_ttl = max_ttl
        self._codec = codec
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.active = False  # serving: changed under the lock, read without it
        self.epoch = 0
        self.heard_until = float("inf")  # see heard(); a tier no listener drives: always

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, model: Any, stale_seconds: float = 0.0) -> Any:
        """Return the value for ``key`` decoded as ``model``, or :data:`MISSING`.

        With ``stale_seconds``, also :data:`MISSING` when the value is in the last
        ``stale_seconds`` of its life in Redis (its serve-stale window).
        """
        if not self.active:
            return MISSING
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        now = self._clock()
        if now >= self.heard_until:
            return MISSING
        if entry.expires_at <= now:
            with self._lock:
                if self._entries.get(key) is entry:
                    self._remove(key)
            return MISSING
        if stale_seconds and entry.redis_expires_at - stale_seconds <= now:
            return MISSING
        entry.used = True
        if entry.model is model and entry.copy is not None:
            return entry.copy(entry.decoded)
        return self._codec.decode(entry.data, model)

    def put(self, key: str, data: bytes, ttl: float, model: Any, value: Any, epoch: int) -> None:
        """Store ``data`` (``ttl``: its remaining life in Redis) unless an invalidation was
        applied since ``epoch`` was read. ``value``, what the caller gets, is kept only as
        a copy that no caller holds (or shared, when immutable)."""
        if ttl <= 0 or len(data) > self.max_bytes:
            return
        copy = copier(model)
        decoded = MISSING
        if copy is not None:
            try:
                decoded = private_copy(copy, value, model)
            except TypeError:
                # Not of the model's shape (a loader's subclass instance, say): keep what
                # the other processes read, or decode it per hit if even that fails.
                try:
                    decoded = self._codec.decode(data, model)
                except (CorruptValueError, ModelMismatchError):
                    copy = None
        now = self._clock()
        entry = _Entry(data, now + min(ttl, self.max_ttl), now + ttl, model, decoded, copy)
        with self._lock:
            if not self.active or epoch != self.epoch:
                return
            entries = self._entries
            if key in entries:
                self._remove(key)
            entries[key] = entry
            self.bytes += len(data)
            chances = len(entries)  # a bound, should hits keep marking entries meanwhile
            while len(entries) > self.max_entries or self.bytes > self.max_bytes:
                oldest, candidate = entries.popitem(last=False)
                if chances and (candidate.used or candidate is entry):
                    chances -= 1
                    candidate.used = False
                    entries[oldest] = candidate
                else:
                    self.bytes -= len(candidate.data)

    def _remove(self, key: str) -> None:
        """Remove ``key``'s entry (the lock held)."""
        self.bytes -= len(self._entries.pop(key).data)

    def drop(self, message: InvalidationMessage) -> int:
        """Drop the entries ``message`` invalidates; return how many."""
        with self._lock:
            self.epoch += 1
            if message.kind == "group":
                doomed = [key for key in self._entries if group_of(key) == message.group]
            else:
                doomed = [key for key in self._entries if message.matches(key)]
            for key in doomed:
                self._remove(key)
            return len(doomed)

    def heard(self) -> None:
        """The listener has just read what its socket held: serve for a while."""
        self.heard_until = self._clock() + LISTENER_SILENCE

    def activate(self) -> None:
        """Start serving, from empty: called when the listener has (re)subscribed."""
        with self._lock:
            self.epoch += 1
            self._entries.clear()
            self.bytes = 0
            self.active = True

    def deactivate(self) -> None:
        """Flush and stop serving: called when the listener lost its subscription."""
        with self._lock:
            self.epoch += 1
            self._entries.clear()
            self.bytes = 0
            self.active = False

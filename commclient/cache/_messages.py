"""Invalidation messages broadcast on the ``cache:invalidation`` channel."""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Literal

from ._keys import escape_glob, glob_matches, group_of

INVALIDATION_CHANNEL = "cache:invalidation"
MESSAGE_VERSION = 1

InvalidationKind = Literal["key", "pattern", "group"]
_KINDS: frozenset[str] = frozenset(("key", "pattern", "group"))


def new_origin_id() -> str:
    """A unique id for one cache instance: host, process and a random part.

    Each message carries its sender's origin id so that a process recognises its own
    messages exactly, without guessing from timing.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class InvalidationMessage:
    """One invalidation: what was dropped, how many keys, and who sent it.

    ``kind`` is ``"key"`` (one key deleted), ``"pattern"`` (a glob over logical keys) or
    ``"group"`` (a group's generation was bumped). ``pattern`` is the glob matching the
    dropped keys for ``key`` and ``pattern`` messages, and ``None`` for ``group``.
    ``generation`` is the group's new generation, added by Redis to a ``group`` message.
    """

    kind: InvalidationKind
    prefix: str
    count: int
    origin: str
    pattern: str | None = None
    group: str | None = None
    generation: int | None = None

    @classmethod
    def for_key(cls, prefix: str, key: str, count: int, origin: str) -> InvalidationMessage:
        """The message for one deleted ``key``."""
        return cls("key", prefix, count, origin, pattern=escape_glob(key))

    @classmethod
    def for_pattern(cls, prefix: str, pattern: str, count: int, origin: str) -> InvalidationMessage:
        """The message for the keys matching ``pattern``, ``count`` of which held a value."""
        return cls("pattern", prefix, count, origin, pattern=pattern)

    @classmethod
    def for_group(cls, prefix: str, group: str, origin: str) -> InvalidationMessage:
        """The message for a bumped ``group`` (its generation is added by Redis)."""
        return cls("group", prefix, -1, origin, group=group)

    def matches(self, key: str) -> bool:
        """Tell whether the logical ``key`` (of this message's prefix) was invalidated."""
        if self.kind == "group":
            return group_of(key) == self.group
        return self.pattern is not None and glob_matches(self.pattern, key)

    def encode(self) -> bytes:
        """The message as published: compact JSON."""
        body: dict[str, object] = {
            "v": MESSAGE_VERSION,
            "kind": self.kind,
            "prefix": self.prefix,
            "count": self.count,
            "origin": self.origin,
        }
        if self.pattern is not None:
            body["pattern"] = self.pattern
        if self.group is not None:
            body["group"] = self.group
        if self.generation is not None:
            body["generation"] = self.generation
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> InvalidationMessage | None:
        """Parse a message; ``None`` for anything that is not a valid message."""
        try:
            body = json.loads(data)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("v") != MESSAGE_VERSION:
            return None
        kind, prefix, count, origin = (body.get(n) for n in ("kind", "prefix", "count", "origin"))
        pattern, group, generation = body.get("pattern"), body.get("group"), body.get("generation")
        if (
            kind not in _KINDS
            or not isinstance(prefix, str)
            or not isinstance(count, int)
            or not isinstance(origin, str)
            or not isinstance(pattern, (str, type(None)))
            or not isinstance(group, (str, type(None)))
            or (kind == "group") != (group is not None)
            or (kind != "group") != (pattern is not None)
            or not (generation is None or (kind == "group" and type(generation) is int))
        ):
            return None
        return cls(kind, prefix, count, origin, pattern, group, generation)

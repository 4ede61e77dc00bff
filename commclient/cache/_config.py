"""CacheConfig: every tunable of the cache, frozen and validated, defaults documented."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import timedelta

from ._messages import INVALIDATION_CHANNEL


@dataclass(frozen=True)
class CacheConfig:
    """Settings shared by the sync and async caches. Durations are in seconds."""

    operation_timeout: float = 0.1
    """Upper bound of one Redis round trip; past it the operation is a miss."""

    max_value_bytes: int = 512 * 1024
    """Largest JSON value accepted by ``set``; larger values raise ``CacheValueTooLargeError``."""

    local_tier_size: int = 0
    """Entries in the in-process LRU in front of Redis; 0 (the default) disables it."""

    local_tier_max_bytes: int = 64 * 1024 * 1024
    """Bytes of JSON the local tier holds at most (its decoded objects come on top,
    typically a few times as much); a value larger than this is not held locally."""

    local_tier_ttl: float = 30.0
    """Cap on how long a local entry lives, whatever its Redis TTL (a safety net under Pub/Sub)."""

    breaker_failure_threshold: int = 3
    """Consecutive Redis failures after which the cache stops calling Redis for a while."""

    breaker_cooldown: float = 1.0
    """How long the cache skips Redis once the breaker opened; then one probe is let through."""

    lease_ttl: float = 5.0
    """Lifetime of the cross-process read-through lease (a crashed loader frees it after this)."""

    lease_wait: float = 30.0
    """Longest wait for another process's load before loading too. The loading process
    renews its lease while its loader runs, and a crashed one frees it after
    ``lease_ttl``, so this only bounds a loader that hangs."""

    loader_failure_ttl: float = 1.0
    """How long a loader's failure stands in for its value: the processes waiting for
    that load, and those asking in the meantime, fail at once with
    ``LoaderFailedError`` rather than each loading in turn (0: not shared)."""

    lease_poll_interval: float = 0.02
    """How often a waiting process looks for the value another process is loading."""

    max_key_patterns: int = 64
    """Distinct ``key_pattern`` metric labels per cache; further groups count as ``other``."""

    listener_ping_interval: float = 1.0
    """How often the invalidation listener pings Redis to notice a silently dead connection."""

    resubscribe_min_wait: float = 0.05
    """First pause before the listener resubscribes after a disconnect (doubles up to the max)."""

    resubscribe_max_wait: float = 2.0
    """Longest pause between resubscription attempts."""

    channel: str = INVALIDATION_CHANNEL
    """Pub/Sub channel carrying invalidation messages."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if is_number and (not math.isfinite(value) or value < 0):
                raise ValueError(f"CacheConfig.{field.name} must be finite and >= 0: {value}")
        for name in (
            "operation_timeout",
            "max_value_bytes",
            "local_tier_max_bytes",
            "local_tier_ttl",
            "breaker_failure_threshold",
            "lease_ttl",
            "lease_poll_interval",
            "max_key_patterns",
            "listener_ping_interval",
            "resubscribe_min_wait",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"CacheConfig.{name} must be > 0")
        if self.resubscribe_min_wait > self.resubscribe_max_wait:
            raise ValueError("CacheConfig.resubscribe_min_wait must be <= resubscribe_max_wait")
        if not self.channel:
            raise ValueError("CacheConfig.channel must not be empty")


MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
"""The longest TTL accepted (ten years), the same for every backend: far below what
Redis refuses (milliseconds overflowing a 64-bit integer), so a TTL valid in memory is
valid in Redis."""


def ttl_seconds(ttl: float | timedelta, name: str = "ttl") -> float:
    """Normalise a TTL given as seconds or ``timedelta``: positive, at most
    :data:`MAX_TTL_SECONDS`."""
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{name} must be seconds or a timedelta, not {type(ttl).__name__}")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TTL_SECONDS:
        raise ValueError(
            f"{name} must be positive and at most {MAX_TTL_SECONDS} s (ten years): {ttl!r}"
        )
    return float(seconds)


def ttl_milliseconds(ttl: float | timedelta) -> int:
    """The TTL in whole milliseconds for ``SET PX`` (at least 1)."""
    return max(1, round(ttl_seconds(ttl) * 1000))

"""Redis health: a small breaker and the once-per-outage log lines (no I/O, injectable clock).

Every failing call to a dead Redis would otherwise cost an operation timeout; after
``failure_threshold`` consecutive failures the cache skips Redis for ``cooldown`` seconds
(a skipped call costs a lock and a clock read), then lets exactly one probe through.
The probe's success closes the breaker; its failure reopens it. A probe that never
reports back (its task was cancelled) is given up after one more cooldown, so the
breaker cannot stay half-open forever.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("commclient.cache")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class RedisHealth:
    """Decide whether to call Redis, and log each outage once."""

    def __init__(
        self,
        cache_name: str,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_name = cache_name
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None
        self._outage_started_at: float | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def in_outage(self) -> bool:
        """True from the first failure after a success until the next success."""
        return self._outage_started_at is not None

    def allow(self) -> bool:
        """Tell whether this call may go to Redis."""
        if self._state is BreakerState.CLOSED:
            return True
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.OPEN:
                if now - self._opened_at < self.cooldown:
                    return False
                self._state = BreakerState.HALF_OPEN
                self._probe_started_at = now
                return True
            # Half-open: one probe at a time, and a probe that never reported back is
            # given up after a cooldown.
            if self._probe_started_at is not None and now - self._probe_started_at < (
                self.cooldown
            ):
                return False
            self._probe_started_at = now
            return True

    def record_success(self) -> None:
        if self._state is BreakerState.CLOSED and self._outage_started_at is None:
            # The hot path: one attribute write, no lock.
            self._consecutive_failures = 0
            return
        with self._lock:
            outage_started_at = self._outage_started_at
            self._state = BreakerState.CLOSED
            self._consecutive_failures = 0
            self._probe_started_at = None
            self._outage_started_at = None
        if outage_started_at is not None:
            logger.info(
                "redis cache recovered",
                extra={
                    "cache_name": self.cache_name,
                    "outage_seconds": round(self._clock() - outage_started_at, 3),
                },
            )

    def record_failure(self, operation: str, error: BaseException) -> None:
        with self._lock:
            now = self._clock()
            first_of_outage = self._outage_started_at is None
            if first_of_outage:
                self._outage_started_at = now
            self._consecutive_failures += 1
            if self._state is BreakerState.HALF_OPEN or (
                self._consecutive_failures >= self.failure_threshold
            ):
                self._state = BreakerState.OPEN
                self._opened_at = now
                self._probe_started_at = None
        if first_of_outage:
            logger.warning(
                "redis cache unavailable; serving misses until it recovers",
                extra={
                    "cache_name": self.cache_name,
                    "operation": operation,
                    "error_type": type(error).__name__,
                    "error": str(error)[:200],
                },
            )

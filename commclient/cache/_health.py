"""Redis health: the project's breaker (pybreaker underneath) and one log line per outage.

Every failing call to a dead Redis would otherwise cost an operation timeout; after
``failure_threshold`` consecutive failures the cache skips Redis for ``cooldown`` seconds
(a skipped call costs a state read), then lets exactly one probe through: its success
closes the breaker, its failure reopens it. State, counting and the one-probe rule are
:class:`commclient._breaker.Breaker`'s, driven through ``admit`` and ``record_*`` as the
HTTP clients drive it; this module only adds the cache's outage logging.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commclient._breaker import Admission

logger = logging.getLogger("commclient.cache")


class RedisHealth:
    """Decide whether to call Redis, and log each outage once."""

    def __init__(self, cache_name: str, failure_threshold: int, cooldown: float) -> None:
        # Imported here: pybreaker imports redis when it is installed, and importing the
        # cache package must stay free of optional dependencies.
        from commclient._breaker import Breaker

        self.cache_name = cache_name
        self.breaker = Breaker(
            f"cache:{cache_name}",
            fail_max=failure_threshold,
            reset_timeout=cooldown,
        )
        # Bound once: these run on every Redis call.
        self.admit_call = self.breaker.admit
        self.record_call_success = self.breaker.record_success
        self._lock = threading.Lock()
        self._outage_started_at: float | None = None

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return self.breaker.state

    @property
    def in_outage(self) -> bool:
        """True from the first failure after a success until the next success."""
        return self._outage_started_at is not None

    def admit(self) -> Admission | None:
        """The permit for a call to Redis, or ``None`` when it must be skipped."""
        admission = self.breaker.admit()
        return admission if admission.permitted else None

    def release(self, admission: Admission) -> None:
        """The call ended without a verdict (cancelled)."""
        self.breaker.release(admission)

    def record_success(self, admission: Admission) -> None:
        self.breaker.record_success(admission)
        if self._outage_started_at is not None:
            self.recovered()

    def recovered(self) -> None:
        """Log the end of an outage (once, whichever call noticed it first)."""
        with self._lock:
            outage_started_at, self._outage_started_at = self._outage_started_at, None
        if outage_started_at is not None:
            logger.info(
                "redis cache recovered",
                extra={
                    "cache_name": self.cache_name,
                    "outage_seconds": round(time.monotonic() - outage_started_at, 3),
                },
            )

    def record_failure(self, operation: str, error: BaseException, admission: Admission) -> None:
        self.breaker.record_failure(admission)
        with self._lock:
            first_of_outage = self._outage_started_at is None
            if first_of_outage:
                self._outage_started_at = time.monotonic()
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

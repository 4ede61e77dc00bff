"""Circuit breakers over pybreaker: one per (service, target), driven without its call().

pybreaker's ``call()`` holds an RLock for the whole guarded call (every caller is
serialised behind one slow request) and records a success for a coroutine it never
awaited. So the core asks :meth:`Breaker.admit` before a call and reports the
outcome afterwards; pybreaker keeps the state, its storage and its listeners.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

import pybreaker

from ._config import ClientConfig

if TYPE_CHECKING:
    from prometheus_client.metrics import Gauge

STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_OPEN: 1, pybreaker.STATE_HALF_OPEN: 2}


class Admission(NamedTuple):
    """The breaker's answer to a call: go ahead (maybe as the one probe), or wait."""

    permitted: bool
    probe: bool
    retry_after: float


ADMITTED = Admission(permitted=True, probe=False, retry_after=0.0)
PROBE = Admission(permitted=True, probe=True, retry_after=0.0)


class Breaker:
    """A pybreaker circuit plus the one-probe rule of the half-open state."""

    def __init__(
        self,
        name: str,
        fail_max: int,
        reset_timeout: float,
        storage: pybreaker.CircuitBreakerStorage,
    ) -> None:
        self._storage = storage
        self._gauges: weakref.WeakSet[Gauge] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._probe_in_flight = False
        self.circuit = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            state_storage=storage,
            name=name,
            listeners=[_GaugeListener(self._gauges)],
        )

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``; notices changes made by other processes."""
        return self.circuit.state.name

    def admit(self) -> Admission:
        state = self._storage.state
        if state == pybreaker.STATE_CLOSED:
            return ADMITTED
        if state == pybreaker.STATE_OPEN:
            opened_at = self._storage.opened_at
            if opened_at is not None:
                remaining = self.circuit.reset_timeout - (time.time() - opened_at.timestamp())
                if remaining > 0:
                    return Admission(permitted=False, probe=False, retry_after=remaining)
        # Open long enough, or already half-open: exactly one caller becomes the probe,
        # the others fail fast instead of piling onto a service that may still be down.
        with self._lock:
            if self._probe_in_flight:
                return Admission(
                    permitted=False, probe=False, retry_after=self.circuit.reset_timeout
                )
            self._probe_in_flight = True
        if state == pybreaker.STATE_OPEN:
            self.circuit.half_open()
        return PROBE

    def record_success(self, admission: Admission) -> None:
        if self._storage.counter:
            self._storage.reset_counter()
        if admission.probe:
            self.circuit.close()
            self.release(admission)

    def record_failure(self, admission: Admission) -> None:
        with self._lock:
            self._storage.increment_counter()
            trip = admission.probe or (
                self._storage.state == pybreaker.STATE_CLOSED
                and self._storage.counter >= self.circuit.fail_max
            )
        if trip:
            self.circuit.open()
        self.release(admission)

    def release(self, admission: Admission) -> None:
        """End a call without judging the target (cancelled, or already recorded)."""
        if admission.probe:
            with self._lock:
                self._probe_in_flight = False

    def attach_gauge(self, gauge: Gauge) -> None:
        """Keep ``gauge`` equal to the state from now on, on every transition."""
        self._gauges.add(gauge)
        gauge.set(STATE_VALUES[self.state])

    def force(self, state: str) -> None:
        """Move to ``open`` or ``closed`` at once (for operators and tests)."""
        if state == pybreaker.STATE_OPEN:
            self.circuit.open()
        elif state == pybreaker.STATE_CLOSED:
            self.circuit.close()
        else:
            raise ValueError(f"state must be 'open' or 'closed', got {state!r}")
        with self._lock:
            self._probe_in_flight = False


class _GaugeListener(pybreaker.CircuitBreakerListener):
    def __init__(self, gauges: weakref.WeakSet[Gauge]) -> None:
        self._gauges = gauges

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        value = STATE_VALUES[new_state.name]
        for gauge in list(self._gauges):
            gauge.set(value)


class Breakers:
    """The process's breakers, one per (service_name, target_service), sync and async alike.

    The first client of a pair fixes the breaker's settings; later clients share it.
    """

    def __init__(self) -> None:
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._lock = threading.Lock()

    def get(self, service_name: str, target_service: str, config: ClientConfig) -> Breaker:
        key = (service_name, target_service)
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = Breaker(
                    f"{service_name}->{target_service}",
                    config.circuit_breaker_fail_max,
                    config.circuit_breaker_reset_timeout,
                    _storage(key, config.circuit_breaker_redis_url),
                )
                self._breakers[key] = breaker
            return breaker

    def find(self, service_name: str, target_service: str) -> Breaker:
        try:
            return self._breakers[(service_name, target_service)]
        except KeyError:
            raise LookupError(
                f"no client has been created for {service_name!r} -> {target_service!r}"
            ) from None

    def clear(self) -> None:
        with self._lock:
            self._breakers.clear()


def _storage(key: tuple[str, str], redis_url: str | None) -> pybreaker.CircuitBreakerStorage:
    if redis_url is None:
        return pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    try:
        import redis
    except ImportError as exc:
        raise ImportError(
            "circuit_breaker_redis_url needs the redis client: pip install 'commclient[redis]'"
        ) from exc
    return pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED,
        redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5),
        namespace=f"commclient:{key[0]}:{key[1]}",
    )


breakers = Breakers()

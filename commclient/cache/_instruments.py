"""Cache metrics: the families of DESIGN.md §4 plus errors and invalidations.

Label children are cached per cache instance so that a hit costs one dictionary lookup
and an increment, not a ``.labels()`` call; the increments of the hit and miss counters
and of the duration buckets take no lock (:class:`_TickingValue`). ``key_pattern`` is
the key's group, capped at ``max_key_patterns`` distinct values (then ``other``) so that
a caller putting ids in the first key segment cannot blow up the series count.
"""

from __future__ import annotations

import itertools
import sys
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values

from commclient._metrics import metric_family
from commclient._tracing import cache_event, cache_result

OTHER_KEY_PATTERN = "other"

# What a lookup found, as its span says (``commclient.cache.result``): the hits and misses
# counted here, a hit told apart by where it came from, and a Redis hit past its ``ttl``
# (served while refreshed, with ``stale_ttl``) called stale.
HIT = "hit"
LOCAL_HIT = "local_hit"
MISS = "miss"
STALE = "stale"
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class _TickingValue(values.MutexValue):
    """A counter's value whose increments by one take no lock.

    A hit is ``next()`` on an :func:`itertools.count`, which is atomic under the GIL (no
    increment is lost between threads) and costs a tenth of a locked ``inc()``; a read
    (a scrape) takes the lock and folds the ticks since the last read into the value.
    """

    def __init__(self, counted: float) -> None:
        self._value = counted
        self._exemplar = None
        self._lock = threading.Lock()
        self._ticks = itertools.count()
        self._folded = 0
        self.tick = self._ticks.__next__

    def _fold(self) -> None:
        ticked = next(self._ticks)  # this read's own tick is not a hit
        self._value += ticked - self._folded
        self._folded = ticked + 1

    def get(self) -> float:
        with self._lock:
            self._fold()
            return float(self._value)

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            self._fold()
            self._value = value


_ticking_lock = threading.Lock()


def _incrementer(child: Any) -> Callable[[], object]:
    """The cheapest exact ``inc()`` of the Counter child ``child``.

    Lock-free where prometheus_client keeps the value in this process (not in its
    multiprocess mode's files) and the GIL makes ``next()`` atomic; ``child.inc``
    elsewhere.
    """
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    with _ticking_lock:  # caches of one name share a child: one of them installs it
        value = getattr(child, "_value", None)
        if type(value) is values.MutexValue and gil:
            value = _TickingValue(child._value.get())
            child._value = value
        if isinstance(value, _TickingValue):
            return value.tick
    inc: Callable[[], object] = child.inc
    return inc


def _observer(child: Any) -> Callable[[float], object]:
    """The cheapest exact ``observe()`` of the Histogram child ``child``: its buckets'
    counts tick as :func:`_incrementer`'s do (only the sum of the observed durations,
    a float, takes its lock), and the bucket is found by bisection; ``child.observe``
    where its values are not this process's own."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    with _ticking_lock:
        buckets = getattr(child, "_buckets", None)
        bounds = getattr(child, "_upper_bounds", None)
        if (
            gil
            and buckets
            and bounds is not None
            and len(buckets) == len(bounds)
            and all(type(v) is values.MutexValue or isinstance(v, _TickingValue) for v in buckets)
        ):
            for index, value in enumerate(buckets):
                if type(value) is values.MutexValue:
                    buckets[index] = _TickingValue(buckets[index].get())
            ticks = [value.tick for value in buckets]
            limits = list(bounds)  # the last is +Inf: every duration has a bucket
            add = child._sum.inc

            def observe(seconds: float) -> None:
                add(seconds)
                ticks[bisect_left(limits, seconds)]()

            return observe
    observe_: Callable[[float], object] = child.observe
    return observe_


class CacheMetrics:
    """The metric children of one cache, created on first use and then reused."""

    def __init__(
        self, registry: CollectorRegistry | None, cache_name: str, max_key_patterns: int
    ) -> None:
        self.cache_name = cache_name
        self._max_key_patterns = max_key_patterns
        self._hits_family = metric_family(
            registry,
            Counter,
            "redis_cache_hits_total",
            "Cache lookups answered from the cache (local tier or Redis).",
            ("cache_name", "key_pattern"),
        )
        self._misses_family = metric_family(
            registry,
            Counter,
            "redis_cache_misses_total",
            "Cache lookups not answered from the cache (absent, corrupt, or Redis unavailable).",
            ("cache_name", "key_pattern"),
        )
        self._duration_family = metric_family(
            registry,
            Histogram,
            "redis_cache_operations_duration_seconds",
            "Duration of cache operations that reach Redis.",
            ("cache_name", "operation"),
            buckets=DURATION_BUCKETS,
        )
        self._errors_family = metric_family(
            registry,
            Counter,
            "redis_cache_errors_total",
            "Redis failures the cache absorbed, and corrupt values it dropped.",
            ("cache_name", "operation", "error_type"),
        )
        self._invalidations_family = metric_family(
            registry,
            Counter,
            "redis_cache_invalidations_total",
            "Invalidations sent (key, pattern, group), received from other processes, and "
            "failed (Redis did not complete them).",
            ("cache_name", "kind", "direction"),
        )
        self._lock = threading.Lock()
        self._hits: dict[str, Any] = {}
        self._misses: dict[str, Any] = {}
        self._durations: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        self._invalidations: dict[tuple[str, str], Any] = {}

    def key_pattern(self, group: str) -> str:
        """The bounded label for ``group``."""
        if group in self._hits or len(self._hits) < self._max_key_patterns:
            return group
        return OTHER_KEY_PATTERN

    def _child(self, cache: dict[Any, Any], label: Any, make: Any) -> Any:
        child = cache.get(label)
        if child is None:
            with self._lock:
                child = cache.get(label)
                if child is None:
                    child = make()
                    cache[label] = child
        return child

    def _pattern_children(self, group: str) -> tuple[Any, Any]:
        label = self.key_pattern(group)
        hit = self._child(
            self._hits,
            label,
            lambda: _incrementer(self._hits_family.labels(self.cache_name, label)),
        )
        miss = self._child(
            self._misses,
            label,
            lambda: _incrementer(self._misses_family.labels(self.cache_name, label)),
        )
        return hit, miss

    def hit(self, group: str, result: str = HIT) -> None:
        tick = self._hits.get(group)
        if tick is None:
            tick = self._pattern_children(group)[0]
        tick()
        cache_result(result)

    def miss(self, group: str) -> None:
        tick = self._misses.get(group)
        if tick is None:
            tick = self._pattern_children(group)[1]
        tick()
        cache_result(MISS)

    def observe(self, operation: str, seconds: float) -> None:
        observe = self._durations.get(operation)
        if observe is None:
            observe = self._child(
                self._durations,
                operation,
                lambda: _observer(self._duration_family.labels(self.cache_name, operation)),
            )
        observe(seconds)

    def error(self, operation: str, error_type: str) -> None:
        label = (operation, error_type)
        child = self._errors.get(label)
        if child is None:
            child = self._child(
                self._errors,
                label,
                lambda: self._errors_family.labels(self.cache_name, operation, error_type),
            )
        child.inc()
        cache_event(
            "cache_error", {"commclient.cache.operation": operation, "error.type": error_type}
        )

    def invalidation(self, kind: str, direction: str) -> None:
        label = (kind, direction)
        child = self._invalidations.get(label)
        if child is None:
            child = self._child(
                self._invalidations,
                label,
                lambda: self._invalidations_family.labels(self.cache_name, kind, direction),
            )
        child.inc()

"""Metric families per registry, cached label children, endpoint normalisation."""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)

_families: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, object]] = (
    weakref.WeakKeyDictionary()
)
_families_lock = threading.Lock()


def metric_family(
    registry: CollectorRegistry | None,
    kind: type[MetricT],
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    **kwargs: object,
) -> MetricT:
    """Return the family ``name`` of ``registry``, creating it once per registry.

    Many clients share one registry; prometheus_client refuses to register a name
    twice, so the family is created by the first client and reused by the rest.
    """
    target = REGISTRY if registry is None else registry
    with _families_lock:
        families = _families.setdefault(target, {})
        family = families.get(name)
        if family is None:
            family = kind(name, documentation, labelnames, registry=target, **kwargs)  # type: ignore[arg-type]
            families[name] = family
    if not isinstance(family, kind):
        raise TypeError(f"metric {name!r} is already registered as {type(family).__name__}")
    return family

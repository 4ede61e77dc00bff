"""Metric families per registry, cached label children, endpoint normalisation."""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)

#: Label names of the client's families. None is a label that Prometheus (``job``,
#: ``instance``) or prometheus-operator (``service``, ``endpoint``, ``namespace``, ``pod``,
#: ``container``) sets on a scrape target: with the default ``honor_labels: false`` a clash
#: would rename the library's label ``exported_*`` and put the target's value in its place.
PAIR_LABELS = ("source_service", "target_service")
REQUEST_LABELS = (*PAIR_LABELS, "method", "route")

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


_ID_SEGMENT = re.compile(
    r"""^(?:
        \d+                                                         # numbers
      | [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}  # UUIDs
      | [0-9a-fA-F]{16,}                                            # long hex
      | (?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{20,}={0,2}              # base64-ish tokens
    )$""",
    re.VERBOSE,
)
OTHER_ENDPOINT = "other"
_PATH_CACHE_SIZE = 2048
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def normalize_path(path: str) -> str:
    """Replace ids in a path by ``{id}`` so that the endpoint label stays bounded."""
    path = path.split("?", 1)[0]
    return "/".join("{id}" if _ID_SEGMENT.match(s) else s for s in path.split("/"))


class ClientMetrics:
    """The four HTTP families of one client, with label children cached per call shape.

    ``.labels()`` hashes and locks on every call; a dict lookup keyed by the label
    tuple is several times cheaper on the hot path.
    """

    def __init__(
        self, registry: CollectorRegistry | None, service: str, target: str, max_endpoints: int
    ) -> None:
        self.service = service
        self.target = target
        self.max_endpoints = max_endpoints
        self._requests = metric_family(
            registry,
            Counter,
            "http_client_requests_total",
            "Requests sent to another service, by outcome.",
            (*REQUEST_LABELS, "status"),
        )
        self._duration = metric_family(
            registry,
            Histogram,
            "http_client_request_duration_seconds",
            "Duration of one attempt, from sending to the decoded response or the error.",
            REQUEST_LABELS,
            buckets=DURATION_BUCKETS,
        )
        self._retries = metric_family(
            registry,
            Counter,
            "http_client_retries_total",
            "Attempts repeated after a failure, by the failure that caused them.",
            (*REQUEST_LABELS, "error_type"),
        )
        self.breaker_state = metric_family(
            registry,
            Gauge,
            "http_client_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open (max is the worst).",
            PAIR_LABELS,
            # Multiprocess mode: the worst state of the live workers; an exited worker's
            # state goes with it (mark_process_dead).
            multiprocess_mode="livemax",
        ).labels(service, target)
        self.retry_budget_tokens = metric_family(
            registry,
            Gauge,
            "http_client_retry_budget_tokens",
            "Retry tokens left in the per-target retry budget.",
            ("target_service",),
            # Each worker has its own budget: the lowest live one is the first to refuse.
            multiprocess_mode="livemin",
        ).labels(target)
        self._endpoints: set[str] = set()
        self._paths: dict[str, str] = {}
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._duration_children: dict[tuple[str, str], Histogram] = {}
        self._retry_children: dict[tuple[str, str, str], Counter] = {}

    def endpoint(self, path: str, *, template: bool) -> str:
        """The ``route`` label: the template as given, else the normalised path."""
        if template:
            return self._bounded(path)
        endpoint = self._paths.get(path)
        if endpoint is None:
            if len(self._paths) >= _PATH_CACHE_SIZE:
                self._paths.clear()
            endpoint = self._paths[path] = self._bounded(normalize_path(path))
        return endpoint

    def _bounded(self, endpoint: str) -> str:
        if endpoint in self._endpoints:
            return endpoint
        if len(self._endpoints) >= self.max_endpoints:
            return OTHER_ENDPOINT
        self._endpoints.add(endpoint)
        return endpoint

    def observe(self, method: str, endpoint: str, status: str, seconds: float | None) -> None:
        """Count one attempt (or one breaker rejection, which has no duration)."""
        key = (method, endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(
                self.service, self.target, method, endpoint, status
            )
        counter.inc()
        if seconds is not None:
            histogram = self._duration_children.get((method, endpoint))
            if histogram is None:
                histogram = self._duration_children[(method, endpoint)] = self._duration.labels(
                    self.service, self.target, method, endpoint
                )
            histogram.observe(seconds)

    def retried(self, method: str, endpoint: str, error_type: str) -> None:
        key = (method, endpoint, error_type)
        counter = self._retry_children.get(key)
        if counter is None:
            counter = self._retry_children[key] = self._retries.labels(
                self.service, self.target, method, endpoint, error_type
            )
        counter.inc()

"""Metric families per registry, cached label children, endpoint normalisation."""

from __future__ import annotations

import atexit
import os
import re
import threading
import weakref
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar
from urllib.parse import unquote

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import mark_process_dead

MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)

#: Label names of the client's families. None is a label that Prometheus (``job``,
#: ``instance``) or prometheus-operator (``service``, ``endpoint``, ``namespace``, ``pod``,
#: ``container``) sets on a scrape target: with the default ``honor_labels: false`` a clash
#: would rename the library's label ``exported_*`` and put the target's value in its place.
PAIR_LABELS = ("source_service", "target_service")
REQUEST_LABELS = (*PAIR_LABELS, "method", "route")

#: Set (before the service starts) for prometheus_client's multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _forget_live_gauges_at_exit() -> None:
    """In multiprocess mode, remove this process's ``live*`` gauge files as it exits.

    gunicorn calls ``mark_process_dead`` from ``child_exit`` (README); uvicorn
    ``--workers`` and other process managers have no such hook, and an exited worker's
    open breaker would be read as live for ever. Inherited by forked children, where it
    runs with the child's pid.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory and os.path.isdir(directory):
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


atexit.register(_forget_live_gauges_at_exit)

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


# The rules of the ``route`` label for a path given without a template, one segment at a
# time (README, "Route labels"). Each replaces a shape that names one thing among many, so
# that the label stays bounded and carries no personal data.
_ID_SEGMENT = re.compile(
    r"""^(?:
        \+?\d+                                       # numbers, phone numbers
      | [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}  # UUIDs
      | (?=[a-fA-F]*\d)[0-9a-fA-F]{7,}               # hex with a digit: git SHAs, 8-hex ids
      | [0-9a-fA-F]{16,}                              # long hex
      | [a-z][a-z0-9]{0,9}_(?=\D*\d|(?=[^A-Z]*[A-Z])[^a-z]*[a-z])[A-Za-z0-9]{8,}
                                                      # prefixed ids: cus_NffrFeUfNV2Hib
                                                      # (a digit or both cases; each
                                                      # look-ahead linear, no \w*...\w*)
      | [A-Za-z]+(?:[-_]\d+)+                         # business numbers: ORD-2024-00012
      | \+?\d+(?:[-_.:]\d+)+                          # dates, times, phone numbers
      | eyJ[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*){1,4}    # JSON Web Tokens
      | (?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{20,}={0,2}  # base64-ish tokens
    )$""",
    re.VERBOSE,
)
#: What a route word is made of; anything else (spaces, commas, ``;`` parameters, letters
#: outside ASCII, a stray ``%``) is text a URL would percent-encode, such as a name.
_ROUTE_WORD = re.compile(r"[A-Za-z0-9._~:+\-]*")
#: ... and is at most this long: a longer segment is a query or a slug, and as a label
#: would make every scrape carry it (a 300,000-character search, once per distinct one).
_MAX_ROUTE_WORD = 48
ID_PLACEHOLDER = "{id}"
EMAIL_PLACEHOLDER = "{email}"
#: A segment of free text (a name, a search), percent-encoded or not: never a label.
VALUE_PLACEHOLDER = "{value}"
OTHER_ENDPOINT = "other"
_PATH_CACHE_SIZE = 2048
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _segment(segment: str) -> str:
    if "%" in segment:
        decoded = unquote(segment)
        if decoded != segment:
            placeholder = _segment(decoded)
            return placeholder if placeholder != decoded else VALUE_PLACEHOLDER
    if "@" in segment:
        return EMAIL_PLACEHOLDER
    if _ID_SEGMENT.match(segment):
        return ID_PLACEHOLDER
    if len(segment) > _MAX_ROUTE_WORD or not _ROUTE_WORD.fullmatch(segment):
        return VALUE_PLACEHOLDER
    return segment


def normalize_path(path: str) -> str:
    """The ``route`` label of a path called without a template.

    Each segment that is an id (numbers, UUIDs, hex such as git SHAs, prefixed ids such as
    ``cus_NffrFeUfNV2Hib``, business numbers such as ``ORD-2024-00012``, long tokens)
    becomes ``{id}``; an email ``{email}``; any other text that is percent-encoded, that
    has characters a route word has not (spaces, commas, ``;``, letters outside ASCII) or
    that is longer than 48 characters ``{value}``.
    """
    path = path.split("?", 1)[0]
    return "/".join(_segment(s) for s in path.split("/"))


class _RouteCap:
    """The routes of one (registry, source, target) pair, shared by all its clients."""

    def __init__(self) -> None:
        self.routes: set[str] = set()
        self.lock = threading.Lock()


_route_caps: weakref.WeakKeyDictionary[CollectorRegistry, dict[tuple[str, str], _RouteCap]] = (
    weakref.WeakKeyDictionary()
)


def _route_cap(registry: CollectorRegistry | None, source: str, target: str) -> _RouteCap:
    key = REGISTRY if registry is None else registry
    with _families_lock:
        caps = _route_caps.setdefault(key, {})
        cap = caps.get((source, target))
        if cap is None:
            cap = caps[(source, target)] = _RouteCap()
    return cap


#: Failures counted at 0 for every (method, route) when it is first seen, besides the
#: statuses the client retries: ``increase()`` sees no increase on a series that appears
#: with its first value, so a first burst of failures would read 0 in every rate, ratio
#: and alert.
ZERO_FAILURES = ("timeout", "connect_error")
#: ... and calls refused by an open breaker, which are not retried.
ZERO_REQUEST_FAILURES = (*ZERO_FAILURES, "circuit_open")


class ClientMetrics:
    """The four HTTP families of one client, with label children cached per call shape.

    ``.labels()`` hashes and locks on every call; a dict lookup keyed by the label
    tuple is several times cheaper on the hot path. ``retry_statuses`` (the client's
    ``retry_on_status``) are created at 0 with the failures above for each new (method,
    route); ``normalize_route`` replaces :func:`normalize_path` for paths called without
    a template.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None,
        service: str,
        target: str,
        max_endpoints: int,
        *,
        retry_statuses: Collection[int] = (),
        normalize_route: Callable[[str], str] | None = None,
    ) -> None:
        self.service = service
        self.target = target
        self.max_endpoints = max_endpoints
        statuses = tuple(str(status) for status in sorted(retry_statuses))
        self._zero_statuses = (*statuses, *ZERO_REQUEST_FAILURES)
        self._zero_error_types = (*statuses, *ZERO_FAILURES)
        self._normalize = normalize_path if normalize_route is None else normalize_route
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
        self._routes = _route_cap(registry, service, target)
        self._declared: set[tuple[str, str]] = set()
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
            route = self._normalize(path)
            if not isinstance(route, str):
                raise TypeError(
                    f"normalize_route must return a str, got {type(route).__name__} for {path!r}"
                )
            endpoint = self._paths[path] = self._bounded(route)
        return endpoint

    def _bounded(self, endpoint: str) -> str:
        """``endpoint``, or ``other`` once the pair has ``max_endpoints`` routes.

        The routes are counted per (registry, source, target), whichever client of the
        pair saw them: short-lived clients do not each bring ``max_endpoints`` more.
        """
        routes = self._routes
        if endpoint in routes.routes:
            return endpoint
        with routes.lock:
            if endpoint in routes.routes:
                return endpoint
            if len(routes.routes) >= self.max_endpoints:
                return OTHER_ENDPOINT
            routes.routes.add(endpoint)
        return endpoint

    def _declare(self, method: str, endpoint: str) -> None:
        """Create the failure series of a new (method, route) at 0 (see ZERO_FAILURES)."""
        if (method, endpoint) in self._declared:
            return
        self._declared.add((method, endpoint))
        for status in self._zero_statuses:
            if (method, endpoint, status) not in self._request_children:
                self._request_children[(method, endpoint, status)] = self._requests.labels(
                    self.service, self.target, method, endpoint, status
                )
        for error_type in self._zero_error_types:
            if (method, endpoint, error_type) not in self._retry_children:
                self._retry_children[(method, endpoint, error_type)] = self._retries.labels(
                    self.service, self.target, method, endpoint, error_type
                )

    def observe(
        self,
        method: str,
        endpoint: str,
        status: str,
        seconds: float | None,
        exemplar: dict[str, str] | None = None,
    ) -> None:
        """Count one attempt (or one breaker rejection, which has no duration).

        ``exemplar``: labels (the trace id) kept with the duration's bucket, shown by
        Prometheus when it scrapes the OpenMetrics format.
        """
        key = (method, endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            self._declare(method, endpoint)
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
            histogram.observe(seconds, exemplar)

    def retried(self, method: str, endpoint: str, error_type: str) -> None:
        key = (method, endpoint, error_type)
        counter = self._retry_children.get(key)
        if counter is None:
            self._declare(method, endpoint)
            counter = self._retry_children.get(key)
            if counter is None:
                counter = self._retry_children[key] = self._retries.labels(
                    self.service, self.target, method, endpoint, error_type
                )
        counter.inc()

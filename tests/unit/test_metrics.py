"""Metric names, labels, endpoint normalisation and bounded cardinality."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from commclient import ClientConfig, testing
from commclient._core import build_core
from commclient._metrics import ClientMetrics, normalize_path


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/api/users/42", "/api/users/{id}"),
        ("/api/users/42/settings?x=1", "/api/users/{id}/settings"),
        (f"/api/jobs/{uuid.UUID(int=7)}", "/api/jobs/{id}"),
        ("/api/files/0123456789abcdef0123", "/api/files/{id}"),
        ("/api/tokens/dGhpcyBpcyBhIHRva2VuIDEyMw==", "/api/tokens/{id}"),
        ("/api/users/me", "/api/users/me"),
        ("/api/global-settings/", "/api/global-settings/"),
        ("/api/batch-jobs/", "/api/batch-jobs/"),
    ],
)
def test_normalize_path(path: str, endpoint: str) -> None:
    assert normalize_path(path) == endpoint


def test_endpoint_cardinality_is_bounded_per_client() -> None:
    metrics = ClientMetrics(CollectorRegistry(), "svc", "tgt", max_endpoints=200)
    seen = {metrics.endpoint(f"/api/things-{n}/x", template=False) for n in range(500)}
    assert len(seen) == 201
    assert "other" in seen
    assert metrics.endpoint("/api/things-3/x", template=False) == "/api/things-3/x"
    assert metrics.endpoint("/api/{new}", template=True) == "other"


def test_families_have_the_designed_names_and_labels() -> None:
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry, "svc", "tgt", max_endpoints=10)
    metrics.observe("GET", "/a", "success", 0.01)
    metrics.retried("GET", "/a", "timeout")
    families = {f.name: f for f in registry.collect()}
    expected = {
        "http_client_requests": (
            "counter",
            {"source_service", "target_service", "method", "route", "status"},
        ),
        "http_client_request_duration_seconds": (
            "histogram",
            {"source_service", "target_service", "method", "route"},
        ),
        "http_client_retries": (
            "counter",
            {"source_service", "target_service", "method", "route", "error_type"},
        ),
        "http_client_circuit_breaker_state": ("gauge", {"source_service", "target_service"}),
    }
    for name, (kind, labels) in expected.items():
        assert families[name].type == kind
        sample_labels = {k for s in families[name].samples for k in s.labels if k != "le"}
        assert sample_labels == labels, name


def test_label_children_are_cached() -> None:
    metrics = ClientMetrics(CollectorRegistry(), "svc", "tgt", max_endpoints=10)
    metrics.observe("GET", "/a", "success", 0.01)
    child = metrics._request_children[("GET", "/a", "success")]
    metrics.observe("GET", "/a", "success", 0.01)
    assert metrics._request_children[("GET", "/a", "success")] is child
    assert child._value.get() == 2  # type: ignore[attr-defined]


def test_breaker_gauge_follows_every_transition_without_calls() -> None:
    testing.reset()
    registry = CollectorRegistry()
    build_core("http://g.test", "gauge-svc", "gauge-tgt", ClientConfig(), registry, None)

    def state() -> float | None:
        return registry.get_sample_value(
            "http_client_circuit_breaker_state",
            {"source_service": "gauge-svc", "target_service": "gauge-tgt"},
        )

    assert state() == 0
    testing.force_open("gauge-svc", "gauge-tgt")
    assert state() == 2  # open: the worst state has the highest value
    testing.force_closed("gauge-svc", "gauge-tgt")
    assert state() == 0
    testing.reset()


def test_default_registry_is_the_global_one() -> None:
    testing.reset()
    name = f"default-{uuid.uuid4().hex[:8]}"
    build_core("http://g.test", name, "tgt", None, None, None)
    assert (
        REGISTRY.get_sample_value(
            "http_client_circuit_breaker_state", {"source_service": name, "target_service": "tgt"}
        )
        == 0
    )
    testing.reset()


def test_two_clients_share_one_registry() -> None:
    registry = CollectorRegistry()
    first = ClientMetrics(registry, "a", "t", max_endpoints=10)
    second = ClientMetrics(registry, "b", "t", max_endpoints=10)
    first.observe("GET", "/x", "success", 0.1)
    second.observe("GET", "/x", "success", 0.1)
    for service in ("a", "b"):
        assert (
            registry.get_sample_value(
                "http_client_requests_total",
                {
                    "source_service": service,
                    "target_service": "t",
                    "method": "GET",
                    "route": "/x",
                    "status": "success",
                },
            )
            == 1
        )

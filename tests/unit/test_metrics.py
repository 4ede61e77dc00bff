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
        ("/repos/app/commits/a1b2c3d", "/repos/app/commits/{id}"),
        ("/repos/app/commits/9fceb02d0ae598e95dc970b74767f19372d61af8", "/repos/app/commits/{id}"),
        ("/api/devices/1a2b3c4d", "/api/devices/{id}"),
        ("/v1/customers/cus_NffrFeUfNV2Hib", "/v1/customers/{id}"),
        ("/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa", "/v1/payment_intents/{id}"),
        ("/api/orders/ORD-2024-00012", "/api/orders/{id}"),
        ("/api/days/2024-05-01", "/api/days/{id}"),
        ("/api/phones/+15551234567", "/api/phones/{id}"),
        ("/api/users/jane.doe@example.com/settings", "/api/users/{email}/settings"),
        ("/api/users/jane.doe%40example.com", "/api/users/{email}"),
        ("/api/search/Jane%20Doe", "/api/search/{value}"),
        ("/api/users/%34%32", "/api/users/{id}"),
        # Text as the caller wrote it is the same text its percent-encoding would be.
        ("/api/users/José/orders", "/api/users/{value}/orders"),
        ("/api/users/Жанна", "/api/users/{value}"),
        ("/api/search/Jane Doe", "/api/search/{value}"),
        ("/api/cards/4111 1111 1111 1111", "/api/cards/{value}"),
        ("/api/users/me;jsessionid=1A2B3C4D5E6F7A8B", "/api/users/{value}"),
        ("/api/items/1,2,3", "/api/items/{value}"),
        ("/api/raw/%ZZ", "/api/raw/{value}"),
        # A JSON Web Token (dots between its parts), an international phone number.
        (
            "/api/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "/api/reset/{id}",
        ),
        ("/api/phones/+1-555-123-4567", "/api/phones/{id}"),
        ("/v1/projects/p1:batchGet", "/v1/projects/p1:batchGet"),
        # A route word is short: a longer segment is text (a query, a slug), not a route.
        ("/api/search/" + "xyz" * 100_000, "/api/search/{value}"),
        ("/blog/how-to-bake-the-best-sourdough-bread-at-home-without-a-kit", "/blog/{value}"),
        ("/api/customer-notification-preferences", "/api/customer-notification-preferences"),
        ("/static/app.min.js", "/static/app.min.js"),
        # Route words stay, whatever their letters or underscores.
        ("/api/users/me", "/api/users/me"),
        ("/api/global-settings/", "/api/global-settings/"),
        ("/api/batch-jobs/", "/api/batch-jobs/"),
        ("/v1/payment_intents", "/v1/payment_intents"),
        ("/api/feed/defaced", "/api/feed/defaced"),
        ("/api/v2/health", "/api/v2/health"),
        ("/oauth2/token", "/oauth2/token"),
        ("/api/global_settings/", "/api/global_settings/"),
    ],
)
def test_normalize_path(path: str, endpoint: str) -> None:
    assert normalize_path(path) == endpoint


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "segment",
    [
        "a_" + "A" * 300_000,  # a prefixed id's tail without a lower-case letter
        "a_" + "a" * 300_000 + "!",
        "eyJ" + "a." * 150_000 + "!",
        "1-" * 150_000 + "x",
        "A" * 300_000 + "-",
        "f" * 300_000 + "g",
    ],
    ids=["prefixed-upper", "prefixed-lower", "jwt-dots", "digit-groups", "business", "hex"],
)
def test_a_hostile_segment_is_normalised_in_linear_time(segment: str) -> None:
    """A path built from input (``f"/search/{query}"``) is normalised on every call: no rule
    may backtrack quadratically on a long segment (300,000 characters: seconds of CPU,
    holding the GIL, if one did; this test's timeout fails it)."""
    assert normalize_path(f"/api/{segment}").startswith("/api/")


def test_a_route_hook_replaces_the_rules_and_is_still_capped() -> None:
    metrics = ClientMetrics(
        CollectorRegistry(),
        "svc",
        "tgt",
        max_endpoints=2,
        normalize_route=lambda path: path.rsplit("/", 1)[0] + "/{slug}",
    )
    routes = [
        metrics.endpoint(f"/{kind}/post-{n}", template=False) for kind in "abc" for n in (1, 2)
    ]
    assert routes == ["/a/{slug}", "/a/{slug}", "/b/{slug}", "/b/{slug}", "other", "other"]


def test_a_route_hook_must_return_a_str() -> None:
    metrics = ClientMetrics(CollectorRegistry(), "svc", "tgt", 5, normalize_route=lambda p: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="normalize_route must return a str, got NoneType for '/x'"):
        metrics.endpoint("/x", template=False)


def test_route_ids_of_many_shapes_leave_room_for_real_routes() -> None:
    """A thousand Stripe-style ids, order numbers and emails are one route each: the real
    /api/health still gets its own label afterwards."""
    metrics = ClientMetrics(CollectorRegistry(), "svc", "tgt", max_endpoints=20)
    for n in range(1000):
        metrics.endpoint(f"/v1/customers/cus_{uuid.uuid4().hex[:14]}", template=False)
        metrics.endpoint(f"/api/orders/ORD-2024-{n:05d}", template=False)
        metrics.endpoint(f"/api/users/user{n}@example.com", template=False)
    assert metrics.endpoint("/api/health", template=False) == "/api/health"


def test_endpoint_cardinality_is_bounded_per_pair_across_clients() -> None:
    """Ten short-lived clients of one pair, 20 routes each: 20 routes and ``other``."""
    registry = CollectorRegistry()
    seen = set()
    for client in range(10):
        metrics = ClientMetrics(registry, "svc", "tgt", max_endpoints=20)
        for n in range(20):
            route = metrics.endpoint(f"/api/r{client}x{n}y", template=False)
            metrics.observe("GET", route, "success", 0.01)
            seen.add(route)
    assert len(seen) == 21
    assert "other" in seen
    routes = {
        sample.labels["route"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "http_client_requests_total"
    }
    assert len(routes) == 21
    # Another pair of the same registry has its own routes.
    other = ClientMetrics(registry, "svc", "another", max_endpoints=20)
    assert other.endpoint("/api/new", template=False) == "/api/new"
    assert metrics.endpoint("/api/new", template=True) == "other"


def test_failure_series_exist_at_zero_once_a_route_is_seen() -> None:
    """So that the first burst of failures shows in increase(): bounded per route."""
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry, "svc", "tgt", max_endpoints=5, retry_statuses={503, 429})
    metrics.observe("GET", "/a", "success", 0.01)
    labels = {"source_service": "svc", "target_service": "tgt", "method": "GET", "route": "/a"}
    statuses = {
        sample.labels["status"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "http_client_requests_total"
    }
    assert statuses == {
        "success": 1.0,
        "429": 0.0,
        "503": 0.0,
        "timeout": 0.0,
        "connect_error": 0.0,
        "circuit_open": 0.0,
    }
    error_types = {
        error_type: registry.get_sample_value(
            "http_client_retries_total", {**labels, "error_type": error_type}
        )
        for error_type in ("429", "503", "timeout", "connect_error", "circuit_open")
    }
    assert error_types == {
        "429": 0.0,
        "503": 0.0,
        "timeout": 0.0,
        "connect_error": 0.0,
        "circuit_open": None,
    }


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

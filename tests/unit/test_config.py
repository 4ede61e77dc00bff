"""ClientConfig is frozen and refuses bad values, naming the field."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from commclient import ClientConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", -1),
        ("timeout", 0),
        ("timeout", float("nan")),
        ("connect_timeout", -0.5),
        ("connect_timeout", "3"),
        ("max_retries", 0),
        ("max_retries", 2.5),
        ("max_retries", True),
        ("retry_min_wait", -1),
        ("retry_max_wait", float("inf")),
        ("retry_after_max", 0),
        ("deadline", 0),
        ("deadline", -3),
        ("circuit_breaker_fail_max", 0),
        ("circuit_breaker_reset_timeout", -1),
        ("retry_budget_ratio", -0.1),
        ("retry_budget_max_tokens", -1),
        ("max_response_bytes", 0),
        ("max_connections", 0),
        ("max_concurrency", 0),
        ("max_concurrency", 2.5),
        ("pool_timeout", 0),
        ("max_endpoints", 0),
        ("retry_on_status", frozenset({503, 42})),
        ("retry_budget_min_per_second", -1),
        ("verify", ""),
        ("verify", 1),
        ("cert", ("client.pem",)),
        ("cert", ""),
        ("proxy", "proxy:3128"),
        ("trust_env", 1),
        ("follow_redirects", "yes"),
        ("max_redirects", -1),
        ("max_redirects", 2.5),
    ],
)
def test_bad_values_raise_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ClientConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retry_on_status", 5),
        ("retry_on_status", "503"),
        ("retry_on_status", [600, "x"]),
        ("retry_on_status", [True]),
        ("default_headers", "ab"),
        ("default_headers", 5),
        ("default_headers", [("X-A",)]),
        ("default_headers", {"X-A": 5}),
        ("default_headers", {"X A": "1"}),
        ("default_headers", (("X-A", "a\r\nInjected: 1"),)),
        ("default_headers", {"X-A": "a\n"}),
    ],
)
def test_bad_collections_raise_naming_the_field(field: str, value: Any) -> None:
    """Refused when the config is built, not by every call later (a CR/LF would inject)."""
    with pytest.raises((ValueError, TypeError), match=field):
        ClientConfig(**{field: value})


def test_default_headers_accept_a_mapping_or_pairs() -> None:
    pairs = ClientConfig(default_headers=(("X-Api-Key", "k"),))
    mapping = ClientConfig(default_headers={"X-Api-Key": "k"})  # type: ignore[arg-type]
    assert pairs.default_headers == mapping.default_headers == (("X-Api-Key", "k"),)


def test_min_wait_above_max_wait() -> None:
    with pytest.raises(ValueError, match=r"retry_min_wait .* retry_max_wait"):
        ClientConfig(retry_min_wait=5, retry_max_wait=1)


def test_frozen() -> None:
    config = ClientConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timeout = 1  # type: ignore[misc]


def test_defaults_are_documented_and_sane() -> None:
    config = ClientConfig()
    assert config.max_retries == 3
    assert config.retry_on_status == frozenset({429, 500, 502, 503, 504})
    assert config.retry_min_wait <= config.retry_max_wait
    assert config.deadline is None
    lines = inspect.getsource(ClientConfig).splitlines()
    for field in dataclasses.fields(ClientConfig):
        # Each field is preceded by a "#:" comment that documents it and its default.
        index = next(i for i, line in enumerate(lines) if line.startswith(f"    {field.name}:"))
        assert lines[index - 1].strip().startswith("#: "), field.name


def test_retry_on_status_accepts_any_iterable() -> None:
    config = ClientConfig(retry_on_status={503})  # type: ignore[arg-type]
    assert config.retry_on_status == frozenset({503})
    assert hash(config) == hash(ClientConfig(retry_on_status=frozenset({503})))


def test_retry_and_wait_take_tenacity_strategies_only() -> None:
    from tenacity import retry_if_exception_type, wait_fixed

    config = ClientConfig(retry=retry_if_exception_type(), wait=wait_fixed(1))
    assert config.has_strategies
    assert not ClientConfig().has_strategies
    for name in ("retry", "wait"):
        with pytest.raises(ValueError, match=f"{name} must be a tenacity {name} strategy"):
            ClientConfig(**{name: 3})

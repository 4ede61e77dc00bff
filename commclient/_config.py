"""ClientConfig: the tunables of one client, frozen and validated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True)
class ClientConfig:
    """How a client times out, retries, trips its breaker and bounds what it reads.

    Every field is checked on construction; a bad value raises ``ValueError`` naming it.
    """

    #: Seconds one attempt may take to receive the response (read timeout).
    timeout: float = 10.0
    #: Seconds one attempt may take to open the connection.
    connect_timeout: float = 3.0
    #: Attempts per call, the first one included (1 disables retries).
    max_retries: int = 3
    #: Lower bound of the randomised backoff between attempts, in seconds.
    retry_min_wait: float = 0.5
    #: Upper bound of the randomised backoff between attempts, in seconds.
    retry_max_wait: float = 10.0
    #: Response statuses that are retried (other 4xx never are).
    retry_on_status: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    #: A server's ``Retry-After`` replaces the backoff, but never exceeds this many seconds.
    retry_after_max: float = 60.0
    #: Seconds the whole call may take across all attempts and waits; ``None``: no deadline.
    deadline: float | None = None
    #: Consecutive failed calls that open the circuit breaker.
    circuit_breaker_fail_max: int = 5
    #: Seconds the breaker stays open before it lets one probe call through.
    circuit_breaker_reset_timeout: float = 30.0
    #: Redis URL for breaker state shared by every replica; ``None``: state in this process.
    #: Calls never wait on Redis: a background thread synchronises the local state with it,
    #: an unreachable Redis leaves each process on its own state (one warning per outage),
    #: and the one-probe rule of the half-open state holds per process, not across replicas.
    circuit_breaker_redis_url: str | None = None
    #: Seconds between two synchronisations of the breaker state with Redis (a local
    #: transition is sent at once); other replicas learn a change within about this long.
    circuit_breaker_redis_sync_interval: float = 0.5
    #: Retry tokens each call earns for its target (0.1: at most ~10 % extra attempts).
    retry_budget_ratio: float = 0.1
    #: Tokens the per-target retry budget holds at most, and starts with.
    retry_budget_max_tokens: float = 10.0
    #: Largest response body read into memory, in bytes; larger bodies are refused.
    max_response_bytes: int = 10 * 1024 * 1024
    #: Connections the client keeps open to the target at most.
    max_connections: int = 100
    #: Distinct ``endpoint`` label values per client before new ones become ``other``.
    max_endpoints: int = 200
    #: Headers sent with every request (merged under the per-call headers).
    default_headers: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in (
            "timeout",
            "connect_timeout",
            "retry_after_max",
            "circuit_breaker_reset_timeout",
            "circuit_breaker_redis_sync_interval",
        ):
            _require(name, getattr(self, name), positive=True)
        for name in ("retry_min_wait", "retry_max_wait", "retry_budget_ratio"):
            _require(name, getattr(self, name), positive=False)
        _require("retry_budget_max_tokens", self.retry_budget_max_tokens, positive=False)
        if self.deadline is not None:
            _require("deadline", self.deadline, positive=True)
        for name in (
            "max_retries",
            "circuit_breaker_fail_max",
            "max_response_bytes",
            "max_connections",
            "max_endpoints",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.retry_min_wait > self.retry_max_wait:
            raise ValueError(
                f"retry_min_wait ({self.retry_min_wait}) must not exceed "
                f"retry_max_wait ({self.retry_max_wait})"
            )
        statuses = frozenset(self.retry_on_status)
        bad = sorted(s for s in statuses if not isinstance(s, int) or not 100 <= s <= 599)
        if bad:
            raise ValueError(f"retry_on_status holds values that are not HTTP statuses: {bad}")
        object.__setattr__(self, "retry_on_status", statuses)
        object.__setattr__(self, "default_headers", tuple(dict(self.default_headers).items()))


def _require(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")

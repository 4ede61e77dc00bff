"""ClientConfig: the tunables of one client, frozen and validated."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenacity import RetryCallState

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True)
class ClientConfig:
    """How a client times out, retries, trips its breaker and bounds what it reads.

    Every field is checked on construction; a bad value raises ``ValueError`` naming it
    (``TypeError`` for a collection field given something that is not one).
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
    #: Retries per second allowed to a target even when the ratio's tokens are spent
    #: (Finagle's ``minRetriesPerSec``): a client calling once a minute can still retry
    #: after an outage drained its bucket, while a storm gains at most this many retries
    #: per second per target and process. 0 turns the floor off.
    retry_budget_min_per_second: float = 1.0
    #: Largest response body read into memory, in bytes; larger bodies are refused.
    max_response_bytes: int = 10 * 1024 * 1024
    #: Connections the client keeps open to the target at most.
    max_connections: int = 100
    #: Attempts the async client has in flight at most; callers beyond it wait in line,
    #: first come first served, inside their deadline. ``None``: ``max_connections``, so
    #: the connection pool never holds more waiters than connections.
    max_concurrency: int | None = None
    #: Seconds an attempt may wait for its turn (admission, then a pooled connection),
    #: bounded also by the call's deadline. Waiting in line is this client's own load:
    #: a timeout here never counts against the target. (The sync client never waits:
    #: requests opens a further connection instead.)
    pool_timeout: float = 30.0
    #: Distinct ``route`` label values per (registry, service, target) pair, whichever of
    #: its clients saw them, before new ones become ``other``.
    max_endpoints: int = 200
    #: The ``route`` label of a path called without a template (``path_params``); ``None``:
    #: ids, hashes, prefixed ids, emails and percent-encoded text replaced by placeholders
    #: (README, "Route labels"). Called once per distinct path; its result is still capped.
    normalize_route: Callable[[str], str] | None = None
    #: Headers sent with every request (merged under the per-call headers).
    default_headers: tuple[tuple[str, str], ...] = field(default=())
    #: TLS verification: ``True`` (the system's CAs), ``False`` (none), or a CA bundle path.
    verify: bool | str = True
    #: Client certificate for mutual TLS: a PEM path holding both, or ``(cert, key)`` paths.
    cert: str | tuple[str, str] | None = None
    #: Proxy URL for every request; ``None``: no proxy unless ``trust_env`` finds one.
    proxy: str | None = None
    #: Read proxies, ``NO_PROXY`` and the CA bundle from the environment, once per client
    #: when it is built: variables changed later are not seen by that client.
    trust_env: bool = False
    #: Follow redirects (at most ``max_redirects`` hops, inside the call's deadline). A
    #: 301/302/303 answering anything but GET or HEAD is never followed, and another
    #: origin never receives ``default_headers``, credentials or cookies.
    follow_redirects: bool = False
    #: Redirect hops one attempt may follow before the redirect is surfaced.
    max_redirects: int = 5
    #: A tenacity retry strategy deciding which outcomes are retried, in place of
    #: ``retry_on_status`` and transport failures: ``retry_if_exception_type(...)`` sees
    #: the error the call would raise, ``retry_if_result(...)`` the value it would return.
    #: Within the core's rules still: a request that may have reached the server is
    #: repeated only when idempotent, and ``max_retries``, the retry budget, the deadline
    #: and the breaker still end the retries.
    retry: Callable[[RetryCallState], Any] | None = None
    #: A tenacity wait strategy (``wait_exponential(...)``, ``wait_fixed(2)``) in place of
    #: the jittered backoff; a server's ``Retry-After`` still comes first.
    wait: Callable[[RetryCallState], Any] | None = None

    def __post_init__(self) -> None:
        for name in (
            "timeout",
            "connect_timeout",
            "retry_after_max",
            "circuit_breaker_reset_timeout",
            "circuit_breaker_redis_sync_interval",
            "pool_timeout",
        ):
            _require(name, getattr(self, name), positive=True)
        for name in (
            "retry_min_wait",
            "retry_max_wait",
            "retry_budget_ratio",
            "retry_budget_min_per_second",
        ):
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
        concurrency = self.max_concurrency
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(
                f"max_concurrency must be an integer >= 1 or None, got {concurrency!r}"
            )
        if isinstance(self.max_redirects, bool) or not isinstance(self.max_redirects, int):
            raise ValueError(f"max_redirects must be an integer >= 0, got {self.max_redirects!r}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be an integer >= 0, got {self.max_redirects!r}")
        if self.normalize_route is not None and not callable(self.normalize_route):
            raise ValueError(
                f"normalize_route must be a function of the path, got {self.normalize_route!r}"
            )
        self._check_transport()
        for name in ("retry", "wait"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a tenacity {name} strategy (a callable of the retry "
                    f"state), got {getattr(self, name)!r}"
                )
        if self.retry_min_wait > self.retry_max_wait:
            raise ValueError(
                f"retry_min_wait ({self.retry_min_wait}) must not exceed "
                f"retry_max_wait ({self.retry_max_wait})"
            )
        object.__setattr__(self, "retry_on_status", _statuses(self.retry_on_status))
        object.__setattr__(self, "default_headers", _default_headers(self.default_headers))

    @property
    def has_strategies(self) -> bool:
        """Whether a tenacity ``retry=`` or ``wait=`` strategy is set."""
        return self.retry is not None or self.wait is not None

    def _check_transport(self) -> None:
        if not isinstance(self.verify, (bool, str)) or self.verify == "":
            raise ValueError(f"verify must be True, False or a CA bundle path, got {self.verify!r}")
        cert = self.cert
        if cert is not None and not (
            (isinstance(cert, str) and cert)
            or (
                isinstance(cert, tuple)
                and len(cert) == 2
                and all(isinstance(part, str) and part for part in cert)
            )
        ):
            raise ValueError(f"cert must be a path or a (cert, key) pair of paths, got {cert!r}")
        if self.proxy is not None and (not isinstance(self.proxy, str) or "://" not in self.proxy):
            raise ValueError(f"proxy must be a URL such as 'http://proxy:3128', got {self.proxy!r}")
        for name in ("trust_env", "follow_redirects"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


def check_tls_files(config: ClientConfig) -> None:
    """Refuse, when a client is built, TLS files that every call would fail on.

    Both transports open these files at their first connection, each failing its own way
    (``OSError``, ``FileNotFoundError`` without the path, ``ssl.SSLError``); the caller
    gets one ``ValueError`` naming the field and the path instead, before any call.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if isinstance(config.verify, str):
        path = config.verify
        try:
            if os.path.isdir(path):
                context.load_verify_locations(capath=path)
            else:
                context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"verify: cannot load the CA bundle {path!r}: {_reason(exc)}"
            ) from None
    if config.cert is not None:
        certfile, keyfile = (config.cert, None) if isinstance(config.cert, str) else config.cert
        for field_name, file in (("cert", certfile), ("cert (key)", keyfile)):
            if file is not None and not os.path.isfile(file):
                raise ValueError(f"{field_name}: no such file {file!r}")
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            where = repr(certfile) if keyfile is None else f"{certfile!r} with key {keyfile!r}"
            raise ValueError(f"cert: cannot load {where}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


def _statuses(value: object) -> frozenset[int]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"retry_on_status must be a collection of HTTP statuses, got {value!r}")
    items = list(value)
    bad = [s for s in items if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599]
    if bad:
        raise ValueError(f"retry_on_status holds values that are not HTTP statuses: {bad!r}")
    return frozenset(items)


def _default_headers(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"default_headers must be a mapping or (name, value) pairs, got {value!r}")
    else:
        pairs = list(value)
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(
                    f"default_headers must be a mapping or (name, value) pairs, got {pair!r}"
                )
    headers = dict(pairs)
    check_headers(headers, where="default_headers")
    return tuple(headers.items())


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[^\x09\x20-\x7e]")


def check_headers(headers: Mapping[Any, Any], *, where: str = "headers") -> None:
    """Refuse header names and values a transport would refuse, before anything is sent.

    Such a request is the caller's bug: if it reached the transport it would be
    reported as a failed attempt, retried and counted against a healthy target (and a
    CR/LF in a value would inject a header). Values are printable ASCII: requests would
    send Latin-1 where httpx refuses it. ``where`` names the argument in the error.
    """
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"{where}: header name {name!r} is not a valid HTTP token")
        if not isinstance(value, str) or _HEADER_VALUE_FORBIDDEN.search(value):
            raise ValueError(
                f"{where}: header {name!r} must have a printable ASCII string value, got {value!r}"
            )


def require_seconds(name: str, value: object) -> float:
    """A per-call number of seconds (``deadline=``, ``timeout=``): finite and > 0."""
    _require(name, value, positive=True)
    return float(value)  # type: ignore[arg-type]


def _require(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")

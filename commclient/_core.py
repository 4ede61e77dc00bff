"""The resilience core: one call as a generator of actions, without any I/O.

A facade drives :meth:`Call.flow` like tenacity's ``iter()`` or httpx's ``auth_flow``:
the flow yields :class:`Attempt` (send this request, send me back what happened) or
:class:`Sleep` (wait this long), and returns the decoded body or raises the mapped
error. Both facades run the same flow, so they cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Generator, Mapping
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry

from ._breaker import Breaker, breakers
from ._config import ClientConfig
from ._correlation import CORRELATION_HEADER, outgoing_correlation_id, redact_params, redact_text
from ._errors import (
    ServiceClientError,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponseError,
    ServiceResponseTooLargeError,
    ServiceTimeoutError,
    ServiceUnavailableError,
)
from ._metrics import ClientMetrics
from ._policy import (
    Clock,
    FailureKind,
    RetryBudget,
    SystemClock,
    counts_as_breaker_failure,
    may_retry_method,
    retry_budgets,
    retry_wait,
)

logger = logging.getLogger("commclient")

DETAIL_LIMIT = 500
ErrorT = TypeVar("ErrorT", bound=ServiceClientError)
JsonParams = Mapping[str, Any]


class Request(NamedTuple):
    """What the transport sends; the same on every attempt of one call."""

    method: str
    url: str
    params: JsonParams | None
    headers: dict[str, str]
    content: bytes | None
    max_response_bytes: int


class Attempt(NamedTuple):
    """Send ``request`` once within these timeouts and report the outcome.

    Transport timeouts bound each connect and each read; ``time_limit``, set when the
    call has a deadline, bounds the whole attempt, so that a body trickling in a few
    bytes per read cannot outlive the deadline.
    """

    request: Request
    number: int
    connect_timeout: float
    read_timeout: float
    time_limit: float | None


class Sleep(NamedTuple):
    """Wait before the next attempt."""

    seconds: float


class Response(NamedTuple):
    """A response the transport read completely (its headers look up case-insensitively)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class TooLarge(NamedTuple):
    """A response whose body exceeds ``max_response_bytes``; it was not read."""

    status: int
    size: int | None


class TransportFailure(NamedTuple):
    """No response: the transport raised ``error``, classified as ``kind``."""

    kind: FailureKind
    error: BaseException


Outcome = Response | TooLarge | TransportFailure


def declared_size(headers: Mapping[str, str]) -> int | None:
    """The body size a response announces, so that an oversized body is refused unread."""
    length = headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


Flow = Generator[Attempt | Sleep, Outcome | None, Any]


class Core:
    """Everything one client decides, shared by its calls; holds no per-call state."""

    def __init__(
        self,
        base_url: str,
        service_name: str,
        target_service: str,
        config: ClientConfig,
        breaker: Breaker,
        budget: RetryBudget,
        metrics: ClientMetrics,
        clock: Clock,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        # Credentials in a base URL never reach an error message or a log line.
        self.safe_base_url = urlunsplit(
            (parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", "")
        )
        self.service_name = service_name
        self.target_service = target_service
        self.config = config
        self.breaker = breaker
        self.budget = budget
        self.metrics = metrics
        self.clock = clock
        metrics.retry_budget_tokens.set_function(lambda: budget.tokens)
        breaker.attach_gauge(metrics.breaker_state)

    def call(
        self,
        method: str,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Call:
        """Prepare one call; nothing is sent until its flow is driven."""
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        if path_params is not None:
            quoted = {name: quote(str(value), safe="") for name, value in path_params.items()}
            try:
                url_path = path.format_map(quoted)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"path_params do not fill the template {path!r}: {exc}") from None
        else:
            url_path = path
        merged = dict(self.config.default_headers)
        if headers:
            _check_headers(headers)
            merged.update(headers)
        content = None
        if json is not None:
            content = _dumps(json).encode()
            merged.setdefault("Content-Type", "application/json")
        if idempotency_key is not None:
            _check_headers({"Idempotency-Key": idempotency_key})
            merged["Idempotency-Key"] = idempotency_key
        correlation_id = outgoing_correlation_id()
        if correlation_id is not None:
            merged[CORRELATION_HEADER] = correlation_id
        request = Request(
            method,
            self.base_url + url_path,
            params,
            merged,
            content,
            self.config.max_response_bytes,
        )
        return Call(
            self,
            request,
            endpoint=self.metrics.endpoint(
                path if path_params is not None else url_path, template=path_params is not None
            ),
            url_path=url_path,
            retry_after_send=may_retry_method(
                method, has_idempotency_key=idempotency_key is not None
            ),
            deadline=deadline if deadline is not None else self.config.deadline,
            correlation_id=correlation_id,
        )


_dumps = json.dumps
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_headers(headers: Mapping[str, str]) -> None:
    """Refuse header names and values a transport would refuse, before anything is sent.

    Such a request is the caller's bug: if it reached the transport it would be
    reported as a failed attempt, retried and counted against a healthy target.
    """
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP token")
        if not isinstance(value, str) or _HEADER_VALUE_FORBIDDEN.search(value):
            raise ValueError(
                f"header {name!r} has a value that is not a string without control characters"
            )


class Call:
    """One logical call: its attempts, waits and final result or error."""

    __slots__ = (
        "core",
        "correlation_id",
        "deadline",
        "endpoint",
        "request",
        "retry_after_send",
        "url_path",
    )

    def __init__(
        self,
        core: Core,
        request: Request,
        *,
        endpoint: str,
        url_path: str,
        retry_after_send: bool,
        deadline: float | None,
        correlation_id: str | None,
    ) -> None:
        self.core = core
        self.request = request
        self.endpoint = endpoint
        self.url_path = url_path
        self.retry_after_send = retry_after_send
        self.deadline = deadline
        self.correlation_id = correlation_id

    @property
    def safe_url(self) -> str:
        """The URL for errors and logs: no credentials, secret query values redacted."""
        params = self.request.params
        query = f"?{urlencode(redact_params(params), doseq=True, safe='[]')}" if params else ""
        return self.core.safe_base_url + self.url_path + query

    def flow(self) -> Flow:
        core = self.core
        config = core.config
        clock = core.clock
        method = self.request.method
        admission = core.breaker.admit()
        if not admission.permitted:
            core.metrics.observe(method, self.endpoint, "circuit_open", None)
            raise self._error(
                ServiceUnavailableError,
                f"circuit breaker for {core.target_service} is open",
                attempts=0,
                retry_after=admission.retry_after,
            )
        core.budget.deposit()
        max_attempts = 1 if admission.probe else config.max_retries
        deadline_at = None if self.deadline is None else clock.monotonic() + self.deadline
        judged = False
        try:
            number = 0
            while True:
                number += 1
                connect_timeout, read_timeout = config.connect_timeout, config.timeout
                remaining = None
                if deadline_at is not None:
                    remaining = deadline_at - clock.monotonic()
                    connect_timeout = min(connect_timeout, remaining)
                    read_timeout = min(read_timeout, remaining)
                started = clock.monotonic()
                outcome = yield Attempt(
                    self.request, number, connect_timeout, read_timeout, remaining
                )
                duration = clock.monotonic() - started
                if outcome is None:
                    raise RuntimeError("a facade resumed an attempt without an outcome")
                status_label, retryable, failure = self._judge(outcome)
                if not failure:
                    judged = True
                    core.breaker.record_success(admission)
                    return self._finish(outcome, status_label, duration, number)
                core.metrics.observe(method, self.endpoint, status_label, duration)
                self._log(logging.DEBUG, "attempt failed", status_label, number, duration)
                wait = self._next_wait(outcome, retryable, number, max_attempts, deadline_at)
                if wait is None:
                    judged = True
                    error = self._final_error(outcome, number)
                    core.breaker.record_failure(admission)
                    raise error
                core.metrics.retried(method, self.endpoint, status_label)
                self._log(logging.WARNING, "retrying", status_label, number, duration, wait=wait)
                if wait > 0:
                    yield Sleep(wait)
        finally:
            if not judged:
                # Cancelled or interrupted: the target did nothing wrong.
                core.breaker.release(admission)

    def _judge(self, outcome: Outcome) -> tuple[str, bool, bool]:
        """Return (status label, may be retried, counts against the target)."""
        if isinstance(outcome, TransportFailure):
            retryable = self.retry_after_send or not outcome.kind.reached_server
            return outcome.kind.status_label, retryable, True
        if isinstance(outcome, TooLarge):
            return "decode_error", False, False
        status = outcome.status
        if counts_as_breaker_failure(status):
            retryable = status in self.core.config.retry_on_status and self.retry_after_send
            return str(status), retryable, True
        return ("success" if status < 400 else str(status)), False, False

    def _next_wait(
        self,
        outcome: Outcome,
        retryable: bool,
        number: int,
        max_attempts: int,
        deadline_at: float | None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if not retryable or number >= max_attempts:
            return None
        core = self.core
        headers = outcome.headers if isinstance(outcome, Response) else None
        wait = retry_wait(number, headers, core.config, core.clock)
        if deadline_at is not None and core.clock.monotonic() + wait >= deadline_at:
            return None
        if core.breaker.state != "closed" or not core.budget.try_withdraw():
            return None
        return wait

    def _finish(self, outcome: Outcome, status_label: str, duration: float, number: int) -> Any:
        metrics = self.core.metrics
        method = self.request.method
        if isinstance(outcome, TooLarge):
            metrics.observe(method, self.endpoint, status_label, duration)
            raise self._error(
                ServiceResponseTooLargeError,
                f"response body of {outcome.size if outcome.size is not None else 'unknown'} bytes "
                f"exceeds max_response_bytes={self.request.max_response_bytes}",
                attempts=number,
            )
        assert isinstance(outcome, Response)
        if outcome.status >= 400:
            metrics.observe(method, self.endpoint, status_label, duration)
            raise self._response_error(outcome, number)
        body = outcome.body
        if outcome.status == 204 or not body.strip():
            value = None
        else:
            try:
                value = json.loads(body)
            except ValueError as exc:
                metrics.observe(method, self.endpoint, "decode_error", duration)
                error = self._error(
                    ServiceDecodeError,
                    f"response with status {outcome.status} is not valid JSON: {exc}",
                    attempts=number,
                )
                raise error from exc
        metrics.observe(method, self.endpoint, status_label, duration)
        self._log(logging.DEBUG, "call succeeded", status_label, number, duration)
        return value

    def _final_error(self, outcome: Outcome, number: int) -> ServiceClientError:
        if isinstance(outcome, TransportFailure):
            kind = outcome.kind
            cls: type[ServiceClientError]
            cls = ServiceTimeoutError if kind.is_timeout else ServiceConnectionError
            reason = redact_text(str(outcome.error)) or type(outcome.error).__name__
            error = self._error(cls, f"{kind.value.replace('_', ' ')}: {reason}", attempts=number)
            error.__cause__ = outcome.error
        else:
            assert isinstance(outcome, Response)
            error = self._response_error(outcome, number)
        self._log(logging.WARNING, "call failed", _label(outcome), number, None)
        return error

    def _response_error(self, response: Response, number: int) -> ServiceResponseError:
        detail = _detail(response.body)
        return self._error(
            ServiceResponseError,
            f"status {response.status}: {detail}",
            attempts=number,
            status_code=response.status,
            detail=detail,
            response_body=response.body,
        )

    def _error(self, cls: type[ErrorT], message: str, *, attempts: int, **extra: Any) -> ErrorT:
        return cls(
            message,
            method=self.request.method,
            url=self.safe_url,
            target_service=self.core.target_service,
            attempts=attempts,
            **extra,
        )

    def _log(
        self,
        level: int,
        message: str,
        status: str,
        attempt: int,
        duration: float | None,
        **fields: Any,
    ) -> None:
        if not logger.isEnabledFor(level):
            return
        core = self.core
        logger.log(
            level,
            "%s %s %s: %s",
            self.request.method,
            self.safe_url,
            status,
            message,
            extra={
                "service": core.service_name,
                "target_service": core.target_service,
                "method": self.request.method,
                "endpoint": self.endpoint,
                "status": status,
                "attempt": attempt,
                "duration_ms": None if duration is None else round(duration * 1000, 3),
                "correlation_id": self.correlation_id,
                **fields,
            },
        )


def _label(outcome: Outcome) -> str:
    if isinstance(outcome, TransportFailure):
        return outcome.kind.status_label
    return str(outcome.status)


def _detail(body: bytes) -> str:
    """The error's ``detail``: a JSON ``detail`` field, else the body text, cut short."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        return text[:DETAIL_LIMIT]
    if isinstance(document, dict) and "detail" in document:
        detail = document["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)
    return text[:DETAIL_LIMIT]


def build_core(
    base_url: str,
    service_name: str,
    target_service: str,
    config: ClientConfig | None,
    registry: CollectorRegistry | None,
    clock: Clock | None,
) -> Core:
    """The core of a new client, wired to the process's shared breaker and budget."""
    for name, value in (("service_name", service_name), ("target_service", target_service)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    config = ClientConfig() if config is None else config
    if not isinstance(config, ClientConfig):
        raise TypeError(f"config must be a ClientConfig, got {type(config).__name__}")
    return Core(
        base_url,
        service_name,
        target_service,
        config,
        breakers.get(service_name, target_service, config),
        retry_budgets.get(target_service, config),
        ClientMetrics(registry, service_name, target_service, config.max_endpoints),
        SystemClock() if clock is None else clock,
    )

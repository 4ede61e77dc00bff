"""The resilience core: one call as a generator of actions, without any I/O.

A facade drives :meth:`Call.flow` like tenacity's ``iter()`` or httpx's ``auth_flow``:
the flow yields :class:`Attempt` (send this request, send me back what happened) or
:class:`Sleep` (wait this long), and returns the decoded body (or the response) or
raises the mapped error. Both facades run the same flow, so they cannot drift apart:
the URL, the body bytes, the headers, the size limit on decoded bytes, redirects and
the deadline of each attempt are all decided here.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple, TypedDict, TypeVar
from urllib.parse import parse_qsl, quote, quote_plus, urljoin, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from tenacity import RetryCallState

from ._auth import Auth, Signer, auth_header, sign
from ._breaker import Admission, Breaker, breakers
from ._config import ClientConfig, check_headers, check_tls_files, require_seconds
from ._correlation import (
    CORRELATION_HEADER,
    REDACTED,
    outgoing_correlation_id,
    redact_exception,
    redact_params,
    redact_text,
)
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
from ._models import ModelMismatch, model_name, validate_model
from ._policy import (
    NO_RETRYING,
    Clock,
    FailureKind,
    RetryBudget,
    SystemClock,
    counts_as_breaker_failure,
    may_retry_method,
    retry_budgets,
    retry_wait,
)
from ._response import Headers, ServiceResponse, decode_json
from ._tracecontext import outgoing_trace_headers
from ._tracing import CallTrace, active_tracer, rejected_call
from ._version import __version__
from ._wire import Body, BodyReader, FileValue, Request, declared_size, encode_body

logger = logging.getLogger("commclient")

DETAIL_LIMIT = 500
ErrorT = TypeVar("ErrorT", bound=ServiceClientError)
#: The type ``response_model=`` asks for, and so the type the call returns.
ModelT = TypeVar("ModelT")
#: Query parameters: a mapping (a list value repeats the name) or a sequence of pairs.
QueryParams = Mapping[str, Any] | Sequence[tuple[str, Any]]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Headers that identify the caller; another origin never receives them.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


#: Sent with every request unless the caller overrides them.
BUILTIN_HEADERS = {
    "User-Agent": f"commclient/{__version__}",
    "Accept": "*/*",
    # Only what the core can decode under the size limit (see _wire.BodyReader).
    "Accept-Encoding": "gzip, deflate",
}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class CallOptions(TypedDict, total=False):
    """The keywords of ``request()``, ``request_raw()`` and ``get()`` ... ``delete()``."""

    path_params: Mapping[str, Any] | None
    params: QueryParams | None
    json: Any
    content: bytes | None
    data: Mapping[str, Any] | None
    files: Mapping[str, FileValue] | None
    headers: Mapping[str, str] | None
    idempotency_key: str | None
    deadline: float | None
    timeout: float | None
    connect_timeout: float | None
    max_retries: int | None
    auth: Auth | None


class Attempt(NamedTuple):
    """Send ``request`` once within these timeouts and report the outcome.

    Transport timeouts bound each connect and each read; ``time_limit``, set when the
    call has a deadline, bounds the whole exchange (headers, body, every read), so that
    a server trickling bytes cannot outlive the deadline. ``max_response_bytes`` bounds
    the decoded body: feed what arrives into :meth:`reader`.
    """

    request: Request
    number: int
    connect_timeout: float
    read_timeout: float
    time_limit: float | None
    max_response_bytes: int

    def reader(self, status: int, headers: Mapping[str, str]) -> BodyReader:
        # A HEAD, a 204 and a 304 announce the size of a body they do not carry.
        bodiless = self.request.method == "HEAD" or status in (204, 304)
        return BodyReader(headers, self.max_response_bytes, announced=not bodiless)

    def response(
        self, status: int, headers: Mapping[str, str], reader: BodyReader, reason: str = ""
    ) -> Outcome:
        """The outcome of a response whose body was fed into ``reader``, to its end."""
        reader.finish()
        if reader.too_large or reader.error is not None:
            return Unreadable(status, headers, reader.error)
        return Response(status, headers, reader.body(), reason)


class Sleep(NamedTuple):
    """Wait before the next attempt."""

    seconds: float


class Response(NamedTuple):
    """A response the transport read completely (its headers look up case-insensitively)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    #: The status line's text, as the server sent it.
    reason: str = ""


class Unreadable(NamedTuple):
    """A response whose body was not kept: over ``max_response_bytes`` (``error`` is
    ``None``), or not decodable as its ``Content-Encoding`` says."""

    status: int
    headers: Mapping[str, str]
    error: str | None


class TransportFailure(NamedTuple):
    """No response: the transport raised ``error``, classified as ``kind``."""

    kind: FailureKind
    error: BaseException


def deadline_cut_off(connected: bool, cause: BaseException | None) -> TransportFailure:
    """The failure of an attempt that the call's deadline ended.

    Before the connection was established (lookup, connect, TLS handshake) nothing was
    sent: a connect timeout, which may be retried whatever the method.
    """
    if connected:
        error = TimeoutError("the call's deadline ended the attempt mid-response")
        kind = FailureKind.READ_TIMEOUT
    else:
        error = TimeoutError("the call's deadline ended the attempt while connecting")
        kind = FailureKind.CONNECT_TIMEOUT
    error.__cause__ = cause
    return TransportFailure(kind, error)


Outcome = Response | Unreadable | TransportFailure
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
        auth: Auth | None = None,
    ) -> None:
        if not isinstance(base_url, str):
            raise TypeError(f"base_url must be a string, got {type(base_url).__name__}")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError(
                f"base_url must be an absolute http(s) URL without a query, got {base_url!r}"
            )
        # Credentials in a base URL never reach an error message or a log line: they are
        # sent as a Basic Authorization header, to this origin only.
        self.base_url = urlunsplit(
            (parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", "")
        )
        self.origin = _origin(self.base_url)
        self.host = parts.hostname or ""
        self.service_name = service_name
        self.target_service = target_service
        self.config = config
        self.breaker = breaker
        self.budget = budget
        self._budget_generation = retry_budgets.generation
        self.metrics = metrics
        self.clock = clock
        #: The message of every breaker rejection (built once, not per rejected call).
        self.open_message = f"circuit breaker for {target_service} is open"
        default_headers = dict(BUILTIN_HEADERS)
        if parts.username is not None:
            import base64
            from urllib.parse import unquote

            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            default_headers["Authorization"] = (
                "Basic " + base64.b64encode(userinfo.encode("latin-1", errors="replace")).decode()
            )
        #: The client's ``auth=`` callable, which signs every attempt of every call.
        self.signer: Signer | None = None
        if auth is not None:
            header = auth_header(auth)
            if header is None:
                self.signer = auth  # type: ignore[assignment]
            else:
                default_headers["Authorization"] = header[1]
        #: Default headers by lower-case name, for a case-insensitive merge per call.
        self.default_headers = _by_lower_name(default_headers)
        self.config_headers = _by_lower_name(dict(config.default_headers))
        self.default_headers.update(self.config_headers)
        #: The headers of a call that adds none of its own (shared, never mutated).
        self.plain_headers = dict(self.default_headers.values())
        budget.attach_gauge(metrics.retry_budget_tokens)
        breaker.attach_gauge(metrics.breaker_state)

    def current_budget(self) -> RetryBudget:
        """The target's budget, fetched again after ``testing.reset()`` forgot this one."""
        if self._budget_generation != retry_budgets.generation:
            self.budget = retry_budgets.get(self.target_service, self.config)
            self._budget_generation = retry_budgets.generation
            self.budget.attach_gauge(self.metrics.retry_budget_tokens)
        return self.budget

    def call(
        self,
        method: str,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: QueryParams | None = None,
        json: Any = None,
        content: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        max_retries: int | None = None,
        auth: Auth | None = None,
        raw: bool = False,
        response_model: Any = None,
    ) -> Call:
        """Prepare one call; nothing is sent until its flow is driven.

        Every mistake of the caller raises here (``ValueError``/``TypeError`` naming
        it), before the breaker or the target is involved.
        """
        if raw and response_model is not None:
            raise TypeError(
                "response_model= is for request() and get() ... delete(); request_raw(), "
                "head() and options() return the ServiceResponse"
            )
        if method not in _METHODS:
            if not isinstance(method, str) or not _TOKEN.fullmatch(method):
                raise ValueError(f"method must be an HTTP method name, got {method!r}")
            method = method.upper()
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a string and must start with '/', got {path!r}")
        if path_params is not None:
            quoted = {name: _quote_segment(str(value)) for name, value in path_params.items()}
            try:
                url_path = path.format_map(quoted)
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise ValueError(f"path_params do not fill the template {path!r}: {exc}") from None
        else:
            url_path = path
        query: list[tuple[str, Any]] = []
        if "?" in url_path or "#" in url_path:
            # A query written into the path joins params= instead of making a second "?".
            url_path, _, path_query = url_path.partition("#")[0].partition("?")
            query = parse_qsl(path_query, keep_blank_values=True)
        if params:
            query.extend(_pairs(params))
        body = None
        if json is not None or content is not None or data is not None or files is not None:
            body = encode_body(json_value=json, content=content, data=data, files=files)
        correlation_id = outgoing_correlation_id()
        signer = self.signer
        if auth is not None:
            fixed = auth_header(auth)
            if fixed is None:
                signer = auth  # type: ignore[assignment]
            else:
                signer = None
                headers = {**(headers or {}), fixed[0]: fixed[1]}
        if (
            headers
            or body is not None
            or idempotency_key is not None
            or correlation_id is not None
            or method in _BODY_METHODS
        ):
            request_headers = self._headers(method, headers, body, idempotency_key, correlation_id)
        else:
            # Shared, never mutated: each transport copies the headers it is given.
            request_headers = self.plain_headers
        if deadline is not None:
            deadline = require_seconds("deadline", deadline)
        if timeout is not None:
            timeout = require_seconds("timeout", timeout)
        if connect_timeout is not None:
            connect_timeout = require_seconds("connect_timeout", connect_timeout)
        if max_retries is not None and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1
        ):
            raise ValueError(f"max_retries must be an integer >= 1, got {max_retries!r}")
        wire_path = url_path
        if not _PLAIN_PATH.fullmatch(url_path):
            wire_path = quote(url_path, safe=_PATH_SAFE)
        url = self.base_url + wire_path
        if query:
            url += "?" + encode_query(query)
        # Positional: keywords cost more on this path, which every call (and every breaker
        # rejection) takes. The order is that of Call.__init__.
        return Call(
            self,
            Request(method, url, request_headers, None if body is None else body.content),
            self.metrics.endpoint(
                path if path_params is not None else url_path, template=path_params is not None
            ),
            wire_path,
            query,
            may_retry_method(method, has_idempotency_key=idempotency_key is not None),
            deadline if deadline is not None else self.config.deadline,
            timeout if timeout is not None else self.config.timeout,
            correlation_id,
            raw,
            connect_timeout if connect_timeout is not None else self.config.connect_timeout,
            max_retries if max_retries is not None else self.config.max_retries,
            signer,
            response_model,
        )

    def _headers(
        self,
        method: str,
        headers: Mapping[str, str] | None,
        body: Body | None,
        idempotency_key: str | None,
        correlation_id: str | None,
    ) -> dict[str, str]:
        """Defaults, then the caller's headers, merged by case-insensitive name."""
        merged = dict(self.default_headers)
        if headers:
            if not isinstance(headers, Mapping):
                raise TypeError(f"headers must be a mapping, got {type(headers).__name__}")
            check_headers(headers)
            merged.update(_by_lower_name(headers))
        if body is not None:
            merged.setdefault("content-type", ("Content-Type", body.content_type))
            merged["content-length"] = ("Content-Length", str(len(body.content)))
        elif method in _BODY_METHODS:
            merged["content-length"] = ("Content-Length", "0")
        if idempotency_key is not None:
            check_headers({"Idempotency-Key": idempotency_key})
            merged["idempotency-key"] = ("Idempotency-Key", idempotency_key)
        if correlation_id is not None:
            merged[CORRELATION_HEADER.lower()] = (CORRELATION_HEADER, correlation_id)
        return dict(merged.values())


def _exemplar(trace: CallTrace | None) -> dict[str, str] | None:
    """The duration's exemplar: the call's trace id, when the call is traced."""
    if trace is None:
        return None
    trace_id = trace.trace_id()
    return None if trace_id is None else {"trace_id": trace_id}


_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/%!$&'()*+,;=:@._~-]*")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.~-]*")


def _query_value(value: Any) -> str:
    # As httpx renders them; requests would send "True" and drop None.
    if isinstance(value, str):
        return value
    if value is True or value is False:
        return "true" if value else "false"
    return "" if value is None else str(value)


def _quote_segment(value: str) -> str:
    """One path parameter as one path segment.

    ``quote`` leaves ``.`` alone, and a segment that is exactly ``.`` or ``..`` would be
    resolved as a dot segment (httpx does so: ``/a/{v}/b`` with ``..`` calls ``/b``), so
    those two are sent percent-encoded (``%2E``), which servers route as data.
    """
    if value in (".", ".."):
        return "%2E" * len(value)
    return quote(value, safe="")


def _quote_plus(text: str) -> str:
    return text if _PLAIN_VALUE.fullmatch(text) else quote_plus(text)


def encode_query(pairs: Sequence[tuple[str, Any]], *, keep: str | None = None) -> str:
    """``urlencode(pairs, doseq=True)``, quicker for plain values; ``keep`` stays literal."""
    parts = []
    for name, value in pairs:
        values = value if isinstance(value, (list, tuple)) else (value,)
        key = _quote_plus(str(name))
        for item in values:
            text = _query_value(item)
            parts.append(f"{key}={text if text == keep else _quote_plus(text)}")
    return "&".join(parts)


_HOST = re.compile(r"[a-z0-9.\-_]+|[0-9a-f:.]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _by_lower_name(headers: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    return {name.lower(): (name, value) for name, value in headers.items()}


def _pairs(params: QueryParams) -> list[tuple[str, Any]]:
    if isinstance(params, Mapping):
        return list(params.items())
    pairs = list(params)
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"params must be a mapping or (name, value) pairs, got {pair!r}")
    return pairs


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class Call:
    """One logical call: its attempts, waits and final result or error."""

    __slots__ = (
        "connect_timeout",
        "core",
        "correlation_id",
        "deadline",
        "endpoint",
        "max_attempts",
        "query",
        "raw",
        "read_timeout",
        "request",
        "response_model",
        "retry_after_send",
        "signer",
        "wire_path",
    )

    def __init__(
        self,
        core: Core,
        request: Request,
        endpoint: str,
        wire_path: str,
        query: list[tuple[str, Any]],
        retry_after_send: bool,
        deadline: float | None,
        read_timeout: float,
        correlation_id: str | None,
        raw: bool,
        connect_timeout: float,
        max_attempts: int,
        signer: Signer | None,
        response_model: Any,
    ) -> None:
        self.core = core
        self.request = request
        self.endpoint = endpoint
        self.wire_path = wire_path
        self.query = query
        self.retry_after_send = retry_after_send
        self.deadline = deadline
        self.read_timeout = read_timeout
        self.correlation_id = correlation_id
        self.raw = raw
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.signer = signer
        self.response_model = response_model

    @property
    def safe_url(self) -> str:
        """The URL for errors and logs: no credentials, secret query values redacted."""
        url = self.core.base_url + self.wire_path
        if self.query:
            url += "?" + encode_query(redact_params(self.query), keep=REDACTED)
        return url

    def flow(self) -> Flow:
        """The call's flow; raises at once if the breaker is open.

        A refusal found without a lock is raised here, before a generator exists (the
        common case of an outage, and the cheapest); every other answer is asked for
        inside the flow, so that a flow that is never started holds no probe permit.
        """
        refusal = self.core.breaker.refusal()
        if refusal is not None:
            raise self._rejected(refusal)
        return self._attempts()

    def _rejected(self, refusal: Admission, attempts: int = 0) -> ServiceUnavailableError:
        """Count a breaker rejection and return its error."""
        core = self.core
        core.metrics.observe(self.request.method, self.endpoint, "circuit_open", None)
        tracer = active_tracer()
        if tracer is not None:
            rejected_call(tracer, self._span_name(), self._span_attributes(), refusal.retry_after)
        return ServiceUnavailableError(
            core.open_message,
            method=self.request.method,
            url=self.safe_url,
            target_service=core.target_service,
            attempts=attempts,
            retry_after=refusal.retry_after,
        )

    def _attempts(self) -> Flow:
        core = self.core
        clock = core.clock
        method = self.request.method
        admission = core.breaker.admit()
        if not admission.permitted:
            raise self._rejected(admission)
        budget = core.current_budget()
        budget.deposit()
        max_attempts = 1 if admission.probe else self.max_attempts
        deadline_at = None if self.deadline is None else clock.monotonic() + self.deadline
        judged = False
        tracer = active_tracer()
        trace: CallTrace | None = None
        if tracer is not None:
            attributes = self._span_attributes()
            attributes["commclient.breaker.decision"] = "probe" if admission.probe else "admitted"
            trace = CallTrace(tracer, self._span_name(), attributes)
        number = 0
        last_status: int | None = None
        error_type: str | None = "cancelled"  # until the call returns or raises
        # The call's failure is counted at its first failed attempt, before any wait: a
        # caller that gives up during the backoff (asyncio.timeout, anyio.fail_after, a
        # job's timeout) must not take the target's failures away with it. A later
        # success of the same call forgets it, as a success always does.
        failure_recorded = False
        try:
            while True:
                number += 1
                started = clock.monotonic()
                outcome = yield from self._exchange(number, deadline_at, trace)
                if isinstance(outcome, TransportFailure) and outcome.kind is FailureKind.OPENED:
                    # Admitted before the breaker opened, then held in the client's own
                    # line: fail fast, as a call made now would, instead of sending.
                    judged = True
                    core.breaker.release(admission)
                    refusal = core.breaker.refusal() or Admission(
                        False, False, core.breaker.reset_timeout
                    )
                    error_type = "circuit_open"
                    raise self._rejected(refusal, number - 1)
                duration = clock.monotonic() - started
                status_label, retryable, failure = self._judge(outcome)
                last_status = None if isinstance(outcome, TransportFailure) else outcome.status
                error_type = None if status_label == "success" else status_label
                # The breaker hears what the target did before the caller's strategies run:
                # a strategy that raises must not take the target's failure away with it.
                if failure is None:
                    # Nothing the target did: the breaker neither counts nor forgets.
                    judged = True
                    core.breaker.release(admission)
                elif not failure:
                    judged = True
                    core.breaker.record_success(admission)
                elif not failure_recorded:
                    failure_recorded = judged = True
                    core.breaker.record_failure(admission)
                state = None
                if failure is not None and core.config.has_strategies:
                    # The caller's tenacity strategies see what the call would return or raise.
                    state = self._retry_state(outcome, status_label, duration, number)
                    if core.config.retry is not None:
                        retryable = self._user_retries(core.config.retry, state, outcome)
                if failure is not True and not retryable:
                    return self._finish(outcome, status_label, duration, number, trace)
                wait = self._next_wait(outcome, retryable, number, max_attempts, deadline_at, state)
                if wait is None and not failure:
                    return self._finish(outcome, status_label, duration, number, trace)
                core.metrics.observe(
                    method, self.endpoint, status_label, duration, _exemplar(trace)
                )
                self._log(logging.DEBUG, "attempt failed", status_label, number, duration)
                if wait is None:
                    raise self._final_error(outcome, number)
                core.metrics.retried(method, self.endpoint, status_label)
                self._log(logging.WARNING, "retrying", status_label, number, duration, wait=wait)
                if trace is not None:
                    trace.event(
                        "backoff",
                        {
                            "commclient.wait_seconds": wait,
                            "commclient.retry_reason": status_label,
                            "http.request.resend_count": number,
                        },
                    )
                if wait > 0:
                    yield Sleep(wait)
                error_type = "cancelled"
        finally:
            if not judged:
                # Cancelled or interrupted: the target did nothing wrong.
                core.breaker.release(admission)
            if trace is not None:
                trace.end(last_status, error_type, number)

    def _exchange(
        self, number: int, deadline_at: float | None, trace: CallTrace | None
    ) -> Generator[Attempt, Outcome | None, Outcome]:
        """One attempt: a request and the redirects it is allowed to follow."""
        core = self.core
        config = core.config
        request = self.request
        previous: Outcome | None = None
        hops = 0
        while True:
            connect_timeout, read_timeout = self.connect_timeout, self.read_timeout
            remaining = None
            if deadline_at is not None:
                remaining = deadline_at - core.clock.monotonic()
                if remaining <= 0:
                    return TransportFailure(
                        FailureKind.DEADLINE,
                        TimeoutError(
                            f"the deadline of {self.deadline} s passed before attempt {number}"
                        ),
                    )
                connect_timeout = min(connect_timeout, remaining)
                read_timeout = min(read_timeout, remaining)
            sent = request
            if self.signer is not None and _origin(request.url) == core.origin:
                # Signed afresh for every attempt and hop: a refreshed token is the one
                # a retry sends; another origin is never signed for.
                sent = sign(self.signer, request)
            sent = self._traced(sent, number, hops, trace)
            attempt = Attempt(
                sent,
                number,
                connect_timeout,
                read_timeout,
                remaining,
                config.max_response_bytes,
            )
            if trace is None:
                outcome = yield attempt
            else:
                # The attempt's span is current while the facade sends it (module _tracing).
                token = trace.sending()
                try:
                    outcome = yield attempt
                finally:
                    trace.sent(token)
            if outcome is None:
                raise RuntimeError("a facade resumed an attempt without an outcome")
            if remaining is not None and isinstance(outcome, TransportFailure):
                outcome = _cut_short(outcome, remaining, config.connect_timeout, self.read_timeout)
            if trace is not None:
                if isinstance(outcome, TransportFailure):
                    trace.attempt_done(None, outcome.kind.status_label)
                else:
                    trace.attempt_done(
                        outcome.status, None if outcome.status < 400 else str(outcome.status)
                    )
            if isinstance(outcome, TransportFailure) and outcome.kind is FailureKind.UNSENDABLE:
                if previous is None:
                    # The caller's URL or headers: a bug to fix, not a target's failure.
                    message = redact_text(str(outcome.error)) or type(outcome.error).__name__
                    raise ValueError(f"the request cannot be sent: {message}") from outcome.error
                # A redirect to somewhere the transport cannot go: the caller gets the redirect.
                return previous
            if not config.follow_redirects or hops >= config.max_redirects:
                return outcome
            following = self._redirect(request, outcome)
            if following is None:
                return outcome
            request, previous = following, outcome
            hops += 1

    def _traced(self, request: Request, number: int, hops: int, trace: CallTrace | None) -> Request:
        """``request`` with the W3C trace context of this attempt (module ``_tracing``).

        With OpenTelemetry on, it names the attempt's span (one per redirect hop: the URL
        it went to, redacted as in the logs); otherwise it continues the inbound trace, or
        the trace the correlation id stands for, with a new span id.
        """
        if trace is not None:
            headers = dict(request.headers)
            attributes = self._span_attributes()
            if hops:
                attributes["url.full"] = redact_text(request.url)
                attributes["server.address"] = urlsplit(request.url).hostname or ""
            else:
                attributes["url.full"] = self.safe_url
            if number + hops > 1:
                # Semantic conventions: resends for any reason, redirects included.
                attributes["http.request.resend_count"] = number - 1 + hops
            trace.attempt(self._span_name(), attributes, headers)
        else:
            trace_headers = outgoing_trace_headers(self.correlation_id)
            if not trace_headers:
                return request
            headers = {**request.headers, **trace_headers}
        return Request(request.method, request.url, headers, request.content)

    def _span_name(self) -> str:
        return f"{self.request.method} {self.endpoint}"

    def _span_attributes(self) -> dict[str, Any]:
        """Attributes every span of this call carries (HTTP semantic conventions)."""
        core = self.core
        return {
            "http.request.method": self.request.method,
            "url.template": self.endpoint,
            "server.address": core.host,
            "commclient.source_service": core.service_name,
            "commclient.target_service": core.target_service,
        }

    def _redirect(self, request: Request, outcome: Outcome) -> Request | None:
        """The request a redirect asks for, or ``None`` when it is not to be followed."""
        if not isinstance(outcome, Response) or outcome.status not in _REDIRECTS:
            return None
        location = outcome.headers.get("location")
        if not location:
            return None
        try:
            url = urljoin(request.url, location.strip())
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not _HOST.fullmatch(parts.hostname or ""):
                return None
            origin = _origin(url)
        except ValueError:
            return None
        method = request.method
        if outcome.status in (301, 302, 303) and method not in ("GET", "HEAD"):
            # Browsers re-send a POST as a GET here; the caller would get the GET's body
            # as the POST's result. The caller gets the redirect instead.
            return None
        # 307 and 308 repeat the method and the body; 301-303 after GET or HEAD keep them.
        headers = dict(request.headers)
        if parts.username is not None or parts.password is not None:
            return None
        if origin != self.core.origin:
            for name in list(headers):
                lower = name.lower()
                if lower in _CREDENTIAL_HEADERS or lower in self.core.config_headers:
                    del headers[name]
        return Request(method, urlunsplit(parts._replace(fragment="")), headers, request.content)

    def _judge(self, outcome: Outcome) -> tuple[str, bool, bool | None]:
        """Return (status label, may be retried, counts against the target).

        ``None`` for the last: the outcome says nothing about the target's health.
        """
        if isinstance(outcome, TransportFailure):
            if not outcome.kind.blames_target:
                return outcome.kind.status_label, False, None
            retryable = self.retry_after_send or not outcome.kind.reached_server
            return outcome.kind.status_label, retryable, True
        status = outcome.status
        if counts_as_breaker_failure(status):
            # A server error counts against the target whether or not its body was read.
            retryable = status in self.core.config.retry_on_status and self.retry_after_send
            return str(status), retryable, True
        if isinstance(outcome, Unreadable):
            return "decode_error", False, False
        if status < 300 or (self.raw and status < 400):
            return "success", False, False
        return str(status), False, False

    def _next_wait(
        self,
        outcome: Outcome,
        retryable: bool,
        number: int,
        max_attempts: int,
        deadline_at: float | None,
        state: RetryCallState | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if not retryable or number >= max_attempts:
            return None
        core = self.core
        headers = outcome.headers if not isinstance(outcome, TransportFailure) else None
        wait = retry_wait(number, headers, core.config, core.clock, state)
        now = core.clock.monotonic()
        if deadline_at is not None and now + wait >= deadline_at:
            return None
        if core.breaker.state != "closed" or not core.current_budget().try_withdraw(now):
            return None
        return wait

    def _finish(
        self,
        outcome: Outcome,
        status_label: str,
        duration: float,
        number: int,
        trace: CallTrace | None,
    ) -> Any:
        """The call's result, or the error of an outcome that does not blame the target."""
        value, error, status_label = self._result(outcome, status_label, duration, number)
        self.core.metrics.observe(
            self.request.method, self.endpoint, status_label, duration, _exemplar(trace)
        )
        if error is not None:
            if isinstance(outcome, TransportFailure):
                self._log(logging.WARNING, "call failed", _label(outcome), number, None)
            raise error
        self._log(logging.DEBUG, "call succeeded", status_label, number, duration)
        return value

    def _result(
        self, outcome: Outcome, status_label: str, duration: float, number: int
    ) -> tuple[Any, ServiceClientError | None, str]:
        """What the caller gets of ``outcome``: (value, error, status label); no side effect."""
        error: ServiceClientError | None = None
        value: Any = None
        if isinstance(outcome, TransportFailure):
            error = self._outcome_error(outcome, number)
        elif isinstance(outcome, Unreadable):
            error = self._unreadable_error(outcome, number)
        elif status_label != "success":
            error = self._response_error(outcome, number)
        elif self.raw:
            value = ServiceResponse(
                outcome.status,
                Headers(outcome.headers),
                outcome.body,
                self.safe_url,
                outcome.reason,
                timedelta(seconds=duration),
            )
        elif outcome.status != 204 and outcome.body.strip():
            try:
                value = decode_json(outcome.body)
            except ValueError as exc:
                status_label = "decode_error"
                error = self._error(
                    ServiceDecodeError,
                    f"response with status {outcome.status} is not valid JSON: {exc}",
                    attempts=number,
                )
                error.__cause__ = exc
        if error is None and self.response_model is not None and not self.raw:
            try:
                value = validate_model(value, self.response_model)
            except ModelMismatch as exc:
                status_label = "decode_error"
                error = self._error(
                    ServiceDecodeError,
                    f"the response is not a {model_name(self.response_model)}: {exc}",
                    attempts=number,
                )
                error.__cause__ = exc.__cause__
        return value, error, status_label

    def _user_retries(
        self, retry: Callable[[RetryCallState], Any], state: RetryCallState, outcome: Outcome
    ) -> bool:
        """The caller's ``retry=`` strategy, within the core's rule on repeating a request:
        one that may have reached the server is repeated only when it is idempotent."""
        if not (
            self.retry_after_send
            or (isinstance(outcome, TransportFailure) and not outcome.kind.reached_server)
        ):
            return False
        return bool(retry(state))

    def _retry_state(
        self, outcome: Outcome, status_label: str, duration: float, number: int
    ) -> RetryCallState:
        """The attempt as tenacity's strategies see it: its result, or the error it raises."""
        value, error, _ = self._result(outcome, status_label, duration, number)
        state = RetryCallState(NO_RETRYING, None, (), {})
        state.attempt_number = number
        if error is None:
            state.set_result(value)
        else:
            state.set_exception((type(error), error, None))
        return state

    def _unreadable_error(self, outcome: Unreadable, number: int) -> ServiceClientError:
        if outcome.error is not None:
            return self._error(ServiceDecodeError, outcome.error, attempts=number)
        size = declared_size(outcome.headers)
        return self._error(
            ServiceResponseTooLargeError,
            f"response body with status {outcome.status} of "
            f"{'more' if size is None else size} bytes exceeds max_response_bytes="
            f"{self.core.config.max_response_bytes}",
            attempts=number,
        )

    def _final_error(self, outcome: Outcome, number: int) -> ServiceClientError:
        error = self._outcome_error(outcome, number)
        self._log(logging.WARNING, "call failed", _label(outcome), number, None)
        return error

    def _outcome_error(self, outcome: Outcome, number: int) -> ServiceClientError:
        error: ServiceClientError
        if isinstance(outcome, TransportFailure):
            kind = outcome.kind
            cls: type[ServiceClientError]
            cls = ServiceTimeoutError if kind.is_timeout else ServiceConnectionError
            redact_exception(outcome.error)
            reason = (
                _socket_reason(outcome.error, self.request.url, self.core.config.proxy)
                or _timeout_reason(kind, outcome.error)
                or redact_text(str(outcome.error))
                or _LOCAL_REASONS.get(kind)
                or type(outcome.error).__name__
            )
            error = self._error(cls, f"{kind.value.replace('_', ' ')}: {reason}", attempts=number)
            error.__cause__ = outcome.error
        elif isinstance(outcome, Unreadable):
            error = self._response_error(Response(outcome.status, outcome.headers, b""), number)
        else:
            error = self._response_error(outcome, number)
        return error

    def _response_error(self, response: Response, number: int) -> ServiceResponseError:
        status = response.status
        if status in _REDIRECTS or status == 304:
            location = redact_text(response.headers.get("location", ""))
            detail = f"redirect to {location!r} not followed" if location else "not modified"
        elif response.body:
            # The server may echo the request's query: its secrets stay out of the error too.
            detail = redact_text(_detail(response.body))
        else:
            detail = "the body was not read: it exceeds max_response_bytes"
        return self._error(
            ServiceResponseError,
            f"status {status}: {detail}",
            attempts=number,
            status_code=status,
            detail=detail,
            response_body=response.body,
            headers=Headers(response.headers),
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


def _socket_reason(error: BaseException, url: str, proxy: str | None = None) -> str | None:
    """What the socket said, in words that name neither transport nor its pool.

    Both transports wrap the socket's error in their own (requests in urllib3's pool
    errors, httpx in httpcore's); the chain of causes leads to it on both. Through a
    proxy the client connects to the proxy alone (the proxy reaches the target), so a
    lookup or a connection that failed is the proxy's.
    """
    seen: set[int] = set()
    current: object = error
    peer = "" if proxy is None else "proxy "
    where = url if proxy is None else proxy
    while isinstance(current, BaseException) and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            host = urlsplit(where).hostname
            return f"cannot resolve {peer}{host!r}: {current.strerror or current}"
        if isinstance(current, ConnectionRefusedError):
            _, host, port = _origin(where)
            return f"{peer}{host}:{port} refused the connection"
        args = current.args
        current = (
            getattr(current, "reason", None)
            or current.__cause__
            or current.__context__
            or (args[0] if args else None)
        )
    return None


_TIMEOUT_REASONS = {
    FailureKind.CONNECT_TIMEOUT: "no connection within the connect timeout",
    FailureKind.READ_TIMEOUT: "no response within the read timeout",
}
#: This client's own limits, for a transport's exception that says nothing of them.
_LOCAL_REASONS = {
    FailureKind.SATURATED: (
        "no connection within the connect timeout, seen late: this client was too busy "
        "to notice the connection (not counted against the target)"
    ),
    FailureKind.POOL_TIMEOUT: "no connection free within pool_timeout (this client's own load)",
}


def _timeout_reason(kind: FailureKind, error: BaseException) -> str | None:
    """A transport's timeout in the same words on both facades (each names its own pool,
    or nothing at all); a deadline's cut-off (a plain ``TimeoutError``) keeps its own."""
    if type(error) is TimeoutError:
        return None
    return _TIMEOUT_REASONS.get(kind)


def _cut_short(
    failure: TransportFailure, remaining: float, connect_timeout: float, read_timeout: float
) -> TransportFailure:
    """A timeout of an attempt whose timeout the deadline had cut short is the deadline's.

    The target had less time than its timeout to answer: it failed the caller's deadline,
    not its own timeout, so neither the error ratio nor the breaker blames it.
    """
    limit = {FailureKind.CONNECT_TIMEOUT: connect_timeout, FailureKind.READ_TIMEOUT: read_timeout}
    configured = limit.get(failure.kind)
    if configured is not None and remaining < configured:
        return TransportFailure(FailureKind.DEADLINE, failure.error)
    return failure


def _label(outcome: Outcome) -> str:
    if isinstance(outcome, TransportFailure):
        return outcome.kind.status_label
    return str(outcome.status)


def _detail(body: bytes) -> str:
    """The error's ``detail``: a JSON ``detail`` field, else the body text, cut short."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = decode_json(body)
    except ValueError:
        return text[:DETAIL_LIMIT]
    if isinstance(document, dict) and "detail" in document:
        detail = document["detail"]
        text = detail if isinstance(detail, str) else _dump_detail(detail)
    return text[:DETAIL_LIMIT]


def _dump_detail(detail: Any) -> str:
    import json

    try:
        return json.dumps(detail)[:DETAIL_LIMIT]
    except (ValueError, RecursionError):
        return repr(detail)[:DETAIL_LIMIT]


def build_core(
    base_url: str,
    service_name: str,
    target_service: str,
    config: ClientConfig | None,
    registry: CollectorRegistry | None,
    clock: Clock | None,
    auth: Auth | None = None,
) -> Core:
    """The core of a new client, wired to the process's shared breaker and budget."""
    for name, value in (("service_name", service_name), ("target_service", target_service)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    config = ClientConfig() if config is None else config
    if not isinstance(config, ClientConfig):
        raise TypeError(f"config must be a ClientConfig, got {type(config).__name__}")
    check_tls_files(config)
    return Core(
        base_url,
        service_name,
        target_service,
        config,
        breakers.get(service_name, target_service, config),
        retry_budgets.get(target_service, config),
        ClientMetrics(
            registry,
            service_name,
            target_service,
            config.max_endpoints,
            retry_statuses=config.retry_on_status,
            normalize_route=config.normalize_route,
        ),
        SystemClock() if clock is None else clock,
        auth,
    )

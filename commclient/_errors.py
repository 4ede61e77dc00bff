"""The error hierarchy.

::

    ServiceClientError                 every failure of a call; carries method, url,
     |                                 target_service, attempts
     +-- ServiceUnavailableError       the circuit breaker is open (retry_after)
     +-- ServiceTimeoutError           an attempt or the call's deadline timed out
     +-- ServiceConnectionError        refused, reset, DNS failure
     +-- ServiceResponseError          an error status, or a redirect left unfollowed
     |                                 (status_code, detail, response_body, headers)
     +-- ServiceDecodeError            a body that is not the JSON the caller expects, or
     |                                 whose Content-Encoding does not decode
          +-- ServiceResponseTooLargeError   a body over max_response_bytes, never read whole

The transport's own exception is chained as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ServiceClientError(Exception):
    """A call to another service failed."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        target_service: str,
        attempts: int,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.target_service = target_service
        self.attempts = attempts

    def __str__(self) -> str:
        return (
            f"{self.message} ({self.method} {self.url} -> {self.target_service}, "
            f"attempts={self.attempts})"
        )


class ServiceUnavailableError(ServiceClientError):
    """The target's circuit breaker is open; no request was sent."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        target_service: str,
        attempts: int,
        retry_after: float,
    ) -> None:
        # Explicit keywords: a rejection is the hot path of an outage, and passing the
        # context on as ``**context`` builds two more dicts per error.
        super().__init__(
            message, method=method, url=url, target_service=target_service, attempts=attempts
        )
        self.retry_after = retry_after


class ServiceTimeoutError(ServiceClientError):
    """An attempt timed out, or the call's deadline left no time for another."""


class ServiceConnectionError(ServiceClientError):
    """The connection could not be opened or was lost."""


class ServiceResponseError(ServiceClientError):
    """The service answered with an error status (or a redirect that was not followed)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        detail: str,
        response_body: bytes,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.status_code = status_code
        self.detail = detail
        self.response_body = response_body
        #: The response's headers (case-insensitive), e.g. ``Location`` of a redirect.
        self.headers: Mapping[str, str] = {} if headers is None else headers


class ServiceDecodeError(ServiceClientError):
    """The response body is not valid JSON."""


class ServiceResponseTooLargeError(ServiceDecodeError):
    """The response body exceeds ``max_response_bytes``; it was not read into memory."""


class ClientClosedError(RuntimeError):
    """The client was closed (before or during the call): no call through it can succeed.

    Raised as the ``RuntimeError`` the facades document; its own class lets a caller
    that retries (cron_migration's run records) tell it from a ``RuntimeError`` that a
    retry may cure (a client still busy on another event loop, no thread to be had).
    """

    def __init__(self, client: str, *, during_call: bool = False) -> None:
        super().__init__(
            f"this {client} was closed during the call"
            if during_call
            else f"this {client} is closed; create a new one"
        )

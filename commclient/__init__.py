"""Resilient, observable service-to-service HTTP calls.

One sans-I/O resilience core (retry with backoff, circuit breaker, retry budget,
deadline, error mapping, metrics, correlation-id logging) under two facades:
:class:`SyncServiceClient` on requests and :class:`AsyncServiceClient` on httpx.
Neither transport is imported until its facade is used.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._auth import Auth, BasicAuth, BearerAuth
from ._config import ClientConfig
from ._correlation import CorrelationIdFilter, correlation_id_ctx, log_correlation_ids
from ._errors import (
    ServiceClientError,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponseError,
    ServiceResponseTooLargeError,
    ServiceTimeoutError,
    ServiceUnavailableError,
)
from ._inbound import continue_from_stream_entry, stream_entry_fields
from ._response import Headers, ServiceResponse
from ._version import __version__ as __version__
from ._wire import JSON_NULL, Request

if TYPE_CHECKING:
    from ._async import AsyncServiceClient
    from ._sync import SyncServiceClient

__all__ = [  # noqa: RUF022 - plain sorted(), which test_packaging checks
    "AsyncServiceClient",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "ClientConfig",
    "CorrelationIdFilter",
    "Headers",
    "JSON_NULL",
    "Request",
    "ServiceClientError",
    "ServiceConnectionError",
    "ServiceDecodeError",
    "ServiceResponse",
    "ServiceResponseError",
    "ServiceResponseTooLargeError",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
    "SyncServiceClient",
    "continue_from_stream_entry",
    "correlation_id_ctx",
    "log_correlation_ids",
    "stream_entry_fields",
]

# A library's records go where the application sends them: with no logging set up, they
# are not printed to stderr by logging's last-resort handler.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # The facades load on first use so that `import commclient` pulls in no transport.
    if name == "SyncServiceClient":
        from ._sync import SyncServiceClient

        return SyncServiceClient
    if name == "AsyncServiceClient":
        from ._async import AsyncServiceClient

        return AsyncServiceClient
    raise AttributeError(f"module 'commclient' has no attribute {name!r}")

"""Resilient, observable service-to-service HTTP calls.

One sans-I/O resilience core (retry with backoff, circuit breaker, retry budget,
deadline, error mapping, metrics, correlation-id logging) under two facades:
:class:`SyncServiceClient` on requests and :class:`AsyncServiceClient` on httpx.
Neither transport is imported until its facade is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import ClientConfig
from ._correlation import CorrelationIdFilter, correlation_id_ctx
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
from ._wire import JSON_NULL

if TYPE_CHECKING:
    from ._async import AsyncServiceClient
    from ._sync import SyncServiceClient

__all__ = [  # noqa: RUF022 - plain sorted(), which test_packaging checks
    "AsyncServiceClient",
    "ClientConfig",
    "CorrelationIdFilter",
    "Headers",
    "JSON_NULL",
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
    "stream_entry_fields",
]


def __getattr__(name: str) -> Any:
    # The facades load on first use so that `import commclient` pulls in no transport.
    if name == "SyncServiceClient":
        from ._sync import SyncServiceClient

        return SyncServiceClient
    if name == "AsyncServiceClient":
        from ._async import AsyncServiceClient

        return AsyncServiceClient
    raise AttributeError(f"module 'commclient' has no attribute {name!r}")

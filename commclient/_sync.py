"""SyncServiceClient: the core driven over a ``requests.Session``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ._config import ClientConfig
from ._core import (
    Attempt,
    JsonParams,
    Outcome,
    Response,
    Sleep,
    TooLarge,
    TransportFailure,
    build_core,
    declared_size,
)
from ._correlation import redact_text
from ._policy import Clock, FailureKind

if TYPE_CHECKING:
    import requests

_CHUNK = 64 * 1024


def _import_requests() -> Any:
    try:
        import requests
    except ImportError as exc:
        raise ImportError(
            "SyncServiceClient needs requests: pip install 'commclient[sync]'"
        ) from exc
    return requests


class SyncServiceClient:
    """A blocking client for one target service, for code that is not async yet."""

    def __init__(
        self,
        base_url: str,
        *,
        service_name: str,
        target_service: str,
        config: ClientConfig | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._requests = _import_requests()
        exceptions = self._requests.exceptions
        # Reads of a streamed body raise urllib3's own exceptions, not requests'.
        self._transport_errors = (
            exceptions.RequestException,
            self._requests.packages.urllib3.exceptions.HTTPError,
        )
        # Refused before sending: the caller's bug, never the target's failure.
        self._local_errors = (
            exceptions.InvalidHeader,
            exceptions.InvalidURL,
            exceptions.MissingSchema,
            exceptions.InvalidSchema,
            exceptions.InvalidJSONError,
        )
        self._core = build_core(base_url, service_name, target_service, config, registry, clock)
        self._session: requests.Session | None = None
        self._closed = False

    @property
    def config(self) -> ClientConfig:
        return self._core.config

    def request(
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
    ) -> Any:
        """Call ``method path`` with retries and the breaker; return the decoded JSON body.

        ``path`` may be a template (``/api/users/{user_id}``) filled from ``path_params``;
        the template is then the metrics' endpoint label. ``deadline`` (seconds) bounds
        the whole call and overrides the config's.
        """
        session = self._session or self._open()
        flow = self._core.call(
            method,
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        ).flow()
        try:
            action = next(flow)
            while True:
                outcome = None
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                else:
                    outcome = self._send(session, action)
                action = flow.send(outcome)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    def _send(self, session: requests.Session, attempt: Attempt) -> Outcome:
        request = attempt.request
        give_up_at = None if attempt.time_limit is None else time.monotonic() + attempt.time_limit
        try:
            response = session.request(
                request.method,
                request.url,
                params=request.params,
                data=request.content,
                headers=request.headers,
                timeout=(attempt.connect_timeout, attempt.read_timeout),
                stream=True,
            )
            with response:
                status, headers = response.status_code, response.headers
                size = declared_size(headers)
                limit = request.max_response_bytes
                if size is not None and size > limit:
                    return TooLarge(status, size)
                if size is not None and give_up_at is None:
                    return Response(status, headers, response.content)
                # Read what arrives as it arrives: the size limit and the deadline are
                # checked between reads instead of after a body of unknown length.
                body = bytearray()
                while chunk := response.raw.read1(_CHUNK, decode_content=True):
                    body += chunk
                    if len(body) > limit:
                        return TooLarge(status, None)
                    if give_up_at is not None and time.monotonic() > give_up_at:
                        return TransportFailure(
                            FailureKind.READ_TIMEOUT,
                            TimeoutError("the deadline passed while the body was arriving"),
                        )
                return Response(status, headers, bytes(body))
        except self._local_errors as exc:
            raise ValueError(f"the request cannot be sent: {redact_text(str(exc))}") from exc
        except self._transport_errors as exc:
            return TransportFailure(_classify(exc, self._requests.exceptions), exc)

    def get(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``GET`` through :meth:`request`."""
        return self.request(
            "GET",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    def post(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``POST`` through :meth:`request`.

        Repeated only when it never reached the server, or with ``idempotency_key``.
        """
        return self.request(
            "POST",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    def put(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``PUT`` through :meth:`request`."""
        return self.request(
            "PUT",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    def patch(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``PATCH`` through :meth:`request`.

        Repeated only when it never reached the server, or with ``idempotency_key``.
        """
        return self.request(
            "PATCH",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    def delete(
        self,
        path: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: JsonParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``DELETE`` through :meth:`request`."""
        return self.request(
            "DELETE",
            path,
            path_params=path_params,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    def _open(self) -> requests.Session:
        if self._closed:
            raise RuntimeError("this SyncServiceClient is closed; create a new one")
        session: requests.Session = self._requests.Session()
        # No hidden retries below the core: it alone decides what is repeated.
        adapter = self._requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=self.config.max_connections, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        return session

    def close(self) -> None:
        """Close the connection pool; calling it again does nothing."""
        self._closed = True
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> SyncServiceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _classify(exc: Exception, exceptions: Any) -> FailureKind:
    """Map requests' and urllib3's exceptions onto what the core needs: did the request leave?"""
    from urllib3.exceptions import NewConnectionError, ReadTimeoutError

    if isinstance(exc, exceptions.ConnectTimeout):
        return FailureKind.CONNECT_TIMEOUT
    if isinstance(exc, (exceptions.Timeout, ReadTimeoutError)):
        return FailureKind.READ_TIMEOUT
    if isinstance(exc, exceptions.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", exc.args[0])
        if isinstance(reason, ReadTimeoutError):
            # requests reports a timeout while streaming the body as a ConnectionError.
            return FailureKind.READ_TIMEOUT
        if isinstance(reason, NewConnectionError):
            return FailureKind.CONNECT
    return FailureKind.CONNECTION_LOST

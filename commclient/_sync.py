"""SyncServiceClient: the core driven over a requests ``HTTPAdapter`` (no ``Session``).

A ``Session`` adds what the core must not have: a cookie jar shared by every call,
redirects followed below the core, and the process environment re-read on every
request. The adapter only sends; the core decides the rest.
"""

from __future__ import annotations

import os
import time
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from prometheus_client import CollectorRegistry

from ._auth import Auth
from ._config import ClientConfig
from ._core import (
    Attempt,
    Call,
    ModelT,
    Outcome,
    Sleep,
    TransportFailure,
    build_core,
    deadline_cut_off,
)
from ._correlation import redact_transport_logs
from ._errors import ClientClosedError
from ._extras import import_extra
from ._policy import Clock, FailureKind
from ._resolver import LookupsExhausted
from ._response import ServiceResponse
from ._watchdog import attempt_watch, watched_adapter

if TYPE_CHECKING:
    import requests
    from typing_extensions import Unpack

    from ._core import CallOptions

_CHUNK = 64 * 1024
#: The loggers requests and urllib3 write request paths (with their query) to.
_TRANSPORT_LOGGERS = (
    "requests",
    "urllib3",
    "urllib3.connection",
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
    "urllib3.http2.connection",
    "urllib3.contrib.pyopenssl",
)


def _import_requests() -> Any:
    return import_extra("requests", extra="sync", feature="SyncServiceClient")


class SyncServiceClient:
    """A blocking client for one target service, for code that is not async yet.

    Safe to share between threads. After ``os.fork()`` the child drops the inherited
    connections unused (they belong to the parent) and opens its own on first use.
    """

    def __init__(
        self,
        base_url: str,
        *,
        service_name: str,
        target_service: str,
        config: ClientConfig | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        auth: Auth | None = None,
    ) -> None:
        self._requests = _import_requests()
        redact_transport_logs(_TRANSPORT_LOGGERS)
        exceptions = self._requests.exceptions
        # Reads of a streamed body raise urllib3's own exceptions, not requests'.
        self._transport_errors = (
            exceptions.RequestException,
            self._requests.packages.urllib3.exceptions.HTTPError,
        )
        # Refused before sending: the core tells a caller's bug from a server's bad redirect.
        self._unsendable = (
            exceptions.InvalidHeader,
            exceptions.InvalidURL,
            exceptions.MissingSchema,
            exceptions.InvalidSchema,
            exceptions.InvalidJSONError,
            self._requests.packages.urllib3.exceptions.LocationValueError,
            UnicodeError,
        )
        self._bad_response_head = self._requests.packages.urllib3.exceptions.InvalidHeader
        self._core = build_core(
            base_url, service_name, target_service, config, registry, clock, auth
        )
        self._settings = _TransportSettings(self._requests, self._core.config, self._core.base_url)
        self._adapter: requests.adapters.HTTPAdapter | None = None
        self._closed = False
        _clients.add(self)

    @property
    def config(self) -> ClientConfig:
        """The client's configuration (frozen)."""
        return self._core.config

    @overload
    def request(
        self,
        method: str,
        path: str,
        *,
        response_model: type[ModelT],
        **options: Unpack[CallOptions],
    ) -> ModelT: ...

    @overload
    def request(
        self, method: str, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    def request(
        self, method: str, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """Call ``method path`` with retries and the breaker; return the decoded JSON body.

        ``path`` may be a template (``/api/users/{user_id}``) filled from ``path_params``;
        the template is then the metrics' endpoint label. One body at most: ``json=``
        (``JSON_NULL`` sends ``null``), ``content=`` bytes, ``data=`` form fields and/or
        ``files=``. ``deadline`` bounds the whole call; ``timeout``, ``connect_timeout``,
        ``max_retries`` and ``auth`` replace the client's for this call.
        ``response_model``: a pydantic model or dataclass the body is validated into
        (``ServiceDecodeError`` naming the field when it does not fit).
        """
        call = self._core.call(method, path, response_model=response_model, **options)
        return self._run(call)

    def request_raw(
        self, method: str, path: str, **options: Unpack[CallOptions]
    ) -> ServiceResponse:
        """Like :meth:`request`, but return the response undecoded (any status below 400)."""
        response: ServiceResponse = self._run(self._core.call(method, path, raw=True, **options))
        return response

    def head(self, path: str, **options: Unpack[CallOptions]) -> ServiceResponse:
        """``HEAD`` through :meth:`request_raw`: the status and headers, no body."""
        return self.request_raw("HEAD", path, **options)

    def options(self, path: str, **options: Unpack[CallOptions]) -> ServiceResponse:
        """``OPTIONS`` through :meth:`request_raw` (its ``Allow`` header, its body if any)."""
        return self.request_raw("OPTIONS", path, **options)

    @overload
    def get(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    def get(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    def get(self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]) -> Any:
        """``GET`` through :meth:`request`."""
        return self.request("GET", path, response_model=response_model, **options)

    @overload
    def post(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    def post(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    def post(self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]) -> Any:
        """``POST`` through :meth:`request`; repeated only when it never reached the server,
        or with ``idempotency_key``."""
        return self.request("POST", path, response_model=response_model, **options)

    @overload
    def put(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    def put(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    def put(self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]) -> Any:
        """``PUT`` through :meth:`request`."""
        return self.request("PUT", path, response_model=response_model, **options)

    @overload
    def patch(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    def patch(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    def patch(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """``PATCH`` through :meth:`request`; repeated like :meth:`post`."""
        return self.request("PATCH", path, response_model=response_model, **options)

    @overload
    def delete(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    def delete(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    def delete(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """``DELETE`` through :meth:`request`."""
        return self.request("DELETE", path, response_model=response_model, **options)

    def _run(self, call: Call) -> Any:
        adapter = self._adapter or self._open()
        flow = call.flow()
        try:
            action = next(flow)
            while True:
                outcome = None
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                else:
                    outcome = self._send(adapter, action)
                action = flow.send(outcome)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    def _send(self, adapter: requests.adapters.HTTPAdapter, attempt: Attempt) -> Outcome:
        request = attempt.request
        if self._closed:
            raise ClientClosedError("SyncServiceClient", during_call=True)
        prepared = self._requests.PreparedRequest()
        prepared.method, prepared.url, prepared.body = request.method, request.url, request.content
        prepared.headers = self._requests.structures.CaseInsensitiveDict(request.headers)
        with attempt_watch(attempt.time_limit) as watch:
            try:
                response = adapter.send(
                    prepared,
                    stream=True,
                    timeout=(attempt.connect_timeout, attempt.read_timeout),
                    verify=self._settings.verify,
                    cert=self._settings.cert,
                    proxies=self._settings.proxies(request.url),
                )
                with response:
                    reader = attempt.reader(response.status_code, response.headers)
                    if reader.stray_body:
                        # A body the server sends anyway may arrive after urllib3 checked
                        # the pooled connection for unread bytes, and be read as the next
                        # response's status line: the connection is not used again.
                        connection = response.raw.connection
                        if connection is not None:
                            connection.close()
                    if reader.wants_more:
                        for chunk in response.raw.stream(_CHUNK, decode_content=False):
                            if not reader.feed(chunk):
                                break
                    outcome = attempt.response(
                        response.status_code, response.headers, reader, response.reason or ""
                    )
                if watch.fired:
                    # The watchdog shut the socket down mid-exchange: http.client takes the
                    # end of a head that was still arriving for its end, which would make a
                    # 200 with no headers and no body of an attempt the deadline cut off.
                    return deadline_cut_off(watch.connected, None)
                return outcome
            except self._unsendable as exc:
                if exc.args and isinstance(exc.args[0], self._bad_response_head):
                    # urllib3 refuses a response head it cannot frame (two different
                    # Content-Length values); requests reports that as a request error.
                    return TransportFailure(FailureKind.CONNECTION_LOST, exc)
                return TransportFailure(FailureKind.UNSENDABLE, exc)
            except LookupsExhausted as exc:
                # This process's lookup threads are all taken: not the target's doing.
                return TransportFailure(FailureKind.POOL_TIMEOUT, exc)
            except self._transport_errors as exc:
                # The lookup gives up at the deadline as the watchdog fires: either may
                # come first, and the deadline is what ended the attempt.
                if watch.expired:
                    return deadline_cut_off(watch.connected, exc)
                if self._closed:
                    raise ClientClosedError("SyncServiceClient", during_call=True) from exc
                return TransportFailure(_classify(exc, self._requests.exceptions), exc)

    def _open(self) -> requests.adapters.HTTPAdapter:
        if self._closed:
            raise ClientClosedError("SyncServiceClient")
        # No hidden retries below the core: it alone decides what is repeated.
        adapter: requests.adapters.HTTPAdapter = watched_adapter(
            self._requests, self.config.max_connections
        )
        self._adapter = adapter
        return adapter

    def close(self) -> None:
        """Close the connection pool; calling it again does nothing."""
        self._closed = True
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            adapter.close()

    def _forget_connections(self) -> None:
        # In a forked child: the pooled sockets are the parent's. Closing them here would
        # send nothing (the parent still holds them), but using them would interleave both
        # processes' requests on one connection. Drop them; the next call opens new ones.
        self._adapter = None

    def __enter__(self) -> SyncServiceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _TransportSettings:
    """TLS and proxy settings, with the environment read once when ``trust_env`` is on.

    requests' ``Session`` re-reads the proxy variables twice per request (about a third
    of a loopback call); reading them when the client is built gives the same answer
    for every later call, except for variables changed in between.
    """

    def __init__(self, requests: Any, config: ClientConfig, base_url: str) -> None:
        self._get_environ_proxies = requests.utils.get_environ_proxies
        self._trust_env = config.trust_env
        self._base_origin = _origin(base_url)
        verify: bool | str = config.verify
        if config.trust_env and verify is True:
            verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            )
        self.verify = verify
        self.cert = config.cert
        self._fixed: dict[str, str] | None = None
        if config.proxy is not None:
            self._fixed = {"http": config.proxy, "https": config.proxy}
        self._base_proxies = self._resolve(base_url)

    def _resolve(self, url: str) -> dict[str, str]:
        if self._fixed is not None:
            return self._fixed
        if not self._trust_env:
            return {}
        proxies: dict[str, str] = self._get_environ_proxies(url)
        return proxies

    def proxies(self, url: str) -> dict[str, str]:
        if url.startswith(self._base_origin):
            return self._base_proxies
        return self._resolve(url)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/"


def _classify(exc: Exception, exceptions: Any) -> FailureKind:
    """Map requests' and urllib3's exceptions onto what the core needs: did the request leave?"""
    from urllib3.exceptions import (
        ConnectTimeoutError,
        NewConnectionError,
        ProxyError,
        ReadTimeoutError,
    )

    if isinstance(exc, exceptions.ConnectTimeout):
        return FailureKind.CONNECT_TIMEOUT
    if isinstance(exc, (exceptions.Timeout, ReadTimeoutError)):
        return FailureKind.READ_TIMEOUT
    if isinstance(exc, exceptions.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", exc.args[0])
        if isinstance(reason, ProxyError):
            # urllib3 says so only before it reached the proxy (or its tunnel was set
            # up): nothing was sent to the target.
            original = reason.original_error
            # urllib3's NewConnectionError is a ConnectTimeoutError too.
            if isinstance(original, ConnectTimeoutError) and not isinstance(
                original, NewConnectionError
            ):
                return FailureKind.CONNECT_TIMEOUT
            return FailureKind.CONNECT
        if isinstance(reason, ReadTimeoutError):
            # requests reports a timeout while streaming the body as a ConnectionError.
            return FailureKind.READ_TIMEOUT
        if isinstance(reason, NewConnectionError):
            return FailureKind.CONNECT
    return FailureKind.CONNECTION_LOST


_clients: weakref.WeakSet[SyncServiceClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)

"""AsyncServiceClient: the core driven over an ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from prometheus_client import CollectorRegistry

from ._admission import AsyncGate, connect_timeout_kind, queue_timeout
from ._auth import Auth
from ._config import ClientConfig
from ._core import (
    BUILTIN_HEADERS,
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
from ._pool import give_back
from ._pool import install as install_pool_assignment
from ._resolver import LookupsExhausted, is_address, resolver
from ._response import ServiceResponse

if TYPE_CHECKING:
    import ssl

    import httpx
    from typing_extensions import Unpack

    from ._core import CallOptions


#: The loggers httpx and httpcore write request URLs to.
_TRANSPORT_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def _import_httpx() -> Any:
    return import_extra("httpx", extra="async", feature="AsyncServiceClient")


class AsyncServiceClient:
    """An asyncio client for one target service.

    Its ``httpx.AsyncClient`` is made on first use inside the running event loop and
    belongs to that loop: connections cannot move between loops. After ``os.fork()``
    the child drops the inherited pool unused and opens its own on first use.
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
        self._httpx = _import_httpx()
        redact_transport_logs(_TRANSPORT_LOGGERS)
        self._core = build_core(
            base_url, service_name, target_service, config, registry, clock, auth
        )
        # The pool sends the built-in headers itself: a call that adds none passes no headers
        # and spares httpx normalising the same three on every request.
        plain = self._core.plain_headers
        self._pool_headers = plain if plain == BUILTIN_HEADERS else None
        self._client: httpx.AsyncClient | None = None
        self._gate = self._new_gate()
        self._closer: AsyncGenerator[None, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[float, float], httpx.Timeout] = {}
        self._spent: httpx.ByteStream = self._httpx.ByteStream(b"")
        self._open_lock = threading.Lock()
        self._closed = False
        _clients.add(self)

    @property
    def config(self) -> ClientConfig:
        """The client's configuration (frozen)."""
        return self._core.config

    @overload
    async def request(
        self,
        method: str,
        path: str,
        *,
        response_model: type[ModelT],
        **options: Unpack[CallOptions],
    ) -> ModelT: ...

    @overload
    async def request(
        self, method: str, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    async def request(
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
        return await self._run(call)

    async def request_raw(
        self, method: str, path: str, **options: Unpack[CallOptions]
    ) -> ServiceResponse:
        """Like :meth:`request`, but return the response undecoded (any status below 400)."""
        response: ServiceResponse = await self._run(
            self._core.call(method, path, raw=True, **options)
        )
        return response

    async def head(self, path: str, **options: Unpack[CallOptions]) -> ServiceResponse:
        """``HEAD`` through :meth:`request_raw`: the status and headers, no body."""
        return await self.request_raw("HEAD", path, **options)

    async def options(self, path: str, **options: Unpack[CallOptions]) -> ServiceResponse:
        """``OPTIONS`` through :meth:`request_raw` (its ``Allow`` header, its body if any)."""
        return await self.request_raw("OPTIONS", path, **options)

    @overload
    async def get(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    async def get(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    async def get(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """``GET`` through :meth:`request`."""
        return await self.request("GET", path, response_model=response_model, **options)

    @overload
    async def post(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    async def post(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    async def post(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """``POST`` through :meth:`request`; repeated only when it never reached the server,
        or with ``idempotency_key``."""
        return await self.request("POST", path, response_model=response_model, **options)

    @overload
    async def put(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    async def put(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    async def put(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """``PUT`` through :meth:`request`."""
        return await self.request("PUT", path, response_model=response_model, **options)

    @overload
    async def patch(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    async def patch(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    async def patch(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """``PATCH`` through :meth:`request`; repeated like :meth:`post`."""
        return await self.request("PATCH", path, response_model=response_model, **options)

    @overload
    async def delete(
        self, path: str, *, response_model: type[ModelT], **options: Unpack[CallOptions]
    ) -> ModelT: ...

    @overload
    async def delete(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any: ...

    async def delete(
        self, path: str, *, response_model: Any = None, **options: Unpack[CallOptions]
    ) -> Any:
        """``DELETE`` through :meth:`request`."""
        return await self.request("DELETE", path, response_model=response_model, **options)

    async def _run(self, call: Call) -> Any:
        client = self._client
        if client is None or self._loop is not asyncio.get_running_loop():
            client = await self._open()
        flow = call.flow()
        try:
            action = next(flow)
            while True:
                outcome = None
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                else:
                    outcome = await self._send(client, action)
                action = flow.send(outcome)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def _send(self, client: httpx.AsyncClient, attempt: Attempt) -> Outcome:
        if self._closed:
            raise ClientClosedError("AsyncServiceClient", during_call=True)
        gate = self._gate
        time_limit = attempt.time_limit
        if not gate.try_enter():
            # Wait in line here, not in httpcore's pool; the wait counts against the deadline.
            queued_at = time.monotonic()
            pool_timeout = self.config.pool_timeout
            by_deadline = time_limit is not None and time_limit <= pool_timeout
            if not await gate.enter(time_limit if by_deadline else pool_timeout):
                return queue_timeout(time.monotonic() - queued_at, by_deadline)
            if self._core.breaker.state == "open":
                # The target failed enough while this attempt waited in line: it is not
                # sent (the core fails the call fast), and its turn goes to the next.
                gate.leave()
                return TransportFailure(
                    FailureKind.OPENED, RuntimeError("the breaker opened while it waited in line")
                )
            if time_limit is not None:
                time_limit -= time.monotonic() - queued_at
        try:
            if time_limit is None:
                return await self._exchange(client, attempt, None)
            if time_limit <= 0:
                return queue_timeout(attempt.time_limit or 0.0, True)
            progress = _Progress()
            try:
                return await asyncio.wait_for(
                    self._exchange(client, attempt, {"trace": progress.trace}), time_limit
                )
            except asyncio.TimeoutError as exc:
                return deadline_cut_off(progress.sending, exc)
        finally:
            gate.leave()

    async def _exchange(
        self, client: httpx.AsyncClient, attempt: Attempt, extensions: dict[str, Any] | None
    ) -> Outcome:
        request = attempt.request
        httpx = self._httpx
        sent_at = time.monotonic()
        try:
            response = await client.send(
                client.build_request(
                    request.method,
                    request.url,
                    content=request.content,
                    headers=None if request.headers is self._pool_headers else request.headers,
                    timeout=self._timeout(attempt.connect_timeout, attempt.read_timeout),
                    extensions=extensions,
                ),
                stream=True,
            )
            try:
                reader = attempt.reader(response.status_code, response.headers)
                if reader.wants_more:
                    await _read(response, reader.feed, httpx.RequestError)
                if reader.stray_body or _bytes_past_the_end(response):
                    # httpcore would keep the stray bytes and read them as the next
                    # response's status line; a closed stream is dropped from the pool.
                    stream = response.extensions.get("network_stream")
                    if stream is not None:
                        await stream.aclose()
                return attempt.response(
                    response.status_code, response.headers, reader, response.reason_phrase
                )
            finally:
                await _close_response(response)
                # httpx's response and its stream refer to each other: left so, every call
                # is garbage (about 36 objects) that only the cycle collector frees, whose
                # collections grow with the tasks alive (a tenth of the time at 1,000 tasks).
                # Failed calls still leave cycles (an exception's traceback refers to its
                # frames: some 30 objects for a 4xx, a few hundred for a timeout), as does a
                # call cancelled during the close, which skips this line.
                response.stream = self._spent
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return TransportFailure(FailureKind.UNSENDABLE, exc)
        except LookupsExhausted as exc:
            # This process's lookup threads are all taken: not the target's doing.
            return TransportFailure(FailureKind.POOL_TIMEOUT, exc)
        except httpx.HTTPError as exc:
            if self._closed:
                raise ClientClosedError("AsyncServiceClient", during_call=True) from exc
            kind = _classify(exc, httpx)
            if kind is FailureKind.CONNECT_TIMEOUT:
                late_by = time.monotonic() - sent_at - attempt.connect_timeout
                kind = connect_timeout_kind(late_by, attempt.connect_timeout)
            return TransportFailure(kind, exc)
        except RuntimeError as exc:
            if client.is_closed and self._closed:
                # httpx refuses to send on a closed client: the caller closed it meanwhile.
                raise ClientClosedError("AsyncServiceClient", during_call=True) from exc
            if client.is_closed:
                # Its loop closed the pool on its way out (finalising its async generators):
                # the client is not closed, and a call on the next loop opens a new pool.
                raise RuntimeError(
                    "this AsyncServiceClient's connections were closed with its event loop "
                    "during the call"
                ) from exc
            raise

    def _timeout(self, connect: float, read: float) -> httpx.Timeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._httpx.Timeout(read, connect=connect, pool=self.config.pool_timeout)
            if len(self._timeouts) < 64:
                self._timeouts[(connect, read)] = timeout
        return timeout

    async def _open(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        # Check and claim under one lock: two threads, each with its own loop, must not
        # both build a pool for this client (one would leak, one would be lost).
        with self._open_lock:
            if self._closed:
                raise ClientClosedError("AsyncServiceClient")
            if self._client is not None and self._loop is loop:
                return self._client
            if self._loop is not None and not self._loop.is_closed():
                state = (
                    " that is still running"
                    if self._loop.is_running()
                    else ", which is not closed (its connections are still open there; "
                    "close it, as asyncio.run() does, to move the client on)"
                )
                raise RuntimeError(
                    f"this AsyncServiceClient belongs to another event loop{state}; "
                    "create one client per event loop, or call it from that loop "
                    "(compat.sync_proxy runs a client on one shared loop for sync code)"
                )
            # First use, or the previous loop is gone and its connections with it.
            client = self._new_client()
            self._gate = self._new_gate()
            # asyncio.run() finalises the async generators of its loop before closing it:
            # this one closes the pool then, so a client used from successive asyncio.run()
            # calls leaves no sockets open behind it.
            closer = _close_with_loop(client)
            self._client, self._loop, self._closer = client, loop, closer
        await closer.asend(None)
        return client

    def _new_gate(self) -> AsyncGate:
        config = self.config
        return AsyncGate(config.max_concurrency or config.max_connections)

    def _new_client(self) -> httpx.AsyncClient:
        config = self.config
        transports = self._httpx
        client: httpx.AsyncClient = transports.AsyncClient(
            limits=transports.Limits(max_connections=config.max_connections),
            headers=BUILTIN_HEADERS,
            # Redirects are the core's: bounded, inside the deadline, never to another
            # origin with credentials.
            follow_redirects=False,
            cookies=_no_cookie_jar(),
            verify=_ssl_context(config),
            proxy=config.proxy,
            trust_env=config.trust_env,
        )
        # Not transport=: httpx would then ignore the proxies of the environment.
        transport = getattr(client, "_transport", None)
        _resolve_names_apart(transport)
        install_pool_assignment(getattr(transport, "_pool", None))
        return client

    async def close(self) -> None:
        """Close the connection pool; calling it again does nothing."""
        self._closed = True
        closer, self._closer, self._client = self._closer, None, None
        if closer is not None and self._loop is asyncio.get_running_loop():
            await closer.aclose()

    aclose = close

    def _forget_connections(self) -> None:
        # In a forked child: the pool's sockets are the parent's, and so is its loop.
        # Keep the objects alive, unused: finalising them would close the pool from a
        # loop that does not run here.
        _inherited.append((self._client, self._closer))
        self._client, self._closer, self._loop = None, None, None
        self._open_lock = threading.Lock()

    async def __aenter__(self) -> AsyncServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _resolve_names_apart(transport: Any) -> None:
    """Have ``transport`` resolve names with :mod:`._resolver`, not asyncio's executor.

    httpcore resolves through anyio on the loop's default executor, a handful of threads
    that lookups of one hanging name fill, stalling the lookups of every other host (and
    everything else run in that executor). httpcore's pool takes its network backend as
    a constructor argument that httpx does not pass on, hence the attributes; with another
    httpx or httpcore that lacks them, names resolve as httpcore does. Requests through a
    proxy use httpx's proxy transports, which are left as they are.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is not None:
        pool._network_backend = _ResolvingBackend(backend)  # type: ignore[union-attr]


class _ResolvingBackend:
    """An httpcore network backend that resolves a name itself, then connects to an address.

    TLS still names the host (httpcore passes the request's host as ``server_hostname``).
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        started = time.monotonic()
        expires_at = None if timeout is None else started + timeout
        if is_address(host):
            stream = await self._inner.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
            return _ConnectingStream(stream, expires_at)
        import httpcore

        try:
            addresses = await asyncio.wait_for(resolver.resolve_async(host, port), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} outlived the connect timeout") from exc
        except socket.gaierror as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        error: Exception | None = None
        for *_, address in addresses:
            remaining = (
                None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            )
            try:
                stream = await self._inner.connect_tcp(
                    address[0], port, remaining, local_address, socket_options
                )
                return _ConnectingStream(stream, expires_at)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} resolved to no address")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.connect_unix_socket(*args, **kwargs)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pool_stream(response: httpx.Response) -> Any:
    """httpcore's stream of ``response`` in its pool, through private attributes of httpx
    (``None`` with versions that lack them)."""
    return getattr(getattr(response.stream, "_stream", None), "_httpcore_stream", None)


def _bytes_past_the_end(response: httpx.Response) -> bool:
    """Whether the server sent more than this response: bytes after its body (past its
    ``Content-Length``) that arrived with it wait in h11's buffer, not on the socket, where
    httpcore's check of an idle connection would see them.

    The parser is reached through the private attributes of httpx and httpcore; with
    versions that lack them, nothing is found (and such bytes poison the next call).
    """
    connection = getattr(getattr(_pool_stream(response), "_stream", None), "_connection", None)
    parser = getattr(connection, "_h11_state", None)
    trailing = getattr(parser, "trailing_data", None)
    return isinstance(trailing, tuple) and bool(trailing[0])


class _ConnectingStream:
    """A TCP stream whose TLS handshake gets what the connect timeout left of it, and
    whose readability check costs one ``poll``.

    httpcore gives the handshake a connect timeout of its own after the lookup and the TCP
    connect: opening a connection could take twice the connect timeout, and the lateness
    rule (``_admission.connect_timeout_kind``) then took a target whose handshake hangs
    for this client's own saturation.

    httpcore's pool asks every idle connection whether its socket is readable (the server
    closed it) each time a request starts or ends, and again after each request that
    found its assigned connection taken: with many connections, that check is most of a
    call's CPU. anyio answers it by building its table of socket attributes (two
    ``getpeername``/``getsockname`` calls among them) and a new ``poll`` object every
    time; here the socket and its ``poll`` are looked up once. Everything else is the
    stream's own.
    """

    __slots__ = ("_expires_at", "_inner", "_poll", "_socket")

    def __init__(self, inner: Any, expires_at: float | None) -> None:
        self._inner = inner
        self._expires_at = expires_at
        self._socket: Any = None
        self._poll: Any = None

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        if self._expires_at is not None:
            left = max(0.0, self._expires_at - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _ConnectingStream(stream, None)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = await self._inner.read(max_bytes, timeout)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._is_readable()
        return self._inner.get_extra_info(info)

    def _is_readable(self) -> bool:
        """What httpcore's ``is_readable`` answers: data or EOF waits on the socket, or
        the socket is gone."""
        poll = self._poll
        if poll is None:
            sock = self._inner.get_extra_info("socket")
            if sock is None or not hasattr(select, "poll") or sock.fileno() < 0:
                return bool(self._inner.get_extra_info("is_readable"))
            poll = select.poll()
            poll.register(sock.fileno(), select.POLLIN)
            self._socket, self._poll = sock, poll
        # A closed socket's descriptor may be another socket's by now: never poll it.
        if self._socket.fileno() < 0:
            return True
        return bool(poll.poll(0))


class _Progress:
    """How far an attempt with a deadline got, from httpcore's trace events."""

    __slots__ = ("sending",)

    def __init__(self) -> None:
        #: The connection is established and the request is going out.
        self.sending = False

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if not self.sending and ".send_request_headers." in event:
            self.sending = True


async def _read(
    response: httpx.Response, feed: Callable[[bytes], bool], failure: type[httpx.RequestError]
) -> None:
    """Feed the body of ``response`` to ``feed`` as it comes, until it returns ``False``.

    Not through ``aiter_raw``: at the end of the body that closes the response itself, in
    the caller's task, where a cancellation cuts the close off (see :func:`_close_response`).
    """
    stream: Any = response.stream
    try:
        async for chunk in stream:
            if not feed(chunk):
                return
    except failure as exc:
        exc.request = response.request  # as aiter_raw does
        raise


#: Connections being closed for a call cancelled during its close (tasks are weakly held).
_closing: set[asyncio.Future[None]] = set()


async def _close_response(response: httpx.Response) -> None:
    """Close ``response``, giving its connection back to the pool even when the caller
    is cancelled meanwhile.

    httpcore gives the connection back only once the response is closed, and its shield
    does not hold against a task's ``cancel()``: a cancellation arriving during the close
    left the request in the pool for good, holding its connection (with
    ``max_connections`` of them, every later call waited out its pool timeout).
    """
    try:
        await response.aclose()
    except asyncio.CancelledError:
        _release(response)
        raise


def _release(response: httpx.Response) -> None:
    """Give back the connection of ``response``, whose close was cut off (see
    :func:`commclient._pool.give_back`), closing what must be in a task of its own."""
    stream = _pool_stream(response)
    pool: Any = getattr(stream, "_pool", None)
    closing = give_back(pool, getattr(stream, "_pool_request", None))
    if closing is None:
        return
    task = asyncio.ensure_future(pool._close_connections(closing))
    _closing.add(task)
    task.add_done_callback(_closed)


def _closed(task: asyncio.Future[None]) -> None:
    _closing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a connection that failed to close is gone anyway


async def _close_with_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


def _no_cookie_jar() -> Any:
    """A jar that keeps nothing: a cookie set for one caller's request must not ride
    along on every later call of the client."""
    import http.cookiejar

    class _RefuseAll(http.cookiejar.DefaultCookiePolicy):
        def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
            return False

    return http.cookiejar.CookieJar(policy=_RefuseAll())


def _ssl_context(config: ClientConfig) -> ssl.SSLContext | bool:
    """httpx's ``verify``: a bool where httpx's own handling suffices, else a context.

    A CA bundle path and a client certificate go through an ``SSLContext``, which
    every httpx version accepts (the ``cert=`` argument is deprecated).
    """
    if config.cert is None and isinstance(config.verify, bool):
        return config.verify
    import ssl

    if config.verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        cafile = config.verify if isinstance(config.verify, str) else _default_ca_bundle(config)
        context = ssl.create_default_context(cafile=cafile)
    if config.cert is not None:
        certfile, keyfile = (config.cert, None) if isinstance(config.cert, str) else config.cert
        context.load_cert_chain(certfile, keyfile)
    return context


def _default_ca_bundle(config: ClientConfig) -> str | None:
    if config.trust_env and os.environ.get("SSL_CERT_FILE"):
        return os.environ["SSL_CERT_FILE"]
    try:
        import certifi
    except ImportError:
        return None
    bundle: str = certifi.where()
    return bundle


def _classify(exc: Exception, httpx: Any) -> FailureKind:
    """Map httpx's exceptions onto what the core needs to know: did the request leave?"""
    if isinstance(exc, httpx.PoolTimeout):
        # Every connection of this client was busy: its own saturation, not the target's.
        return FailureKind.POOL_TIMEOUT
    if isinstance(exc, httpx.ConnectTimeout):
        return FailureKind.CONNECT_TIMEOUT
    if isinstance(exc, httpx.TimeoutException):
        return FailureKind.READ_TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return FailureKind.CONNECT
    return FailureKind.CONNECTION_LOST


_clients: weakref.WeakSet[AsyncServiceClient] = weakref.WeakSet()
_inherited: list[tuple[Any, Any]] = []


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forget_connections()
    _closing.clear()  # closes on the parent's loops, which do not run here


os.register_at_fork(after_in_child=_after_fork_in_child)

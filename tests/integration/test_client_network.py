"""A slow network on loopback: name lookups that hang, TLS handshakes that trickle.

Name lookups are slowed by a resolver wrapped around the real ``getaddrinfo`` (a test
cannot point the system resolver at a slow DNS server); sockets, TLS and HTTP are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    AsyncServiceClient,
    ServiceClientError,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponseTooLargeError,
    ServiceTimeoutError,
    SyncServiceClient,
    _resolver,
    testing,
)
from tests.http_server import ServerProcess
from tests.integration.conftest import Names, fast_config
from tests.reliability.hostile_server import HostileServer


class SlowResolver:
    """``getaddrinfo`` that holds lookups of ``name`` until released or timed out.

    The name is new for each test: lookups are shared per name by the whole process, and a
    lookup another test left hanging must not answer for this one.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.name = f"slow-{uuid.uuid4().hex[:12]}.test"
        self.released = threading.Event()
        self.started = threading.Semaphore(0)
        self._real = socket.getaddrinfo

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (self.name, self.name.encode()):
            self.started.release()
            self.released.wait(self.delay)
            host = "127.0.0.1"
        return self._real(host, *args, **kwargs)


@pytest.fixture
def slow_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowResolver]:
    resolver = SlowResolver(delay=30.0)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver
    resolver.released.set()


class TricklingTLSServer:
    """Accepts TCP connections and answers a ClientHello with a TLS record header, then one
    byte every ``interval`` seconds: every read is quick, the handshake never ends."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            # A handshake record announcing 16 kB, which never completes.
            connection.sendall(b"\x16\x03\x03\x40\x00")
            for _ in range(int(20 / self.interval)):
                if self._stop.wait(self.interval):
                    return
                connection.sendall(b"\x02")

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)


@pytest.fixture
def trickling_tls() -> Iterator[TricklingTLSServer]:
    server = TricklingTLSServer()
    yield server
    server.close()


def test_one_deadline_holds_through_a_slow_lookup_and_a_trickling_handshake(
    make: Any, slow_resolver: SlowResolver, trickling_tls: TricklingTLSServer
) -> None:
    slow_resolver.delay = 0.8
    call = make(
        fast_config(max_retries=1, connect_timeout=5.0, timeout=5.0),
        base_url=f"https://{slow_resolver.name}:{trickling_tls.port}",
    )
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError) as info:
        call("get", "/echo", deadline=1.0)
    elapsed = time.monotonic() - started
    # Half a second of slack for a loaded machine, below the 1.8 s of a lookup followed by
    # a handshake given a full share of the deadline of its own.
    assert elapsed < 1.5, elapsed
    # Never sent: the lookup and the handshake are the connection's, not a read.
    assert "read timeout" not in str(info.value)


def test_a_lookup_the_deadline_ends_reads_as_the_deadline_on_both_facades(
    make: Any, slow_resolver: SlowResolver
) -> None:
    # The sync facade's lookup gave up at the deadline as the watchdog fired: whichever
    # came first decided the words, and half the time a 5 s connect timeout was blamed.
    call = make(
        fast_config(max_retries=1, connect_timeout=5.0, timeout=5.0),
        base_url=f"http://{slow_resolver.name}:1",
    )
    for _ in range(8):
        with pytest.raises(ServiceTimeoutError) as info:
            call("get", "/echo", deadline=0.1)
        assert "the call's deadline ended the attempt while connecting" in str(info.value)


def test_a_trickling_handshake_is_cut_at_the_deadline(
    make: Any, trickling_tls: TricklingTLSServer
) -> None:
    call = make(
        fast_config(max_retries=1, connect_timeout=5.0, timeout=5.0),
        base_url=f"https://127.0.0.1:{trickling_tls.port}",
    )
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError) as info:
        call("get", "/echo", deadline=0.5)
    assert time.monotonic() - started < 3.0
    assert "read timeout" not in str(info.value)


def test_a_handshake_that_times_out_is_a_connect_timeout_on_both_facades(
    make: Any, trickling_tls: TricklingTLSServer
) -> None:
    # urllib3 reports a handshake that outlives the connect timeout as a read timeout: a
    # POST was then not repeated although nothing had been sent.
    call = make(
        fast_config(max_retries=2, connect_timeout=0.3, timeout=5.0),
        base_url=f"https://127.0.0.1:{trickling_tls.port}",
    )
    with testing.no_wait(), pytest.raises(ServiceTimeoutError) as info:
        call("post", "/echo", json={})
    assert str(info.value).startswith("connect timeout: no connection within the connect timeout")
    assert info.value.attempts == 2


def test_a_slow_lookup_and_a_hanging_handshake_share_one_connect_timeout(
    make: Any, slow_resolver: SlowResolver, trickling_tls: TricklingTLSServer
) -> None:
    # httpcore gives the handshake a connect timeout of its own after the lookup and the
    # TCP connect: the attempt took 1.6 s of a 1 s connect timeout, and that lateness made
    # the async facade call a hanging target its own saturation (not counted against it).
    slow_resolver.delay = 0.6
    call = make(
        fast_config(max_retries=1, connect_timeout=1.0, timeout=5.0, circuit_breaker_fail_max=1),
        base_url=f"https://{slow_resolver.name}:{trickling_tls.port}",
    )
    with pytest.raises(ServiceTimeoutError) as info:
        call("get", "/echo")
    assert str(info.value).startswith("connect timeout: no connection within the connect timeout")
    assert call.breaker == "open"


class TwoTargets:
    """A client of a name whose lookups hang and one of a healthy host, on one facade.

    The async clients share one event loop (and so its executor), as in a service.
    """

    def __init__(
        self, facade: str, slow_name: str, port: int, names: Names, **healthy_config: Any
    ) -> None:
        self.facade = facade
        cls: Any = SyncServiceClient if facade == "sync" else AsyncServiceClient
        self.slow = cls(
            f"http://{slow_name}:{port}",
            service_name=names.service,
            target_service=f"{names.target}-slow",
            config=fast_config(max_retries=1),
            registry=CollectorRegistry(),
        )
        self.healthy = cls(
            f"http://localhost:{port}",
            service_name=names.service,
            target_service=names.target,
            config=fast_config(max_retries=1, **healthy_config),
            registry=CollectorRegistry(),
        )
        self.loop = asyncio.new_event_loop() if facade == "async" else None

    def run(self, slow_calls: int, healthy_calls: int, healthy_deadline: float) -> list[Any]:
        """Start the slow calls together, then make the healthy ones; their outcomes."""
        if self.loop is not None:
            return self.loop.run_until_complete(
                self._run_async(slow_calls, healthy_calls, healthy_deadline)
            )
        barrier = threading.Barrier(slow_calls)

        def slow_call() -> None:
            barrier.wait()
            with contextlib.suppress(ServiceTimeoutError, ServiceConnectionError):
                self.slow.get("/echo", deadline=0.2)

        threads = [threading.Thread(target=slow_call) for _ in range(slow_calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        outcomes = []
        for _ in range(healthy_calls):
            try:
                outcomes.append(self.healthy.get("/echo", deadline=healthy_deadline))
            except ServiceClientError as error:
                outcomes.append(error)
        return outcomes

    async def _run_async(
        self, slow_calls: int, healthy_calls: int, healthy_deadline: float
    ) -> list[Any]:
        async def slow_call() -> None:
            with contextlib.suppress(ServiceTimeoutError, ServiceConnectionError):
                await self.slow.get("/echo", deadline=0.2)

        await asyncio.gather(*(slow_call() for _ in range(slow_calls)))
        outcomes = []
        for _ in range(healthy_calls):
            try:
                outcomes.append(await self.healthy.get("/echo", deadline=healthy_deadline))
            except ServiceClientError as error:
                outcomes.append(error)
        return outcomes

    def call(self, client: Any, deadline: float) -> Any:
        """One GET of ``client``, on the facade's side."""
        result = client.get("/echo", deadline=deadline)
        return result if self.loop is None else self.loop.run_until_complete(result)

    def close(self) -> None:
        if self.loop is None:
            self.slow.close()
            self.healthy.close()
            return
        self.loop.run_until_complete(self.slow.close())
        self.loop.run_until_complete(self.healthy.close())
        self.loop.close()


def test_hanging_lookups_of_one_name_do_not_starve_other_hosts(
    facade: str, http_server: ServerProcess, names: Names, slow_resolver: SlowResolver
) -> None:
    # More hanging lookups than asyncio's default executor has threads (min(32, CPUs + 4)).
    targets = TwoTargets(
        facade, slow_resolver.name, http_server.port, names, circuit_breaker_fail_max=5
    )
    try:
        outcomes = targets.run(slow_calls=40, healthy_calls=6, healthy_deadline=2.0)
        # The healthy host's lookups still run: each call succeeds, its breaker stays shut.
        assert [outcome["method"] for outcome in outcomes] == ["GET"] * 6
        assert testing.breaker_state(names.service, names.target) == "closed"
        # Once the name resolves, its own calls go through again.
        slow_resolver.released.set()
        assert targets.call(targets.slow, deadline=2.0)["method"] == "GET"
    finally:
        slow_resolver.released.set()
        targets.close()


def test_lookups_exhausted_in_this_process_never_count_against_the_target(
    facade: str,
    http_server: ServerProcess,
    names: Names,
    slow_resolver: SlowResolver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process of its own: no lookup left running by another test, one allowed at a time.
    monkeypatch.setattr(_resolver.resolver, "_running", {})
    monkeypatch.setattr(_resolver, "MAX_LOOKUPS", 1)
    targets = TwoTargets(
        facade, slow_resolver.name, http_server.port, names, circuit_breaker_fail_max=1
    )
    try:
        outcomes = targets.run(slow_calls=1, healthy_calls=3, healthy_deadline=1.0)
        assert slow_resolver.started.acquire(timeout=5)
        for outcome in outcomes:
            assert isinstance(outcome, ServiceTimeoutError), outcome
            assert "name lookups are still running" in str(outcome)
        assert testing.breaker_state(names.service, names.target) == "closed"
    finally:
        slow_resolver.released.set()
        targets.close()


# --- bytes after a response's end ------------------------------------------------------------


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_a_body_sent_after_a_bodiless_response_does_not_poison_the_next_call(
    make: Any, method: str
) -> None:
    """The test server sends a body to a HEAD and after a 304 too, as broken servers do:
    the connection is dropped, and the next call on the client gets its own answer."""
    call = make(fast_config(max_retries=1, circuit_breaker_fail_max=1))
    for _ in range(3):
        if method == "HEAD":
            response = call("request_raw", "HEAD", "/echo")
            assert response.status_code == 200
            assert response.content == b""
        else:
            response = call("request_raw", "GET", "/reply", params={"status": "304"})
            assert response.status_code == 304
        echo = call("post", "/echo", json={"n": 1})
        assert echo["body"] == {"n": 1}
    assert call.breaker == "closed"


class StrayBytesServer:
    """Sends bytes where no response is: a HEAD gets ``Content-Length: 5`` and no body, the
    5 bytes going out only when the next request arrives on that connection, just before
    its answer (late, as a server's second write comes behind Nagle and a delayed ACK);
    ``/long`` gets its JSON body and 7 bytes more, in the same write.

    ``requests`` lists what it answered, by method; no timing decides what happens.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        pending = b""
        buffer = b""
        with connection, contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ")[0]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                buffer = buffer[length:]
                self.requests.append(method)
                if method == "HEAD":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                    pending = b"hello"
                    continue
                body = b'{"ok": true}'
                extra = b"garbage" if lines[0].split(" ")[1] == "/long" else b""
                connection.sendall(
                    pending + b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s%s" % (len(body), body, extra)
                )
                pending = b""

    def close(self) -> None:
        self._listener.close()


def test_a_body_sent_late_after_a_head_does_not_poison_the_next_call(make: Any) -> None:
    server = StrayBytesServer()
    try:
        call = make(fast_config(max_retries=1, circuit_breaker_fail_max=1), base_url=server.url)
        for _ in range(2):
            assert call("head", "/x").status_code == 200
            # The POST was processed: it must be reported so, not as a broken connection.
            assert call("post", "/y", json={}) == {"ok": True}
        assert server.requests == ["HEAD", "POST", "HEAD", "POST"]
        assert call.breaker == "closed"
    finally:
        server.close()


def test_bytes_past_a_bodys_content_length_do_not_poison_the_next_call(make: Any) -> None:
    # They arrive with the body and wait in the HTTP parser's buffer, where the async
    # transport read them as the next response's status line.
    server = StrayBytesServer()
    try:
        call = make(fast_config(max_retries=1, circuit_breaker_fail_max=1), base_url=server.url)
        for _ in range(2):
            assert call("get", "/long") == {"ok": True}
            assert call("post", "/y", json={}) == {"ok": True}
        assert server.requests == ["GET", "POST", "GET", "POST"]
        assert call.breaker == "closed"
    finally:
        server.close()


# --- the size limit is on decoded bytes --------------------------------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def _raw_response(body: bytes, encoding: str) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n"
        # The hostile server closes after each answer: no client may reuse the connection.
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize("layers", [1, 2])
def test_a_body_of_exactly_the_limit_is_read_whatever_its_encoding_adds(
    make: Any, hostile: HostileServer, layers: int
) -> None:
    body = os.urandom(4096)
    wire = body
    for _ in range(layers):
        wire = gzip.compress(wire)
    assert len(wire) > 4096  # random bytes grow under gzip
    hostile.script(_raw_response(wire, ", ".join(["gzip"] * layers)))
    call = make(fast_config(max_retries=1, max_response_bytes=4096), base_url=hostile.url)
    assert call("request_raw", "GET", "/script").content == body
    hostile.script(_raw_response(gzip.compress(body + b"!"), "gzip"))
    with pytest.raises(ServiceResponseTooLargeError):
        call("request_raw", "GET", "/script")


@pytest.mark.parametrize("layers", [6, 1200])
def test_a_chain_of_too_many_encodings_is_a_decode_error_on_both_facades(
    make: Any, hostile: HostileServer, layers: int
) -> None:
    # Each layer adds a decoder (and, unbounded, a level of recursion: 1,200 of them
    # raised RecursionError on the async facade); the sync transport refused 6 as a lost
    # connection in its own words. At most five are decoded, as urllib3 and curl do.
    wire = b'{"a": 1}'
    for _ in range(layers):
        wire = gzip.compress(wire)
    hostile.script(_raw_response(wire, ", ".join(["gzip"] * layers)))
    call = make(fast_config(max_retries=1), base_url=hostile.url)
    with pytest.raises(ServiceDecodeError, match=r"Content-Encoding .* at most 5"):
        call("get", "/script")
    five = b'{"a": 1}'
    for _ in range(5):
        five = gzip.compress(five)
    hostile.script(_raw_response(five, ", ".join(["gzip"] * 5)))
    assert call("get", "/script") == {"a": 1}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "gzip, gzip"])
def test_a_compressed_body_cut_short_is_a_decode_error_not_a_shorter_body(
    make: Any, hostile: HostileServer, encoding: str
) -> None:
    # Its Content-Length is the truncated size, so the transport sees nothing wrong; the
    # compressed stream knows it has not ended. A CSV lost its last rows without a word.
    rows = b"id,name\n" + b"".join(b"%d,row%d\n" % (i, i) for i in range(2000))
    wire = rows
    for coding in reversed(encoding.split(", ")):
        wire = gzip.compress(wire) if coding == "gzip" else zlib.compress(wire)
    call = make(fast_config(max_retries=1), base_url=hostile.url)
    hostile.script(_raw_response(wire, encoding))
    assert call("request_raw", "GET", "/script").content == rows
    hostile.script(_raw_response(wire[:-100], encoding))
    with pytest.raises(ServiceDecodeError, match="ends before its encoding does"):
        call("request_raw", "GET", "/script")


# --- what a caller reads when the target cannot be reached -----------------------------------


def test_a_name_that_does_not_resolve_reads_the_same_on_both_facades(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def unknown(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("unknown-host.test", b"unknown-host.test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    call = make(fast_config(max_retries=1), base_url="http://unknown-host.test:8000")
    with pytest.raises(ServiceConnectionError) as info:
        call("get", "/echo")
    assert str(info.value) == (
        "connect: cannot resolve 'unknown-host.test': Name or service not known "
        f"(GET http://unknown-host.test:8000/echo -> {call.names.target}, attempts=1)"
    )


def test_a_refused_connection_reads_the_same_on_both_facades(make: Any, refused_port: int) -> None:
    call = make(fast_config(max_retries=1), base_url=f"http://127.0.0.1:{refused_port}")
    with pytest.raises(ServiceConnectionError) as info:
        call("get", "/echo")
    assert str(info.value).startswith(f"connect: 127.0.0.1:{refused_port} refused the connection")


def test_a_read_timeout_reads_the_same_on_both_facades(make: Any) -> None:
    call = make(fast_config(max_retries=1, timeout=0.3))
    with pytest.raises(ServiceTimeoutError) as info:
        call("get", "/slow", params={"seconds": "3"})
    assert str(info.value).startswith("read timeout: no response within the read timeout (GET ")

"""A scripted HTTP/1.1 server on loopback for the integration tests and the benchmark.

It runs in its own process (``python tests/http_server.py --port 0``) so that a test can
kill it and start it again on the same port while a client keeps calling, and so that it
never competes with the client under test for the GIL. It is a small asyncio protocol over
the standard library only: keep-alive HTTP/1.1 with Content-Length bodies, which is what
requests and httpx send, and fast enough for the benchmark. Its own parser lets a behaviour
do what a framework would not allow, such as dropping the connection after reading a request.

Behaviours (``key`` names a log of the requests received; ``first=N`` applies the behaviour
to the first N requests of that key only, later ones get the echo):

=================================  ==========================================================
``/ping``                          ``{"ok": true}``, nothing recorded (the benchmark's call)
``/echo``                          the request as JSON: method, path, query, headers, body
``/status/{code}``                 that status; a JSON ``detail`` naming the query; 204 empty
``/flaky?status=503``              the status with ``Retry-After: retry_after`` seconds, or an
                                   HTTP date ``retry_after_date`` seconds ahead
``/slow?seconds=S``                the echo after S seconds
``/drop?how=close|reset``          reads the request, then closes (FIN) or resets (RST)
``/drip?pieces=N&interval=S``      the headers at once, then the echo's body in N pieces, S
                                   seconds apart: every read is quick, the response is slow
``/html/{code}``                   an HTML error page of a proxy, with that status
``/large?bytes=N&chunked=1``       a JSON string of N bytes, chunked without Content-Length;
                                   ``status=S`` answers with that status
``/gzip?bytes=N&chunked=1``        a JSON string of N bytes sent gzip-encoded (a few kB on
                                   the wire for megabytes decoded); ``status=S``
``/nested?depth=N&status=S``       JSON arrays nested N deep
``/slowhead?pieces=N&interval=S``  the echo, its status line and headers trickled in N
                                   pieces S seconds apart: each read is quick, headers slow
``/redirect?to=URL&status=302``    a redirect to ``to`` (``n=K``: to itself K more times)
``/reply?status=S&header=N:V``     that status with that header (repeatable as header2=...)
``/cookie?value=V``                the echo, setting the cookie ``session=V``
``GET /_control/calls?key=K``      ``{"calls": [...]}``: every request of K, with a
                                   monotonic timestamp ``t`` and the headers that matter
``POST /_control/reset``           forgets every log
=================================  ==========================================================

:class:`ServerProcess` starts, stops and restarts it from a test or a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import functools
import http.client
import json
import math
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

READY_PREFIX = "LISTENING "
MAX_HEAD_BYTES = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    #: ``respond``; ``close``: FIN without a response; ``reset``: RST without a response;
    #: ``drip``: the echo, trickled out as the request's ``pieces`` and ``interval`` say.
    action: str = "respond"
    chunked: bool = False


Handler = Callable[[Request], "Reply | Awaitable[Reply]"]


def _json(document: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json.dumps(document).encode(), headers or [])


class Behaviours:
    """The routes and the per-key logs of requests received."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {}

    def record(self, request: Request) -> int:
        """Log ``request`` under its ``key`` and return how many that key has seen."""
        key = request.query.get("key")
        if key is None:
            return 0
        log = self.calls.setdefault(key, [])
        log.append(
            {
                "n": len(log) + 1,
                "t": time.monotonic(),
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "idempotency_key": request.headers.get("idempotency-key"),
                "correlation_id": request.headers.get("x-correlation-id"),
                "body": request.body.decode("utf-8", "replace"),
            }
        )
        return len(log)

    def dispatch(self, request: Request) -> Reply | Awaitable[Reply]:
        path = request.path
        if path == "/ping":
            return Reply(200, b'{"ok": true}')
        if path.startswith("/_control/"):
            return self.control(request)
        number = self.record(request)
        first = request.query.get("first")
        scripted = first is None or number <= int(first)
        head, _, rest = path[1:].partition("/")
        if head == "echo" or not scripted:
            return self.echo(request, number)
        if head == "status":
            return self.status(request, int(rest))
        if head == "flaky":
            return self.flaky(request)
        if head == "slow":
            return self.slow(request, number)
        if head == "drop":
            return Reply(0, action="reset" if request.query.get("how") == "reset" else "close")
        if head == "drip":
            reply = self.echo(request, number)
            reply.action = "drip"
            return reply
        if head == "html":
            return self.html(int(rest))
        if head == "large":
            return self.large(request)
        if head == "gzip":
            return self.gzip(request)
        if head == "nested":
            depth = int(request.query.get("depth", "100000"))
            body = b"[" * depth + b"]" * depth
            return Reply(int(request.query.get("status", "200")), body)
        if head == "slowhead":
            reply = self.echo(request, number)
            reply.action = "drip_head"
            return reply
        if head == "redirect":
            return self.redirect(request)
        if head == "reply":
            headers = [
                tuple(value.split(":", 1))
                for name, value in request.query.items()
                if name.startswith("header")
            ]
            return Reply(int(request.query.get("status", "200")), b"{}", headers)  # type: ignore[arg-type]
        if head == "cookie":
            reply = self.echo(request, number)
            reply.headers.append(
                ("Set-Cookie", f"session={request.query.get('value', 'x')}; Path=/")
            )
            return reply
        return _json({"detail": f"no route {path}"}, 404)

    def echo(self, request: Request, number: int) -> Reply:
        try:
            body: Any = json.loads(request.body) if request.body else None
        except ValueError:
            body = request.body.decode("utf-8", "replace")
        return _json(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": request.headers,
                "body": body,
                "calls": number,
            }
        )

    def status(self, request: Request, code: int) -> Reply:
        if code == 204:
            return Reply(204)
        query = "&".join(f"{name}={value}" for name, value in request.query.items())
        return _json({"detail": f"status {code} for {request.path}?{query}"}, code)

    def flaky(self, request: Request) -> Reply:
        code = int(request.query.get("status", "503"))
        headers = []
        if "retry_after" in request.query:
            headers.append(("Retry-After", request.query["retry_after"]))
        elif "retry_after_date" in request.query:
            # An HTTP date has whole seconds: round up so the client waits at least that long.
            when = math.ceil(time.time() + float(request.query["retry_after_date"]))
            headers.append(("Retry-After", email.utils.formatdate(when, usegmt=True)))
        return _json({"detail": "try again later"}, code, headers)

    async def slow(self, request: Request, number: int) -> Reply:
        await asyncio.sleep(float(request.query.get("seconds", "1")))
        return self.echo(request, number)

    def html(self, code: int) -> Reply:
        filler = "<p>The upstream server did not answer in time.</p>\n" * 20
        page = f"<html><head><title>{code}</title></head><body>\n{filler}</body></html>\n"
        return Reply(code, page.encode(), content_type="text/html")

    def large(self, request: Request) -> Reply:
        size = int(request.query.get("bytes", "1000000"))
        body = b'"' + b"x" * max(0, size - 2) + b'"'
        status = int(request.query.get("status", "200"))
        return Reply(status, body, chunked=request.query.get("chunked") == "1")

    def gzip(self, request: Request) -> Reply:
        body = _gzipped(int(request.query.get("bytes", "1000000")))
        return Reply(
            int(request.query.get("status", "200")),
            body,
            [("Content-Encoding", "gzip")],
            chunked=request.query.get("chunked") == "1",
        )

    def redirect(self, request: Request) -> Reply:
        status = int(request.query.get("status", "302"))
        remaining = int(request.query.get("n", "0"))
        target = request.query.get("to", "/echo")
        if remaining > 0:
            query = {**request.query, "n": str(remaining - 1)}
            target = "/redirect?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return Reply(status, b"{}", [("Location", target)])

    def control(self, request: Request) -> Reply:
        if request.path == "/_control/calls":
            return _json({"calls": self.calls.get(request.query.get("key", ""), [])})
        if request.path == "/_control/reset" and request.method == "POST":
            self.calls.clear()
            return _json({"reset": True})
        if request.path == "/_control/health":
            return _json({"pid": os.getpid()})
        return _json({"detail": "unknown control"}, 404)


@functools.lru_cache(maxsize=8)
def _gzipped(size: int) -> bytes:
    """A JSON string of ``size`` bytes, gzip-compressed once per size (it takes a while)."""
    import gzip

    return gzip.compress(b'"' + b"0" * max(0, size - 2) + b'"')


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _encode(reply: Reply, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
    body = reply.body
    if reply.status != 204:
        head.append(f"Content-Type: {reply.content_type}")
        if reply.chunked:
            head.append("Transfer-Encoding: chunked")
            step = 16 * 1024
            parts = [body[i : i + step] for i in range(0, len(body), step)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
        else:
            head.append(f"Content-Length: {len(body)}")
    head.extend(f"{name}: {value}" for name, value in reply.headers)
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One client connection: parse requests in order, answer each before the next."""

    def __init__(self, behaviours: Behaviours, tasks: set[asyncio.Task[Reply]]) -> None:
        self.behaviours = behaviours
        self.tasks = tasks
        self.buffer = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            request = self._parse()
            if request is None:
                return
            result = self.behaviours.dispatch(request)
            if isinstance(result, Reply):
                self._send(result, request.keep_alive)
            else:
                self.busy = True
                task = asyncio.ensure_future(result)
                self.tasks.add(task)
                task.add_done_callback(functools.partial(self._finish, request=request))

    def _finish(self, task: asyncio.Task[Reply], *, request: Request) -> None:
        self.tasks.discard(task)
        self.busy = False
        if task.cancelled() or self.transport is None:
            return
        self._send(task.result(), request.keep_alive)
        if not self.busy:
            self._process()

    def _parse(self) -> Request | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._send(Reply(431), keep_alive=False)
            return None
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        total = end + 4 + length
        if len(self.buffer) < total:
            return None
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        parts = urlsplit(target)
        return Request(method, parts.path, dict(parse_qsl(parts.query)), headers, body, keep_alive)

    def _send(self, reply: Reply, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply.action == "reset":
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return
        if reply.action == "close":
            transport.close()
            return
        if reply.action == "drip_head":
            self.busy = True
            task = asyncio.ensure_future(self._drip_head(reply, keep_alive))
            self.tasks.add(task)
            task.add_done_callback(self._dripped)
            return
        if reply.action == "drip":
            self.busy = True
            task = asyncio.ensure_future(self._drip(reply, keep_alive))
            self.tasks.add(task)
            task.add_done_callback(self._dripped)
            return
        transport.write(_encode(reply, keep_alive))
        if not keep_alive:
            transport.close()

    async def _drip(self, reply: Reply, keep_alive: bool) -> Reply:
        query = self.drip_query(reply)
        pieces, interval = int(query.get("pieces", "10")), float(query.get("interval", "0.1"))
        data = _encode(reply, keep_alive)
        # The status line and headers go at once: the client has its response, then waits
        # for a body that trickles in.
        split = data.index(b"\r\n\r\n") + 4
        if self.transport is not None:
            self.transport.write(data[:split])
        body = data[split:]
        step = max(1, math.ceil(len(body) / pieces))
        for start in range(0, len(body), step):
            await asyncio.sleep(interval)
            if self.transport is None or self.transport.is_closing():
                break
            self.transport.write(body[start : start + step])
        return reply

    async def _drip_head(self, reply: Reply, keep_alive: bool) -> Reply:
        query = self.drip_query(reply)
        pieces, interval = int(query.get("pieces", "10")), float(query.get("interval", "0.1"))
        data = _encode(reply, keep_alive)
        split = data.index(b"\r\n\r\n") + 4
        head = data[:split]
        step = max(1, math.ceil(len(head) / pieces))
        for start in range(0, len(head), step):
            if self.transport is None or self.transport.is_closing():
                return reply
            self.transport.write(head[start : start + step])
            await asyncio.sleep(interval)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data[split:])
        return reply

    @staticmethod
    def drip_query(reply: Reply) -> dict[str, str]:
        query: dict[str, str] = json.loads(reply.body)["query"]
        return query

    def _dripped(self, task: asyncio.Task[Reply]) -> None:
        self.tasks.discard(task)
        self.busy = False
        if self.transport is not None:
            self._process()


def _tls_context(tls: list[str] | None) -> ssl.SSLContext | None:
    """``[cert, key]`` or ``[cert, key, client_ca]`` (then a client certificate is required)."""
    if not tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
    if len(tls) > 2:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls[2])
    return context


async def serve(
    host: str, port: int, *, watch_stdin: bool = False, tls: list[str] | None = None
) -> None:
    """Listen on ``host:port`` until killed; announce the port on stdout when ready.

    With ``watch_stdin``, also stop when stdin closes, so that a test run killed outright
    leaves no server behind.
    """
    loop = asyncio.get_running_loop()
    behaviours = Behaviours()
    tasks: set[asyncio.Task[Reply]] = set()
    give_up = time.monotonic() + 10.0
    while True:
        try:
            server = await loop.create_server(
                lambda: _Connection(behaviours, tasks),
                host,
                port,
                reuse_address=True,
                backlog=512,
                ssl=_tls_context(tls),
            )
            break
        except OSError:
            # A restart on the same port can race the old process's exit for a moment.
            if port == 0 or time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.05)
    bound = server.sockets[0].getsockname()[1]
    print(f"{READY_PREFIX}{bound}", flush=True)
    stop = loop.create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, finish)
    if watch_stdin:
        # The parent holds our stdin open: end of file means it died without stopping us.
        def read_stdin() -> None:
            if not os.read(sys.stdin.fileno(), 1024):
                finish()

        loop.add_reader(sys.stdin.fileno(), read_stdin)
    async with server:
        await stop


class ServerProcess:
    """The server in a child process; ``stop()`` and ``start()`` keep its port."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: list[str] | None = None
    ) -> None:
        self.host = host
        self.port = port
        #: ``[cert, key]``, or ``[cert, key, client_ca]`` to require a client certificate.
        self.tls = tls
        self._process: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            raise RuntimeError("the server is already running")
        script = str(Path(__file__).resolve())
        process = subprocess.Popen(
            [
                sys.executable,
                script,
                self.host,
                str(self.port),
                "--watch-stdin",
                *(["--tls", *self.tls] if self.tls else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline() if ready else ""
        if not line.startswith(READY_PREFIX):
            self._process = process
            self.stop()
            raise RuntimeError(f"the test server did not start (said {line!r})")
        self.port = int(line[len(READY_PREFIX) :])
        self._process = process

    def stop(self) -> None:
        """Kill the server at once: open connections die with it, like a crashed service."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _control(self, method: str, path: str) -> Any:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            return json.loads(response.read())
        finally:
            connection.close()

    def calls(self, key: str) -> list[dict[str, Any]]:
        """The requests the server received under ``key``, in order."""
        calls: list[dict[str, Any]] = self._control("GET", f"/_control/calls?key={key}")["calls"]
        return calls

    def reset(self) -> None:
        self._control("POST", "/_control/reset")

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=0)
    parser.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes")
    parser.add_argument("--tls", nargs="+", metavar="FILE", help="CERT KEY [CLIENT_CA]")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, watch_stdin=args.watch_stdin, tls=args.tls))


if __name__ == "__main__":
    main()

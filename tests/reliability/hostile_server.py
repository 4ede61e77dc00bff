"""A raw-socket HTTP server that answers the way a broken or malicious server would.

It reads a request head, looks at the path, and writes bytes no framework would let it
write: decompression bombs, headers that never end, deeply nested JSON, malformed
``Retry-After`` / ``Content-Length`` / ``Location``, redirect loops, bodies shorter than
announced. It runs an asyncio loop in a daemon thread; ``requests[path]`` counts what it
received. ``/script`` serves the raw response bytes last given to :meth:`script`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import zlib
from collections.abc import Awaitable, Callable

from tests.loop_thread import LoopService

BOMB_SIZE = 64 * 1024 * 1024
#: How long a never-ending answer goes on at most, so a server task cannot outlive a test.
ENDLESS_FOR = 30.0
NESTING = 100_000

Writer = asyncio.StreamWriter


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response(
    status: str, body: bytes, headers: list[tuple[str, str]] | None = None, *, length: bool = True
) -> bytes:
    all_headers = [("Content-Type", "application/json"), *(headers or [])]
    if length:
        all_headers.append(("Content-Length", str(len(body))))
    return _head(status, all_headers) + body


class HostileServer(LoopService):
    """The hostile answers, by path; see :data:`CASES` for what each one does."""

    def __init__(self) -> None:
        super().__init__("hostile-server")
        self.port = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self._scripted = b""
        zeros = bytes(BOMB_SIZE)
        self.gzip_bomb = gzip.compress(zeros, compresslevel=9)
        self.deflate_bomb = zlib.compress(zeros, 9)
        nested = b"[" * NESTING + b"]" * NESTING
        self._routes: dict[str, Callable[[Writer], Awaitable[None]]] = {
            "/gzip-bomb": self._fixed(
                _response("200 OK", self.gzip_bomb, [("Content-Encoding", "gzip")])
            ),
            "/deflate-bomb-chunked": self._chunked_bomb,
            "/endless-headers": self._endless_headers,
            "/endless-body": self._endless_body,
            "/slow-headers": self._slow_headers,
            "/nested-json": self._fixed(_response("200 OK", nested)),
            "/nested-json-503": self._fixed(_response("503 Service Unavailable", nested)),
            "/retry-after-superscript": self._fixed(
                _response("503 Service Unavailable", b"{}", [("Retry-After", "\u00b2")])
            ),
            "/retry-after-huge": self._fixed(
                _response("503 Service Unavailable", b"{}", [("Retry-After", "9" * 40)])
            ),
            "/retry-after-negative": self._fixed(
                _response("503 Service Unavailable", b"{}", [("Retry-After", "-30")])
            ),
            "/retry-after-nan": self._fixed(
                _response("503 Service Unavailable", b"{}", [("Retry-After", "nan")])
            ),
            "/content-length-superscript": self._fixed(
                _head(
                    "200 OK",
                    [("Content-Type", "application/json"), ("Content-Length", "\u00b2")],
                )
                + b"{}"
            ),
            "/content-length-negative": self._fixed(
                _head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "-1")])
                + b"{}"
            ),
            "/content-length-conflict": self._fixed(
                _head(
                    "200 OK",
                    [
                        ("Content-Type", "application/json"),
                        ("Content-Length", "2"),
                        ("Content-Length", "7"),
                    ],
                )
                + b"{}"
            ),
            "/content-length-lie": self._lie,
            "/location-ftp": self._redirect("ftp://127.0.0.1/x"),
            "/location-malformed": self._redirect("http://[::1"),
            "/location-no-host": self._redirect("http:///x"),
            "/redirect-loop": self._redirect("/redirect-loop"),
            "/garbage": self._fixed(b"SSH-2.0-OpenSSH_9.2\r\n\x00\xff\xfe garbage \r\n\r\n"),
            "/status-999": self._fixed(_response("999 Whatever", b"{}")),
            "/empty": self._fixed(b""),
            "/bad-chunk": self._fixed(
                _head(
                    "200 OK",
                    [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
                )
                + b"zz\r\n{}\r\n0\r\n\r\n"
            ),
            "/script": self._scripted_reply,
        }
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        return [path for path in self._routes if path != "/script"]

    def script(self, raw_response: bytes) -> None:
        """Answer ``/script`` with exactly these bytes, then close."""
        self._scripted = raw_response

    # -- the answers -----------------------------------------------------------------------

    @staticmethod
    def _fixed(payload: bytes) -> Callable[[Writer], Awaitable[None]]:
        async def reply(writer: Writer) -> None:
            writer.write(payload)
            await writer.drain()

        return reply

    @staticmethod
    def _redirect(location: str) -> Callable[[Writer], Awaitable[None]]:
        return HostileServer._fixed(_response("302 Found", b"{}", [("Location", location)]))

    async def _scripted_reply(self, writer: Writer) -> None:
        writer.write(self._scripted)
        await writer.drain()

    async def _chunked_bomb(self, writer: Writer) -> None:
        head = _head(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Encoding", "deflate"),
                ("Transfer-Encoding", "chunked"),
            ],
        )
        writer.write(head)
        bomb = self.deflate_bomb
        for start in range(0, len(bomb), 4096):
            piece = bomb[start : start + 4096]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _endless_headers(self, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        give_up = asyncio.get_running_loop().time() + ENDLESS_FOR
        number = 0
        while asyncio.get_running_loop().time() < give_up:
            writer.write(
                b"".join(b"X-Filler-%d: %s\r\n" % (number + i, b"a" * 100) for i in range(50))
            )
            number += 50
            await writer.drain()
            await asyncio.sleep(0.001)

    async def _endless_body(self, writer: Writer) -> None:
        writer.write(
            _head(
                "200 OK", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
            )
        )
        piece = b"[" + b"1," * 8000 + b"1]"
        give_up = asyncio.get_running_loop().time() + ENDLESS_FOR
        while asyncio.get_running_loop().time() < give_up:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.001)

    async def _slow_headers(self, writer: Writer) -> None:
        # Each header line arrives whole and well within a read timeout; the head as a whole
        # takes far longer than the deadline plus its slack: only a bound on the whole
        # attempt ends it.
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for number in range(20):
            writer.write(b"X-Slow-%d: y\r\n" % number)
            await writer.drain()
            await asyncio.sleep(0.5)
        writer.write(b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()

    async def _lie(self, writer: Writer) -> None:
        writer.write(
            _head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "1000")])
            + b'{"partial": '
        )
        await writer.drain()

    # -- the server ------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            target = head.split(b" ", 2)[1].decode("latin-1")
            path = target.split("?", 1)[0]
            self.requests[path] += 1
            route = self._routes.get(path)
            if route is None:
                writer.write(_response("404 Not Found", b'{"detail": "no such case"}'))
            else:
                await route(writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, IndexError):
            pass
        except (asyncio.LimitOverrunError, asyncio.CancelledError):
            # Cancelled: the server is stopping while an endless answer is still going.
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, limit=1024 * 1024, backlog=256
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()

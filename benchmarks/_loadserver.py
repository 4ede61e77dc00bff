"""A load server that is never the bottleneck, and the raw-socket client that proves it.

The server answers every request on a keep-alive connection with one canned JSON
response (``{"ok":true}``) from a bare ``asyncio.Protocol``: no parsing beyond finding the
end of each request head, no routing, no logging. It runs in processes of its own (one
by default; ``workers`` share one listening socket), so it never takes the GIL from the
client measured.

:func:`capacity` measures what the server can serve: a client in its own process that
writes raw request bytes and counts the responses, with no HTTP library at all, over
many connections. A row's calls/s is only the client's if it stays well below that rate;
each benchmark that uses this server prints the ratio (the server's headroom) as a row.

``python -m benchmarks._loadserver serve FD`` and ``python -m benchmarks._loadserver
probe PORT SECONDS CONNECTIONS`` are the two child processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from types import TracebackType

from benchmarks._table import Row

#: The server must serve at least this many times the best rate measured against it.
HEADROOM_LIMIT = 3.0

BODY = b'{"ok":true}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
_HEAD_END = b"\r\n\r\n"


class _Answer(asyncio.Protocol):
    """Answers each request head received (GET without a body) with the canned response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.pending + data if self.pending else data
        count = buffer.count(_HEAD_END)
        if count and self.transport is not None:
            self.transport.write(RESPONSE * count)
            buffer = buffer[buffer.rfind(_HEAD_END) + len(_HEAD_END) :]
        self.pending = buffer


def _serve(fd: int) -> None:
    async def main() -> None:
        listener = socket.socket(fileno=fd)
        server = await asyncio.get_running_loop().create_server(_Answer, sock=listener)
        async with server:
            # The parent holds our stdin: its end (the parent died) ends the server too.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


def _probe(port: int, seconds: float, connections: int) -> None:
    """Print the responses per second the server gave a raw-socket client."""
    request = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answered = 0
    measuring = False

    class _Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.pending = 0
            transport.write(request)

        def data_received(self, data: bytes) -> None:
            nonlocal answered
            # The canned response is fixed-size: count whole responses in what arrived.
            self.pending += len(data)
            count, self.pending = divmod(self.pending, len(RESPONSE))
            if measuring:
                answered += count
            if count:
                self.transport.write(request * count)

    async def main() -> None:
        nonlocal measuring
        loop = asyncio.get_running_loop()
        transports = []
        for _ in range(connections):
            transport, _ = await loop.create_connection(_Client, "127.0.0.1", port)
            transports.append(transport)
        await asyncio.sleep(0.2)  # every connection busy before the clock starts
        measuring = True
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        measuring = False
        print(f"{answered / elapsed:.1f}", flush=True)
        for transport in transports:
            transport.close()

    asyncio.run(main())


class LoadServer:
    """The server's processes; ``base_url`` once entered."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self.workers = workers
        self._listener: socket.socket | None = None
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the load server is not running")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoadServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        self._listener = listener
        fd = listener.fileno()
        for _ in range(self.workers):
            self._processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks._loadserver", "serve", str(fd)],
                    stdin=subprocess.PIPE,
                    pass_fds=(fd,),
                    cwd=_repository_root(),
                )
            )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as probe:
                    probe.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                    if probe.recv(len(RESPONSE)).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the load server did not answer within 30 s")
            time.sleep(0.05)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for process in self._processes:
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
        for process in self._processes:
            process.wait(10)
        self._processes.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def capacity(self, seconds: float = 1.0, connections: int = 32) -> float:
        """Responses per second a raw-socket client in its own process gets from the server."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks._loadserver",
                "probe",
                str(self.port),
                str(seconds),
                str(connections),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=_repository_root(),
            timeout=seconds + 60,
        )
        return float(result.stdout.strip())


def headroom_row(capacity: float, best: float, measured: str = "best calls/s of this run") -> Row:
    """The first row of a benchmark on this server: its capacity against the best rate."""
    return Row(
        "load server headroom",
        "raw-socket client (own process)",
        measured,
        capacity,
        best,
        "calls/s",
        HEADROOM_LIMIT,
        "min_ratio",
    )


def _repository_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "serve":
        _serve(int(arguments[0]))
    elif command == "probe":
        _probe(int(arguments[0]), float(arguments[1]), int(arguments[2]))
    else:
        sys.exit(f"unknown command {command!r}: serve FD | probe PORT SECONDS CONNECTIONS")

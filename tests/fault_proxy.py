"""A loopback TCP proxy that injects faults between a client and a real server, for tests.

It runs an asyncio loop in a daemon thread of the test process and forwards bytes without
parsing them, so it serves HTTP and Redis alike. The fault applies per *connection* and is
drawn when the connection is accepted; :meth:`FaultProxy.set_fault` and
:meth:`FaultProxy.random_faults` switch it while clients keep calling. Clients that should
meet a fault on every attempt send ``Connection: close`` so that each attempt is a new
connection and a new draw.

=====================  =====================================================================
``Fault.NONE``         forward both ways
``Fault.REFUSE``       (global) open connections are reset and connecting is refused
``Fault.RESET``        (per connection) accepted, the request read, then reset (RST) unforwarded
``Fault.LATENCY``      forward, each chunk ``latency`` seconds late
``Fault.STALL``        forward the request to the server, never forward its answer
``Fault.RESET_MID``    forward the request and the first ``cut`` bytes of the answer, then RST
``Fault.TRUNCATE``     forward the request, the answer's head and ``cut`` bytes of its body, FIN
``Fault.BLACKHOLE``    accept and read everything, forward nothing, never answer
=====================  =====================================================================

Usage::

    with FaultProxy(upstream_port) as proxy:
        client = SyncServiceClient(proxy.url, ...)
        proxy.set_fault(Fault.STALL)
        proxy.random_faults(0.2, [Fault.RESET_MID, Fault.STALL], seed=1)
        proxy.counts            # connections per fault
        proxy.connections       # (fault, first bytes the client sent) per connection

With ``cut=0``, ``RESET_MID`` resets the connection as soon as the server answers: the server
has acted on the request, and the client hears nothing of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import random
import socket
import struct
import threading
from collections.abc import Sequence

from tests.loop_thread import LoopService

CHUNK = 64 * 1024
FIRST_BYTES = 512


class Fault(enum.Enum):
    NONE = "none"
    REFUSE = "refuse"
    RESET = "reset"
    LATENCY = "latency"
    STALL = "stall"
    RESET_MID = "reset_mid_response"
    TRUNCATE = "truncate_body"
    BLACKHOLE = "blackhole"


class FaultProxy(LoopService):
    """Forwards ``127.0.0.1:port`` to ``upstream_host:upstream_port`` with faults on demand."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        latency: float = 0.05,
        cut: int = 20,
    ) -> None:
        super().__init__("fault-proxy")
        self.upstream = (upstream_host, upstream_port)
        self.latency = latency
        self.cut = cut
        self.port = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.connections: list[tuple[Fault, bytes]] = []
        self._fault = Fault.NONE
        self._rate = 0.0
        self._choices: tuple[Fault, ...] = ()
        self._random = random.Random(0)
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control (any thread) ------------------------------------------------------------

    def set_fault(self, fault: Fault) -> None:
        """Apply ``fault`` to every new connection (``REFUSE``: the server is gone: stop
        listening and reset the connections it had)."""
        with self._lock:
            self._fault, self._rate, self._choices = fault, 0.0, ()
        self._loop_thread.run(self._listen(fault is not Fault.REFUSE))
        if fault is Fault.REFUSE:
            self.drop_connections()

    def random_faults(self, rate: float, faults: Sequence[Fault], *, seed: int = 0) -> None:
        """Fault a share ``rate`` of new connections, each with one of ``faults`` at random."""
        if Fault.REFUSE in faults:
            raise ValueError("REFUSE closes the listener; it cannot apply to one connection")
        with self._lock:
            self._fault, self._rate, self._choices = Fault.NONE, rate, tuple(faults)
            self._random = random.Random(seed)
        self._loop_thread.run(self._listen(True))

    def clear(self) -> None:
        """Forward everything again."""
        self.set_fault(Fault.NONE)

    def drop_connections(self) -> None:
        """Reset every open connection (the faults of new ones are unchanged)."""
        self._loop_thread.run(self._drop_all())

    @property
    def faulted(self) -> int:
        """Connections that met a fault other than ``LATENCY``."""
        return sum(n for name, n in self.counts.items() if name not in ("none", "latency"))

    # -- life cycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        await self._listen(True)

    async def _close(self) -> None:
        await self._shutdown()

    # -- the loop's side -------------------------------------------------------------------

    async def _listen(self, listening: bool) -> None:
        if listening and self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True, backlog=512
            )
            self.port = self._server.sockets[0].getsockname()[1]
        elif not listening and self._server is not None:
            server, self._server = self._server, None
            # Not wait_closed(): since Python 3.12 it also waits for every open connection.
            server.close()

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)

    async def _shutdown(self) -> None:
        await self._listen(False)
        await self._drop_all()

    def _draw(self) -> Fault:
        with self._lock:
            if self._rate and self._random.random() < self._rate:
                return self._random.choice(self._choices)
            return self._fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = self._draw()
        self.counts[fault.value] += 1
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        entry = len(self.connections)
        self.connections.append((fault, b""))
        try:
            if fault in (Fault.RESET, Fault.BLACKHOLE):
                try:
                    first = await asyncio.wait_for(reader.read(CHUNK), 1.0)
                except asyncio.TimeoutError:
                    first = b""
                self.connections[entry] = (fault, first[:FIRST_BYTES])
                if fault is Fault.RESET:
                    _reset(writer)
                    return
                while await reader.read(CHUNK):
                    pass
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                _reset(writer)
                return
            answer = asyncio.ensure_future(
                self._pump(upstream_reader, writer, fault, to_client=True)
            )
            try:
                await self._pump(reader, upstream_writer, fault, to_client=False, entry=entry)
            finally:
                # The client is gone (HTTP and Redis clients never half-close and wait for
                # more), so nothing is left to answer, a stalled answer included.
                answer.cancel()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            for each in (writer, upstream_writer):
                if each is not None and not each.is_closing():
                    each.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fault: Fault,
        *,
        to_client: bool,
        entry: int | None = None,
    ) -> None:
        sent = 0
        # TRUNCATE lets the whole head through: its cut falls inside the body.
        limit: int | None = None if fault is Fault.TRUNCATE else self.cut
        head = bytearray()
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if entry is not None and not self.connections[entry][1]:
                    self.connections[entry] = (fault, data[:FIRST_BYTES])
                if fault is Fault.LATENCY:
                    await asyncio.sleep(self.latency)
                if to_client and fault is Fault.STALL:
                    continue
                if to_client and limit is None:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    limit = end + 4 + self.cut
                    data = bytes(head)
                if to_client and limit is not None and fault in (Fault.RESET_MID, Fault.TRUNCATE):
                    room = limit - sent
                    if room > 0:
                        writer.write(data[:room])
                        await writer.drain()
                        sent += min(room, len(data))
                    if sent >= limit:
                        if fault is Fault.RESET_MID:
                            _reset(writer)
                        else:
                            writer.close()
                        return
                    continue
                writer.write(data)
                await writer.drain()
                sent += len(data)
            if to_client and fault is Fault.STALL:
                # The server is done; the client keeps waiting for an answer that never comes.
                await asyncio.Event().wait()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

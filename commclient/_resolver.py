"""Name lookups that a hanging name cannot turn into a stall of every other host.

``getaddrinfo`` blocks, and a lookup cannot be cancelled, only abandoned: a shared pool
of lookup threads (requests' own, asyncio's default executor of ``min(32, CPUs + 4)``
threads, anyio's 40 worker tokens) fills up with the lookups of one name that hangs, and
the lookups of healthy hosts then wait behind them until their calls time out. Here one
lookup per (name, port) runs at a time, on a thread of its own, and every caller of that
name waits for it; so a hanging name holds one thread, whatever its callers do. Both
facades resolve through :data:`resolver` (the sync one while a deadline runs, the async
one always), and wait no longer than their own deadline or connect timeout.

More than :data:`MAX_LOOKUPS` names hanging at once is this process's exhaustion:
:class:`LookupsExhausted`, which the facades report without blaming the target.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import os
import socket
import threading
import time
from typing import Any

#: Names (with their port) whose lookups may run at once in a process.
MAX_LOOKUPS = 64

Addresses = list[tuple[Any, ...]]


class LookupsExhausted(Exception):
    """Every lookup thread is taken by names whose lookups still run."""


class _Resolver:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start over (in a forked child, where the lookup threads do not exist)."""
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], concurrent.futures.Future[Addresses]] = {}

    def lookup(self, host: str, port: int) -> concurrent.futures.Future[Addresses]:
        """The running lookup of ``host``, started if none runs."""
        key = (host, port)
        with self._lock:
            future = self._running.get(key)
            if future is None:
                if len(self._running) >= MAX_LOOKUPS:
                    raise LookupsExhausted(
                        f"{MAX_LOOKUPS} name lookups are still running in this process"
                    )
                future = self._running[key] = concurrent.futures.Future()
                # Running from the start: a waiter that gives up cannot cancel it for the
                # other waiters (asyncio.wrap_future cancels what it wraps).
                future.set_running_or_notify_cancel()
                try:
                    threading.Thread(
                        target=self._look_up,
                        args=(key, future),
                        name="commclient-resolver",
                        daemon=True,
                    ).start()
                except BaseException:
                    # "can't start new thread": no lookup runs, and none may be waited for
                    # (every later call of this name would wait out its connect timeout).
                    del self._running[key]
                    raise
        return future

    def resolve(self, host: str, port: int, at: float) -> Addresses:
        """The addresses of ``host``; ``TimeoutError`` when monotonic time ``at`` passes."""
        future = self.lookup(host, port)
        try:
            return future.result(timeout=max(0.0, at - time.monotonic()))
        except concurrent.futures.TimeoutError:  # not the builtin one before Python 3.11
            raise TimeoutError(f"resolving {host} outlived the deadline of the call") from None

    async def resolve_async(self, host: str, port: int) -> Addresses:
        """The addresses of ``host``, awaited on the running loop (cancellable)."""
        return await asyncio.wrap_future(self.lookup(host, port))

    def _look_up(self, key: tuple[str, int], future: concurrent.futures.Future[Addresses]) -> None:
        # A daemon thread: at interpreter exit a lookup still hanging is abandoned.
        try:
            addresses = socket.getaddrinfo(key[0], key[1], 0, socket.SOCK_STREAM)
        except BaseException as exc:  # handed to every caller waiting for this name
            error: BaseException | None = exc
        else:
            error = None
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]
        if error is None:
            future.set_result(addresses)
        else:
            future.set_exception(error)


resolver = _Resolver()
os.register_at_fork(after_in_child=resolver.reset)


def is_address(host: str) -> bool:
    """An IP address (IPv6 in brackets or not): nothing to resolve."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True

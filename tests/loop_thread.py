"""An asyncio event loop in a daemon thread, for test servers that other threads control."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs an event loop in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the loop and return its result (from any other thread)."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError(f"{self.name}: start it first")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        """Cancel every task still running on the loop, stop it and close it."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None


ServiceT = TypeVar("ServiceT", bound="LoopService")


class LoopService:
    """A test server living on its own :class:`LoopThread`: ``_open`` and ``_close`` run there."""

    def __init__(self, name: str) -> None:
        self._loop_thread = LoopThread(name)

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def start(self: ServiceT) -> ServiceT:
        self._loop_thread.start()
        self._loop_thread.run(self._open())
        return self

    def stop(self) -> None:
        self._loop_thread.run(self._close())
        self._loop_thread.stop()

    def __enter__(self: ServiceT) -> ServiceT:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

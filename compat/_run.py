"""run_sync and run_blocking: one call across the boundary, in either direction."""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._bridge import default_bridge
from ._context import clear_loop_local, copy_back
from ._errors import require_anyio

if TYPE_CHECKING:
    from anyio import CapacityLimiter
    from anyio.lowlevel import RunVar

P = ParamSpec("P")
T = TypeVar("T")

#: Worker threads :func:`run_blocking` uses at once per event loop, by default. A pool
#: of its own, so that slow legacy calls cannot starve anyio's default one (40 threads),
#: which other libraries share.
DEFAULT_BLOCKING_LIMIT = 16


def run_sync(async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``async_fn(*args, **kwargs)`` on the shared background loop; block until done.

    For synchronous code only. The loop is started on first use and lives until the
    interpreter exits, so async objects used through it keep their connection pools.
    Context variables (the correlation id) are copied in, and the callee's changes to
    them are copied back. Raises :class:`EventLoopRunningError` when this thread runs
    an event loop (``await`` there instead) and :class:`BridgeStoppedError` when the
    loop stops before the call finishes.
    """
    return default_bridge().call(async_fn, args, kwargs)  # type: ignore[no-any-return]


class _BlockingLimit:
    """The per-loop limiter of run_blocking, and the size every loop's limiter gets."""

    def __init__(self) -> None:
        self.total_tokens = DEFAULT_BLOCKING_LIMIT
        self._lock = threading.Lock()
        self._limiters: RunVar[CapacityLimiter] | None = None

    def limiter(self) -> CapacityLimiter:
        # A limiter belongs to one event loop, as its waiters do; a RunVar keeps one per loop.
        limiters = self._limiters
        if limiters is None:
            with self._lock:
                if self._limiters is None:
                    from anyio.lowlevel import RunVar

                    self._limiters = RunVar("compat_blocking_limiter")
                limiters = self._limiters
        limiter = limiters.get(None)
        if limiter is None:
            import anyio

            limiter = anyio.CapacityLimiter(self.total_tokens)
            limiters.set(limiter)
        elif limiter.total_tokens != self.total_tokens:
            limiter.total_tokens = self.total_tokens
        return limiter


_blocking_limit = _BlockingLimit()


def set_blocking_limit(total_tokens: int) -> None:
    """Let :func:`run_blocking` use at most ``total_tokens`` worker threads per loop."""
    if isinstance(total_tokens, bool) or not isinstance(total_tokens, int) or total_tokens < 1:
        raise ValueError(f"total_tokens must be an integer >= 1, got {total_tokens!r}")
    _blocking_limit.total_tokens = total_tokens


def blocking_limit() -> int:
    """The number of worker threads :func:`run_blocking` uses at most per loop."""
    return _blocking_limit.total_tokens


async def run_blocking(sync_fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the blocking ``sync_fn(*args, **kwargs)`` in a worker thread; await its result.

    For async code calling legacy blocking functions: the event loop keeps serving other
    tasks meanwhile. At most :func:`blocking_limit` calls run at once per loop; more wait
    their turn without blocking the loop. Context variables are copied into the thread,
    and the function's changes to them are copied back. Cancelling the awaiting task
    waits for the function to return, since a thread cannot be interrupted.
    """
    require_anyio("compat.run_blocking")
    import anyio.to_thread

    context = contextvars.copy_context()
    clear_loop_local(context)
    call: Callable[[], T] = functools.partial(context.run, sync_fn, *args, **kwargs)
    try:
        return await anyio.to_thread.run_sync(call, limiter=_blocking_limit.limiter())
    finally:
        copy_back(context)

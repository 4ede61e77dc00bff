"""run_sync and run_blocking: one call across the boundary, in either direction.

Nesting. A half-migrated code base layers the bridges: sync code calls ``run_sync``, the
coroutine awaits ``run_blocking``, the blocking function calls ``run_sync`` again, whose
coroutine awaits ``run_blocking`` again. Each outer blocking function holds a worker
slot while it waits for its inner calls; if the inner ``run_blocking`` needed a second
slot from the same limit, enough callers in flight would hold every slot while waiting
for one, and nothing would ever finish. So a chain of nested calls holds one slot per
loop: a nested ``run_blocking`` on the loop whose slot its chain already holds runs on
that slot, which its caller is not using while it waits. Only when the chain's slot is
already lent out (the coroutine runs several blocking calls at once) does a nested call
take a further slot, if one is free, or wait for the chain's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import math
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from commclient._callables import require_function

from ._bridge import checked_timeout, default_bridge, reset_in_forked_child
from ._context import clear_loop_local, copy_back, held_slots
from ._errors import require_anyio

if TYPE_CHECKING:
    from anyio import Event
    from anyio.lowlevel import RunVar
    from typing_extensions import TypeVarTuple, Unpack

    Ts = TypeVarTuple("Ts")

P = ParamSpec("P")
T = TypeVar("T")

#: Worker threads :func:`run_blocking` uses at once per event loop, by default. A pool
#: of its own, so that slow legacy calls cannot starve anyio's default one (40 threads),
#: which other libraries share.
DEFAULT_BLOCKING_LIMIT = 16


@overload
def run_sync(async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


@overload
def run_sync(
    async_fn: Callable[[Unpack[Ts]], Awaitable[T]], /, *args: Unpack[Ts], timeout: float | None
) -> T: ...


def run_sync(  # type: ignore[misc]  # the implementation of both overloads
    async_fn: Callable[..., Awaitable[Any]],
    /,
    *args: Any,
    timeout: float | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``async_fn(*args, **kwargs)`` on the shared background loop; block until done.

    The opposite of anyio's ``to_thread.run_sync`` (that is :func:`run_blocking`): this is
    asgiref's ``async_to_sync(async_fn)(*args)`` and anyio's ``from_thread.run``, without a
    portal of the caller's.

    For synchronous code only. The loop is started on first use and lives until the
    interpreter exits, so async objects used through it keep their connection pools.
    Context variables (the correlation id) are copied in, and the callee's changes to
    them are copied back. Raises :class:`EventLoopRunningError` when this thread runs
    an event loop (``await`` there instead) and :class:`BridgeStoppedError` when the
    loop stops before the call finishes.

    ``timeout``: seconds after which the coroutine is cancelled and :class:`TimeoutError`
    raised (at the latest one second later if the coroutine does not end when cancelled).
    It is ``run_sync``'s own keyword: a ``timeout`` argument meant for ``async_fn`` is
    bound with ``functools.partial(async_fn, timeout=...)``, and with ``timeout`` given
    the other arguments are positional. A :class:`BridgeCancelledError` says the coroutine
    was cancelled by something else on the loop.
    """
    require_function(async_fn, "compat.run_sync()", asynchronous=True)
    return default_bridge().call(async_fn, args, kwargs, checked_timeout(timeout))


class _Slot:
    """A worker slot held by one run_blocking call, lent to one nested call at a time.

    Used on its limiter's loop only, so it needs no lock.
    """

    __slots__ = ("_returned", "ended", "lent", "pool")

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.lent = False
        self.ended = False  # the holder has returned: nothing may run on it any more
        self._returned: Event | None = None

    async def wait_returned(self) -> None:
        import anyio

        if self._returned is None:
            self._returned = anyio.Event()
        await self._returned.wait()

    def give_back(self) -> None:
        self.lent = False
        if self._returned is not None:
            self._returned.set()
            self._returned = None


class _Pool:
    """The worker slots of run_blocking on one event loop."""

    def __init__(self, total_tokens: int) -> None:
        import anyio

        self.limiter = anyio.CapacityLimiter(total_tokens)
        # Threads are started with this one; the slot was taken from `limiter` (or lent)
        # before, where waiting can still be cancelled.
        self.unlimited = anyio.CapacityLimiter(math.inf)

    async def take(self) -> Callable[[], None]:
        """Take a slot for a new call; return what gives it back."""
        import anyio

        chain_slot: _Slot | None = next(
            (slot for slot in reversed(held_slots.get()) if slot.pool is self and not slot.ended),
            None,
        )
        if chain_slot is not None:
            while chain_slot.lent and not chain_slot.ended:
                try:
                    return self._free_token()
                except anyio.WouldBlock:
                    await chain_slot.wait_returned()
            if not chain_slot.ended:
                chain_slot.lent = True
                return chain_slot.give_back
        # Not nested, or nested in a call that has returned: a slot of the limit's own.
        borrower = object()
        await self.limiter.acquire_on_behalf_of(borrower)
        return self._giving_back(borrower)

    def _free_token(self) -> Callable[[], None]:
        borrower = object()
        self.limiter.acquire_on_behalf_of_nowait(borrower)
        return self._giving_back(borrower)

    def _giving_back(self, borrower: object) -> Callable[[], None]:
        def give_back() -> None:
            self.limiter.release_on_behalf_of(borrower)

        return give_back


class _BlockingLimit:
    """The size every loop's run_blocking pool gets, and the pool of each loop."""

    def __init__(self) -> None:
        self.total_tokens = DEFAULT_BLOCKING_LIMIT
        self._lock = threading.Lock()
        self._pools: RunVar[_Pool] | None = None
        reset_in_forked_child(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def pool(self) -> _Pool:
        # A limiter belongs to one event loop, as its waiters do; a RunVar keeps one per loop.
        pools = self._pools
        if pools is None:
            with self._lock:
                if self._pools is None:
                    from anyio.lowlevel import RunVar

                    self._pools = RunVar("compat_blocking_pool")
                pools = self._pools
        pool = pools.get(None)
        if pool is None:
            pool = _Pool(self.total_tokens)
            pools.set(pool)
        elif pool.limiter.total_tokens != self.total_tokens:
            pool.limiter.total_tokens = self.total_tokens
        return pool


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

    anyio's ``to_thread.run_sync`` and asgiref's ``sync_to_async(sync_fn)(*args)`` (not
    :func:`run_sync`, which goes the other way). For async code calling legacy blocking
    functions: the event loop keeps serving other tasks meanwhile. At most
    :func:`blocking_limit` calls run at once per loop; more wait their turn without blocking
    the loop. A call nested inside another (``run_blocking`` -> ``run_sync`` ->
    ``run_blocking``) uses its caller's slot rather than waiting for a second one. Context
    variables are copied into the thread, and the function's changes to them are copied
    back.

    Cancellation: a call still waiting for its turn is cancelled at once and never runs.
    A running function cannot be: a thread cannot be interrupted. Cancelling the awaiting
    task (``task.cancel()``, ``asyncio.wait_for``, ``asyncio.timeout``, anyio's cancel
    scopes, the bridge's stop) takes effect when the function returns: until then the
    call keeps its slot, then its context changes are copied back, its result is dropped
    and ``CancelledError`` is raised. A timeout around a call that hangs therefore waits
    for the hang; bound the blocking function itself (its own socket timeouts).
    """
    require_anyio("compat.run_blocking")
    require_function(sync_fn, "compat.run_blocking()", asynchronous=False)
    import anyio.to_thread

    pool = _blocking_limit.pool()
    give_back = await pool.take()
    context, slot = _thread_context(pool)
    call: Callable[[], T] = functools.partial(context.run, sync_fn, *args, **kwargs)
    try:
        return await _to_the_end(anyio.to_thread.run_sync(call, limiter=pool.unlimited))
    finally:
        slot.ended = True
        give_back()
        copy_back(context)


def _thread_context(pool: _Pool) -> tuple[contextvars.Context, _Slot]:
    """The caller's context for a worker thread, holding ``pool``'s new slot for its chain."""
    context = contextvars.copy_context()
    clear_loop_local(context)
    slot = _Slot(pool)
    context.run(held_slots.set, (*held_slots.get(), slot))
    return context, slot


async def start_detached(
    sync_fn: Callable[..., T], args: tuple[Any, ...], *, thread_name: str
) -> concurrent.futures.Future[T]:
    """Start ``sync_fn(*args)`` in a slot of :func:`run_blocking`'s pool; return its outcome.

    For work its caller may stop waiting for (a cron job's timeout, a shutdown): unlike
    ``run_blocking``, no cancellation waits for the function. Waiting for a slot is
    cancellable (the function never starts then); once started, the function keeps its
    slot until it returns, and runs in a daemon thread of its own, so a function that
    never returns holds up neither its caller nor the interpreter's exit. Context
    variables are copied in, not back. ``sync_fn`` must not raise KeyboardInterrupt or
    SystemExit (an awaiting task would end the loop): wrap them first.
    """
    require_anyio("compat.run_blocking")
    pool = _blocking_limit.pool()
    give_back = await pool.take()
    loop = asyncio.get_running_loop()
    context, slot = _thread_context(pool)
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    outcome.set_running_or_notify_cancel()  # so that cancelling it cannot lose the outcome

    def returned() -> None:
        slot.ended = True
        give_back()

    def main() -> None:
        try:
            result = context.run(sync_fn, *args)
        except BaseException as exc:
            outcome.set_exception(exc)
        else:
            outcome.set_result(result)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: so did its pool
                loop.call_soon_threadsafe(returned)

    try:
        threading.Thread(target=main, name=thread_name, daemon=True).start()
    except BaseException:
        returned()
        raise
    return outcome


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when cancelled; then re-raise the cancellation."""
    import anyio

    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            # The shield keeps anyio from re-delivering its cancellation on every loop
            # iteration; asyncio's own (task.cancel()) still arrives, and is held back here.
            with anyio.CancelScope(shield=True):
                await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: its outcome is dropped with the cancellation
        raise cancelled
    return task.result()

"""The one background event loop that synchronous code's calls into async code run on.

Why one loop for the whole process: an async client's connection pool, locks and
futures belong to the loop they were first used on. A new loop per call (what
``asyncio.run`` in a job handler amounts to) is slow, throws the pool away each time,
and fails with "Event loop is closed" or "attached to a different loop" as soon as an
object outlives the loop that made it.

The loop runs under ``anyio.run`` in a daemon thread, with an anyio ``BlockingPortal``
for generic portal work. Calls themselves do not go through ``BlockingPortal.call``:
that hands each call to the loop and then waits for the task to be spawned before
waiting for its result, two round trips where one suffices. Here the calling thread
schedules the task with ``call_soon_threadsafe`` and waits on a lock that the task
releases when it finishes: one hop there, one wake-up back.

``with sync_proxy(...)`` does not use ``BlockingPortal.wrap_async_context_manager``
either: the portal ends a block still open at its stop only by cancelling the task that
holds it, so ``__aexit__`` runs in a cancelled scope and its first ``await`` (closing a
connection pool) is cancelled. The bridge's stop asks open blocks to exit as if they had
ended, within the grace period, and cancels only what is still open after it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._context import copy_back, serving_bridge
from ._errors import (
    BridgeCancelledError,
    BridgeStoppedError,
    EventLoopRunningError,
    require_anyio,
)

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

logger = logging.getLogger("compat")

#: Seconds :func:`stop_bridge` lets pending calls finish before cancelling them, and
#: then lets open ``with sync_proxy(...)`` blocks close their async objects.
DEFAULT_STOP_TIMEOUT = 5.0
#: The same, at interpreter exit: only daemon threads can still be waiting by then.
EXIT_STOP_TIMEOUT = 2.0
# How long a cancelled call (stopped bridge, timeout) gets to unwind before its caller is
# failed regardless.
CANCEL_GRACE = 1.0

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
_NO_EXCEPTION: ExcInfo = (None, None, None)


class _Outcome:
    """The result of one piece of work on the loop, waited for by one thread.

    A bare lock is the cheapest thing a thread can block on and another thread can
    release; ``concurrent.futures.Future`` adds a condition variable and callbacks.
    """

    __slots__ = ("_done", "context", "error", "settled", "task", "timed_out", "value")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.settled = False
        self.timed_out = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.context: contextvars.Context | None = None
        self.task: asyncio.Task[None] | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        # Settled from the loop thread, or after the loop is gone: never concurrently.
        if self.settled:
            return
        self.settled = True
        self.value = value
        self.error = error
        self._done.release()

    def wait(self) -> Any:
        self._done.acquire()
        return self.result()

    def finished_within(self, seconds: float) -> bool:
        """Wait at most ``seconds`` for the outcome; whether it came."""
        return self._done.acquire(timeout=seconds)

    def result(self) -> Any:
        error = self.error
        if error is None:
            return self.value
        try:
            raise error
        finally:
            # Break the frame <-> traceback cycle that keeping the error would make.
            self.error = None
            del error


class _Held:
    """An async context manager entered on the loop, waiting there to be exited."""

    __slots__ = ("entered", "exit_request", "exited")

    def __init__(self) -> None:
        self.entered = _Outcome()
        self.exited = _Outcome()
        self.exit_request: asyncio.Future[ExcInfo] | None = None

    def request_exit(self, exc_info: ExcInfo) -> None:
        if self.exit_request is not None and not self.exit_request.done():
            self.exit_request.set_result(exc_info)


BridgeState = Literal["new", "running", "stopping", "stopped", "forked"]


class Bridge:
    """One event loop in a daemon thread that blocking callers hand coroutines to.

    States: ``new`` -> ``running`` -> ``stopping`` -> ``stopped``; a bridge that was
    running when the process forked is ``forked`` in the child, whose copy of it has no
    loop thread: it refuses calls, and what was bound to it moves to the child's bridge.
    """

    def __init__(self, *, name: str = "compat-bridge") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._state: BridgeState = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._stop_requested: asyncio.Future[float] | None = None
        # Touched by the loop thread only.
        self._closing = False
        self._calls: dict[asyncio.Task[None], _Outcome] = {}
        self._holders: dict[_Held, asyncio.Task[None]] = {}
        # Every outcome a thread may be waiting for; failed if the loop dies first.
        self._waiting: set[_Outcome] = set()
        reset_in_forked_child(self)

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def state(self) -> BridgeState:
        return self._state

    def _after_fork_in_child(self) -> None:
        # The loop thread does not exist here; nothing handed to the loop will ever run.
        self._lock = threading.Lock()
        if self._state in ("running", "stopping"):
            self._state = "forked"
        self._waiting.clear()
        self._calls.clear()
        self._holders.clear()

    @property
    def portal(self) -> BlockingPortal:
        """The anyio portal of the loop, for work beyond plain calls."""
        if self._portal is None or not self.running:
            raise BridgeStoppedError(f"{self.name} is not running")
        return self._portal

    def in_loop_thread(self) -> bool:
        thread = self._thread
        return thread is not None and thread.ident == threading.get_ident()

    def start(self) -> None:
        """Start the loop thread; wait until the loop runs."""
        with self._lock:
            if self._state == "running":
                return
            if self._state == "forked":
                raise BridgeStoppedError(f"{self.name} belongs to the parent process")
            if self._state != "new":
                raise BridgeStoppedError(f"{self.name} was stopped; a stopped bridge stays stopped")
            require_anyio("compat's bridge between sync and async code")
            started = _Outcome()
            thread = threading.Thread(
                target=self._thread_main, args=(started,), name=self.name, daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                self._state = "stopped"
                raise BridgeStoppedError(f"{self.name} cannot start: {exc}") from exc
            self._thread = thread
            try:
                started.wait()
            except BaseException:
                self._state = "stopped"
                raise
            self._state = "running"

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop accepting calls, let pending ones finish within ``timeout`` seconds,
        fail the rest with :class:`BridgeStoppedError`, close what ``with`` blocks
        still hold open, and end the loop thread.

        Called from a call the bridge runs (a coroutine on its loop, or a blocking
        function its ``run_blocking`` runs), it starts all of this and returns at once:
        that call cannot wait for the loop that waits for it. The call is a pending call
        like any other, with ``timeout`` seconds to finish.
        """
        with self._lock:
            if self._state != "running":
                if self._state == "new":
                    self._state = "stopped"
                return
            self._state = "stopping"
        loop, thread = self._loop, self._thread
        assert loop is not None
        assert thread is not None
        if self.in_loop_thread():
            self._request_stop(timeout)
            return
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(self._request_stop, timeout)
        if serving_bridge.get() is self:
            return
        # _shutdown takes at most 2 * (timeout + CANCEL_GRACE); the rest is slack.
        thread.join(2 * (timeout + CANCEL_GRACE) + 1.0)
        if thread.is_alive():
            logger.warning("%s: the loop thread did not end; leaving it behind", self.name)
        with self._lock:
            if self._state == "stopping":
                self._state = "stopped"

    # -- the calling side -------------------------------------------------------------

    def call(
        self,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        timeout: float | None = None,
    ) -> Any:
        """Run ``async_fn(*args, **kwargs)`` on the loop and return its result.

        With ``timeout``, the coroutine is cancelled after that many seconds and the
        caller gets :class:`TimeoutError` once it has unwound, or at the latest
        :data:`CANCEL_GRACE` seconds later if it does not end when cancelled.
        """
        refuse_running_loop("compat.run_sync() or a sync_proxy method call")
        outcome = _Outcome()
        try:
            self._submit(outcome, self._spawn_call, outcome, async_fn, args, kwargs, timeout)
            if timeout is None:
                return outcome.wait()
            if not outcome.finished_within(timeout + CANCEL_GRACE):
                raise TimeoutError(
                    f"{describe(async_fn)} did not finish within timeout={timeout} s, and had "
                    f"not ended {CANCEL_GRACE} s after being cancelled: it may still be "
                    "running on the bridge loop"
                )
            return outcome.result()
        except BaseException:
            if not outcome.settled:
                # Interrupted while waiting (KeyboardInterrupt): do not leave it running.
                self._cancel_soon(outcome)
            raise
        finally:
            self._waiting.discard(outcome)
            if outcome.context is not None:
                copy_back(outcome.context)

    def enter(
        self, async_cm: AbstractAsyncContextManager[Any], held: _Held | None = None
    ) -> tuple[_Held, Any]:
        """``__aenter__`` on the loop, in a task that stays until :meth:`exit`."""
        refuse_running_loop("entering an async context manager from sync code")
        held = _Held() if held is None else held
        self._submit(held.entered, self._spawn_holder, held, async_cm)
        try:
            return held, held.entered.wait()
        finally:
            self._waiting.discard(held.entered)

    def exit(self, held: _Held, exc_info: ExcInfo) -> bool:
        """``__aexit__`` in the task that entered; return whether it suppresses."""
        refuse_running_loop("exiting an async context manager from sync code")
        self._waiting.add(held.exited)
        try:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(held.request_exit, exc_info)
        except RuntimeError:
            # The loop is gone; its shutdown already exited the context.
            self._waiting.discard(held.exited)
            if not held.exited.settled:
                return False
        try:
            return bool(held.exited.wait())
        finally:
            self._waiting.discard(held.exited)

    def _submit(self, outcome: _Outcome, spawn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if not self.running or loop is None:
            if self._state == "forked":
                raise BridgeStoppedError(
                    f"{self.name} belongs to the process this one was forked from; "
                    "the call was not made"
                )
            raise BridgeStoppedError(f"{self.name} is stopped; the call was not made")
        self._waiting.add(outcome)
        try:
            # The task is created in a copy of the caller's context, so it sees the
            # caller's correlation id and other context variables.
            loop.call_soon_threadsafe(spawn, *args, context=contextvars.copy_context())
        except RuntimeError as exc:  # "Event loop is closed"
            self._waiting.discard(outcome)
            raise BridgeStoppedError(f"{self.name} stopped; the call was not made") from exc

    def _cancel_soon(self, outcome: _Outcome) -> None:
        def cancel() -> None:
            if outcome.task is not None:
                outcome.task.cancel()

        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has ended: nothing to cancel
            loop.call_soon_threadsafe(cancel)

    # -- the loop side ----------------------------------------------------------------

    def _thread_main(self, started: _Outcome) -> None:
        import anyio

        try:
            anyio.run(self._main, started, backend="asyncio")
        except BaseException as exc:
            if not started.settled:
                started.settle(error=exc)
            else:
                logger.exception("%s: the loop ended with an error", self.name)
        finally:
            # The loop is closed now: whatever was handed to it and never ran would
            # leave its caller waiting forever.
            for outcome in list(self._waiting):
                outcome.settle(error=BridgeStoppedError(f"{self.name} stopped before the call ran"))
            with self._lock:
                if self._state == "stopping":  # stopped from its own loop: nobody joins
                    self._state = "stopped"

    async def _main(self, started: _Outcome) -> None:
        from anyio.from_thread import BlockingPortal

        async with BlockingPortal() as portal:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._portal = portal
            self._stop_requested = loop.create_future()
            started.settle()
            grace = await self._stop_requested
            await self._shutdown(grace)
            # Tasks users started through the portal would keep the loop alive.
            await portal.stop(cancel_remaining=True)

    def _request_stop(self, timeout: float) -> None:
        self._closing = True
        if self._stop_requested is not None and not self._stop_requested.done():
            self._stop_requested.set_result(timeout)

    async def _shutdown(self, grace: float) -> None:
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=grace)
        for task in self._calls:
            task.cancel()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=CANCEL_GRACE)
        for outcome in self._calls.values():
            # Still not ended (waiting for a blocking function in a worker thread, or
            # ignoring cancellation): its caller is not kept waiting for it.
            outcome.settle(
                error=BridgeStoppedError(
                    f"{self.name} stopped while the call was pending; it did not end within "
                    f"{CANCEL_GRACE} s of being cancelled and was left behind"
                )
            )
        for held in self._holders:
            held.request_exit(_NO_EXCEPTION)
        if self._holders:
            await asyncio.wait(set(self._holders.values()), timeout=grace)
        for task in self._holders.values():
            task.cancel()
        if self._holders:
            await asyncio.wait(set(self._holders.values()), timeout=CANCEL_GRACE)

    def _spawn_call(
        self,
        outcome: _Outcome,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        timeout: float | None,
    ) -> None:
        if self._closing:
            outcome.settle(
                error=BridgeStoppedError(f"{self.name} is stopping; the call was not made")
            )
            return
        assert self._loop is not None
        task = self._loop.create_task(self._run_call(outcome, async_fn, args, kwargs, timeout))
        outcome.task = task
        self._calls[task] = outcome
        task.add_done_callback(self._forget_call)

    def _forget_call(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)

    async def _run_call(
        self,
        outcome: _Outcome,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        time_limit: float | None,
    ) -> None:
        serving_bridge.set(self)
        value: Any = None
        error: BaseException | None = None
        timer = None
        if time_limit is not None:
            assert self._loop is not None
            timer = self._loop.call_later(time_limit, _time_out, outcome)
        try:
            awaitable = async_fn(*args, **kwargs)
            if not inspect.isawaitable(awaitable):
                raise TypeError(
                    f"{async_fn!r} returned {type(awaitable).__name__}, not an awaitable: "
                    "the bridge runs async functions; call a sync function directly"
                )
            value = await awaitable
        except asyncio.CancelledError as exc:
            # asyncio.CancelledError is not an Exception: in a sync caller it would get
            # past every `except Exception` and end the thread. The caller gets what
            # happened instead.
            if outcome.timed_out:
                error = TimeoutError(
                    f"{describe(async_fn)} did not finish within timeout={time_limit} s; "
                    "it was cancelled"
                )
            elif self._closing:
                error = BridgeStoppedError(f"{self.name} stopped while the call was pending")
            else:
                error = BridgeCancelledError(
                    f"{describe(async_fn)} was cancelled on the bridge loop: {exc!r}"
                )
            error.__cause__ = exc
        # Anything, KeyboardInterrupt included, belongs to the caller, not to the loop.
        except BaseException as exc:
            error = exc
        finally:
            if timer is not None:
                timer.cancel()
        outcome.context = contextvars.copy_context()
        outcome.settle(value, error)

    def _spawn_holder(self, held: _Held, async_cm: AbstractAsyncContextManager[Any]) -> None:
        if self._closing:
            held.entered.settle(error=BridgeStoppedError(f"{self.name} is stopping"))
            return
        assert self._loop is not None
        held.exit_request = self._loop.create_future()
        task = self._loop.create_task(self._hold(held, async_cm))
        held.entered.task = task
        self._holders[held] = task

    async def _hold(self, held: _Held, async_cm: AbstractAsyncContextManager[Any]) -> None:
        # __aenter__ and __aexit__ run in this one task: anyio cancel scopes and task
        # groups opened on entry must be closed by the task that opened them.
        try:
            try:
                value = await async_cm.__aenter__()
            except BaseException as exc:
                held.entered.settle(error=exc)
                return
            held.entered.settle(value)
            assert held.exit_request is not None
            exc_info = _NO_EXCEPTION
            try:
                exc_info = await held.exit_request
            except asyncio.CancelledError as exc:
                # Cancelled while waiting (the loop is ending): still close the object.
                exc_info = (type(exc), exc, exc.__traceback__)
            try:
                suppress = await async_cm.__aexit__(*exc_info)
            except BaseException as exc:
                held.exited.settle(error=exc)
            else:
                held.exited.settle(bool(suppress))
        finally:
            self._holders.pop(held, None)
            held.exited.settle(error=BridgeStoppedError(f"{self.name} stopped while closing"))


def _time_out(outcome: _Outcome) -> None:
    if outcome.task is not None and not outcome.task.done():
        outcome.timed_out = True
        outcome.task.cancel()


def describe(function: Callable[..., Any]) -> str:
    """A short name of a callable for error messages."""
    name = getattr(function, "__qualname__", None) or repr(function)
    return f"{name}()"


def checked_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is None or a positive number of seconds; a clear error otherwise."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    return float(timeout)


def refuse_running_loop(what: str) -> None:
    """Raise :class:`EventLoopRunningError` when this thread runs an event loop."""
    loop = asyncio.events._get_running_loop()
    if loop is not None:
        raise EventLoopRunningError(
            f"{what} came from a thread whose event loop is running ({loop!r}); "
            "blocking here would freeze that loop, and deadlock if the call needs it. "
            "In async code, await the coroutine instead (`await client.method(...)`); "
            "to call blocking code from async code, use `await compat.run_blocking(...)`."
        )


# -- the process-wide bridge ------------------------------------------------------------

_default_lock = threading.Lock()
_default: Bridge | None = None
_exiting = False
_hooks_installed = False


def default_bridge() -> Bridge:
    """The process's bridge, started on first use (and again after :func:`stop_bridge`)."""
    global _default, _hooks_installed
    bridge = _default
    if bridge is not None and bridge.running:
        return bridge
    with _default_lock:
        if _exiting:
            raise BridgeStoppedError("the interpreter is exiting; the bridge loop is stopped")
        bridge = _default
        if bridge is None or not bridge.running:
            bridge = Bridge()
            bridge.start()
            _default = bridge
            if not _hooks_installed:
                atexit.register(_stop_at_exit)
                _hooks_installed = True
        return bridge


def start_bridge() -> None:
    """Start the shared background loop now rather than on the first bridged call."""
    default_bridge()


def stop_bridge(timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
    """Stop the shared background loop; the next bridged call starts a new one.

    Calls still pending after ``timeout`` seconds fail with :class:`BridgeStoppedError`,
    and ``with sync_proxy(...)`` blocks still open get their ``__aexit__`` run. Proxies
    made before the stop keep refusing calls: their objects belonged to the old loop.
    Called from a call the bridge runs (a coroutine on its loop, a blocking function its
    run_blocking runs), it starts the stop and returns at once.
    """
    global _default
    with _default_lock:
        bridge, _default = _default, None
    if bridge is not None:
        bridge.stop(timeout)


def bridge_portal() -> BlockingPortal:
    """The anyio ``BlockingPortal`` of the shared loop (started if need be)."""
    return default_bridge().portal


def _stop_at_exit() -> None:
    global _exiting
    _exiting = True
    stop_bridge(EXIT_STOP_TIMEOUT)


# -- fork ------------------------------------------------------------------------------


class _ForkSensitive(Protocol):
    def _after_fork_in_child(self) -> None: ...


_fork_sensitive: weakref.WeakSet[_ForkSensitive] = weakref.WeakSet()


def reset_in_forked_child(obj: _ForkSensitive) -> None:
    """Call ``obj._after_fork_in_child()`` in every child this process forks.

    It runs in the child right after the fork, while the child has a single thread, so
    it may replace locks that another thread of the parent held at the time.
    """
    _fork_sensitive.add(obj)


def _after_fork_in_child() -> None:
    # The loop thread does not exist in a forked child; its first call starts a new one.
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()
    for obj in list(_fork_sensitive):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

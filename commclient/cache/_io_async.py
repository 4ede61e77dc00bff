"""What the async driver does its own way: tasks, cancellation, ``redis.asyncio``.

:mod:`._async` is written once against these names; :mod:`._sync` is generated from it
and uses :mod:`._io_sync`, which offers the same names for threads and blocking sockets.
Single flight and per-call deadlines live here because they are where the two worlds
really differ.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from contextlib import suppress
from typing import Any, TypeVar

from .._callables import require_function
from .._extras import import_extra
from ._core import rebuild_client, reentered
from ._exceptions import CacheLoopError

T = TypeVar("T")

Stop = threading.Event
"""Asks a listener to end (checked between reads; the async one is also cancelled)."""

CONNECT_RETRIES = 1
"""A cache's own client retries a command once on a fresh connection: every call has a
deadline of its own here, so a retry cannot make a dead Redis slower to notice."""

TICKS_FRACTION = 0.25


def redis_module() -> Any:
    return import_extra("redis.asyncio", extra="redis", feature="AsyncRedisCache.from_url")


def retry(retries: int) -> Any:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Retry(NoBackoff(), retries)


sleep = asyncio.sleep


async def wait(stop: Stop, seconds: float) -> None:
    """Pause a listener between resubscriptions (``aclose`` cancels it)."""
    await asyncio.sleep(seconds)


def poll_timeout(ping_interval: float) -> float:
    """How long one Pub/Sub read may wait: short, so that the listener shows it runs well
    within ``LISTENER_SILENCE`` (see ``_local``)."""
    return min(ping_interval, 0.1)


if sys.version_info >= (3, 11):

    async def bounded(awaitable: Awaitable[T], seconds: float) -> T:
        async with asyncio.timeout(seconds):
            return await awaitable

    def check_cancelled() -> None:
        """Raise if this task was asked to stop, even if the request was swallowed.

        A cancellation that lands while redis-py's Pub/Sub read is inside its own read
        timeout can be absorbed there (the read returns ``None`` and the task stays
        "cancelling"); a listener that then simply polled on would never end.
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling() > 0:
            raise asyncio.CancelledError

else:

    async def bounded(awaitable: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(awaitable, seconds)

    def check_cancelled() -> None:
        """Python 3.10 cannot tell; ``aclose`` sets the listener's stop event as well."""


def check_loader(loader: object, feature: str) -> None:
    """Refuse a loader or callback that is not a function (a call, ``load()``, most often)."""
    require_function(loader, feature, asynchronous=None)


async def call_loader(loader: Callable[[], Any] | None) -> Any:
    """Call the loader (a coroutine function, or a plain one) and await what it returns."""
    result = loader() if loader is not None else None
    if inspect.isawaitable(result):
        result = await result
    return result


def renewing(interval: float, renew: Callable[[], Awaitable[object]]) -> _Renewal:
    """Call ``renew`` every ``interval`` seconds while the body (``async with``) runs."""
    return _Renewal(interval, renew)


class _Renewal:
    """The renewing task is made only when the loader outlives the first interval (a
    timer handle costs a miss far less than a task started and cancelled around a quick
    loader); a class rather than ``asynccontextmanager``, whose generator costs a miss
    a few microseconds more."""

    __slots__ = ("_interval", "_renew", "_task", "_timer")

    def __init__(self, interval: float, renew: Callable[[], Awaitable[object]]) -> None:
        self._interval = interval
        self._renew = renew
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._start)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        task = self._task
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await self._renew()
            await asyncio.sleep(self._interval)


def start_background(function: Callable[[], Coroutine[Any, Any, None]], name: str) -> Any:
    """Run ``function`` as a task of the running loop, in an empty context: it outlives the
    operation that started it, whose correlation id and span it must not carry on (its
    logs would name that request, its failures be told to that operation's span)."""
    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, function(), name=name)


async def stop_background(task: asyncio.Task[None], stop: Stop) -> None:
    """Stop a listener task and wait for its end."""
    stop.set()
    while not task.done():
        # Cancelled again until it ends: see check_cancelled.
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


async def close_quietly(resource: Any) -> None:
    """Close a client or Pub/Sub object without letting a dead connection raise or hang."""
    close = getattr(resource, "aclose", None) or getattr(resource, "close", None)
    if close is None:
        return
    with suppress(Exception):
        result = close()
        if inspect.isawaitable(result):
            await bounded(result, 1.0)


class _Call:
    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False
        self.cancelling = _cancelling(task)


class Deadlines:
    """Bounds every Redis call by ``timeout`` with one timer for all calls in flight.

    ``asyncio.timeout`` schedules and cancels a timer per call, which costs several
    microseconds on every cache hit. Here each call only registers itself in a set; one
    timer, ticking a few times per timeout while calls are in flight, cancels the tasks
    whose deadline passed. The cancellation is told apart from the caller's own exactly
    as ``asyncio.timeout`` does. A call ends between ``timeout`` and
    ``timeout * (1 + TICKS_FRACTION)`` seconds.
    """

    def __init__(
        self, timeout: float, on_loop_left: Callable[[], None], *, one_loop: bool = True
    ) -> None:
        """``on_loop_left`` drops the connections of a loop the calls moved away from.
        ``one_loop``: the client's connections belong to the loop they were opened on,
        so calls from a second loop while the first still runs are refused
        (:class:`CacheLoopError`); the memory client has no connections."""
        self.timeout = timeout
        self._on_loop_left = on_loop_left
        self._one_loop = one_loop
        self._tick = timeout * TICKS_FRACTION
        self._calls: set[_Call] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, command: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await command(...)``; ``TimeoutError`` past the deadline."""
        call = self._start()
        try:
            result = await command(*args, **kwargs)
        except asyncio.CancelledError:
            if not (call.expired and _uncancel(call)):
                raise
            raise TimeoutError("redis did not answer within the operation timeout") from None
        finally:
            self._calls.discard(call)
        if call.expired:  # it returned although it expired: its cancellation was lost
            _uncancel(call)
        return result

    def _start(self) -> _Call:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            old = self._loop
            if self._one_loop and old is not None and old.is_running():
                # Another thread's loop still uses the connections and the timer: taking
                # them over would break its calls, and using them here fails.
                raise CacheLoopError(
                    "this async cache is in use on another event loop, which is still "
                    "running (asyncio.run in two threads at once?): use one cache per "
                    "event loop, or SyncRedisCache from threads"
                )
            # Used from a new event loop: the old loop's calls and timer are gone with it,
            # and the connections opened on it cannot serve this one, whether it was
            # closed (``asyncio.run`` per job) or only stopped (a loop per worker thread,
            # run with ``run_until_complete``, used in turn).
            if old is not None and (self._one_loop or old.is_closed()):
                self._on_loop_left()
            self._loop, self._timer = loop, None
            self._calls = set()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - cache calls always run in a task
            raise RuntimeError("the cache must be used from a task")
        call = _Call(task, loop.time() + self.timeout)
        self._calls.add(call)
        if self._timer is None:
            self._timer = loop.call_later(self._tick, self._expire)
        return call

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        for call in list(self._calls):
            if not call.expired and call.deadline <= now:
                call.expired = True
                call.task.cancel()
        if self._calls:
            self._timer = loop.call_later(self._tick, self._expire)


if sys.version_info >= (3, 11):

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return task.cancelling()

    def _uncancel(call: _Call) -> bool:
        # As asyncio.timeout: ours only if no other cancellation is pending.
        return call.task.uncancel() <= call.cancelling

else:

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return 0

    def _uncancel(call: _Call) -> bool:
        return True  # Python 3.10 keeps no count of cancellation requests


ABANDONED: Any = object()
"""What a follower hears when the caller leading its load was cancelled: load again."""


class _Flight:
    __slots__ = ("epoch", "followers", "task")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.task = asyncio.current_task()  # the leader's, which runs the load
        self.followers: list[asyncio.Future[Any]] = []


class Flights:
    """Single flight: concurrent misses of one key share one load.

    The first caller runs the load itself, in its own task (a miss that nobody joins
    costs no task and no extra turn of the event loop); each caller that joins waits on
    a future of its own, so that its cancellation cancels only its own wait. A leader's
    error reaches every follower; a leader cancelled mid-load leaves the followers to
    load again, one leading (the load released its lease: see ``_flows``). A loader
    that asks for its own key (in the leader's task) raises :class:`RecursionError`
    rather than wait for itself.

    A load is joined only by callers that saw the same ``epoch`` (the local tier's
    invalidation count): a load that began before an invalidation applied here may carry
    the old data, so later callers start their own instead of joining it. And only on its
    own event loop: a memory cache may serve two running loops at once, and one loop's
    future cannot be awaited on another.
    """

    def __init__(self) -> None:
        self._flights: dict[tuple[asyncio.AbstractEventLoop, Hashable], _Flight] = {}

    def __contains__(self, key: Hashable) -> bool:
        return (asyncio.get_running_loop(), key) in self._flights

    async def join(
        self, key: Hashable, epoch: int, load: Callable[[], Coroutine[Any, Any, Any]]
    ) -> tuple[Any, bool]:
        """Wait for the load of ``key`` in flight, or run ``load``: its value (and
        whether this caller ran it), or its error."""
        loop = asyncio.get_running_loop()
        on_loop = (loop, key)
        while True:
            flight = self._flights.get(on_loop)
            if flight is None or flight.epoch != epoch:
                return await self._lead(on_loop, epoch, load)
            if flight.task is asyncio.current_task():
                raise RecursionError(reentered(key))
            waiter = loop.create_future()
            flight.followers.append(waiter)
            value = await waiter
            if value is not ABANDONED:
                return value, False

    async def lead(
        self, key: Hashable, epoch: int, load: Callable[[], Coroutine[Any, Any, Any]]
    ) -> tuple[Any, bool] | None:
        """Run ``load`` as :meth:`join` would, unless a load of ``key`` is in flight:
        then ``None`` (the caller reads first, and joins only if its read missed)."""
        on_loop = (asyncio.get_running_loop(), key)
        if on_loop in self._flights:
            return None
        return await self._lead(on_loop, epoch, load)

    async def _lead(
        self,
        on_loop: tuple[asyncio.AbstractEventLoop, Hashable],
        epoch: int,
        load: Callable[[], Coroutine[Any, Any, Any]],
    ) -> tuple[Any, bool]:
        flight = self._flights[on_loop] = _Flight(epoch)
        try:
            value = await load()
        except BaseException as error:
            self._end(on_loop, flight, ABANDONED if not isinstance(error, Exception) else error)
            raise
        self._end(on_loop, flight, value)
        return value, True

    def _end(
        self, on_loop: tuple[asyncio.AbstractEventLoop, Hashable], flight: _Flight, outcome: Any
    ) -> None:
        if self._flights.get(on_loop) is flight:
            del self._flights[on_loop]
        for waiter in flight.followers:
            if waiter.done():  # that follower was cancelled
                continue
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)


def check_decoratable(function: Callable[..., Any], cache: str) -> None:
    """``cached`` of the async cache decorates coroutine functions."""
    if not inspect.iscoroutinefunction(function):
        raise TypeError(
            f"{cache}.cached decorates coroutine functions (async def), and "
            f"{getattr(function, '__qualname__', function)!r} is not one: use the sync cache"
        )


def rebuilt_client(client: Any, **overrides: Any) -> Any:
    """A client like ``client`` on a pool of its own, with ``overrides`` applied."""
    return rebuild_client(redis_module, client, overrides)


def bounded_client(client: Any, timeout: float) -> tuple[Any, bool]:
    """The client to use, and whether the cache owns it: here the caller's own client,
    since :class:`Deadlines` bounds every call whatever its socket timeouts."""
    return client, False


close_client = close_quietly
"""Close a client the cache owns (the async driver shares none: see :func:`bounded_client`)."""


async def prepare(client: Any) -> None:
    """Let a cluster client learn its slots: it does so on its first command, and its
    Pub/Sub needs them before that."""
    if hasattr(client, "get_node_from_key"):
        await client.initialize()


def ended(task: asyncio.Task[None]) -> bool:
    """A listener task is over: cancelled with its event loop, or finished."""
    return task.done()


def reset_connections(client: Any) -> None:
    """Forget a client's pooled connections without closing them: they belong to a
    closed event loop (or, after a fork, to the parent) and cannot be used or closed."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.reset()

"""compat.run_sync and the shared bridge loop: one loop, no deadlock, clean stop."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import sys
import threading
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from commclient import correlation_id_ctx
from compat import (
    BridgeCancelledError,
    BridgeError,
    BridgeStoppedError,
    EventLoopRunningError,
    bridge_portal,
    run_blocking,
    run_sync,
    start_bridge,
    stop_bridge,
    sync_proxy,
)
from compat._bridge import Bridge

pytestmark = pytest.mark.facade_async

request_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_var", default=None
)


async def where() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """The running loop and thread (objects: ids of ended threads are reused)."""
    await asyncio.sleep(0)
    return asyncio.get_running_loop(), threading.current_thread()


async def double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


class Boom(Exception):
    pass


async def fail(message: str) -> None:
    await asyncio.sleep(0)
    raise Boom(message)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    """A bridge of the test's own, so stopping it leaves the shared one alone."""
    own = Bridge(name="test-bridge")
    own.start()
    yield own
    own.stop(timeout=1.0)


def test_returns_the_coroutine_result() -> None:
    assert run_sync(double, 21) == 42


def test_keyword_arguments_are_passed() -> None:
    async def join(*parts: str, sep: str) -> str:
        return sep.join(parts)

    assert run_sync(join, "a", "b", sep="-") == "a-b"


def test_an_exception_reaches_the_caller_unchanged() -> None:
    with pytest.raises(Boom, match="no reminders"):
        run_sync(fail, "no reminders")


def test_every_call_from_every_thread_runs_on_one_loop_in_another_thread() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        seen = list(pool.map(lambda _: run_sync(where), range(40)))
    seen.append(run_sync(where))
    loops = {loop for loop, _ in seen}
    threads = {thread for _, thread in seen}
    assert len(loops) == 1
    assert len(threads) == 1
    assert threading.current_thread() not in threads


def test_the_loop_survives_a_base_exception_of_the_coroutine() -> None:
    async def interrupt() -> None:
        raise KeyboardInterrupt

    before = run_sync(where)
    with pytest.raises(KeyboardInterrupt):
        run_sync(interrupt)
    assert run_sync(where) == before


def test_refuses_to_block_a_running_event_loop() -> None:
    async def main() -> None:
        run_sync(double, 1)

    with pytest.raises(EventLoopRunningError, match="await"):
        asyncio.run(main())


def test_refuses_on_the_bridge_loop_itself() -> None:
    async def reenter() -> int:
        return run_sync(double, 1)

    with pytest.raises(EventLoopRunningError, match="event loop is running"):
        run_sync(reenter)


def test_a_sync_function_is_refused_with_a_clear_error() -> None:
    def not_async() -> int:
        return 1

    with pytest.raises(TypeError, match="not an awaitable"):
        run_sync(not_async)  # type: ignore[arg-type]


def test_context_variables_cross_in_and_changes_come_back() -> None:
    async def callee() -> str | None:
        seen = request_var.get()
        request_var.set("set by the callee")
        return seen

    token = request_var.set("set by the caller")
    try:
        assert run_sync(callee) == "set by the caller"
        assert request_var.get() == "set by the callee"
    finally:
        request_var.reset(token)


def test_changes_come_back_when_the_coroutine_raises() -> None:
    async def callee() -> None:
        request_var.set("set before failing")
        raise Boom("after setting")

    token = request_var.set(None)
    try:
        with pytest.raises(Boom):
            run_sync(callee)
        assert request_var.get() == "set before failing"
    finally:
        request_var.reset(token)


def test_each_thread_keeps_its_own_correlation_id() -> None:
    async def echo() -> str | None:
        await asyncio.sleep(0)
        return correlation_id_ctx.get()

    def in_thread(index: int) -> list[str | None]:
        correlation_id_ctx.set(f"request-{index}")
        return [run_sync(echo) for _ in range(20)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(in_thread, range(8)))
    assert results == [[f"request-{index}"] * 20 for index in range(8)]


def test_the_loop_local_sniffio_variable_is_not_copied_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_sniffio = types.ModuleType("sniffio")
    library: contextvars.ContextVar[str | None] = contextvars.ContextVar(
        "current_async_library_cvar", default=None
    )
    fake_sniffio.current_async_library_cvar = library  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sniffio", fake_sniffio)

    async def callee() -> None:
        library.set("asyncio")
        request_var.set("copied back")

    token = request_var.set(None)
    try:
        run_sync(callee)
        assert request_var.get() == "copied back"
        assert library.get() is None
    finally:
        request_var.reset(token)


def test_an_interrupted_caller_cancels_its_call() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    if not hasattr(signal, "pthread_kill"):
        pytest.skip("needs signal.pthread_kill")

    class Interrupted(Exception):
        pass

    interrupted = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        if not interrupted.is_set():  # later signals must not interrupt the cleanup
            interrupted.set()
            raise Interrupted

    started = threading.Event()
    cancelled = threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupt_when_started() -> None:
        if not started.wait(10):
            return
        # A signal that lands just before the main thread blocks on its lock is only
        # handled at the next wake-up, so signal again until it has been handled.
        for _ in range(1000):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
            if interrupted.wait(0.01):
                return

    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(Interrupted):
            run_sync(slow)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert cancelled.wait(10)


def test_stop_fails_a_pending_call_with_a_clear_error(bridge: Bridge) -> None:
    started = threading.Event()
    outcome: list[BaseException | None] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    def caller() -> None:
        try:
            bridge.call(forever, (), {})
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(10)
    bridge.stop(timeout=0.05)
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], BridgeStoppedError)
    assert "stopped while the call was pending" in str(outcome[0])


def test_stop_lets_a_pending_call_finish_within_the_grace_period(bridge: Bridge) -> None:
    started = threading.Event()
    results: list[int] = []

    async def short() -> int:
        started.set()
        await asyncio.sleep(0.05)
        return 7

    thread = threading.Thread(target=lambda: results.append(bridge.call(short, (), {})))
    thread.start()
    assert started.wait(10)
    bridge.stop(timeout=30)
    thread.join(10)
    assert results == [7]


def test_a_stopped_bridge_refuses_calls_and_stays_stopped(bridge: Bridge) -> None:
    bridge.stop(timeout=1.0)
    with pytest.raises(BridgeStoppedError, match="the call was not made"):
        bridge.call(double, (1,), {})
    with pytest.raises(BridgeStoppedError, match="stays stopped"):
        bridge.start()


def test_stop_runs_aexit_of_what_a_with_block_still_holds(bridge: Bridge) -> None:
    events: list[str] = []

    class Resource:
        async def __aenter__(self) -> Resource:
            events.append("enter")
            return self

        async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
            await asyncio.sleep(0)
            events.append(f"exit with {exc_type}")

    bridge.enter(Resource())
    bridge.stop(timeout=5.0)
    # Asked to exit, as a with block ending normally would, not cancelled.
    assert events == ["enter", "exit with None"]


def test_stop_from_the_loop_it_stops_ends_that_loop(bridge: Bridge) -> None:
    async def stop_from_inside() -> str:
        bridge.stop()
        await asyncio.sleep(0)  # the calling coroutine still finishes
        return "finished"

    _, thread = bridge.call(where, (), {})
    assert bridge.call(stop_from_inside, (), {}) == "finished"
    thread.join(30)
    assert not thread.is_alive()
    assert bridge.state == "stopped"
    with pytest.raises(BridgeStoppedError):
        bridge.call(double, (2,), {})


def test_stop_bridge_from_the_bridge_loop_leaves_no_old_loop_running() -> None:
    start_bridge()
    old_loop, old_thread = run_sync(where)

    async def stop_from_inside() -> str:
        stop_bridge()
        return "returned"

    assert run_sync(stop_from_inside) == "returned"
    old_thread.join(30)
    assert not old_thread.is_alive()
    assert old_loop.is_closed()
    new_loop, new_thread = run_sync(where)
    assert new_loop is not old_loop
    bridge_threads = [t for t in threading.enumerate() if t.name == "compat-bridge"]
    assert bridge_threads == [new_thread]


def test_the_shared_bridge_restarts_after_an_explicit_stop() -> None:
    start_bridge()
    first_loop, first_thread = run_sync(where)
    stop_bridge()
    second_loop, second_thread = run_sync(where)
    assert second_thread is not first_thread
    assert second_loop is not first_loop
    assert first_loop.is_closed()
    assert run_sync(where) == (second_loop, second_thread)


def test_a_proxy_keeps_refusing_after_its_loop_was_stopped() -> None:
    class Service:
        async def ping(self) -> str:
            return "pong"

    proxy = sync_proxy(Service())
    assert proxy.ping() == "pong"
    stop_bridge()
    with pytest.raises(BridgeStoppedError):
        proxy.ping()
    assert sync_proxy(Service()).ping() == "pong"


def test_the_portal_serves_the_same_loop() -> None:
    loop, _ = run_sync(where)
    assert bridge_portal().call(asyncio.get_running_loop) is loop


def test_no_event_loop_is_made_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    start_bridge()
    made: list[object] = []
    original = asyncio.new_event_loop

    def counting_new_event_loop() -> asyncio.AbstractEventLoop:
        loop = original()
        made.append(loop)
        return loop

    monkeypatch.setattr(asyncio, "new_event_loop", counting_new_event_loop)
    for value in range(50):
        assert run_sync(double, value) == 2 * value
    assert made == []


def test_a_timeout_cancels_the_coroutine_and_raises_timeout_error() -> None:
    cancelled = threading.Event()

    async def slow(seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match=r"slow\(\) did not finish within timeout=0.05 s"):
        run_sync(slow, 3600, timeout=0.05)
    assert cancelled.is_set()  # cancelled before the caller got the error
    assert run_sync(double, 4, timeout=30) == 8


def test_a_coroutine_that_ignores_cancellation_does_not_hold_its_caller() -> None:
    release = asyncio.Event()
    loop, _ = run_sync(where)

    async def stubborn() -> str:
        while True:
            try:
                await release.wait()
                return "released"
            except asyncio.CancelledError:
                continue

    with pytest.raises(TimeoutError, match="may still be running on the bridge loop"):
        run_sync(stubborn, timeout=0.05)
    loop.call_soon_threadsafe(release.set)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("inf"), ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("5", TypeError),
    ],
)
def test_a_bad_timeout_is_refused_before_the_call(timeout: Any, error: type[Exception]) -> None:
    ran: list[int] = []

    async def record() -> None:
        ran.append(1)

    with pytest.raises(error, match="timeout must be"):
        run_sync(record, timeout=timeout)
    assert ran == []


async def raises_cancelled() -> None:
    raise asyncio.CancelledError


async def cancels_its_own_task() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)


async def awaits_a_cancelled_future() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


@pytest.mark.parametrize(
    "cancelled_inside", [raises_cancelled, cancels_its_own_task, awaits_a_cancelled_future]
)
def test_a_cancellation_inside_reaches_the_sync_caller_as_a_bridge_error(
    cancelled_inside: Any,
) -> None:
    with pytest.raises(BridgeCancelledError, match="was cancelled on the bridge loop") as caught:
        run_sync(cancelled_inside)
    assert isinstance(caught.value, BridgeError)
    assert isinstance(caught.value, Exception)
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)


def test_a_cancellation_inside_does_not_end_a_worker_thread() -> None:
    async def cancelled_inside() -> None:
        raise asyncio.CancelledError

    def worker() -> str:
        try:
            run_sync(cancelled_inside)
        except Exception as exc:  # what worker code catches; CancelledError would escape
            return type(exc).__name__
        return "no error"

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(worker).result(timeout=30) == "BridgeCancelledError"


def test_a_coroutine_object_is_refused_with_what_to_pass_instead() -> None:
    async def load() -> int:
        return 1

    coroutine: Any = load()
    try:
        with pytest.raises(TypeError, match=r"not an awaitable.*load.*pass the function"):
            run_sync(coroutine)
    finally:
        coroutine.close()


def test_something_not_callable_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match=r"compat.run_sync\(\) takes an async function; got int"):
        run_sync(cast(Any, 42))


def test_run_blocking_refuses_an_async_function_and_a_coroutine() -> None:
    async def fetch() -> int:
        return 1

    async def main() -> None:
        with pytest.raises(TypeError, match=r"fetch.*is an async function: await it"):
            await run_blocking(cast(Any, fetch))
        coroutine: Any = fetch()
        try:
            with pytest.raises(TypeError, match=r"run_blocking.*not an awaitable"):
                await run_blocking(coroutine)
        finally:
            coroutine.close()

    asyncio.run(main())


def test_the_docstrings_name_the_anyio_and_asgiref_equivalents() -> None:
    # run_sync is named like anyio's to_thread.run_sync and does the opposite: the help a
    # user reads in an editor or the API reference says so, not only the README.
    assert run_sync.__doc__ is not None
    assert run_blocking.__doc__ is not None
    assert "opposite of anyio's ``to_thread.run_sync``" in run_sync.__doc__
    assert "``async_to_sync(async_fn)(*args)``" in run_sync.__doc__
    assert "anyio's ``to_thread.run_sync``" in run_blocking.__doc__
    assert "``sync_to_async(sync_fn)(*args)``" in run_blocking.__doc__

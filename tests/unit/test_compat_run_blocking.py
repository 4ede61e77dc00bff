"""compat.run_blocking: blocking code from async code, off the loop, bounded, in context."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
import types
from collections.abc import Iterator

import pytest

from commclient import correlation_id_ctx
from compat import (
    BridgeStoppedError,
    blocking_limit,
    run_blocking,
    run_sync,
    set_blocking_limit,
    stop_bridge,
)
from compat._bridge import Bridge
from compat._run import DEFAULT_BLOCKING_LIMIT

pytestmark = pytest.mark.facade_async

request_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_var", default=None
)


class Running:
    """Counts the functions running at once (``with running:``), and the most at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> int:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            return self.now

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.now -= 1


@pytest.fixture
def limit() -> Iterator[None]:
    previous = blocking_limit()
    yield
    set_blocking_limit(previous)


def test_runs_in_a_worker_thread_and_returns_the_result() -> None:
    def legacy(value: int, *, times: int) -> tuple[int, int]:
        return value * times, threading.get_ident()

    async def main() -> tuple[int, int]:
        return await run_blocking(legacy, 3, times=4)

    result, thread = asyncio.run(main())
    assert result == 12
    assert thread != threading.get_ident()


def test_an_exception_reaches_the_awaiting_task() -> None:
    def legacy() -> None:
        raise LookupError("no such reminder")

    async def main() -> None:
        await run_blocking(legacy)

    with pytest.raises(LookupError, match="no such reminder"):
        asyncio.run(main())


def test_the_loop_keeps_running_while_the_function_blocks() -> None:
    # The blocking function waits for an event only another task on the loop sets:
    # if the loop were blocked, the wait would run out and return False.
    async def main() -> bool:
        event = threading.Event()

        async def set_later() -> None:
            await asyncio.sleep(0)
            event.set()

        setter = asyncio.ensure_future(set_later())
        released = await run_blocking(event.wait, 30)
        await setter
        return released

    assert asyncio.run(main()) is True


def test_at_most_the_limit_of_functions_run_at_once(limit: None) -> None:
    set_blocking_limit(2)
    running = Running()
    release = threading.Event()
    two_running = threading.Event()

    def legacy() -> None:
        with running as now:
            if now == 2:
                two_running.set()
            release.wait(30)

    async def main() -> None:
        tasks = [asyncio.ensure_future(run_blocking(legacy)) for _ in range(6)]
        # Waited for in a thread outside run_blocking's pool, whose tokens are taken.
        await asyncio.to_thread(two_running.wait, 30)
        # Let the loop hand out any token a third call could wrongly get.
        for _ in range(20):
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert running.most == 2


def test_the_limit_is_validated(limit: None) -> None:
    with pytest.raises(ValueError, match="integer >= 1"):
        set_blocking_limit(0)
    with pytest.raises(ValueError, match="integer >= 1"):
        set_blocking_limit(True)
    set_blocking_limit(3)
    assert blocking_limit() == 3


def test_context_variables_cross_in_and_changes_come_back() -> None:
    def legacy() -> str | None:
        seen = correlation_id_ctx.get()
        request_var.set("set in the thread")
        return seen

    async def main() -> tuple[str | None, str | None]:
        correlation_id_ctx.set("job-7")
        seen = await run_blocking(legacy)
        return seen, request_var.get()

    assert asyncio.run(main()) == ("job-7", "set in the thread")


def test_the_thread_does_not_inherit_the_loops_async_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_sniffio = types.ModuleType("sniffio")
    library: contextvars.ContextVar[str | None] = contextvars.ContextVar(
        "current_async_library_cvar", default=None
    )
    fake_sniffio.current_async_library_cvar = library  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sniffio", fake_sniffio)

    async def main() -> tuple[str | None, str | None]:
        library.set("asyncio")
        in_thread = await run_blocking(library.get)
        return in_thread, library.get()

    assert asyncio.run(main()) == (None, "asyncio")


def test_async_to_sync_to_async_round_trip_keeps_the_correlation_id() -> None:
    # New async code -> legacy blocking helper -> new async client call, as during
    # the migration: the id set at the top reaches the innermost coroutine.
    async def new_client_call() -> str | None:
        await asyncio.sleep(0)
        return correlation_id_ctx.get()

    def legacy_helper() -> str | None:
        return run_sync(new_client_call)

    async def job() -> str | None:
        correlation_id_ctx.set("nightly-42")
        return await run_blocking(legacy_helper)

    assert asyncio.run(job()) == "nightly-42"


def test_64_nested_callers_at_the_default_limit_all_finish() -> None:
    # sync -> run_sync -> coroutine -> run_blocking -> sync -> run_sync -> run_blocking,
    # the layering of a half-migrated code base, from four times as many threads as the
    # limit has slots: the outer calls hold every slot while their inner calls run.
    assert blocking_limit() == DEFAULT_BLOCKING_LIMIT
    callers = 4 * DEFAULT_BLOCKING_LIMIT
    middle_running = Running()

    def innermost(index: int) -> tuple[int, str | None]:
        time.sleep(0.005)
        return index, request_var.get()

    def middle(index: int) -> tuple[int, str | None]:
        with middle_running:
            time.sleep(0.02)  # every slot gets taken before an inner call is made
            return run_sync(run_blocking, innermost, index)

    async def outer(index: int) -> tuple[int, str | None]:
        return await run_blocking(middle, index)

    results: dict[int, tuple[int, str | None]] = {}
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        request_var.set(f"caller-{index}")
        try:
            results[index] = run_sync(outer, index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60  # generous: the fixed code needs well under a second
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    if hung:
        stop_bridge(timeout=0.1)  # release the hung callers before failing
    assert hung == 0, f"{callers - hung} of {callers} nested callers finished; the rest hang"
    assert errors == []
    assert results == {index: (index, f"caller-{index}") for index in range(callers)}
    assert middle_running.most <= DEFAULT_BLOCKING_LIMIT


def test_a_nested_call_while_the_chains_slot_is_lent_takes_a_free_slot_or_waits(
    limit: None,
) -> None:
    # The coroutine of a nested chain runs two blocking calls at once: one uses the
    # chain's slot, the other a free one (limit 2) or, with none free, waits its turn.
    set_blocking_limit(2)

    def pair() -> list[int]:
        async def both() -> list[int]:
            return list(await asyncio.gather(run_blocking(lambda: 1), run_blocking(lambda: 2)))

        return run_sync(both)

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(run_blocking(pair) for _ in range(4))))

    assert run_sync(main) == [[1, 2]] * 4


def test_cancelling_waits_for_the_function_keeps_the_slot_and_the_context(
    limit: None,
) -> None:
    set_blocking_limit(1)
    started = threading.Event()
    release = threading.Event()
    second_ran = threading.Event()
    seen_after_cancel: list[str | None] = []

    def legacy() -> int:
        started.set()
        release.wait(30)
        request_var.set("set by the cancelled call")
        return 1

    async def caller() -> None:
        try:
            await run_blocking(legacy)
        except asyncio.CancelledError:
            seen_after_cancel.append(request_var.get())
            raise

    async def main() -> None:
        task = asyncio.ensure_future(caller())
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        second = asyncio.ensure_future(run_blocking(second_ran.set))
        for _ in range(20):
            await asyncio.sleep(0.005)
        # The thread still runs: the await has not returned and the slot is not free.
        assert not task.done()
        assert not second_ran.is_set()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await second
        assert second_ran.is_set()

    asyncio.run(main())
    assert seen_after_cancel == ["set by the cancelled call"]


def test_timeouts_on_a_hung_call_never_run_more_threads_than_the_limit(limit: None) -> None:
    set_blocking_limit(2)
    running = Running()
    release = threading.Event()

    def hung() -> None:
        with running:
            release.wait(30)

    async def retry_on_timeout() -> int:
        # What a job does with a slow legacy call: time it out and try again.
        timeouts = 0
        for _ in range(8):
            try:
                await asyncio.wait_for(run_blocking(hung), 0.01)
            except asyncio.TimeoutError:
                timeouts += 1
        return timeouts

    async def main() -> int:
        retrying = [asyncio.ensure_future(retry_on_timeout()) for _ in range(3)]
        for _ in range(30):
            await asyncio.sleep(0.01)
        assert running.now <= 2
        release.set()
        return sum(await asyncio.gather(*retrying))

    # Each retrier's calls timed out until the release (later ones may finish in time);
    # none of them left a thread running beyond the limit.
    assert asyncio.run(main()) >= 3
    assert running.most <= 2


def test_a_call_waiting_for_a_slot_is_cancelled_at_once_and_never_runs(limit: None) -> None:
    set_blocking_limit(1)
    release = threading.Event()
    started = threading.Event()
    queued_ran = threading.Event()

    def holder() -> None:
        started.set()
        release.wait(30)

    async def main() -> None:
        running = asyncio.ensure_future(run_blocking(holder))
        await asyncio.to_thread(started.wait, 10)
        queued = asyncio.ensure_future(run_blocking(queued_ran.set))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued  # returns while the holder still runs
        release.set()
        await running

    asyncio.run(main())
    assert not queued_ran.is_set()


def test_stopping_the_bridge_does_not_keep_a_caller_waiting_for_a_blocking_function() -> None:
    # The bridge's stop cancels the pending call; its run_blocking cannot end before the
    # function returns, so the caller gets its error without waiting for that.
    bridge = Bridge(name="test-bridge")
    bridge.start()
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    outcome: list[BaseException] = []

    def hung() -> None:
        started.set()
        release.wait(60)
        finished.set()

    async def job() -> None:
        await run_blocking(hung)

    def caller() -> None:
        try:
            bridge.call(job, (), {})
        except BaseException as exc:
            outcome.append(exc)

    calling = threading.Thread(target=caller, daemon=True)
    calling.start()
    assert started.wait(10)
    stopping = threading.Thread(target=bridge.stop, kwargs={"timeout": 0.05}, daemon=True)
    stopping.start()
    calling.join(30)
    try:
        assert not calling.is_alive()
        assert not finished.is_set()  # the caller did not wait for the function
        assert len(outcome) == 1
        assert isinstance(outcome[0], BridgeStoppedError)
        assert "was left behind" in str(outcome[0])
    finally:
        release.set()
        stopping.join(30)
    assert bridge.state == "stopped"


def test_a_call_nested_in_one_that_has_returned_takes_a_slot_of_its_own(limit: None) -> None:
    # A thread started inside a blocking function, with its context, calls on after that
    # function returned: the slot it was nested in is free again and is not lent to it.
    import anyio.to_thread

    set_blocking_limit(1)
    holding = threading.Event()
    release = threading.Event()
    late_ran = threading.Event()
    late_callers: list[threading.Thread] = []

    def late_call() -> None:
        run_sync(run_blocking, late_ran.set)

    def starts_a_thread() -> None:
        context = contextvars.copy_context()
        late_callers.append(threading.Thread(target=context.run, args=(late_call,)))

    def holder() -> None:
        holding.set()
        release.wait(30)

    async def main() -> None:
        await run_blocking(starts_a_thread)
        held = asyncio.ensure_future(run_blocking(holder))  # takes the only slot
        # anyio's own pool: no default executor left on the bridge loop at exit.
        await anyio.to_thread.run_sync(holding.wait, 10)
        late_callers[0].start()
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not late_ran.is_set()  # it waits for the slot the holder has
        release.set()
        await held

    run_sync(main)
    late_callers[0].join(30)
    assert late_ran.is_set()


def test_stop_from_a_blocking_function_the_bridge_runs_does_not_wait_for_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A legacy shutdown hook, run by run_blocking on the bridge, stops the bridge: its
    # call is pending while the bridge waits for pending calls, so it must not wait.
    bridge = Bridge(name="test-bridge")
    bridge.start()
    _, loop_thread = bridge.call(current_loop_thread, (), {})

    def legacy_shutdown_hook() -> str:
        bridge.stop(timeout=5)
        return "stop requested"

    async def job() -> str:
        return await run_blocking(legacy_shutdown_hook)

    with caplog.at_level(logging.WARNING, logger="compat"):
        assert bridge.call(job, (), {}) == "stop requested"
        loop_thread.join(30)
    assert not loop_thread.is_alive()
    assert bridge.state == "stopped"
    assert not [record for record in caplog.records if record.name == "compat"]


async def current_loop_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    return asyncio.get_running_loop(), threading.current_thread()


def test_a_detached_call_keeps_its_slot_until_it_returns_and_never_holds_up_the_exit(
    limit: None,
) -> None:
    from compat._run import start_detached

    set_blocking_limit(1)
    release = threading.Event()
    ran: list[str] = []

    def hang() -> str:
        ran.append("hang")
        release.wait(30)
        return "returned"

    async def main() -> None:
        first = await start_detached(hang, (), thread_name="detached")
        # The caller stops waiting at once; the thread works on, holding the only slot.
        with pytest.raises(asyncio.TimeoutError):  # TimeoutError from Python 3.11 on
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(first)), 0.05)
        (thread,) = [t for t in threading.enumerate() if t.name == "detached"]
        assert thread.daemon
        queued = asyncio.ensure_future(start_detached(ran.append, ("queued",), thread_name="q"))
        await asyncio.sleep(0.05)
        assert not queued.done()  # waiting for the slot
        queued.cancel()  # cancelled while waiting: it never runs
        release.set()
        assert await asyncio.wrap_future(first) == "returned"
        later = await start_detached(ran.append, ("later",), thread_name="later")
        await asyncio.wrap_future(later)

    asyncio.run(main())
    assert ran == ["hang", "later"]

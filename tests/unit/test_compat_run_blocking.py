"""compat.run_blocking: blocking code from async code, off the loop, bounded, in context."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import types
from collections.abc import Iterator

import pytest

from commclient import correlation_id_ctx
from compat import blocking_limit, run_blocking, run_sync, set_blocking_limit

pytestmark = pytest.mark.facade_async

request_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_var", default=None
)


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
    lock = threading.Lock()
    running = 0
    most = 0
    release = threading.Event()
    two_running = threading.Event()

    def legacy() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running == 2:
                two_running.set()
        release.wait(30)
        with lock:
            running -= 1

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
    assert most == 2


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

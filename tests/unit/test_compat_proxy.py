"""compat.sync_proxy: the same methods, signatures and hints, blocking, on one loop."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from compat import EventLoopRunningError, SyncProxy, proxy_type, sync_proxy

pytestmark = pytest.mark.facade_async


class RemindersClient:
    """A stand-in for a domain client: coroutine methods and plain attributes."""

    retries = 3

    def __init__(self) -> None:
        self.calls = 0
        self.events: list[tuple[str, object]] = []
        self._lock: asyncio.Lock | None = None
        self.loops: set[asyncio.AbstractEventLoop] = set()

    @property
    def base_url(self) -> str:
        return "http://rest_service:8000"

    def describe(self) -> str:
        return "plain method"

    async def get_reminder(self, reminder_id: int, *, include_user: bool = False) -> Reminder:
        """Fetch one reminder."""
        await asyncio.sleep(0)
        return Reminder(reminder_id, include_user)

    async def list_reminders(self, *user_ids: int, limit: int | None = None) -> list[Reminder]:
        """All reminders of these users."""
        return [Reminder(user_id, False) for user_id in user_ids][:limit]

    def count_later(self) -> Awaitable[int]:
        """Returns an awaitable rather than being a coroutine function."""
        return self._count()

    def name_later(self, suffix: str) -> Coroutine[Any, Any, str]:
        return self._name(suffix)

    def typed_as_text(self) -> Awaitable[list[Reminder]]:
        return self._reminders()

    @staticmethod
    async def version(prefix: str = "v") -> str:
        """A static coroutine method."""
        return f"{prefix}1"

    @classmethod
    async def kind(cls, upper: bool = False) -> str:
        return cls.__name__.upper() if upper else cls.__name__

    async def stream(self) -> AsyncIterator[int]:
        yield 1

    async def _private(self) -> int:
        return 1

    async def locked_increment(self) -> int:
        # asyncio.Lock binds to the first loop that waits on it and refuses any other:
        # the object must live on one loop for its whole life.
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self.loops.add(asyncio.get_running_loop())
            await asyncio.sleep(0)
            self.calls += 1
            return self.calls

    async def _count(self) -> int:
        return 5

    async def _name(self, suffix: str) -> str:
        return f"name-{suffix}"

    async def _reminders(self) -> list[Reminder]:
        return []

    async def __aenter__(self) -> RemindersClient:
        self.events.append(("enter", asyncio.current_task()))
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> bool:
        self.events.append(("exit", asyncio.current_task()))
        self.events.append(("exit-exception", exc))
        return isinstance(exc, KeyError)


class Reminder(typing.NamedTuple):
    """Defined after its first use in an annotation: a forward reference."""

    id: int
    with_user: bool


@pytest.fixture
def client() -> RemindersClient:
    return RemindersClient()


@pytest.fixture
def proxy(client: RemindersClient) -> SyncProxy[RemindersClient]:
    return sync_proxy(client)


COROUTINE_METHODS = ["get_reminder", "list_reminders", "version", "kind", "locked_increment"]


@pytest.mark.parametrize("name", COROUTINE_METHODS)
def test_a_coroutine_method_keeps_its_signature(
    client: RemindersClient, proxy: SyncProxy[RemindersClient], name: str
) -> None:
    assert inspect.signature(getattr(proxy, name)) == inspect.signature(getattr(client, name))


@pytest.mark.parametrize("name", COROUTINE_METHODS)
def test_a_coroutine_method_keeps_its_name_and_docstring(
    client: RemindersClient, proxy: SyncProxy[RemindersClient], name: str
) -> None:
    method = getattr(proxy, name)
    original = getattr(client, name)
    assert method.__name__ == name
    assert method.__doc__ == original.__doc__
    assert not inspect.iscoroutinefunction(method)


@pytest.mark.parametrize("name", COROUTINE_METHODS)
def test_type_hints_resolve_to_the_awaited_types(
    client: RemindersClient, proxy: SyncProxy[RemindersClient], name: str
) -> None:
    assert typing.get_type_hints(getattr(proxy, name)) == typing.get_type_hints(
        getattr(client, name)
    )


def test_hints_of_a_coroutine_method_name_the_result_type(
    proxy: SyncProxy[RemindersClient],
) -> None:
    hints = typing.get_type_hints(proxy.get_reminder)
    assert hints == {"reminder_id": int, "include_user": bool, "return": Reminder}


@pytest.mark.parametrize(
    ("name", "returned"),
    [("count_later", int), ("name_later", str), ("typed_as_text", list[Reminder])],
)
def test_a_method_returning_an_awaitable_is_unwrapped(
    proxy: SyncProxy[RemindersClient], name: str, returned: Any
) -> None:
    method = getattr(proxy, name)
    assert typing.get_type_hints(method)["return"] == returned
    annotation = inspect.signature(method).return_annotation
    assert "Awaitable" not in str(annotation)
    assert "Coroutine" not in str(annotation)


def test_methods_block_and_return_results(proxy: SyncProxy[RemindersClient]) -> None:
    assert proxy.get_reminder(4, include_user=True) == Reminder(4, True)
    assert proxy.list_reminders(1, 2, 3, limit=2) == [Reminder(1, False), Reminder(2, False)]
    assert proxy.count_later() == 5
    assert proxy.name_later("x") == "name-x"
    assert proxy.version("r") == "r1"
    assert proxy.kind(upper=True) == "REMINDERSCLIENT"


def test_other_attributes_are_read_from_and_set_on_the_object(
    client: RemindersClient, proxy: SyncProxy[RemindersClient]
) -> None:
    assert proxy.base_url == "http://rest_service:8000"
    assert proxy.retries == 3
    assert proxy.describe() == "plain method"
    proxy.retries = 5
    assert client.retries == 5
    assert proxy.async_object is client


def test_private_and_async_generator_methods_are_not_converted(
    proxy: SyncProxy[RemindersClient],
) -> None:
    assert "_private" not in vars(type(proxy))
    assert "stream" not in vars(type(proxy))
    assert inspect.isasyncgenfunction(proxy.stream)


def test_a_coroutine_function_set_on_the_instance_is_converted(
    client: RemindersClient, proxy: SyncProxy[RemindersClient]
) -> None:
    async def patched(value: int) -> int:
        """Patched in."""
        return value + 1

    client.patched = patched  # type: ignore[attr-defined]
    assert proxy.patched(1) == 2
    assert inspect.signature(proxy.patched) == inspect.signature(patched)
    assert proxy.patched.__doc__ == "Patched in."


def test_the_object_is_called_through_per_call_lookup(
    client: RemindersClient, proxy: SyncProxy[RemindersClient]
) -> None:
    async def replacement(self_less_id: int, *, include_user: bool = False) -> str:
        return "replaced"

    client.get_reminder = replacement  # type: ignore[method-assign]
    assert proxy.get_reminder(1) == "replaced"


def test_with_runs_async_with_in_one_task(
    client: RemindersClient, proxy: SyncProxy[RemindersClient]
) -> None:
    with proxy as entered:
        assert entered is proxy
        assert entered.get_reminder(1) == Reminder(1, False)
    (enter, enter_task), (exit_, exit_task), (_, exception) = client.events
    assert (enter, exit_) == ("enter", "exit")
    assert enter_task is exit_task
    assert enter_task is not None
    assert exception is None


def test_an_exception_in_the_block_reaches_aexit_which_may_suppress_it(
    client: RemindersClient, proxy: SyncProxy[RemindersClient]
) -> None:
    with proxy:
        raise KeyError("suppressed by __aexit__")
    assert isinstance(client.events[-1][1], KeyError)
    with pytest.raises(ValueError, match="not suppressed"), proxy:
        raise ValueError("not suppressed")
    assert isinstance(client.events[-1][1], ValueError)


def test_entering_twice_is_refused(proxy: SyncProxy[RemindersClient]) -> None:
    with proxy, pytest.raises(RuntimeError, match="already entered"):
        proxy.__enter__()


def test_a_proxy_of_a_proxy_is_itself_and_types_are_made_once(
    proxy: SyncProxy[RemindersClient],
) -> None:
    assert sync_proxy(proxy) is proxy
    assert type(proxy) is proxy_type(RemindersClient)
    assert type(sync_proxy(RemindersClient())) is type(proxy)
    assert isinstance(proxy, SyncProxy)


def test_eight_threads_share_one_object_on_one_loop(
    client: RemindersClient, proxy: SyncProxy[RemindersClient]
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: proxy.locked_increment(), range(1000)))
    assert sorted(results) == list(range(1, 1001))
    assert len(client.loops) == 1


def test_calling_a_proxy_from_async_code_is_refused(proxy: SyncProxy[RemindersClient]) -> None:
    async def main() -> None:
        proxy.get_reminder(1)

    with pytest.raises(EventLoopRunningError, match="await"):
        asyncio.run(main())


def test_repr_and_dir_describe_the_object(
    client: RemindersClient, proxy: SyncProxy[RemindersClient]
) -> None:
    assert repr(proxy) == f"sync_proxy({client!r})"
    assert {"get_reminder", "base_url", "describe"} <= set(dir(proxy))


def test_thread_safety_of_the_first_call() -> None:
    # Many threads make the first call at once: one loop must be chosen for the object.
    client = RemindersClient()
    proxy = sync_proxy(client)
    barrier = threading.Barrier(8)

    def first_call(_: int) -> int:
        barrier.wait(30)
        return proxy.locked_increment()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(first_call, range(8)))
    assert sorted(results) == list(range(1, 9))
    assert len(client.loops) == 1


def logged(method: Callable[..., Any]) -> Callable[..., Any]:
    """A plain decorator: its wrapper is a plain function returning the coroutine."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return wrapper


class DecoratedClient:
    @logged
    async def get_setting(self, name: str) -> str:
        """One global setting."""
        await asyncio.sleep(0)
        return f"value of {name}"

    @logged
    async def unannotated(self, value):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return value * 2


def test_an_async_method_behind_a_functools_wraps_decorator_is_converted() -> None:
    proxy = sync_proxy(DecoratedClient())
    assert proxy.get_setting("timezone") == "value of timezone"
    assert proxy.unannotated(21) == 42
    method = type(proxy).get_setting
    assert method.__doc__ == "One global setting."
    assert str(inspect.signature(method)) == "(self, /, name: 'str') -> 'str'"
    assert typing.get_type_hints(method) == {"name": str, "return": str}


def test_a_decorated_async_function_set_on_the_instance_is_converted() -> None:
    client = DecoratedClient()

    async def ping() -> str:
        return "pong"

    client.ping = logged(ping)  # type: ignore[attr-defined]
    assert sync_proxy(client).ping() == "pong"


def test_a_proxy_timeout_cancels_the_call_and_raises_timeout_error() -> None:
    cancelled = threading.Event()

    class Slow:
        async def wait(self, seconds: float) -> str:
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "done"

    proxy = sync_proxy(Slow(), timeout=0.05)
    assert proxy.timeout == 0.05
    with pytest.raises(TimeoutError, match=r"wait\(\) did not finish within timeout=0.05 s"):
        proxy.wait(3600)
    assert cancelled.is_set()
    assert proxy.wait(0) == "done"
    unbounded = sync_proxy(proxy.async_object)
    assert unbounded.timeout is None
    assert sync_proxy(proxy) is proxy
    assert sync_proxy(proxy, timeout=30).timeout == 30


def test_a_bad_proxy_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout must be a positive"):
        sync_proxy(RemindersClient(), timeout=-1)


async def make_reminders_client() -> RemindersClient:
    return RemindersClient()


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("call", r"not an awaitable: got coroutine 'make_reminders_client'; make the object"),
        ("function", r"got the function 'make_reminders_client': pass an instance"),
        ("class", r"got the class 'RemindersClient': pass an instance"),
    ],
)
def test_what_has_no_methods_to_proxy_is_refused_at_once(argument: str, message: str) -> None:
    # Each made a proxy without methods, failing at its first use
    # ("'coroutine' object has no attribute 'get'").
    makers: dict[str, Callable[[], object]] = {
        "call": make_reminders_client,
        "function": lambda: make_reminders_client,
        "class": lambda: RemindersClient,
    }
    given = makers[argument]()
    try:
        with pytest.raises(TypeError, match=message):
            sync_proxy(given)
    finally:
        if inspect.iscoroutine(given):
            given.close()

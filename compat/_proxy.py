"""sync_proxy: a blocking view of an object with coroutine methods.

The async object lives on the shared bridge loop for its whole life; every proxy
method hands the call to that loop, so one client (one connection pool) serves any
number of threads, and ``with proxy:`` runs ``async with obj:`` there.

What mypy sees: ``sync_proxy(obj)`` is a ``SyncProxy[type of obj]``; its generated
methods are typed ``Any``, because a type checker cannot turn a class's coroutine
methods into blocking ones. For checked calls, describe the blocking interface as a
``Protocol`` and annotate: ``rest: CronRestApi = sync_proxy(client)``. At run time
``inspect.signature`` and ``typing.get_type_hints`` of each proxy method give the
original parameters and the awaited return type.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import inspect
import threading
import typing
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._bridge import Bridge, _Held, checked_timeout, default_bridge, reset_in_forked_child

T = TypeVar("T")
ProxyT = TypeVar("ProxyT", bound="SyncProxy[Any]")

# Generic origins whose parameter is the awaited value, and the index of it.
_AWAITED_ARGUMENT = {
    collections.abc.Awaitable: 0,
    asyncio.Future: 0,
    asyncio.Task: 0,
    collections.abc.Coroutine: 2,
}
_AWAITABLE_NAMES = {"Awaitable": 0, "Future": 0, "Task": 0, "Coroutine": 2}


class SyncProxy(Generic[T]):
    """A blocking view of an async object; build one with :func:`sync_proxy`.

    Public coroutine methods of the object become blocking methods of the same name,
    signature and docstring; other attributes are read from (and set on) the object.
    ``with proxy as same_proxy:`` enters the object with ``async with`` on the bridge
    loop (``__aenter__`` and ``__aexit__`` in one task there) and gives the proxy itself.
    Async generator methods are left as they are: iterate them from async code.

    The proxy is bound to the bridge loop of its first call for good (the object's pool
    and locks belong to that loop). In a forked child it moves to the child's bridge, and
    a ``with`` block entered in the parent is forgotten (the parent closes its object):
    the wrapped object must itself be fork-safe, as commclient's clients are.
    """

    def __init__(self, async_object: T, *, timeout: float | None = None) -> None:
        object.__setattr__(self, "_SyncProxy__target", async_object)
        object.__setattr__(self, "_SyncProxy__timeout", checked_timeout(timeout))
        object.__setattr__(self, "_SyncProxy__bridge", None)
        object.__setattr__(self, "_SyncProxy__held", None)
        object.__setattr__(self, "_SyncProxy__lock", threading.Lock())
        reset_in_forked_child(self)

    __target: T
    __timeout: float | None
    __bridge: Bridge | None
    __held: _Held | None
    __lock: threading.Lock

    def _after_fork_in_child(self) -> None:
        object.__setattr__(self, "_SyncProxy__lock", threading.Lock())
        object.__setattr__(self, "_SyncProxy__held", None)
        bridge = self.__bridge
        if bridge is not None and bridge.state != "stopped":
            # Bound to the parent's loop, which does not run here: bind again on use.
            object.__setattr__(self, "_SyncProxy__bridge", None)

    @property
    def timeout(self) -> float | None:
        """Seconds after which each method call is cancelled (``TimeoutError``); None: never."""
        return self.__timeout

    @property
    def async_object(self) -> T:
        """The wrapped object; use it only from code running on the bridge loop."""
        return self.__target

    def __bridge_for_calls(self) -> Bridge:
        bridge = self.__bridge
        if bridge is None:
            with self.__lock:
                bridge = self.__bridge
                if bridge is None:
                    # Pinned for good: the object's pool and locks belong to this loop.
                    bridge = default_bridge()
                    object.__setattr__(self, "_SyncProxy__bridge", bridge)
        return bridge

    def _compat_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Looked up per call, so that instance attributes and test doubles are honoured.
        method = getattr(self.__target, name)
        return self.__bridge_for_calls().call(method, args, kwargs, self.__timeout)

    def __enter__(self: ProxyT) -> ProxyT:
        bridge = self.__bridge_for_calls()
        held = _Held()
        with self.__lock:
            if self.__held is not None:
                raise RuntimeError(f"{self!r} is already entered")
            object.__setattr__(self, "_SyncProxy__held", held)
        # Entered without the lock: __aenter__ may do I/O, and no lock is held across I/O.
        try:
            bridge.enter(self.__target, held)
        except BaseException:
            with self.__lock:
                object.__setattr__(self, "_SyncProxy__held", None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # Not ``-> bool``: type checkers read that as "may swallow any exception" and then
        # report every name bound inside a ``with sync_proxy(...)`` block as possibly
        # unbound after it. The proxy suppresses only what the object's own ``__aexit__``
        # suppresses (True); otherwise it returns None, like a client's ``__aexit__``.
        with self.__lock:
            held = self.__held
            object.__setattr__(self, "_SyncProxy__held", None)
        if held is None:
            return None
        return True if self.__bridge_for_calls().exit(held, (exc_type, exc, traceback)) else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_SyncProxy__"):
            raise AttributeError(name)
        value = getattr(self.__target, name)
        if not name.startswith("_") and callable(value) and is_async_callable(value):
            # A coroutine function the class does not define (an instance attribute).
            return _dynamic_method(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__target, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.__target)))

    def __repr__(self) -> str:
        return f"sync_proxy({self.__target!r})"


_proxy_types: weakref.WeakKeyDictionary[type, type[SyncProxy[Any]]] = weakref.WeakKeyDictionary()
_proxy_types_lock = threading.Lock()


def sync_proxy(async_object: T, *, timeout: float | None = None) -> SyncProxy[T]:
    """Return a blocking view of ``async_object`` whose calls run on the bridge loop.

    ``sync_proxy(CronRestClient(...))`` gives an object with the client's methods, each
    blocking until the coroutine finishes. Safe to share between threads, but every
    call of every thread runs on the one bridge loop thread: for multi-threaded code
    calling HTTP services, a shared ``SyncServiceClient`` scales with the threads and
    this does not (see the README). Prefer ``with sync_proxy(obj) as proxy:``, or call
    its ``close()``, so the object is closed on its own loop.

    ``timeout``: seconds after which a method call's coroutine is cancelled and the
    caller gets :class:`TimeoutError` (``with proxy:`` itself is not bounded). Given a
    proxy, returns it, or a proxy of its object with this ``timeout``.
    """
    _require_instance(async_object)
    timeout = checked_timeout(timeout)
    if isinstance(async_object, SyncProxy):
        if timeout is None or async_object.timeout == timeout:
            return async_object
        async_object = async_object.async_object
    return proxy_type(type(async_object))(async_object, timeout=timeout)


def _require_instance(async_object: object) -> None:
    """Refuse what has no async methods to proxy: a call, a function or a class.

    Each would make a proxy without methods, failing only at its first use.
    """
    name = getattr(async_object, "__qualname__", None) or type(async_object).__name__
    if inspect.isawaitable(async_object):
        raise TypeError(
            f"compat.sync_proxy() takes an object with async methods, not an awaitable: got "
            f"{type(async_object).__name__} {name!r}; make the object first "
            "(compat.run_sync(factory) runs an async factory)"
        )
    if inspect.isclass(async_object) or inspect.isroutine(async_object):
        kind = "class" if inspect.isclass(async_object) else "function"
        raise TypeError(
            f"compat.sync_proxy() takes an object with async methods; got the {kind} "
            f"{name!r}: pass an instance, or call a function with compat.run_sync()"
        )


def proxy_type(cls: type[T]) -> type[SyncProxy[T]]:
    """The :class:`SyncProxy` subclass with blocking versions of ``cls``'s coroutine methods."""
    with _proxy_types_lock:
        made = _proxy_types.get(cls)
        if made is None:
            made = _make_proxy_type(cls)
            _proxy_types[cls] = made
    return made


def _make_proxy_type(cls: type) -> type[SyncProxy[Any]]:
    namespace: dict[str, Any] = {
        "__module__": cls.__module__,
        "__doc__": f"Blocking view of :class:`{cls.__qualname__}` made by compat.sync_proxy.",
    }
    type_name = f"{cls.__name__}SyncProxy"
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attribute = inspect.getattr_static(cls, name)
        if isinstance(attribute, staticmethod):
            function, bound_drops_first = attribute.__func__, False
        elif isinstance(attribute, classmethod):
            function, bound_drops_first = attribute.__func__, True
        elif inspect.isfunction(attribute):
            function, bound_drops_first = attribute, True
        else:
            continue
        if is_async_callable(function):
            namespace[name] = _blocking_method(name, function, bound_drops_first, type_name)
    return type(type_name, (SyncProxy,), namespace)


def is_coroutine_function(function: Callable[..., Any]) -> bool:
    """A coroutine function, also behind decorators that keep ``__wrapped__``.

    A plain ``functools.wraps`` decorator around an ``async def`` gives a plain function
    that returns the coroutine; ``inspect.iscoroutinefunction`` does not see through it.
    """
    if inspect.iscoroutinefunction(function):
        return True
    try:
        unwrapped = inspect.unwrap(function)
    except ValueError:  # a __wrapped__ cycle
        return False
    return unwrapped is not function and inspect.iscoroutinefunction(unwrapped)


def is_async_callable(function: Callable[..., Any]) -> bool:
    """Coroutine functions (decorated ones too), and functions annotated to return an
    awaitable."""
    if is_coroutine_function(function):
        return True
    if inspect.isasyncgenfunction(function):
        return False
    try:
        returned = inspect.signature(function).return_annotation
    except (TypeError, ValueError):
        return False
    return _awaited(returned) is not _NOT_AWAITABLE


_NOT_AWAITABLE: Any = object()


def _awaited(annotation: Any) -> Any:
    """The type an awaitable annotation resolves to, or ``_NOT_AWAITABLE``."""
    if isinstance(annotation, str):
        return _awaited_text(annotation)
    origin = typing.get_origin(annotation) or annotation
    try:
        known = origin in _AWAITED_ARGUMENT
    except TypeError:  # an unhashable annotation
        known = False
    if known:
        arguments = typing.get_args(annotation)
        index = _AWAITED_ARGUMENT[origin]
        return arguments[index] if len(arguments) > index else Any
    return _NOT_AWAITABLE


def _awaited_text(annotation: str) -> Any:
    # A string annotation (from __future__ import annotations) that may not resolve:
    # unwrap it textually, "Awaitable[list[int]]" -> "list[int]".
    text = annotation.strip()
    head, bracket, rest = text.partition("[")
    index = _AWAITABLE_NAMES.get(head.rpartition(".")[2])
    if index is None:
        return _NOT_AWAITABLE
    if not bracket:
        return "Any"
    if not rest.endswith("]"):
        return _NOT_AWAITABLE
    arguments = _split_top_level(rest[:-1])
    return arguments[index] if len(arguments) > index else "Any"


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for position, character in enumerate(text):
        if character in "[(":
            depth += 1
        elif character in "])":
            depth -= 1
        elif character == "," and depth == 0:
            parts.append(text[start:position].strip())
            start = position + 1
    parts.append(text[start:].strip())
    return parts


def _blocking_method(
    name: str, function: Callable[..., Any], bound_drops_first: bool, type_name: str
) -> Callable[..., Any]:
    """A blocking method that calls ``name`` on the target through the bridge."""

    def method(self: SyncProxy[Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._compat_call(name, args, kwargs)

    _describe(
        method,
        name,
        function,
        qualname=f"{type_name}.{name}",
        drop_first=bound_drops_first,
        add_self=True,
    )
    return method


def _dynamic_method(
    proxy: SyncProxy[Any], name: str, function: Callable[..., Any]
) -> Callable[..., Any]:
    def method(*args: Any, **kwargs: Any) -> Any:
        return proxy._compat_call(name, args, kwargs)

    _describe(method, name, function, qualname=name, drop_first=False, add_self=False)
    return method


def _describe(
    method: Callable[..., Any],
    name: str,
    function: Callable[..., Any],
    *,
    qualname: str,
    drop_first: bool,
    add_self: bool,
) -> None:
    """Give ``method`` the name, docstring, signature and hints of ``function``,
    with the awaited type as its return type."""
    method.__name__ = name
    method.__qualname__ = qualname
    method.__doc__ = function.__doc__
    method.__module__ = function.__module__
    # get_type_hints follows __wrapped__ to evaluate string annotations in the
    # globals of the module that defined the original.
    method.__wrapped__ = function  # type: ignore[attr-defined]
    annotations = dict(getattr(function, "__annotations__", {}))
    # A coroutine function's return annotation is already the awaited type.
    awaited_annotation = not is_coroutine_function(function)
    if "return" in annotations and awaited_annotation:
        annotations["return"] = _awaited(annotations["return"])
    method.__annotations__ = annotations
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    returned = signature.return_annotation
    if returned is not inspect.Signature.empty and awaited_annotation:
        returned = _awaited(returned)
    parameters = list(signature.parameters.values())
    if drop_first:
        parameters = parameters[1:]
    if add_self:
        # Bound to a proxy, the method drops this parameter as the original drops self.
        taken = {parameter.name for parameter in parameters}
        self_name = next(n for n in ("self", "_proxy", "_sync_proxy") if n not in taken)
        parameters.insert(0, inspect.Parameter(self_name, inspect.Parameter.POSITIONAL_ONLY))
    # A ValueError: parameters the original accepts but a Signature cannot describe.
    with contextlib.suppress(ValueError):
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=parameters, return_annotation=returned
        )

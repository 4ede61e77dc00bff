"""Arguments that must be functions: refuse anything else with the mistake named.

The common mistake is passing a call (``load()``, a coroutine object) where the function
(``load``) is expected: it would otherwise fail later as ``'coroutine' object is not
callable``, or not at all.
"""

from __future__ import annotations

import inspect
from types import FunctionType


def require_function(
    function: object,
    feature: str,
    *,
    asynchronous: bool | None,
    async_hint: str = "await it",
    wanted: str | None = None,
) -> None:
    """Refuse what cannot be called as ``feature`` calls it, naming the mistake.

    ``asynchronous``: ``True`` when ``feature`` takes an async function, ``False`` when it
    takes a blocking one (an async function is refused, with ``async_hint``), ``None`` when
    it takes either. ``wanted`` names what is expected when "a function" says too little.
    """
    # A plain function is neither an awaitable nor uncallable: only its kind is checked
    # (every cache miss checks its loader).
    plain = type(function) is FunctionType
    refused = not plain and (inspect.isawaitable(function) or not callable(function))
    coroutine = asynchronous is False and inspect.iscoroutinefunction(function)
    if not (refused or coroutine):
        return
    if wanted is None:
        wanted = {True: "an async function", False: "a blocking function", None: "a function"}[
            asynchronous
        ]
    name = getattr(function, "__qualname__", function)
    if inspect.isawaitable(function):
        raise TypeError(
            f"{feature} takes {wanted} and its arguments, not an awaitable: got "
            f"{type(function).__name__} {name!r}; "
            "pass the function and its arguments (f, x), not a call (f(x))"
        )
    if not callable(function):
        raise TypeError(f"{feature} takes {wanted}; got {type(function).__name__} {function!r}")
    raise TypeError(f"{feature} takes {wanted}; {name!r} is an async function: {async_hint}")

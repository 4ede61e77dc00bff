"""Context variables across the bridges: copied in, and changes copied back out.

A bridged call should behave like a direct call in the caller's context: the callee
sees the caller's correlation id, and what the callee sets (the client replacing an
unsafe correlation id, a tracing span) is visible to the caller afterwards. Each side
runs in its own copy, because one ``Context`` cannot be entered by two threads at once.
"""

from __future__ import annotations

import sys
from contextvars import Context, ContextVar
from typing import Any

_MISSING: Any = object()

#: The worker-thread slots of :func:`compat.run_blocking` that the current chain of nested
#: calls holds, innermost last. Carried into every call the chain makes (so a nested call
#: can use its caller's slot instead of waiting for a second one), never copied back out:
#: it describes the chain, not a value the callee hands to its caller.
held_slots: ContextVar[tuple[Any, ...]] = ContextVar("compat_held_slots", default=())

#: The bridge whose loop runs the current call, carried into the worker threads of the
#: call's ``run_blocking``: stopping that bridge from there must not wait for the call
#: that is waiting for it. Never copied back out either.
serving_bridge: ContextVar[Any] = ContextVar("compat_serving_bridge", default=None)


def loop_local_variables() -> list[ContextVar[Any]]:
    """Variables that describe the running event loop, not the caller's request.

    sniffio's ``current_async_library_cvar`` says which async library runs the current
    task; carried into a worker thread or back into a plain thread it would make
    libraries there believe an event loop is running. It is looked up only when
    sniffio is already imported, so that compat never imports it.
    """
    sniffio = sys.modules.get("sniffio")
    variable = getattr(sniffio, "current_async_library_cvar", None)
    return [variable] if isinstance(variable, ContextVar) else []


def copy_back(changed: Context) -> None:
    """Set in the current context every variable whose value differs in ``changed``."""
    skipped = [held_slots, serving_bridge, *loop_local_variables()]
    for variable, value in changed.items():
        if variable in skipped:
            continue
        if variable.get(_MISSING) is not value:
            variable.set(value)


def clear_loop_local(context: Context) -> None:
    """Reset the loop-describing variables in ``context`` before a worker thread runs it."""
    for variable in loop_local_variables():
        context.run(variable.set, None)

"""The errors of the bridges.

::

    BridgeError                  a call could not cross between sync and async code
     +-- EventLoopRunningError   run_sync (or a sync proxy) was called from a thread whose
     |                           event loop is running: it would freeze that loop
     +-- BridgeStoppedError      the shared background loop was stopped, or is stopping,
     |                           before the call could finish
     +-- BridgeCancelledError    the coroutine was cancelled on the loop by something
                                 other than its caller (a sync caller cannot receive
                                 asyncio.CancelledError, which is not an Exception)

An exception raised by the bridged function itself reaches the caller unchanged. A call
bounded with ``timeout=`` that runs out raises the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

from commclient._extras import import_extra


class BridgeError(RuntimeError):
    """A call could not cross between synchronous and asynchronous code."""


class EventLoopRunningError(BridgeError):
    """A blocking bridge was called from a thread whose event loop is running.

    Blocking that thread would stop its loop until the call returns, and deadlock if
    the call needs that loop; async code should ``await`` the coroutine instead.
    """


class BridgeStoppedError(BridgeError):
    """The shared background loop stopped before the call could finish."""


class BridgeCancelledError(BridgeError):
    """The coroutine was cancelled on the bridge loop by something other than its caller."""


def require_anyio(feature: str) -> None:
    """Fail with a message naming the extra to install when anyio is missing."""
    import_extra("anyio", extra="async", feature=feature)

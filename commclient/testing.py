"""Helpers for the tests of code that uses commclient: no sleeping, breakers on demand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ._breaker import breakers
from ._policy import TestingSwitch, retry_budgets

__all__ = [
    "FakeClock",
    "breaker_state",
    "force_closed",
    "force_open",
    "no_wait",
    "reset",
    "set_testing",
    "watch_breaker",
]


def set_testing(*, no_wait: bool) -> None:
    """Make every retry wait zero seconds (``True``) or real ones again (``False``)."""
    TestingSwitch.no_wait = no_wait


@contextmanager
def no_wait() -> Iterator[None]:
    """Within the block, retries happen at once; the previous setting is restored after."""
    previous = TestingSwitch.no_wait
    TestingSwitch.no_wait = True
    try:
        yield
    finally:
        TestingSwitch.no_wait = previous


def force_open(service_name: str, target_service: str) -> None:
    """Open the breaker of a pair that has a client; calls fail fast until it closes."""
    breakers.find(service_name, target_service).force("open")


def force_closed(service_name: str, target_service: str) -> None:
    """Close the breaker of a pair that has a client, forgetting its failures."""
    breakers.find(service_name, target_service).force("closed")


def breaker_state(service_name: str, target_service: str) -> str:
    """``closed``, ``open`` or ``half-open``."""
    return breakers.find(service_name, target_service).state


def watch_breaker(
    service_name: str, target_service: str, watcher: Callable[[str, str], None]
) -> Callable[[], None]:
    """Call ``watcher(old_state, new_state)`` on every transition of a pair's breaker.

    The states are ``closed``, ``open`` and ``half-open``; every transition is told, even
    one that lasts less than a call (a probe that closes the breaker at once), which
    polling :func:`breaker_state` can miss. The watcher runs in the thread that makes the
    transition, under the breaker's lock: keep it short, and never call a client from it
    (an exception it raises is logged). Returns a function that stops the calls.
    """
    return breakers.find(service_name, target_service).watch(watcher)


def reset() -> None:
    """Between tests: every breaker closed and fresh, every retry budget forgotten.

    Breakers are reset in place, so clients that exist already see the fresh state; the
    next client of a pair sets its breaker up with its own configuration.
    """
    breakers.clear()
    retry_budgets.clear()


class FakeClock:
    """A clock that only moves when told to; pass it as ``clock=`` to a client."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        """The clock's reading, as ``time.monotonic()`` would give it."""
        return self.now

    def time(self) -> float:
        """The clock's reading, as ``time.time()`` would give it."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds

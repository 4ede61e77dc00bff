"""Retry policy without I/O: what is retryable, how long to wait, and the retry budget.

Nothing here sleeps or touches the network; time comes from a :class:`Clock`, so the
whole policy is tested with a fake one.
"""

from __future__ import annotations

import enum
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from tenacity import RetryCallState, Retrying
from tenacity.wait import wait_random_exponential

from ._config import IDEMPOTENT_METHODS, ClientConfig

if TYPE_CHECKING:
    from prometheus_client import Gauge


class Clock(Protocol):
    """Where the core reads time: a monotonic clock for durations, wall time for dates."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


class TestingSwitch:
    """Process-wide switch that ``commclient.testing`` flips so users' tests never sleep."""

    no_wait: bool = False


class FailureKind(enum.Enum):
    """How an attempt failed below HTTP, and so whether the server can have seen it."""

    #: Refused, unresolvable, unreachable: the request never left this process.
    CONNECT = "connect"
    #: The connection was not established in time: the request never left either.
    CONNECT_TIMEOUT = "connect_timeout"
    #: No response in time after the request was sent: the server may have acted on it.
    READ_TIMEOUT = "read_timeout"
    #: The connection broke after the request was sent (reset, remote closed).
    CONNECTION_LOST = "connection_lost"
    #: Every pooled connection was busy: this client is saturated, the target did nothing.
    POOL_TIMEOUT = "pool_timeout"
    #: A connect timeout seen so late that this client was too busy to notice the
    #: handshake: its own saturation, as a pool timeout is (see ``_admission``).
    SATURATED = "saturated_connect_timeout"
    #: The call's deadline left no time for this attempt (nothing was sent), or it had cut
    #: the attempt's timeout short and ran out during it.
    DEADLINE = "deadline"
    #: The transport refused to send the request (a malformed URL or header).
    UNSENDABLE = "unsendable"
    #: The breaker opened while the attempt waited for its turn: it was not sent.
    OPENED = "circuit_open"

    @property
    def reached_server(self) -> bool:
        return self in (FailureKind.READ_TIMEOUT, FailureKind.CONNECTION_LOST)

    @property
    def is_timeout(self) -> bool:
        return self not in (
            FailureKind.CONNECT,
            FailureKind.CONNECTION_LOST,
            FailureKind.UNSENDABLE,
        )

    @property
    def blames_target(self) -> bool:
        """Whether the failure says anything about the target's health (breaker, retry)."""
        return self not in _LOCAL_FAILURES

    @property
    def status_label(self) -> str:
        """The ``status`` / ``error_type`` metric label of this failure.

        The caller's own limits are named for what they are, so that the error ratio
        (which counts ``timeout`` and ``connect_error`` against the target) leaves them out;
        a connect timeout the client saw late (its own saturation) is a ``pool_timeout``.
        """
        if self is FailureKind.POOL_TIMEOUT or self is FailureKind.SATURATED:
            return "pool_timeout"
        if self in (FailureKind.DEADLINE, FailureKind.UNSENDABLE, FailureKind.OPENED):
            return str(self.value)
        return "timeout" if self.is_timeout else "connect_error"


_LOCAL_FAILURES = frozenset(
    {
        FailureKind.POOL_TIMEOUT,
        FailureKind.SATURATED,
        FailureKind.DEADLINE,
        FailureKind.UNSENDABLE,
        FailureKind.OPENED,
    }
)


def may_retry_method(method: str, *, has_idempotency_key: bool) -> bool:
    """Whether an attempt that may have reached the server can be repeated.

    POST and PATCH are not idempotent: repeating one the server already acted on
    would create a second batch job. An idempotency key makes the server dedupe.
    """
    return has_idempotency_key or method in IDEMPOTENT_METHODS


def is_retryable_status(status: int, config: ClientConfig) -> bool:
    return status in config.retry_on_status


def counts_as_breaker_failure(status: int) -> bool:
    """Server errors and 429 mean the target is unwell; other 4xx are the caller's fault."""
    return status >= 500 or status == 429


#: The ``retry_object`` of the per-call states handed to tenacity's strategies (never run).
NO_RETRYING = Retrying()


def backoff(attempt_number: int, config: ClientConfig) -> float:
    """Full-jitter exponential backoff after ``attempt_number`` failed attempts.

    tenacity's strategy only reads ``attempt_number`` from the state; the state is
    made per call, never shared, so concurrent calls cannot see each other's.
    """
    state = RetryCallState(NO_RETRYING, None, (), {})
    state.attempt_number = attempt_number
    strategy = wait_random_exponential(
        multiplier=max(config.retry_min_wait, 1e-3),
        min=config.retry_min_wait,
        max=config.retry_max_wait,
    )
    return float(strategy(state))


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if is_ascii_digits(value):
        return float(value)
    import email.utils  # only for the rare HTTP-date form; not paid at import

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def is_ascii_digits(value: str) -> bool:
    """``str.isdigit()`` accepts ``"²"`` and other digits ``int()`` refuses; HTTP means 0-9."""
    return value.isascii() and value.isdigit()


def retry_wait(
    attempt_number: int,
    headers: Mapping[str, str] | None,
    config: ClientConfig,
    clock: Clock,
    state: RetryCallState | None = None,
) -> float:
    """The wait before the next attempt: the server's ``Retry-After`` if any, else the
    ``wait=`` strategy of the config (asked with ``state``), else the jittered backoff."""
    if TestingSwitch.no_wait:
        return 0.0
    server_wait = parse_retry_after(headers, clock.time()) if headers is not None else None
    if server_wait is not None:
        return min(server_wait, config.retry_after_max)
    if config.wait is not None and state is not None:
        wait = float(config.wait(state))
        # Beyond TIMEOUT_MAX time.sleep() overflows while asyncio.sleep() never returns:
        # the facades would part ways on the caller's mistake.
        if not 0 <= wait <= threading.TIMEOUT_MAX:
            raise ValueError(
                f"the wait= strategy returned {wait!r} seconds, not a number from 0 to "
                f"{threading.TIMEOUT_MAX:.0f}"
            )
        return wait
    return backoff(attempt_number, config)


class RetryBudget:
    """A token bucket bounding retries to a fraction of calls (Finagle's RetryBudget).

    Each call deposits ``ratio`` tokens, each retry withdraws one. While the target
    fails every call, retries stop once the bucket is empty, so attempts settle at
    ``(1 + ratio)`` per call instead of ``max_retries`` per call: no retry storm.

    The floor (``min_per_second``) is a second bucket that refills with time, not
    calls, holding at most one second's worth: a client that calls rarely would
    otherwise earn a retry only every ten calls, i.e. never in a cron job.
    """

    def __init__(self, ratio: float, max_tokens: float, min_per_second: float = 0.0) -> None:
        self.ratio = ratio
        self.max_tokens = max_tokens
        self.min_per_second = min_per_second
        self._floor_max = max(1.0, min_per_second)
        self._tokens = max_tokens
        self._floor = self._floor_max if min_per_second > 0 else 0.0
        self._floor_at: float | None = None
        self._lock = threading.Lock()
        self._gauges: weakref.WeakSet[Gauge] = weakref.WeakSet()

    @property
    def tokens(self) -> float:
        return self._tokens

    def attach_gauge(self, gauge: Gauge) -> None:
        """Keep ``gauge`` equal to the tokens left from now on.

        Written as a value at every change, not read by ``set_function`` at scrape time:
        prometheus_client's multiprocess mode only sees values written to its files.
        """
        with self._lock:
            self._gauges.add(gauge)
            gauge.set(self._tokens)

    def _publish(self) -> None:
        # Under the lock, so that two changes reach the gauge in the order they happened.
        for gauge in list(self._gauges):
            gauge.set(self._tokens)

    def deposit(self) -> None:
        with self._lock:
            if self._tokens < self.max_tokens:
                self._tokens = min(self.max_tokens, self._tokens + self.ratio)
                self._publish()

    def try_withdraw(self, now: float) -> bool:
        """Take one retry token if there is one; ``now`` is a monotonic time."""
        with self._lock:
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self._publish()
                return True
            if self.min_per_second <= 0:
                return False
            if self._floor_at is not None:
                earned = (now - self._floor_at) * self.min_per_second
                self._floor = min(self._floor_max, self._floor + max(0.0, earned))
            self._floor_at = now
            if self._floor < 1.0:
                return False
            self._floor -= 1.0
            return True

    def after_fork(self) -> None:
        # A lock held by a thread of the parent at fork() would never be released here.
        self._lock = threading.Lock()
        # In multiprocess mode each process has its own gauge files, where a value never
        # written reads 0: write the inherited tokens there, or a worker forked from a
        # master that built a client would show an empty budget until its next change.
        with self._lock:
            self._publish()


class RetryBudgets:
    """One budget per target service, shared by every client, thread and task.

    ``clear()`` starts a new generation: clients built before it notice and fetch
    a fresh budget on their next call, instead of keeping the forgotten one.
    """

    def __init__(self) -> None:
        self._budgets: dict[str, RetryBudget] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def get(self, target_service: str, config: ClientConfig) -> RetryBudget:
        with self._lock:
            budget = self._budgets.get(target_service)
            if budget is None:
                budget = RetryBudget(
                    config.retry_budget_ratio,
                    config.retry_budget_max_tokens,
                    config.retry_budget_min_per_second,
                )
                self._budgets[target_service] = budget
            return budget

    def clear(self) -> None:
        with self._lock:
            self._budgets.clear()
            self.generation += 1

    def after_fork(self) -> None:
        """In a forked child: fresh locks; the tokens stay this process's own copy."""
        self._lock = threading.Lock()
        for budget in self._budgets.values():
            budget.after_fork()


retry_budgets = RetryBudgets()
os.register_at_fork(after_in_child=retry_budgets.after_fork)

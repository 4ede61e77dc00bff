"""Event-loop lag: how late the loop runs a callback that is due."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry

from ._context import check_seconds, mark_internal_listener
from ._metrics import CronMetrics

#: Seconds between two probes. Short enough to see a 20 ms stall, long enough to cost
#: nothing (one timer callback per probe).
DEFAULT_LAG_INTERVAL = 0.025
#: Probes kept for :meth:`EventLoopLagMonitor.percentile`.
DEFAULT_LAG_WINDOW = 10_000


class EventLoopLagMonitor:
    """Sleeps ``interval`` seconds in a loop and records how much later it woke up.

    Every lag goes to ``cron_event_loop_lag_seconds``; the last ``window`` lags are kept
    for :meth:`percentile`. A blocked loop shows up as one long lag when it frees up.
    """

    def __init__(
        self,
        *,
        interval: float = DEFAULT_LAG_INTERVAL,
        registry: CollectorRegistry | None = None,
        window: int = DEFAULT_LAG_WINDOW,
    ) -> None:
        self.interval = check_seconds("interval", interval)
        self._histogram = CronMetrics(registry).loop_lag
        self.samples: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the monitor is probing its loop now."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start probing the running loop (call it on that loop)."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._probe(), name="cron_migration-loop-lag"
        )

    def stop(self) -> None:
        """Stop probing (the samples and the metric keep what was measured)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - due)
            self._histogram.observe(lag)
            self.samples.append(lag)

    def percentile(self, fraction: float) -> float:
        """The ``fraction`` (0..1) quantile of the kept lags, in seconds; 0 without any."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}")
        ordered = sorted(self.samples)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]

    async def __aenter__(self) -> EventLoopLagMonitor:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def monitor_event_loop_lag(
    scheduler: Any, monitor: EventLoopLagMonitor | None = None
) -> EventLoopLagMonitor:
    """Run ``monitor`` (a new one by default) while the ``AsyncIOScheduler`` runs."""
    from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, EVENT_SCHEDULER_STARTED

    from ._executor import require_scheduler

    require_scheduler(scheduler, "monitor_event_loop_lag()", asyncio_only=True)
    lag = monitor if monitor is not None else EventLoopLagMonitor()

    def on_event(event: Any) -> None:
        # Both events are dispatched on the scheduler's loop thread.
        if event.code == EVENT_SCHEDULER_STARTED:
            lag.start()
        else:
            lag.stop()

    mark_internal_listener(on_event)
    scheduler.add_listener(on_event, EVENT_SCHEDULER_STARTED | EVENT_SCHEDULER_SHUTDOWN)
    if getattr(scheduler, "running", False):
        lag.start()
    return lag

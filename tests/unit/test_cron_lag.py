"""The event-loop lag monitor, and ten blocking legacy jobs that must not stall the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from cron_migration import EventLoopLagMonitor, migrate_scheduler, migrated_job, shutdown_gracefully
from tests.unit.cron_support import sample, wait_until_async

pytestmark = pytest.mark.facade_async

JOBS = 10
BLOCK = 0.5
# A loop blocked by one job shows a lag of BLOCK; a free loop shows milliseconds. The
# limit sits between the two with room for a loaded machine.
FREE_LOOP_LIMIT = BLOCK / 2


def test_ten_blocking_legacy_jobs_leave_the_loop_free() -> None:
    registry = CollectorRegistry()
    done: list[int] = []
    lock = threading.Lock()

    @migrated_job(timeout=30, registry=registry)
    def legacy_report(number: int) -> None:
        time.sleep(BLOCK)  # the legacy job: blocking I/O
        with lock:
            done.append(number)

    old = BackgroundScheduler()
    now = datetime.now(timezone.utc)
    for number in range(JOBS):
        old.add_job(
            legacy_report,
            "interval",
            seconds=0.3,
            args=[number],
            id=f"report{number}",
            next_run_time=now,
        )

    async def main() -> EventLoopLagMonitor:
        new, report = migrate_scheduler(old, registry=registry)
        monitor = report.lag_monitor
        assert monitor is not None
        monitor.interval = 0.01
        new.start()
        assert monitor.running
        await wait_until_async(lambda: len(done) >= 3 * JOBS, what="three rounds of the jobs")
        await shutdown_gracefully(new, timeout=10)
        assert not monitor.running
        return monitor

    monitor = asyncio.run(main())
    assert len(monitor.samples) > 20
    assert monitor.percentile(0.99) < FREE_LOOP_LIMIT, sorted(monitor.samples)[-5:]
    assert sample(registry, "cron_event_loop_lag_seconds_count") == len(monitor.samples)


def test_the_monitor_sees_a_job_that_blocks_the_loop() -> None:
    """The control: the same blocking call made on the loop shows up as lag."""
    registry = CollectorRegistry()

    async def main() -> EventLoopLagMonitor:
        async with EventLoopLagMonitor(interval=0.01, registry=registry) as monitor:
            await asyncio.sleep(0.05)
            time.sleep(BLOCK)  # noqa: ASYNC251 - what a bare sync job on the loop does
            await asyncio.sleep(0.05)
        return monitor

    monitor = asyncio.run(main())
    assert max(monitor.samples) >= FREE_LOOP_LIMIT
    assert sample(registry, "cron_event_loop_lag_seconds_bucket", {"le": "0.1"}) < len(
        monitor.samples
    )


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_percentile_refuses_fractions_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        EventLoopLagMonitor(registry=CollectorRegistry()).percentile(fraction)


def test_percentile_of_known_samples() -> None:
    monitor = EventLoopLagMonitor(registry=CollectorRegistry())
    assert monitor.percentile(0.99) == 0.0
    monitor.samples.extend(float(n) for n in range(1, 101))
    assert monitor.percentile(0.99) == 99.0
    assert monitor.percentile(0.5) == 50.0
    assert monitor.percentile(1.0) == 100.0


@pytest.mark.parametrize("interval", [0, -1, "0.1", True])
def test_a_bad_interval_is_refused(interval: object) -> None:
    with pytest.raises(ValueError, match="interval must be a number of seconds > 0"):
        EventLoopLagMonitor(interval=interval)  # type: ignore[arg-type]

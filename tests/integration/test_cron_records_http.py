"""Run records through the example REST service: an outage in the middle of the runs, and
afterwards every run recorded once, completed, with its scheduled time and correlation id."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("fastapi")

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, correlation_id_ctx
from cron_migration import (
    MigrationExecutor,
    current_scheduled_run,
    flush_run_records,
    migrated_job,
    shutdown_gracefully,
)
from examples.cron_service.client import CronRestClient
from examples.rest_service import create_app
from examples.serving import serve
from tests.unit.cron_support import runs, sample, wait_until_async

pytestmark = pytest.mark.facade_async

CONFIG = ClientConfig(
    timeout=5.0,
    max_retries=1,
    retry_min_wait=0.01,
    retry_max_wait=0.05,
    circuit_breaker_fail_max=3,
    circuit_breaker_reset_timeout=0.3,
)


def rest_client(base_url: str, registry: CollectorRegistry) -> CronRestClient:
    """The recorder of these tests: the cron service's client of the REST service."""
    return CronRestClient(
        base_url,
        service_name=f"cron-{uuid.uuid4().hex[:8]}",
        target_service="rest_service",
        config=CONFIG,
        registry=registry,
    )


def test_the_rest_service_down_for_part_of_the_runs_loses_no_record() -> None:
    app = create_app()
    registry = CollectorRegistry()
    bodies: list[tuple[str | None, Any]] = []

    with serve(app) as base_url:

        async def main() -> list[dict[str, Any]]:
            client = rest_client(base_url, registry)
            async with client:

                @migrated_job(timeout=10, recorder=client, registry=registry, name="tick")
                async def tick() -> int:
                    bodies.append((correlation_id_ctx.get(), current_scheduled_run()))
                    return len(bodies)

                scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
                scheduler.add_job(tick, "interval", seconds=0.1, id="tick", max_instances=5)
                scheduler.start()
                await wait_until_async(lambda: len(bodies) >= 3, what="runs before the outage")
                app.faults.configure(outage=True)
                outage_from = len(bodies)
                await wait_until_async(lambda: len(bodies) >= outage_from + 10, what="outage runs")
                # The records of those runs are waiting, not lost.
                assert sample(registry, "cron_run_records_pending") > 0
                app.faults.clear()
                await wait_until_async(lambda: len(bodies) >= outage_from + 15, what="later runs")
                report = await shutdown_gracefully(scheduler, timeout=10, records_timeout=60)
                assert report.records_pending == 0
                return await client.list_job_executions()

        executions = asyncio.run(main())

    assert len(executions) == len(bodies)
    assert {e["status"] for e in executions} == {"completed"}
    assert sorted(e["result"] for e in executions) == list(range(1, len(bodies) + 1))
    assert {e["correlation_id"] for e in executions} == {cid for cid, _ in bodies}
    scheduled = {run.scheduled_at.isoformat() for _, run in bodies}
    assert len(scheduled) == len(bodies)
    assert {e["job_id"] for e in executions} == {"tick"}
    assert len({e["scheduled_at"] for e in executions}) == len(bodies)
    assert runs(registry, "tick", "success") == len(bodies)
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 0


def test_one_run_the_rest_service_keeps_rejecting_holds_up_no_other_record() -> None:
    app = create_app()
    registry = CollectorRegistry()

    def completed() -> int:
        return sum(e["status"] == "completed" for e in app.service.find("job-executions"))

    with serve(app) as base_url:
        # Every answer to the first execution's completion is a 500, for good.
        app.faults.configure(outage=True, status=500, path_prefix="/api/job-executions/1/complete")

        async def main() -> int:
            client = rest_client(base_url, registry)
            async with client:
                done = 0

                @migrated_job(timeout=10, recorder=client, registry=registry, name="tick")
                async def tick() -> int:
                    nonlocal done
                    done += 1
                    return done

                scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
                scheduler.add_job(tick, "interval", seconds=0.02, id="tick", max_instances=5)
                scheduler.start()
                await wait_until_async(lambda: done >= 81, what="81 runs")
                scheduler.pause()
                await wait_until_async(lambda: completed() == done - 1, what="the other records")
                await shutdown_gracefully(scheduler, timeout=10, records_timeout=1)
                return done

        ran = asyncio.run(main())

    executions = sorted(app.service.find("job-executions"), key=lambda e: int(e["id"]))
    assert len(executions) == ran >= 81
    assert executions[0]["status"] == "running"  # the poisoned one: its completion refused
    assert {e["status"] for e in executions[1:]} == {"completed"}


def test_a_backlog_of_records_arrives_soon_after_the_rest_service_recovers() -> None:
    app = create_app()
    registry = CollectorRegistry()
    lags: list[float] = []
    runs_delivered: list[int] = []

    with serve(app) as base_url:

        async def main() -> None:
            client = rest_client(base_url, registry)
            async with client:
                done = 0

                @migrated_job(timeout=10, recorder=client, registry=registry, name="tick")
                async def tick() -> int:
                    nonlocal done
                    done += 1
                    return done

                scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
                scheduler.add_job(tick, "interval", seconds=0.1, id="tick", max_instances=5)
                app.faults.configure(outage=True)
                scheduler.start()
                # Long enough for every run's backoff to reach its longest (10 s): before,
                # the backlog waited that out after the recovery, then went one by one.
                outage_started = time.monotonic()
                await wait_until_async(
                    lambda: time.monotonic() - outage_started > 14, timeout=60, what="outage"
                )
                scheduler.pause()
                backlog = sample(registry, "cron_run_records_pending")
                assert backlog >= 50
                assert not app.service.find("job-executions")
                app.faults.clear()
                recovered = time.monotonic()
                await wait_until_async(
                    lambda: bool(app.service.find("job-executions")),
                    what="the first operation accepted",
                )
                lags.append(time.monotonic() - recovered)
                await wait_until_async(
                    lambda: sample(registry, "cron_run_records_pending") < backlog,
                    what="the first run delivered",
                )
                lags.append(time.monotonic() - recovered)
                await wait_until_async(
                    lambda: sample(registry, "cron_run_records_pending") == 0,
                    what="the backlog delivered",
                )
                lags.append(time.monotonic() - recovered)
                runs_delivered.append(int(backlog))
                await shutdown_gracefully(scheduler, timeout=10, records_timeout=10)

        asyncio.run(main())

    noticed, first, last = lags
    print(
        f"backlog of {runs_delivered[0]} runs: recovery noticed {noticed:.2f}s, first run "
        f"delivered {first:.2f}s, all {last:.2f}s after the recovery"
    )
    # Generous bounds for a loaded machine (the backoff alone reached 10 s before); the
    # figures measured are in RELIABILITY.md.
    assert noticed < 3.0
    assert last < 10.0


def test_the_records_of_a_closed_recorder_are_given_up_not_carried_into_the_next_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A service stopped while the REST service was down, its client closed: the run's
    record can never be delivered. The next loop's flush (a later service in the same
    process, or its shutdown) gives it up at once, counted, instead of retrying it on the
    closed client and counting it as its own."""
    app = create_app()
    registry = CollectorRegistry()
    jobs: list[Any] = []  # the job (and its outbox) outlives the first loop
    job_name = "closed_recorder_job"  # its records told from other tests' leftovers

    with serve(app) as base_url:
        app.faults.configure(outage=True)

        async def first() -> None:
            async with rest_client(base_url, registry) as client:

                @migrated_job(timeout=10, recorder=client, registry=registry, name=job_name)
                async def tick() -> None:
                    return None

                jobs.append(tick)
                await tick()
                await flush_run_records(0.5)  # every outbox of the process: not counted here

        asyncio.run(first())
        assert sample(registry, "cron_run_records_pending") == 1
        app.faults.clear()
        with caplog.at_level(logging.ERROR, logger="cron_migration"):
            assert asyncio.run(flush_run_records(10)) == 0

    assert sample(registry, "cron_run_records_pending") == 0
    prefix = f"run record of job {job_name} (run "
    (dropped,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]
    assert "the recorder refused create: ClientClosedError(" in dropped
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 1
    assert not app.service.find("job-executions")


def test_a_record_refused_while_its_client_is_busy_on_another_loop_is_delivered_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Jobs of a thread scheduler, each run by ``asyncio.run`` in its own thread, share the
    recorder: while one run's loop holds the client, another run's record is refused with a
    ``RuntimeError`` ("belongs to another event loop"). That loop closes when its run ends,
    and the client moves on: the record is retried and delivered, not dropped."""
    app = create_app()
    registry = CollectorRegistry()
    holding = threading.Event()
    release = threading.Event()

    with serve(app) as base_url:
        client = rest_client(base_url, registry)

        @migrated_job(timeout=30, recorder=client, registry=registry, name="busy")
        async def busy() -> None:
            await client.get_global_settings()  # the client is this loop's now
            holding.set()
            await asyncio.to_thread(release.wait, 30)

        @migrated_job(timeout=10, recorder=client, registry=registry, name="tick")
        async def tick() -> None:
            return None

        def refused() -> bool:
            return any(
                "tick" in r.getMessage() and "another event loop" in r.getMessage()
                for r in caplog.records
            )

        async def second() -> int:
            await tick()
            await wait_until_async(refused, what="the refusal of tick's record")
            release.set()
            first.join(30)
            return await flush_run_records(10)

        async def run_busy() -> None:
            await busy()

        first = threading.Thread(target=asyncio.run, args=(run_busy(),))
        first.start()
        try:
            assert holding.wait(30)
            with caplog.at_level(logging.DEBUG, logger="cron_migration"):
                assert asyncio.run(second()) == 0
        finally:
            release.set()
            first.join(30)

        recorded = {execution["job_id"] for execution in app.service.find("job-executions")}

    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 0
    assert recorded == {"busy", "tick"}


def test_a_record_refused_when_no_thread_could_be_started_is_delivered_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The process could not start a thread (its threads or memory at their limit) when
    the client looked the REST service's name up: the call raises ``RuntimeError("can't
    start new thread")``. Threads are to be had again a moment later: the record is retried
    and delivered, and the name's lookup is not left waiting for a thread that never ran."""
    if _a_thread_starts_with_a_stack_of(HUGE_STACK):
        pytest.skip("this machine's memory overcommit grants a thread a 1 TiB stack")
    app = create_app()
    registry = CollectorRegistry()

    with serve(app) as base_url:
        named = base_url.replace("127.0.0.1", "localhost")  # a name, looked up on a thread
        client = rest_client(named, registry)

        @migrated_job(timeout=10, recorder=client, registry=registry, name="tick")
        async def tick() -> None:
            return None

        def refused() -> bool:
            return any("can't start new thread" in r.getMessage() for r in caplog.records)

        async def main() -> int:
            async with client:
                # A stack no memory can hold: the thread is refused as at a thread limit.
                usual = threading.stack_size(HUGE_STACK)
                try:
                    await tick()
                    await wait_until_async(refused, what="the call refused a thread")
                finally:
                    threading.stack_size(usual)
                return await flush_run_records(20)

        with caplog.at_level(logging.DEBUG, logger="cron_migration"):
            assert asyncio.run(main()) == 0
        recorded = [execution["job_id"] for execution in app.service.find("job-executions")]

    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 0
    assert recorded == ["tick"]


HUGE_STACK = 2**40


def _a_thread_starts_with_a_stack_of(size: int) -> bool:
    usual = threading.stack_size(size)
    try:
        thread = threading.Thread(target=lambda: None)
        thread.start()
    except RuntimeError:
        return False
    finally:
        threading.stack_size(usual)
    thread.join()
    return True

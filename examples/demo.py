"""The main demo: the migrated cron service against the REST service, through a fault window.

``python -m examples.demo [--duration SECONDS] [--redis-url URL]`` (``./scripts/demo`` sets up
its environment first). On loopback it starts the REST service (FastAPI under uvicorn, with
cache invalidation) and the migrated cron service (``AsyncIOScheduler``: two jobs on the
async path, two legacy sync jobs through ``@migrated_job``), while new reminders and
conversations keep arriving. Part-way through, the REST service first answers most
requests with 503, then stalls every request past the client's timeout: retries and the
circuit breaker act, failed runs are recorded once the service is back. Both services
serve ``/metrics``. A progress line shows what happens; a table sums it up at the end.

The exit status is 0 only if no run was lost: every run the scheduler made is recorded,
finished, in the REST service's job executions, and no reminder reached the assistant's
queue twice. The cache and the trigger queue are in memory unless a Redis URL is given
(``--redis-url`` or ``$REDIS_URL``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: make the repository root importable, as `python -m` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import itertools
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, make_asgi_app

from commclient import ClientConfig, testing
from commclient.cache import create_async_cache
from cron_migration import ShutdownReport
from examples.cron_service.service import CronService
from examples.rest_service import RestApp, create_app
from examples.secretary_queue import (
    STREAM,
    AsyncInProcessQueue,
    AsyncRedisStreamQueue,
    read_triggers,
)
from examples.serving import serve

DEFAULT_DURATION = 40.0
MIN_DURATION = 6.0
#: Seconds between runs of each job during the demo (the real schedule is minutes).
DEMO_INTERVALS = {
    "send_due_reminders": 1.0,
    "poll_batch_jobs": 1.0,
    "extract_memories": 2.0,
    "schedule_nightly_cleanup": 5.0,
}
#: A client tuned for a short demo: a short timeout, quick retries, a quick breaker.
DEMO_CLIENT = ClientConfig(
    timeout=1.0,
    connect_timeout=1.0,
    max_retries=3,
    retry_min_wait=0.1,
    retry_max_wait=0.5,
    circuit_breaker_fail_max=5,
    circuit_breaker_reset_timeout=2.0,
)
RUN_TIMEOUT = 10.0
FINISHED = ("completed", "failed")
RUN_OUTCOMES = ("success", "error", "timeout", "cancelled")


@dataclass(frozen=True)
class Phase:
    name: str
    starts: float  # share of the duration
    faults: dict[str, Any]


def phases() -> list[Phase]:
    return [
        Phase("healthy", 0.0, {}),
        Phase("503 storm", 0.3, {"error_rate": 0.8, "status": 503}),
        Phase("stall", 0.45, {"latency": 1.5}),
        Phase("recovered", 0.6, {}),
    ]


@dataclass
class Observed:
    """What the demo watches while it runs."""

    transitions: list[str] = field(default_factory=list)

    def breaker_changed(self, old: str, new: str) -> None:
        """Told by the breaker itself (testing.watch_breaker): a probe that closes the
        breaker within milliseconds is a transition too, which polling would miss."""
        self.transitions.append(f"{old}->{new}")


def samples(registry: CollectorRegistry, name: str, **labels: str) -> Iterator[Any]:
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                yield sample


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return float(sum(sample.value for sample in samples(registry, name, **labels)))


def runs_by_outcome(registry: CollectorRegistry) -> Counter[str]:
    counts: Counter[str] = Counter()
    for sample in samples(registry, "cron_job_runs_total"):
        counts[sample.labels["outcome"]] += int(sample.value)
    return counts


class Traffic:
    """New reminders (due within seconds) and closed conversations, written to the store
    directly: they keep arriving whatever state the REST API is in."""

    def __init__(self, app: RestApp) -> None:
        self.app = app
        self.reminders = 0
        self.conversations = 0

    async def run(self, stop: asyncio.Event) -> None:
        for tick in itertools.count():
            due = datetime.now(timezone.utc) + timedelta(seconds=1 + tick % 3)
            self.app.service.create(
                "reminders",
                {
                    "remind_at": due.isoformat(),
                    "status": "scheduled",
                    "user_id": 1 + tick % 5,
                    "text": f"reminder {tick}",
                },
            )
            self.reminders += 1
            if tick % 4 == 0:
                self.app.service.create(
                    "conversations",
                    {"status": "closed", "memory_status": "pending", "user_id": 1 + tick % 5},
                )
                self.conversations += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except asyncio.TimeoutError:
                continue
            return


async def run_demo(
    duration: float,
    redis_url: str | None,
    *,
    out: TextIO = sys.stdout,
    live: bool | None = None,
) -> int:
    """Run the demo; returns the exit status (0: no run lost)."""
    if duration < MIN_DURATION:
        raise ValueError(f"duration must be at least {MIN_DURATION:g} seconds, got {duration!r}")
    live = out.isatty() if live is None else live
    registry = CollectorRegistry()
    cache = create_async_cache(redis_url, prefix="assistant_cache", registry=registry)
    # Without Redis, the REST service invalidates the very cache the cron service reads.
    rest_cache = create_async_cache(redis_url, prefix="assistant_cache") if redis_url else cache
    app = create_app(cache=rest_cache)
    traffic = Traffic(app)
    observed = Observed()
    # Reminder ids start at 1 in every run: a stream of this run's own keeps the
    # "appended once" markers of earlier runs from hiding its reminders.
    stream = f"{STREAM}:demo-{uuid.uuid4().hex[:8]}"
    testing.reset()  # a fresh breaker for this run
    with ExitStack() as stack:
        rest_url = stack.enter_context(serve(app))
        metrics_url = stack.enter_context(serve(make_asgi_app(registry), lifespan="auto"))
        service = CronService(
            rest_url,
            redis_url=redis_url,
            cache=cache,
            client_config=DEMO_CLIENT,
            registry=registry,
            intervals=DEMO_INTERVALS,
            run_timeout=RUN_TIMEOUT,
            trigger_stream=stream,
        )
        stack.callback(
            testing.watch_breaker("cron_service", "rest_service", observed.breaker_changed)
        )
        if redis_url:
            stack.callback(_delete_stream, redis_url, stream)
        print(f"REST service   {rest_url}  (metrics: {rest_url}/metrics)", file=out)
        print(f"cron service   metrics: {metrics_url}/metrics", file=out)
        where = f"Redis at {redis_url}, stream {stream}" if redis_url else "in memory"
        print(f"cache, queue   {where}", file=out)
        print(f"duration       {duration:g} s; jobs:", file=out)
        for job in service.report.jobs:
            print(f"  {job.job_id:<26} {job.kind:<5} -> {job.path}", file=out)
        stop_traffic = asyncio.Event()
        started = time.monotonic()
        traffic_task = asyncio.create_task(traffic.run(stop_traffic))
        await service.start()
        try:
            await _watch(app, registry, duration, started, out, live)
        finally:
            stop_traffic.set()
            await traffic_task
            app.faults.clear()
            shutdown = await service.stop(timeout=RUN_TIMEOUT)
            if rest_cache is not cache:
                await rest_cache.aclose()
        elapsed = time.monotonic() - started
        return _summary(service, app, registry, observed, traffic, shutdown, elapsed, out)


async def _watch(
    app: RestApp,
    registry: CollectorRegistry,
    duration: float,
    started: float,
    out: TextIO,
    live: bool,
) -> None:
    plan = phases()
    current = -1
    last_line = 0.0
    while (now := time.monotonic() - started) < duration:
        index = max(i for i, phase in enumerate(plan) if phase.starts * duration <= now)
        if index != current:
            current = index
            app.faults.clear()
            if plan[index].faults:
                app.faults.configure(**plan[index].faults)
            if live:
                print(file=out)
            print(f"[{now:5.1f}s] phase: {plan[index].name}", file=out)
        if now - last_line >= (0.25 if live else 5.0):
            last_line = now
            line = _progress(app, registry, now, plan[index].name)
            print("\r" + line if live else line, end="" if live else "\n", file=out, flush=True)
        await asyncio.sleep(0.02)
    if live:
        print(file=out)


def _progress(app: RestApp, registry: CollectorRegistry, now: float, phase: str) -> str:
    runs = runs_by_outcome(registry)
    failed = sum(runs[o] for o in RUN_OUTCOMES if o != "success")
    records = len(app.service.find("job-executions"))
    pending = int(total(registry, "cron_run_records_pending"))
    # About 100 columns, so that it redraws in place in a usual terminal.
    return (
        f"[{now:5.1f}s] {phase:<9} calls {int(total(registry, 'http_client_requests_total')):>4}"
        f" retries {int(total(registry, 'http_client_retries_total')):>3}"
        f" breaker {testing.breaker_state('cron_service', 'rest_service'):<9}"
        f" runs {runs['success']:>3} ok {failed:>2} failed"
        f" recorded {records:>3} +{pending} buffered"
    )


def _summary(
    service: CronService,
    app: RestApp,
    registry: CollectorRegistry,
    observed: Observed,
    traffic: Traffic,
    shutdown: ShutdownReport,
    elapsed: float,
    out: TextIO,
) -> int:
    runs = runs_by_outcome(registry)
    ran = sum(runs[o] for o in RUN_OUTCOMES)
    failed = ran - runs["success"]
    executions = app.service.find("job-executions")
    finished = [e for e in executions if e["status"] in FINISHED]
    unfinished = len(executions) - len(finished)
    dropped = int(total(registry, "cron_run_records_dropped_total"))
    lost = ran - len(finished)
    hits = total(registry, "redis_cache_hits_total")
    misses = total(registry, "redis_cache_misses_total")
    triggers = _triggers(service)
    appended_twice = sum(
        n - 1 for n in Counter(t["reminder_id"] for t in triggers).values() if n > 1
    )
    reminders = app.service.find("reminders")
    sent = sum(r["status"] == "sent" for r in reminders)
    transitions = observed.transitions
    rows = [
        ("duration", f"{elapsed:.1f} s"),
        ("REST calls (CronRestClient)", f"{int(total(registry, 'http_client_requests_total'))}"),
        ("  of which failed fast, breaker open", f"{int(_failed_fast(registry))}"),
        ("retries", f"{int(total(registry, 'http_client_retries_total'))}"),
        (
            "breaker transitions",
            f"{len(transitions)}" + (f" ({', '.join(transitions)})" if transitions else ""),
        ),
        (
            "cache hit ratio (global settings)",
            f"{hits / (hits + misses):.0%} ({int(hits)} hits, {int(misses)} misses)"
            if hits + misses
            else "no lookups",
        ),
        ("runs ok", f"{runs['success']}"),
        ("runs failed (error, timeout, cancelled)", f"{failed}"),
        ("runs recorded, finished", f"{len(finished)} of {ran}"),
        ("run records unfinished / dropped", f"{unfinished} / {dropped}"),
        ("runs cut short at shutdown", f"{shutdown.cancelled}"),
        ("reminders sent / created", f"{sent} / {traffic.reminders}"),
        ("reminders appended twice", f"{appended_twice}"),
        ("event-loop lag p99", f"{service.lag_monitor.percentile(0.99) * 1000:.1f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nsummary", file=out)
    print("-" * (width + 24), file=out)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)
    print("-" * (width + 24), file=out)
    problems = []
    if lost or unfinished or dropped:
        problems.append(f"{max(lost, unfinished, dropped)} run(s) lost from the records")
    if appended_twice:
        problems.append(f"{appended_twice} reminder(s) appended twice")
    if problems:
        print("FAILED: " + "; ".join(problems), file=out)
        return 1
    print(f"OK: all {ran} runs recorded; no reminder appended twice", file=out)
    return 0


def _triggers(service: CronService) -> list[dict[str, str]]:
    queue = service.queue
    if isinstance(queue, AsyncInProcessQueue):
        return queue.triggers()
    assert isinstance(queue, AsyncRedisStreamQueue)
    import redis

    with redis.Redis.from_url(str(service.redis_url)) as client:
        return read_triggers(client, queue.stream)


def _delete_stream(redis_url: str, stream: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        keys = [stream, *client.scan_iter(match=f"{stream}:appended:*", count=1000)]
        client.delete(*keys)


def _failed_fast(registry: CollectorRegistry) -> float:
    return total(registry, "http_client_requests_total", status="circuit_open")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help=f"seconds the services run (default {DEFAULT_DURATION:g}, at least {MIN_DURATION:g})",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="Redis for the cache and the trigger stream (default $REDIS_URL; none: in memory)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log every failed run, retry and swallowed error"
    )
    args = parser.parse_args(argv)
    if args.duration < MIN_DURATION:
        parser.error(f"--duration must be at least {MIN_DURATION:g} seconds")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s %(message)s",
    )
    if not args.verbose:
        # Failed runs, retries and the legacy jobs' swallowed errors are what the fault
        # window is for: the progress line and the summary count them instead.
        for name in ("apscheduler", "commclient", "examples.cron_service_legacy"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return asyncio.run(run_demo(args.duration, args.redis_url))


if __name__ == "__main__":
    sys.exit(main())

"""Run the migrated cron service until SIGINT or SIGTERM: ``python -m examples.cron_service``.

Reads ``REST_SERVICE_URL`` (default ``http://rest_service:8000``), ``REDIS_URL`` (cache and
trigger stream; none: in memory), ``CRON_LEASE_REDIS_URL`` (set it on every replica) and
``CRON_MIGRATION_ASYNC_JOBS``; serves ``/metrics`` on ``--metrics-port``. On a signal it
stops gracefully: running jobs get ``--shutdown-timeout`` seconds, every run is recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: make the repository root importable, as `python -m` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import logging
import os
import signal

from prometheus_client import REGISTRY, make_asgi_app

from examples.cron_service.service import CronService
from examples.cron_service_legacy.scheduler import SCHEDULE
from examples.serving import serve


async def run(metrics_port: int, shutdown_timeout: float, intervals: dict[str, float]) -> None:
    service = CronService(
        os.environ.get("REST_SERVICE_URL", "http://rest_service:8000"),
        redis_url=os.environ.get("REDIS_URL") or None,
        lease_redis_url=os.environ.get("CRON_LEASE_REDIS_URL") or None,
        intervals=intervals,
    )
    print(service.report.render(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with serve(make_asgi_app(REGISTRY), port=metrics_port, lifespan="auto") as metrics_url:
        print(f"metrics: {metrics_url}/metrics", flush=True)
        await service.start()
        await stop.wait()
        report = await service.stop(timeout=shutdown_timeout)
    print(f"stopped: {report}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.cron_service", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--metrics-port", type=int, default=9100)
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument(
        "--interval",
        action="append",
        default=[],
        metavar="JOB=SECONDS",
        help="seconds between runs of one job instead of its schedule's (repeatable)",
    )
    args = parser.parse_args()
    intervals: dict[str, float] = {}
    for item in args.interval:
        job_id, _, seconds = item.partition("=")
        try:
            intervals[job_id] = float(seconds)
        except ValueError:
            parser.error(f"--interval wants JOB=SECONDS, got {item!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    unknown = sorted(set(intervals) - set(SCHEDULE))
    if unknown:
        parser.error(f"--interval names no job: {unknown}; the jobs are {sorted(SCHEDULE)}")
    asyncio.run(run(args.metrics_port, args.shutdown_timeout, intervals))


if __name__ == "__main__":
    main()

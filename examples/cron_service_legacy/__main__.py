"""Run the legacy cron service: ``python -m examples.cron_service_legacy``."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: make the repository root importable, as `python -m` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import logging
import os

from examples.cron_service_legacy import jobs
from examples.cron_service_legacy.scheduler import build_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.cron_service_legacy",
        description="Run the legacy cron service (BlockingScheduler) until interrupted.",
    )
    parser.add_argument(
        "--rest-url",
        default=os.environ.get("REST_SERVICE_URL", "http://rest_service:8000"),
        help="the REST service (default: $REST_SERVICE_URL or http://rest_service:8000)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="Redis for the cache and the trigger stream (default: $REDIS_URL; none: in memory)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    jobs.configure(args.rest_url, args.redis_url)
    print(f"legacy cron service: REST service at {args.rest_url}", flush=True)
    scheduler = build_scheduler()
    try:
        scheduler.start()
    except KeyboardInterrupt:
        # Ctrl-C ends the service, as the help says: no traceback; a run in progress
        # finishes before the interpreter exits.
        scheduler.shutdown(wait=False)
        print("legacy cron service: stopped", flush=True)


if __name__ == "__main__":
    main()

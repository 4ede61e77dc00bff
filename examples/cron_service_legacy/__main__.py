"""Run the legacy cron service: ``python -m examples.cron_service_legacy``."""

from __future__ import annotations

import logging
import os

from examples.cron_service_legacy import jobs
from examples.cron_service_legacy.scheduler import build_scheduler


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    jobs.configure(
        os.environ.get("REST_SERVICE_URL", "http://rest_service:8000"),
        os.environ.get("REDIS_URL") or None,
    )
    build_scheduler().start()


if __name__ == "__main__":
    main()

"""A cron service whose one job is a long sync run, stopped by a signal (run with ``python -m``).

``DIR GRACE``: an AsyncIOScheduler with a MigrationExecutor runs ``export`` once, at
once; ``export`` writes DIR/started, sleeps 60 s, then writes DIR/finished (its side
effect). Run records go, one JSON line per operation, to DIR/records.jsonl, the log to
DIR/log. The service runs under ``run_until_signal(grace=GRACE)`` and prints its shutdown
report as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from cron_migration import MigrationExecutor, migrated_job, run_until_signal


class FileRecorder:
    """A RunRecorder appending each operation to a file, for the parent to read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _write(self, **entry: Any) -> None:
        with self._lock, self.path.open("a") as file:
            file.write(json.dumps(entry, default=str) + "\n")

    async def create_job_execution(
        self,
        *,
        job_id: str,
        job_name: str,
        scheduled_at: datetime | None,
        correlation_id: str,
        idempotency_key: str,
    ) -> str:
        self._write(op="create", job_id=job_id)
        return "1"

    async def start_job_execution(self, execution_id: str, *, idempotency_key: str) -> None:
        self._write(op="start")

    async def complete_job_execution(
        self, execution_id: str, *, result: Any, idempotency_key: str
    ) -> None:
        self._write(op="complete", result=result)

    async def fail_job_execution(
        self, execution_id: str, *, error: str, traceback: str, idempotency_key: str
    ) -> None:
        self._write(op="fail", error=error)


def main() -> None:
    directory, grace = Path(sys.argv[1]), float(sys.argv[2])
    logging.basicConfig(filename=directory / "log", level=logging.WARNING)

    @migrated_job(recorder=FileRecorder(directory / "records.jsonl"))
    def export() -> str:
        (directory / "started").touch()
        time.sleep(60)
        (directory / "finished").touch()
        return "exported"

    scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
    scheduler.add_job(export, "date", id="export")
    report = run_until_signal(scheduler, grace=grace, records_timeout=3)
    print(json.dumps(dataclasses.asdict(report)), flush=True)


if __name__ == "__main__":
    main()

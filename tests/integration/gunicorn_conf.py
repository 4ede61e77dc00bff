"""gunicorn settings of the multiprocess test: the README's ``child_exit`` recipe."""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess

workers = 2
worker_class = "sync"
graceful_timeout = 10
loglevel = "warning"


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)

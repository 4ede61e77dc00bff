"""The example REST service in its own process, on a free loopback port, for the scenarios."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class RestServiceProcess:
    """``python -m examples.rest_service`` on 127.0.0.1, on a port of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> RestServiceProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "examples.rest_service", "--port", str(self.port)],
            cwd=ROOT,
        )
        give_up = time.monotonic() + timeout
        while True:
            try:
                self.get("/api/job-executions/")
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > give_up:
                    self.stop()
                    raise RuntimeError("the example REST service did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def __enter__(self) -> RestServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

"""A real ``redis-server`` on a free loopback port, for the benchmarks and the tests.

Nothing here imports redis-py or pytest: PING is spoken over a raw socket, and a missing
``redis-server`` raises ``RuntimeError`` (the tests' ``tests.redis_server`` turns that into a
skip, or a failure when ``CI`` is set).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

MISSING_REDIS_SERVER = "redis-server is not installed (apt-get install redis-server)"
READY_TIMEOUT = 10.0


def redis_server_executable() -> str | None:
    """The ``redis-server`` to use: ``$REDIS_SERVER``, else the one on ``PATH``."""
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


def _find_redis_server() -> str:
    executable = redis_server_executable()
    if executable is None:
        raise RuntimeError(MISSING_REDIS_SERVER)
    return executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server on ``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, without persistence.

    The port is chosen once, so :meth:`start` after :meth:`kill` or :meth:`stop` brings
    the server back where clients expect it (empty: nothing is persisted).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        executable: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.executable = executable or _find_redis_server()
        self.extra_args = extra_args
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="redis-test-"))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server (if it is not running) and wait until it answers PING."""
        if self.running:
            return self
        log = (self._workdir / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
                str(self._workdir),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ping(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer in time: {self.log_tail()}")
            time.sleep(0.01)
        return self

    def kill(self) -> None:
        """SIGKILL the server: clients see the connection drop, as in a crash."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server politely (SIGTERM)."""
        self._end(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open but answers nothing."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        path = self._workdir / "redis.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

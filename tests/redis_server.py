"""Start and stop a real ``redis-server`` on a free loopback port, for tests.

Usage::

    from tests.redis_server import RedisServer, require_redis_server

    with RedisServer() as server:          # started, answering PING
        client = redis.Redis.from_url(server.url)
        server.kill()                       # SIGKILL: an outage
        server.start()                      # back on the same port, empty

``require_redis_server()`` returns the executable, or skips the test when it is missing
— except when the ``CI`` environment variable is set, where a missing server fails.
Nothing here imports redis-py: PING is spoken over a raw socket.
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

from tests.prerequisites import missing

READY_TIMEOUT = 10.0


def redis_server_executable() -> str | None:
    """The ``redis-server`` to use: ``$REDIS_SERVER``, else the one on ``PATH``."""
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


def require_redis_server() -> str:
    """The executable, or skip (locally) / fail (when ``CI`` is set) if there is none."""
    executable = redis_server_executable()
    if executable is None:
        missing("redis-server is not installed (apt-get install redis-server)")
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
        self.executable = executable or require_redis_server()
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


class RedisClusterServers:
    """A Redis Cluster of ``masters`` primaries (no replicas) on loopback ports.

    Each node is a :class:`RedisServer` started with ``--cluster-enabled yes``; the
    slots are assigned with ``redis-cli --cluster create``. ``startup_nodes`` is what
    ``redis.cluster.RedisCluster`` needs to find the cluster.
    """

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                extra_args=(
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
                    # Explicit: the default (port + 10000) may be taken, or above 65535.
                    *("--cluster-port", str(free_port())),
                )
            )
            for _ in range(masters)
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(self._state_ok(cli, port) for port in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    @staticmethod
    def _state_ok(cli: str, port: int) -> bool:
        info = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=10
        )
        return "cluster_state:ok" in info.stdout

    def stop(self) -> None:
        for node in self.nodes:
            node.__exit__(None, None, None)

    def __enter__(self) -> RedisClusterServers:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisSentinelServer:
    """One Sentinel process on loopback watching ``master`` as ``service``.

    ``redis-server --sentinel`` is the same program as ``redis-sentinel``, so the Sentinel tests
    need nothing beyond ``redis-server``.
    """

    def __init__(self, master: RedisServer, service: str = "cache-primary") -> None:
        self.command = [require_redis_server(), "--sentinel"]
        self.master = master
        self.service = service
        self.port = free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="redis-sentinel-test-"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisSentinelServer:
        config = self._workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self._workdir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
        )
        log = (self._workdir / "sentinel.log").open("ab")
        self._process = subprocess.Popen(
            [self.command[0], str(config), *self.command[1:]], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._knows_master():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-sentinel did not start watching the master")
            time.sleep(0.05)
        return self

    def _knows_master(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(f"SENTINEL get-master-addr-by-name {self.service}\r\n".encode())
                return str(self.master.port).encode() in conn.recv(256)
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> RedisSentinelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

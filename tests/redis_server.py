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

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._redis_server import (
    MISSING_REDIS_SERVER,
    READY_TIMEOUT,
    free_port,
    ping,
    redis_server_executable,
)
from benchmarks._redis_server import RedisServer as _RedisServer
from tests.prerequisites import missing

__all__ = [
    "READY_TIMEOUT",
    "RedisClusterServers",
    "RedisSentinelServer",
    "RedisServer",
    "free_port",
    "ping",
    "redis_server_executable",
    "require_redis_server",
]


def require_redis_server() -> str:
    """The executable, or skip (locally) / fail (when ``CI`` is set) if there is none."""
    executable = redis_server_executable()
    if executable is None:
        missing(MISSING_REDIS_SERVER)
    return executable


class RedisServer(_RedisServer):
    """``benchmarks._redis_server.RedisServer`` that skips (or fails in CI) without a server."""

    def __init__(
        self,
        port: int | None = None,
        *,
        executable: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            port, executable=executable or require_redis_server(), extra_args=extra_args
        )


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

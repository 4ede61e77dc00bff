"""Bad answers from real servers: values planted in Redis under a cache's keys, and a real
nginx whose upstream is dead."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from commclient import (
    AsyncServiceClient,
    ClientConfig,
    ServiceResponseError,
    SyncServiceClient,
)
from commclient.cache import CacheConfig, CacheError, SyncRedisCache
from tests.prerequisites import IN_CI
from tests.redis_server import RedisServer, free_port
from tests.reliability._results import Row, sized

PROPERTY = settings(
    max_examples=sized(60, 400),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
_tally: dict[str, int] = {}


class Settings(BaseModel):
    timezone: str
    lead_minutes: int


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def planted_cache(redis_server: RedisServer) -> Iterator[tuple[SyncRedisCache, Any]]:
    import redis

    raw = redis.Redis.from_url(redis_server.url)
    cache = SyncRedisCache.from_url(
        redis_server.url, prefix="planted", config=CacheConfig(operation_timeout=2.0)
    )
    yield cache, raw
    cache.close()
    raw.close()


@pytest.mark.redis_server
@PROPERTY
@given(
    payload=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(str.encode),
        st.sampled_from(
            [
                b'{"timezone": "UTC"}',
                b'{"timezone": 5, "lead_minutes": "x"}',
                b"[1, 2, 3]",
                b"null",
                b"\x80\x04\x95",  # the start of a pickle
                b'{"timezone": "UTC", "lead_minutes": 1e400}',
            ]
        ),
    ),
    model=st.sampled_from([None, Settings]),
)
@example(payload=b'{"timezone": "UTC", "lead_minutes": 0}', model=Settings)
def test_values_planted_in_redis(
    planted_cache: tuple[SyncRedisCache, Any], payload: bytes, model: Any
) -> None:
    """Whatever bytes sit under a cache key, ``get`` returns a valid value or ``None`` (a
    miss), or raises a ``CacheError`` — never a decoding or validation exception."""
    cache, raw = planted_cache
    cache.set("settings", {"timezone": "UTC", "lead_minutes": 0})
    stored = _data_keys(raw, "settings")
    for key in stored:
        raw.set(key, payload, keepttl=True)
    try:
        value = cache.get("settings", model)
    except CacheError:
        _count("planted value refused with a CacheError")
        return
    if value is None:
        _count("planted value read as a miss")
    elif model is Settings:
        assert isinstance(value, Settings)
        _count("planted value valid for the model")
    else:
        _count("planted value valid JSON")


@pytest.mark.redis_server
@pytest.mark.parametrize("model", [None, Settings])
def test_nested_json_planted_in_redis(
    planted_cache: tuple[SyncRedisCache, Any], model: Any
) -> None:
    cache, raw = planted_cache
    cache.set("nested", {"timezone": "UTC", "lead_minutes": 0})
    for key in _data_keys(raw, "nested"):
        raw.set(key, b"[" * 100_000 + b"]" * 100_000, keepttl=True)
    try:
        value = cache.get("nested", model)
    except CacheError:
        return
    assert value is None


def _data_keys(raw: Any, key: str) -> list[bytes]:
    """The Redis keys that hold the value of the cache key ``key`` (not its lease), found by
    their contents rather than by the cache's private key layout."""
    found = [
        name
        for name in raw.scan_iter(match=f"*{key}*")
        if raw.type(name) == b"string" and b"timezone" in (raw.get(name) or b"")
    ]
    assert found, list(raw.scan_iter(match=f"*{key}*"))
    return found


def _count(name: str) -> None:
    _tally[name] = _tally.get(name, 0) + 1


# -- nginx in front of a dead upstream -----------------------------------------------------

NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://127.0.0.1:{dead_port}; }}
    }}
}}
"""


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if found is None:
        message = "nginx is not installed (apt-get install nginx)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def nginx_url() -> Iterator[str]:
    executable = _nginx()
    prefix = Path(tempfile.mkdtemp(prefix="nginx-test-"))
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, dead_port=free_port()))
    if os.geteuid() == 0:
        conf.write_text("user root;\n" + conf.read_text())
    process = subprocess.Popen(
        [executable, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        give_up = time.monotonic() + 15
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > give_up:
                    raise RuntimeError(
                        f"nginx did not start: {process.stderr.read() if process.stderr else ''}"
                    ) from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.parametrize(
    "facade",
    [
        pytest.param("sync", marks=pytest.mark.facade_sync),
        pytest.param("async", marks=pytest.mark.facade_async),
    ],
)
def test_nginx_bad_gateway(nginx_url: str, facade: str, row: Row) -> None:
    """nginx's own HTML 502 page becomes a ServiceResponseError with a readable detail."""
    config = ClientConfig(timeout=5.0, max_retries=2, retry_min_wait=0.01, retry_max_wait=0.05)
    error: BaseException | None = None
    try:
        if facade == "sync":
            with SyncServiceClient(
                nginx_url, service_name="nginx-caller", target_service="nginx", config=config
            ) as client:
                client.get("/api/users/{user_id}", path_params={"user_id": 5})
        else:

            async def call() -> None:
                async with AsyncServiceClient(
                    nginx_url, service_name="nginx-caller", target_service="nginx", config=config
                ) as client:
                    await client.get("/api/users/{user_id}", path_params={"user_id": 5})

            asyncio.run(call())
    except BaseException as exc:
        error = exc
    row.scenario = "B2"
    row.title = f"nginx in front of a dead upstream ({facade})"
    row.load = "1 GET, 2 attempts"
    row.faults = "nginx (Debian's package) proxying to a port nothing listens on: its HTML 502"
    row.outcome = f"{type(error).__name__}: {str(error)[:120]}"
    row.lost = "-"
    assert isinstance(error, ServiceResponseError), repr(error)
    assert error.status_code == 502
    assert error.attempts == 2
    assert "502 Bad Gateway" in error.detail
    assert "\ufffd" not in error.detail
    assert "502 Bad Gateway" in str(error)


def test_summary(row: Row) -> None:
    if not _tally:
        pytest.skip("no property ran")
    row.scenario = "B3"
    row.title = "Values planted in Redis under a cache's keys (hypothesis)"
    row.load = f"{sum(_tally.values())} planted values read back with and without a model"
    row.faults = "random bytes, text, pickle bytes, JSON of the wrong shape, 1e400, deep nesting"
    row.outcome = ", ".join(f"{name}: {count}" for name, count in sorted(_tally.items()))
    row.lost = "-"
    row.figures = dict(_tally)

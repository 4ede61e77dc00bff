"""Run inside a fresh venv with the built wheel and one extra: import, act, check the rest.

``python -I extra_check.py EXTRA [REDIS_URL]`` (``-I``: nothing from the clone is importable,
only what the wheel installed). Prints ``OK EXTRA: what was done`` and exits 0, or raises.
Standard library only, besides what the extra installs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# What each extra must bring, and what it must not (a transport it does not need).
PRESENT = {
    "core": ["tenacity", "pybreaker", "prometheus_client"],
    "sync": ["requests", "urllib3"],
    "async": ["httpx", "anyio", "sniffio"],
    "redis": ["redis"],
    "scheduler": ["apscheduler", "anyio"],
    "otel": ["opentelemetry"],
}
ABSENT = {
    "core": ["requests", "httpx", "anyio", "redis", "apscheduler"],
    "sync": ["httpx", "anyio", "redis", "apscheduler"],
    "async": ["requests", "redis", "apscheduler"],
    "redis": ["requests", "httpx", "apscheduler"],
    "scheduler": ["requests", "httpx", "redis"],
    "otel": ["requests", "httpx", "redis", "apscheduler"],
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def loopback_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def check_core(_: str | None) -> str:
    import commclient
    import compat
    from commclient.cache import create_async_cache, create_sync_cache

    assert "requests" not in sys.modules
    assert "httpx" not in sys.modules
    cache = create_sync_cache(None, prefix="packaging")
    value = cache.get_or_set("settings:1", lambda: {"a": 1}, ttl=60)
    assert value == {"a": 1}, value

    async def use_async_cache() -> object:
        async_cache = create_async_cache(None, prefix="packaging")

        async def load() -> dict[str, int]:
            return {"b": 2}

        try:
            return await async_cache.get_or_set("settings:2", load, ttl=60)
        finally:
            await async_cache.aclose()

    assert asyncio.run(use_async_cache()) == {"b": 2}
    cache.close()
    hint = ""
    try:
        compat.run_sync(use_async_cache)
    except ModuleNotFoundError as exc:
        hint = str(exc)
    assert "pip install 'commclient[async]'" in hint, f"compat.run_sync without anyio: {hint!r}"
    return f"commclient {commclient.__version__}: memory caches; compat names the async extra"


def check_sync(_: str | None) -> str:
    from commclient import SyncServiceClient

    with loopback_server() as url:
        client = SyncServiceClient(url, service_name="packaging", target_service="loopback")
        with client:
            answer = client.get("/api/users/{user_id}", path_params={"user_id": 5})
    assert answer == {"path": "/api/users/5"}, answer
    return "SyncServiceClient GET on a loopback http.server"


def check_async(_: str | None) -> str:
    import compat
    from commclient import AsyncServiceClient

    with loopback_server() as url:
        client = AsyncServiceClient(url, service_name="packaging", target_service="loopback")

        async def call() -> object:
            async with client:
                return await client.get("/api/users/{user_id}", path_params={"user_id": 7})

        answer = asyncio.run(call())
        bridged = compat.run_sync(
            AsyncServiceClient(url, service_name="packaging", target_service="bridged").get,
            "/api/health",
        )
    assert answer == {"path": "/api/users/7"}, answer
    assert bridged == {"path": "/api/health"}, bridged
    return "AsyncServiceClient GET on a loopback http.server, and through compat.run_sync"


def check_redis(redis_url: str | None) -> str:
    from commclient.cache import SyncRedisCache

    if redis_url is None:
        raise SystemExit("the redis check needs a REDIS_URL argument")
    cache = SyncRedisCache.from_url(redis_url, prefix="packaging")
    try:
        assert cache.set("settings:1", {"a": 1}, ttl=60) is True
        assert cache.get_raw("settings:1") is not None
        assert cache.invalidate("settings:*") == 1
    finally:
        cache.close()
    return "SyncRedisCache.from_url: set, read, invalidate on a real redis-server"


def check_scheduler(_: str | None) -> str:
    from apscheduler.schedulers.background import BackgroundScheduler

    from cron_migration import migrate_scheduler, migrated_job, shutdown_gracefully

    ran = threading.Event()

    @migrated_job(timeout=30)
    def legacy_job() -> str:
        ran.set()
        return "done"

    old = BackgroundScheduler()
    old.add_job(legacy_job, "interval", hours=1, id="legacy_job")

    async def run() -> None:
        new, report = migrate_scheduler(old)
        new.start()
        try:
            new.get_job("legacy_job").modify(next_run_time=datetime.now(timezone.utc))
            for _ in range(300):
                if ran.is_set():
                    break
                await asyncio.sleep(0.1)
        finally:
            await shutdown_gracefully(new, timeout=10)
        assert "legacy_job" in report.render(), report.render()

    asyncio.run(run())
    assert ran.is_set(), "the migrated sync job did not run"
    return "migrate_scheduler, one migrated sync job run, shutdown_gracefully"


def check_otel(_: str | None) -> str:
    import commclient
    from commclient._tracing import active_tracer

    # Importing the library imports no OpenTelemetry; the API alone (no SDK, no provider
    # set) traces nothing.
    assert "opentelemetry" not in sys.modules, "import commclient imported opentelemetry"
    import opentelemetry.trace

    assert active_tracer() is None
    assert isinstance(commclient.stream_entry_fields(), dict)
    return f"API {opentelemetry.trace.__name__} importable, nothing traced without a provider"


CHECKS: dict[str, Callable[[str | None], str]] = {
    "core": check_core,
    "sync": check_sync,
    "async": check_async,
    "redis": check_redis,
    "scheduler": check_scheduler,
    "otel": check_otel,
}


def main() -> None:
    extra = sys.argv[1]
    redis_url = sys.argv[2] if len(sys.argv) > 2 else None
    import commclient

    location = Path(commclient.__file__).resolve()
    assert "site-packages" in location.parts, f"commclient imported from {location}"
    missing = [name for name in PRESENT[extra] if importlib.util.find_spec(name) is None]
    assert not missing, f"[{extra}] did not install {missing}"
    unwanted = [name for name in ABSENT[extra] if importlib.util.find_spec(name) is not None]
    assert not unwanted, f"[{extra}] installed {unwanted}, which it does not need"
    done = CHECKS[extra](redis_url)
    print(f"OK {extra}: {done}")


if __name__ == "__main__":
    main()

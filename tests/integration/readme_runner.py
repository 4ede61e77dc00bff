"""Run one README python block: ``python -m tests.integration.readme_runner FILE [echo-server]``.

The README's fragments use names defined elsewhere in the README or in the reader's own code
(``client``, ``load_settings``, ``old_scheduler``...). The block's free names are looked up
here, and only those are defined: each one is what the README means by it, bound to the
services the test started on loopback (``README_REST_URL``: the example REST service,
``README_ECHO_URL``: an echo server, ``README_REDIS_URL``: a redis-server). A free name this
module does not know fails the run, naming it. A block with a top-level ``await`` runs on an
event loop; a block serving ``run_until_signal`` gets its SIGTERM once its scheduler runs.
Prints ``BLOCK OK`` at the end (a forked child of the block exits silently).
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def free_names(tree: ast.AST) -> set[str]:
    """Names the block reads but never binds (nor imports, nor gets from builtins)."""
    bound: set[str] = set()
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


def has_top_level_await(source: str) -> bool:
    code = compile(source, "<block>", "exec", flags=FLAGS)
    return bool(code.co_flags & inspect.CO_COROUTINE)


def rest_url() -> str:
    return os.environ["README_REST_URL"]


def make_client(asynchronous: bool, base_url: str) -> Any:
    from commclient import AsyncServiceClient, SyncServiceClient

    facade = AsyncServiceClient if asynchronous else SyncServiceClient
    return facade(base_url, service_name="readme", target_service="rest_service")


async def load_settings() -> Any:
    """What the README's cache example loads: the example service's global settings."""
    from commclient import AsyncServiceClient

    print("LOADER CALLED")
    async with AsyncServiceClient(
        rest_url(), service_name="readme", target_service="rest_service"
    ) as client:
        return await client.get("/api/global-settings/")


def cron_rest_client(*_: object) -> Any:
    """``CronRestClient(...)``: the README's ``...`` stands for its constructor arguments."""
    from examples.cron_service.client import CronRestClient

    return CronRestClient(rest_url(), service_name="readme", target_service="rest_service")


def legacy_scheduler() -> Any:
    """A legacy scheduler holding the jobs the README's migration names."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    scheduler = BlockingScheduler(timezone="UTC")
    for job_id in ("send_reminders", "extract_memories"):
        scheduler.add_job(print, "interval", seconds=60, id=job_id, args=[job_id])
    return scheduler


def legacy_report(day: date) -> list[str]:
    return [f"report of {day.isoformat()}"]


def fastapi_app() -> Any:
    from fastapi import FastAPI

    return FastAPI()


def namespace(names: set[str], asynchronous: bool, directive: str | None) -> dict[str, Any]:
    import commclient
    import commclient.cache

    client_url = os.environ["README_ECHO_URL"] + "/echo" if directive == "echo-server" else None
    factories: dict[str, Callable[[], Any]] = {
        "client": lambda: make_client(asynchronous, client_url or rest_url()),
        "rest_client": lambda: cron_rest_client(),
        "CronRestClient": lambda: cron_rest_client,
        "load_settings": lambda: load_settings,
        "old_scheduler": legacy_scheduler,
        "legacy_report": lambda: legacy_report,
        "day": date.today,
        "pdf_bytes": lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        "app": fastapi_app,
        "os": lambda: os,
    }
    # The README's imports of one block are in scope in the next one.
    for module in (commclient, commclient.cache):
        for public in module.__all__:
            factories.setdefault(public, partial(getattr, module, public))
    unknown = sorted(names - set(factories))
    if unknown:
        raise SystemExit(f"the block uses names the README test does not provide: {unknown}")
    # The block runs as a module of its own, as a reader's script does: dataclasses, pickle
    # and typing look classes up in sys.modules by their __module__.
    module = types.ModuleType("__readme__")
    sys.modules[module.__name__] = module
    module.__dict__.update({name: factories[name]() for name in sorted(names)})
    return module.__dict__


def schedulers(scope: dict[str, Any]) -> list[Any]:
    from apscheduler.schedulers.base import BaseScheduler

    return [value for value in list(scope.values()) if isinstance(value, BaseScheduler)]


def stop_when_serving(scope: dict[str, Any]) -> threading.Event:
    """For a block ending in ``run_until_signal``: send the SIGTERM it waits for, as the
    service's supervisor would, once a scheduler of the block is running. The event is set
    when it was sent."""
    sent = threading.Event()

    def watch() -> None:
        while not any(scheduler.running for scheduler in schedulers(scope)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        sent.set()

    threading.Thread(target=watch, name="readme-supervisor", daemon=True).start()
    return sent


def check_metrics_endpoints(scope: dict[str, Any]) -> None:
    """After the ``/metrics`` block: both endpoints it set up answer 200 with metrics."""
    from commclient.monitoring import MetricsServer

    server = scope.get("server")
    app = scope.get("app")
    if not isinstance(server, MetricsServer) or app is None:
        return
    import httpx

    from examples.serving import serve

    with serve(app, lifespan="auto") as base_url:
        exposed = [f"{base_url}/metrics", f"http://127.0.0.1:{server.port}/metrics"]
        for url in exposed:
            response = httpx.get(url)
            assert response.status_code == 200, (url, response.status_code, response.headers)
            assert "# HELP" in response.text, url
    server.close()
    print("METRICS OK")


def main() -> None:
    path = Path(sys.argv[1])
    directive = sys.argv[2] if len(sys.argv) > 2 else None
    source = path.read_text()
    tree = compile(source, str(path), "exec", flags=ast.PyCF_ONLY_AST | FLAGS)
    asynchronous = has_top_level_await(source)
    # compat's bridges take an async client from sync code.
    async_client = asynchronous or "run_sync(" in source or "sync_proxy(" in source
    scope = namespace(free_names(tree), async_client, directive)
    code = compile(source, str(path), "exec", flags=FLAGS)
    pid = os.getpid()
    supervised = "run_until_signal(" in source
    sent = stop_when_serving(scope) if supervised else None
    if asynchronous:
        asyncio.run(eval(code, scope))
    else:
        exec(code, scope)
    if os.getpid() != pid:
        os._exit(0)  # a child the block forked: the parent reports
    check_metrics_endpoints(scope)
    if sent is not None:
        assert sent.is_set(), "run_until_signal returned before its SIGTERM"
        assert not any(scheduler.running for scheduler in schedulers(scope))
        print("STOPPED ON SIGTERM")
    print("BLOCK OK")


if __name__ == "__main__":
    main()

"""compat against a real REST service on loopback, with the real AsyncServiceClient.

The service is ``examples.rest_service`` under uvicorn, behind an ASGI layer that records
every request (its connection, its correlation id) and can be told to fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
import threading
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    ClientConfig,
    ServiceConnectionError,
    ServiceResponseError,
    correlation_id_ctx,
    testing,
)
from compat import LegacyMode, LegacyShim, sync_proxy
from examples.cron_service.client import CronRestClient
from examples.rest_service import RestService, create_app
from examples.secretary_queue import InProcessQueue
from examples.serving import free_port, serve

pytestmark = pytest.mark.facade_async

# Looked up before any test stubs requests out, in an environment without the sync extra.
REQUESTS_INSTALLED = importlib.util.find_spec("requests") is not None


# -- the REST service on loopback --------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    correlation_id: str | None
    connection: tuple[str, int]


class RecordingServer:
    """The FastAPI REST service under uvicorn, behind an ASGI layer that records every
    request (its connection, its correlation id) and can be told to fail one route."""

    def __init__(self, service: RestService) -> None:
        self.service = service
        self.seen: list[Seen] = []
        self.faults: dict[tuple[str, str], int] = {}  # (method, path without "/" at the end)
        self.lock = threading.Lock()
        self.port = free_port()
        self._app = create_app(service)
        self._serving: contextlib.ExitStack | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections(self) -> set[tuple[str, int]]:
        with self.lock:
            return {seen.connection for seen in self.seen}

    def start(self) -> RecordingServer:
        self._serving = contextlib.ExitStack()
        self._serving.enter_context(serve(self, port=self.port))
        return self

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.close()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            host, port = scope["client"]
            with self.lock:
                self.seen.append(
                    Seen(
                        scope["method"],
                        scope["path"],
                        headers.get("x-correlation-id"),
                        (host, port),
                    )
                )
                fault = self.faults.get((scope["method"], scope["path"].rstrip("/")))
            if fault is not None:
                payload = json.dumps({"detail": "injected failure"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": fault,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": payload})
                return
        await self._app(scope, receive, send)


def seed(service: RestService) -> None:
    """Two reminders due at 08:00 and 09:00, one due tomorrow; a 30-minute lead."""
    service.global_settings["reminder_lead_minutes"] = 30
    for remind_at in (
        "2026-03-01T08:00:00+00:00",
        "2026-03-01T09:00:00+00:00",
        "2026-03-02T08:00:00+00:00",
    ):
        service.create("reminders", {"remind_at": remind_at, "status": "scheduled"})


NOW = datetime(2026, 3, 1, 8, 45, tzinfo=timezone.utc)  # 09:00 is within the lead


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    service = RestService()
    seed(service)
    recording = RecordingServer(service).start()
    yield recording
    recording.stop()


@pytest.fixture(autouse=True)
def _isolated_breakers() -> Iterator[None]:
    testing.reset()
    with testing.no_wait():
        yield
    testing.reset()


# -- the new client (the migrated cron service's) ----------------------------------------


def cron_client(base_url: str, registry: CollectorRegistry) -> CronRestClient:
    return CronRestClient(
        base_url,
        service_name="cron_service",
        target_service="rest_service",
        config=ClientConfig(max_retries=2, timeout=10.0),
        registry=registry,
    )


# -- sync_proxy over the real client -------------------------------------------------------


def test_1000_calls_from_8_threads_share_one_client_and_one_pool(
    server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    ids = list(server.service.records["reminders"])
    failures: list[BaseException] = []

    def thread_work(thread_index: int) -> list[int]:
        correlation_id_ctx.set(f"thread-{thread_index}")
        got = []
        for call in range(125):
            try:
                got.append(rest.get_reminder(ids[call % len(ids)])["id"])
            except BaseException as exc:
                failures.append(exc)
        return got

    with (
        caplog.at_level(logging.DEBUG),
        warnings.catch_warnings(record=True) as caught,
        sync_proxy(cron_client(server.base_url, CollectorRegistry())) as rest,
    ):
        warnings.simplefilter("always")
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(thread_work, range(8)))

    assert failures == []
    assert results == [[ids[call % len(ids)] for call in range(125)]] * 8
    assert len(server.seen) == 1000
    # One pool: about one connection per concurrent caller (httpx may open another when a
    # released connection is not back in the pool yet), never one per call. A client used
    # from a second loop would have raised, and show up in ``failures``.
    assert 1 <= len(server.connections()) <= 2 * 8
    per_thread = {f"thread-{index}": 0 for index in range(8)}
    for seen in server.seen:
        assert seen.correlation_id is not None
        per_thread[seen.correlation_id] += 1
    assert per_thread == {f"thread-{index}": 125 for index in range(8)}
    complaints = [
        message
        for message in [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
        if "Event loop is closed" in message
        or "different loop" in message
        or "never awaited" in message
    ]
    assert complaints == []


def test_a_correlation_id_the_client_replaces_comes_back_to_the_caller(
    server: RecordingServer,
) -> None:
    with sync_proxy(cron_client(server.base_url, CollectorRegistry())) as rest:
        token = correlation_id_ctx.set("unsafe\r\nX-Injected: 1")
        try:
            rest.get_global_settings()
            after = correlation_id_ctx.get()
        finally:
            correlation_id_ctx.reset(token)
    (seen,) = server.seen
    assert seen.correlation_id is not None
    assert "\n" not in seen.correlation_id
    assert after == seen.correlation_id


def test_after_the_with_block_the_client_is_closed(server: RecordingServer) -> None:
    with sync_proxy(cron_client(server.base_url, CollectorRegistry())) as rest:
        rest.get_global_settings()
    with pytest.raises(RuntimeError, match="closed"):
        rest.get_global_settings()


# -- the legacy cron service, unchanged, through the shim ---------------------------------


class _Forbidden(types.ModuleType):
    """Stands in for requests: the shimmed functions must never reach it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the old requests code path was used: requests.{name}")


@pytest.fixture
def legacy_modules(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, types.ModuleType]:
    """The old ``rest_client`` and ``jobs`` modules (requests stubbed out if missing)."""
    try:
        import requests  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "requests", _Forbidden("requests"))
    from examples.cron_service_legacy import jobs, rest_client

    # The jobs' trigger queue is a module global another test may have pointed at a Redis
    # that is gone: this test's reminders go to a queue of its own.
    monkeypatch.setattr(jobs, "QUEUE", InProcessQueue())
    return rest_client, jobs


def build_rest_client_functions(
    base_url: str, mode: LegacyMode, registry: CollectorRegistry
) -> tuple[LegacyShim[CronRestClient], dict[str, Callable[..., Any]]]:
    """What the old rest_client module becomes during the migration."""
    shim: LegacyShim[CronRestClient] = LegacyShim(
        lambda: cron_client(base_url, registry),
        name="cron_service.rest_client",
        mode=mode,
        registry=registry,
    )

    # Where the old signature differs from the client's, a small adapter bridges the two.
    async def create_batch_job(
        client: CronRestClient, job_type: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await client.post(
            "/api/batch-jobs/", json={"job_type": job_type, "payload": payload, "status": "pending"}
        )
        return result

    async def create_job_execution(client: CronRestClient, job_name: str) -> dict[str, Any]:
        execution_id = await client.create_job_execution(
            job_id=job_name,
            job_name=job_name,
            scheduled_at=None,
            correlation_id=uuid.uuid4().hex,
            idempotency_key=uuid.uuid4().hex,
        )
        return {"id": int(execution_id)}

    async def complete_job_execution(
        client: CronRestClient, execution_id: int, result: Any
    ) -> dict[str, Any]:
        await client.complete_job_execution(
            str(execution_id), result=result, idempotency_key=uuid.uuid4().hex
        )
        return {"id": execution_id}

    functions: dict[str, Callable[..., Any]] = {
        "fetch_scheduled_reminders": shim.function(
            list,
            name="fetch_scheduled_reminders",
            replacement="CronRestClient.get_scheduled_reminders",
        )(CronRestClient.get_scheduled_reminders),
        "fetch_global_settings": shim.function(name="fetch_global_settings")(
            CronRestClient.get_global_settings
        ),
        "update_reminder": shim.function(
            name="update_reminder", replacement="CronRestClient.update_reminder"
        )(CronRestClient.update_reminder),
    }
    for adapter in (create_batch_job, create_job_execution, complete_job_execution):
        functions[adapter.__name__] = shim.function(
            replacement=f"CronRestClient.{adapter.__name__}"
        )(adapter)
    return shim, functions


@pytest.fixture
def install_shim(
    legacy_modules: tuple[types.ModuleType, types.ModuleType], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, LegacyMode, CollectorRegistry], LegacyShim[CronRestClient]]]:
    """Replace the old module's functions with shimmed ones; the jobs stay as they are."""
    rest_client, _ = legacy_modules
    shims: list[LegacyShim[CronRestClient]] = []

    def install(
        base_url: str, mode: LegacyMode, registry: CollectorRegistry
    ) -> LegacyShim[CronRestClient]:
        shim, functions = build_rest_client_functions(base_url, mode, registry)
        for name, function in functions.items():
            monkeypatch.setattr(rest_client, name, function)
        monkeypatch.setattr(rest_client, "requests", _Forbidden("requests"))
        shims.append(shim)
        return shim

    yield install
    for shim in shims:
        shim.close()


def reminder_statuses(server: RecordingServer) -> list[str]:
    return [r["status"] for r in server.service.records["reminders"].values()]


def test_the_old_jobs_run_unchanged_through_the_shim(
    server: RecordingServer,
    legacy_modules: tuple[types.ModuleType, types.ModuleType],
    install_shim: Callable[..., LegacyShim[CronRestClient]],
) -> None:
    _, jobs = legacy_modules
    install_shim(server.base_url, "strict", CollectorRegistry())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default for a DeprecationWarning shown
        assert jobs.send_due_reminders(NOW) == 2
        assert jobs.send_due_reminders(NOW) == 0  # nothing due any more
        job = jobs.schedule_nightly_cleanup(older_than_days=7)
    assert reminder_statuses(server) == ["sent", "sent", "scheduled"]
    assert job is not None
    assert job["payload"] == {"older_than_days": 7}
    executions = list(server.service.records["job-executions"].values())
    assert [(e["status"], e["result"]) for e in executions] == [
        ("completed", {"reminders_sent": 2}),
        ("completed", {"reminders_sent": 0}),
    ]
    # One warning per old call site, each pointing at that line of jobs.py.
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert {w.filename for w in deprecations} == {jobs.__file__}
    assert len({(w.filename, w.lineno) for w in deprecations}) == len(deprecations) == 6
    # One keep-alive client served every call of both runs.
    assert len(server.connections()) == 1


@pytest.mark.skipif(not REQUESTS_INSTALLED, reason="the old module needs requests")
def test_the_shim_makes_the_same_requests_as_the_old_module(
    legacy_modules: tuple[types.ModuleType, types.ModuleType],
    install_shim: Callable[..., LegacyShim[CronRestClient]],
) -> None:
    _, jobs = legacy_modules
    runs = []
    for use_shim in (False, True):
        service = RestService()
        seed(service)
        server = RecordingServer(service).start()
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(legacy_modules[0], "REST_SERVICE_URL", server.base_url)
                if use_shim:
                    install_shim(server.base_url, "legacy", CollectorRegistry())
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    sent = jobs.send_due_reminders(NOW)
                    job = jobs.schedule_nightly_cleanup()
        finally:
            server.stop()
        runs.append(
            (
                sent,
                {k: v for k, v in (job or {}).items() if k != "created_at"},
                [(seen.method, seen.path.rstrip("/")) for seen in server.seen],
                reminder_statuses(server),
            )
        )
    old, shimmed = runs
    assert old == shimmed
    assert old[0] == 2


def test_legacy_mode_keeps_the_old_empty_results_and_counts_them(
    server: RecordingServer,
    legacy_modules: tuple[types.ModuleType, types.ModuleType],
    install_shim: Callable[..., LegacyShim[CronRestClient]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, jobs = legacy_modules
    registry = CollectorRegistry()
    shim = install_shim(server.base_url, "legacy", registry)
    server.faults[("GET", "/api/reminders/scheduled")] = 503
    server.faults[("GET", "/api/global-settings")] = 500
    with warnings.catch_warnings(), caplog.at_level(logging.ERROR, logger="compat.legacy"):
        warnings.simplefilter("ignore", DeprecationWarning)
        assert jobs.send_due_reminders(NOW) == 0
    assert reminder_statuses(server) == ["scheduled", "scheduled", "scheduled"]
    assert shim.swallowed_errors() == {"fetch_global_settings": 1, "fetch_scheduled_reminders": 1}
    for function, status in (("fetch_scheduled_reminders", 503), ("fetch_global_settings", 500)):
        assert (
            registry.get_sample_value(
                "legacy_shim_swallowed_errors_total",
                {
                    "shim": "cron_service.rest_client",
                    "function": function,
                    "error_type": "ServiceResponseError",
                    "outcome": "failed",
                },
            )
            == 1
        )
        assert any(
            function in record.getMessage() and str(status) in record.getMessage()
            for record in caplog.records
        )


def test_strict_mode_lets_the_old_job_see_the_error(
    server: RecordingServer,
    legacy_modules: tuple[types.ModuleType, types.ModuleType],
    install_shim: Callable[..., LegacyShim[CronRestClient]],
) -> None:
    _, jobs = legacy_modules
    install_shim(server.base_url, "strict", CollectorRegistry())
    server.faults[("GET", "/api/reminders/scheduled")] = 503
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ServiceResponseError) as caught:
            jobs.send_due_reminders(NOW)
    assert caught.value.status_code == 503


def test_an_unreachable_service_gives_none_in_legacy_mode_and_raises_in_strict(
    legacy_modules: tuple[types.ModuleType, types.ModuleType],
    install_shim: Callable[..., LegacyShim[CronRestClient]],
) -> None:
    _, jobs = legacy_modules
    unreachable = RecordingServer(RestService()).base_url  # never started: nothing listens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        install_shim(unreachable, "legacy", CollectorRegistry())
        assert jobs.schedule_nightly_cleanup() is None
        testing.reset()
        install_shim(unreachable, "strict", CollectorRegistry())
        with pytest.raises(ServiceConnectionError):
            jobs.schedule_nightly_cleanup()

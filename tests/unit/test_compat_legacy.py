"""compat.LegacyShim: old module-level functions on a new async client."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    ServiceConnectionError,
    ServiceResponseError,
    ServiceTimeoutError,
    correlation_id_ctx,
)
from compat import (
    BridgeCancelledError,
    BridgeStoppedError,
    EventLoopRunningError,
    LegacyShim,
    stop_bridge,
)

pytestmark = pytest.mark.facade_async


class FakeRestClient:
    """An async client whose answers and failures the test decides."""

    made = 0

    def __init__(self) -> None:
        type(self).made += 1
        self.reminders: list[dict[str, Any]] = [{"id": 1}, {"id": 2}]
        self.failure: Exception | None = None
        self.entered = 0
        self.exited = 0
        self.loops: set[asyncio.AbstractEventLoop] = set()
        self.correlation_ids: list[str | None] = []

    async def get_active_reminders(self) -> list[dict[str, Any]]:
        """The active reminders."""
        await asyncio.sleep(0)
        self.loops.add(asyncio.get_running_loop())
        self.correlation_ids.append(correlation_id_ctx.get())
        if self.failure is not None:
            raise self.failure
        return list(self.reminders)

    async def update_reminder(self, reminder_id: int, data: dict[str, Any]) -> dict[str, Any]:
        if self.failure is not None:
            raise self.failure
        return {"id": reminder_id, **data}

    async def __aenter__(self) -> FakeRestClient:
        self.entered += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.exited += 1


def server_error() -> ServiceResponseError:
    return ServiceResponseError(
        "server error",
        status_code=500,
        detail="boom",
        response_body=b"{}",
        method="GET",
        url="http://rest_service:8000/api/reminders/active",
        target_service="rest_service",
        attempts=3,
    )


class Module:
    """The functions an old module exposed, built on a shim in the given mode."""

    def __init__(self, mode: Any, registry: CollectorRegistry) -> None:
        self.clients: list[FakeRestClient] = []

        def make_client() -> FakeRestClient:
            client = FakeRestClient()
            self.clients.append(client)
            return client

        self.shim: LegacyShim[FakeRestClient] = LegacyShim(
            make_client, name="cron_service.rest_client", mode=mode, registry=registry
        )

        @self.shim.function(list, replacement="CronRestClient.get_active_reminders")
        async def fetch_active_reminders(client: FakeRestClient) -> list[dict[str, Any]]:
            """Return the active reminders ([] on error in legacy mode)."""
            return await client.get_active_reminders()

        self.fetch_active_reminders = fetch_active_reminders
        self.update_reminder = self.shim.function(name="update_reminder")(
            FakeRestClient.update_reminder
        )

    @property
    def client(self) -> FakeRestClient:
        (client,) = self.clients
        return client


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def strict(registry: CollectorRegistry) -> Any:
    module = Module("strict", registry)
    yield module
    module.shim.close()


@pytest.fixture
def legacy(registry: CollectorRegistry) -> Any:
    module = Module("legacy", registry)
    yield module
    module.shim.close()


@pytest.fixture(autouse=True)
def _quiet_deprecations() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def test_functions_return_what_the_client_returns(strict: Module) -> None:
    assert strict.fetch_active_reminders() == [{"id": 1}, {"id": 2}]
    assert strict.update_reminder(3, {"status": "sent"}) == {"id": 3, "status": "sent"}


def test_strict_mode_raises_the_clients_error(strict: Module) -> None:
    strict.fetch_active_reminders()
    strict.client.failure = server_error()
    with pytest.raises(ServiceResponseError) as caught:
        strict.fetch_active_reminders()
    assert caught.value.status_code == 500


def test_legacy_mode_returns_the_old_fallback_and_logs_and_counts(
    legacy: Module, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    legacy.fetch_active_reminders()
    legacy.client.failure = server_error()
    with caplog.at_level(logging.ERROR, logger="compat.legacy"):
        first = legacy.fetch_active_reminders()
        second = legacy.fetch_active_reminders()
        updated = legacy.update_reminder(1, {"status": "sent"})
    assert first == []
    assert second == []
    assert first is not second  # a fresh fallback each time, never a shared list
    assert updated is None
    assert legacy.shim.swallowed_errors() == {"fetch_active_reminders": 2, "update_reminder": 1}
    swallowed = registry.get_sample_value(
        "legacy_shim_swallowed_errors_total",
        {
            "shim": "cron_service.rest_client",
            "function": "fetch_active_reminders",
            "error_type": "ServiceResponseError",
            "outcome": "failed",
        },
    )
    assert swallowed == 2
    records = [r for r in caplog.records if r.name == "compat.legacy"]
    assert len(records) == 3
    assert all(r.levelno == logging.ERROR for r in records)
    assert records[0].legacy_function == "fetch_active_reminders"  # type: ignore[attr-defined]
    assert records[0].error_type == "ServiceResponseError"  # type: ignore[attr-defined]
    assert "server error" in records[0].getMessage()
    assert records[0].exc_info is not None


def test_every_call_is_counted(legacy: Module, registry: CollectorRegistry) -> None:
    for _ in range(3):
        legacy.fetch_active_reminders()
    calls = registry.get_sample_value(
        "legacy_shim_calls_total",
        {"shim": "cron_service.rest_client", "function": "fetch_active_reminders"},
    )
    assert calls == 3


def test_one_deprecation_warning_per_call_site_by_default(strict: Module) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            strict.fetch_active_reminders()  # call site A, three times
        strict.fetch_active_reminders()  # call site B
        for _ in range(2):
            strict.update_reminder(1, {})  # call site C
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 3
    assert {w.filename for w in deprecations} == {__file__}
    lines = [w.lineno for w in deprecations]
    assert len(set(lines)) == 3
    first = str(deprecations[0].message)
    assert "cron_service.rest_client.fetch_active_reminders() is deprecated" in first
    assert "CronRestClient.get_active_reminders" in first


def test_the_old_signature_name_and_docstring_are_kept(strict: Module) -> None:
    function = strict.fetch_active_reminders
    assert function.__name__ == "fetch_active_reminders"
    assert function.__doc__ == "Return the active reminders ([] on error in legacy mode)."
    assert str(inspect.signature(function)) == "() -> 'list[dict[str, Any]]'"
    assert list(inspect.signature(strict.update_reminder).parameters) == ["reminder_id", "data"]
    assert "self" not in strict.update_reminder.__annotations__
    assert not inspect.iscoroutinefunction(function)


def test_a_wrong_call_raises_even_in_legacy_mode(legacy: Module) -> None:
    with pytest.raises(TypeError):
        legacy.update_reminder(1)
    assert legacy.clients == []
    assert legacy.shim.swallowed_errors() == {}


def test_a_call_from_async_code_raises_even_in_legacy_mode(legacy: Module) -> None:
    async def new_async_job() -> None:
        legacy.fetch_active_reminders()

    with pytest.raises(EventLoopRunningError):
        asyncio.run(new_async_job())
    assert legacy.shim.swallowed_errors() == {}


def test_an_import_error_is_not_swallowed(legacy: Module) -> None:
    legacy.fetch_active_reminders()
    legacy.client.failure = ModuleNotFoundError("no module named 'httpx'")
    with pytest.raises(ModuleNotFoundError):
        legacy.fetch_active_reminders()


def test_one_client_entered_once_serves_every_thread(strict: Module) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: strict.fetch_active_reminders(), range(200)))
    assert all(result == [{"id": 1}, {"id": 2}] for result in results)
    assert len(strict.clients) == 1
    assert strict.client.entered == 1
    assert len(strict.client.loops) == 1
    assert threading.current_thread() is threading.main_thread()


def test_close_exits_the_client_and_the_next_call_makes_a_new_one(strict: Module) -> None:
    strict.fetch_active_reminders()
    first = strict.client
    strict.shim.close()
    assert first.exited == 1
    strict.fetch_active_reminders()
    assert len(strict.clients) == 2
    assert strict.clients[1].entered == 1


def test_the_callers_correlation_id_reaches_the_client(strict: Module) -> None:
    token = correlation_id_ctx.set("cron-run-9")
    try:
        strict.fetch_active_reminders()
    finally:
        correlation_id_ctx.reset(token)
    assert strict.client.correlation_ids == ["cron-run-9"]


def test_an_unknown_mode_is_refused(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        LegacyShim(FakeRestClient, name="x", mode="quiet", registry=registry)  # type: ignore[arg-type]


def test_a_sync_adapter_is_refused_when_decorated(registry: CollectorRegistry) -> None:
    shim: LegacyShim[FakeRestClient] = LegacyShim(FakeRestClient, name="x", registry=registry)

    def not_async(client: FakeRestClient) -> list[Any]:
        return []

    with pytest.raises(TypeError, match="is not async"):
        shim.function(list)(not_async)  # type: ignore[arg-type]


def test_every_call_warns_so_an_error_filter_fails_every_call_whatever_ran_before(
    strict: Module,
) -> None:
    def old_call_site() -> list[dict[str, Any]]:
        return strict.fetch_active_reminders()  # one call site

    old_call_site()  # warned under the fixture's "ignore", as an earlier test would
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for _ in range(3):
            with pytest.raises(DeprecationWarning, match="fetch_active_reminders"):
                old_call_site()


def test_legacy_mode_raises_a_programming_error_instead_of_the_fallback(
    legacy: Module,
) -> None:
    misspelt = legacy.shim.function(list, name="fetch_reminders")(
        lambda_free_adapter_calling_a_misspelt_method
    )
    with pytest.raises(AttributeError, match="get_active_remindrs"):
        misspelt()
    legacy.client.failure = KeyError("id")
    with pytest.raises(KeyError):
        legacy.fetch_active_reminders()
    assert legacy.shim.swallowed_errors() == {}


async def lambda_free_adapter_calling_a_misspelt_method(
    client: FakeRestClient,
) -> list[dict[str, Any]]:
    return await client.get_active_remindrs()  # type: ignore[attr-defined,no-any-return]


def test_legacy_mode_raises_the_bridges_own_errors(legacy: Module) -> None:
    legacy.fetch_active_reminders()
    legacy.client.failure = asyncio.CancelledError()  # type: ignore[assignment]
    with pytest.raises(BridgeCancelledError):
        legacy.fetch_active_reminders()

    started = threading.Event()

    async def hang(client: FakeRestClient) -> list[Any]:
        started.set()
        await asyncio.Event().wait()
        return []

    hanging = legacy.shim.function(list, name="hang")(hang)

    def stop_when_started() -> None:
        if started.wait(10):
            stop_bridge(timeout=0.05)

    threading.Thread(target=stop_when_started, daemon=True).start()
    with pytest.raises(BridgeStoppedError):
        hanging()
    assert legacy.shim.swallowed_errors() == {}


def timeout_error(method: str, cause: Exception) -> ServiceTimeoutError:
    error = ServiceTimeoutError(
        "read timeout",
        method=method,
        url="http://rest_service:8000/api/reminders/1",
        target_service="rest_service",
        attempts=1,
    )
    error.__cause__ = cause
    return error


class ReadTimeout(Exception):
    """Named as httpx's and requests' exception for a response that did not come."""


class ConnectTimeout(Exception):
    """Named as httpx's and requests' exception for a connection not made in time."""


def swallowed(registry: CollectorRegistry, function: str, error_type: str, outcome: str) -> float:
    value = registry.get_sample_value(
        "legacy_shim_swallowed_errors_total",
        {
            "shim": "cron_service.rest_client",
            "function": function,
            "error_type": error_type,
            "outcome": outcome,
        },
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [
        (timeout_error("PUT", ReadTimeout("no answer")), "unknown"),
        (timeout_error("PUT", ConnectTimeout("no connection")), "failed"),
        (timeout_error("GET", ReadTimeout("no answer")), "failed"),
        (
            ServiceConnectionError(
                "connect: refused",
                method="PUT",
                url="http://rest_service:8000/api/reminders/1",
                target_service="rest_service",
                attempts=1,
            ),
            "failed",
        ),
    ],
)
def test_a_write_that_timed_out_after_sending_is_logged_as_unknown_not_failed(
    legacy: Module,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    outcome: str,
) -> None:
    legacy.fetch_active_reminders()
    legacy.client.failure = failure
    with caplog.at_level(logging.ERROR, logger="compat.legacy"):
        assert legacy.update_reminder(1, {"status": "sent"}) is None
    (record,) = [r for r in caplog.records if r.name == "compat.legacy"]
    assert record.outcome == outcome  # type: ignore[attr-defined]
    message = record.getMessage()
    if outcome == "unknown":
        assert "outcome unknown" in message
        assert "may have applied this PUT" in message
    else:
        assert "failed with" in message
        assert "unknown" not in message
    assert swallowed(registry, "update_reminder", type(failure).__name__, outcome) == 1


async def make_fake_client() -> FakeRestClient:
    return FakeRestClient()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        # It failed at the first old call: "'FakeRestClient' object is not callable".
        (FakeRestClient(), r"takes a function that makes the client .*; got FakeRestClient"),
        # It failed at the first old call: "'coroutine' object has no attribute ...".
        (make_fake_client, r"'make_fake_client' is an async function: the factory must return"),
    ],
    ids=["client-instance", "async-factory"],
)
def test_a_client_factory_that_cannot_make_the_client_is_refused(
    factory: Any, message: str, registry: CollectorRegistry
) -> None:
    with pytest.raises(TypeError, match=message):
        LegacyShim(factory, name="old_rest_client", registry=registry)

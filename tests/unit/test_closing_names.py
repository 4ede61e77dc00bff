"""Every public async object closes under both names, ``close`` and ``aclose`` (as the client
does), so that ``await obj.close()`` never meets ``AttributeError ... Did you mean 'aclose'?``."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = (
    "commclient",
    "commclient.asgi",
    "commclient.cache",
    "commclient.monitoring",
    "compat",
    "cron_migration",
)


def async_closers() -> list[tuple[str, type]]:
    found: list[tuple[str, type]] = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:  # an extra this environment lacks
            continue
        for name in module.__all__:
            try:
                value = getattr(module, name)
            except ModuleNotFoundError:  # a name loaded lazily, from an extra not installed
                continue
            if not inspect.isclass(value):
                continue
            closers = [getattr(value, n, None) for n in ("close", "aclose")]
            if any(inspect.iscoroutinefunction(closer) for closer in closers):
                found.append((f"{module_name}.{name}", value))
    return found


def test_the_async_objects_include_the_client_the_lease_and_the_election() -> None:
    pytest.importorskip("apscheduler")  # cron_migration's names need the scheduler extra
    names = {name for name, _ in async_closers()}
    assert {
        "cron_migration.Lease",
        "cron_migration.LeaderElection",
        "commclient.cache.AsyncRedisCache",
    } <= names, names


@pytest.mark.parametrize(
    ("name", "cls"), [pytest.param(name, cls, id=name) for name, cls in async_closers()]
)
def test_an_async_object_has_close_and_aclose_alike(name: str, cls: type) -> None:
    close, aclose = getattr(cls, "close", None), getattr(cls, "aclose", None)
    assert inspect.iscoroutinefunction(close), f"{name}.close is missing or not async"
    assert inspect.iscoroutinefunction(aclose), f"{name}.aclose is missing or not async"
    assert close is aclose, f"{name}: close and aclose do different things"

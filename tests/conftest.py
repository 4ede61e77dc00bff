"""Suite-wide marker rules: a missing prerequisite skips a test locally and fails it in CI.

Markers (declared in pyproject.toml): ``facade_sync`` needs requests, ``facade_async`` needs
httpx, ``redis_server`` needs the ``redis-server`` executable, ``prometheus`` needs the
``prometheus`` and ``promtool`` executables. Fixtures live beside their tests.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.prerequisites import missing


def _missing_prerequisite(item: pytest.Item) -> str | None:
    """Why ``item`` cannot run here, or None when everything it is marked for is present."""
    if item.get_closest_marker("facade_sync") and importlib.util.find_spec("requests") is None:
        return "requests is not installed (the sync extra)"
    if item.get_closest_marker("facade_async") and importlib.util.find_spec("httpx") is None:
        return "httpx is not installed (the async extra)"
    if item.get_closest_marker("redis_server") and shutil.which("redis-server") is None:
        return "redis-server is not on PATH (Debian package redis-server)"
    if item.get_closest_marker("prometheus") and not (
        shutil.which("prometheus") and shutil.which("promtool")
    ):
        return "prometheus or promtool is not on PATH (Debian package prometheus)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _missing_prerequisite(item)
    if reason is not None:
        missing(reason)

"""A facade without a Redis setting imports no redis (pybreaker would, at its own import),
and code of the application that uses pybreaker's Redis storage still gets it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("redis") is None,
    reason="redis is not installed: nothing could import it",
)

_CHECK = """
import json, sys
import commclient
from commclient import {facade}
client = {facade}("http://127.0.0.1:1", service_name="lazy", target_service="imports")
loaded = sorted(m for m in ("redis", "opentelemetry") if m in sys.modules)
import pybreaker

class StubRedis:
    def setnx(self, key, value):
        return True

storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, StubRedis())
print(json.dumps({{"loaded": loaded, "storage_works": storage is not None,
                  "redis_now": "redis" in sys.modules}}))
"""


def _run(facade: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK.format(facade=facade)],
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


@pytest.mark.facade_sync
def test_the_sync_facade_imports_no_redis() -> None:
    report = _run("SyncServiceClient")
    assert report == {"loaded": [], "storage_works": True, "redis_now": True}


@pytest.mark.facade_async
def test_the_async_facade_imports_no_redis() -> None:
    report = _run("AsyncServiceClient")
    assert report == {"loaded": [], "storage_works": True, "redis_now": True}

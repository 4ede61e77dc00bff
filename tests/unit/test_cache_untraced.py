"""Without a tracer provider, cache operations import nothing of OpenTelemetry and start
no span: neither without OpenTelemetry (an import of it would fail), nor with the API
imported and no SDK (the provider is the API's proxy).

redis-py (8.x) imports OpenTelemetry by itself when it is installed, so what the cache
imports is measured from after redis-py's import.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server

_CHECK = """
import asyncio, json, sys
{preamble}
import redis, redis.asyncio
from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache

def opentelemetry_modules():
    return sorted(
        name for name, module in sys.modules.items()
        if module is not None and name.partition(".")[0] == "opentelemetry"
    )

before = opentelemetry_modules()
config = CacheConfig(local_tier_size=10)
with SyncRedisCache.from_url(sys.argv[1], "untraced-sync", config=config) as cache:
    assert cache.start()
    cache.set("user:1", 1)
    results = [cache.get("user:1"), cache.get("user:1"), cache.get("user:2")]
    results.append(cache.get_or_set("user:3", lambda: 3, stale_ttl=5))
    cache.delete("user:1")
    cache.invalidate("user:*")
    cache.invalidate_group("user")

async def main():
    async with AsyncRedisCache.from_url(sys.argv[1], "untraced-async", config=config) as cache:
        assert await cache.start()
        await cache.set("user:1", 1)
        results.extend([await cache.get("user:1"), await cache.get("user:1")])

        async def load():
            return 4

        results.append(await cache.get_or_set("user:4", load))
        await cache.invalidate_group("user")

asyncio.run(main())
after = opentelemetry_modules()
print(json.dumps({{"results": results, "before": before, "after": after}}))
"""

_NOT_INSTALLED = "sys.modules['opentelemetry'] = None  # every import of it fails"
_API = "import opentelemetry.trace"


def _run(preamble: str, url: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK.format(preamble=preamble), url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


def test_cache_operations_import_no_opentelemetry(redis_url: str) -> None:
    report = _run(_NOT_INSTALLED, redis_url)
    assert report == {
        "results": [1, 1, None, 3, 1, 1, 4],
        "before": [],
        "after": [],
    }


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry") is None, reason="opentelemetry-api not installed"
)
def test_cache_operations_with_the_api_and_no_provider_import_nothing_more(
    redis_url: str,
) -> None:
    report = _run(_API, redis_url)
    assert report["results"] == [1, 1, None, 3, 1, 1, 4]
    assert "opentelemetry.trace" in report["before"]  # type: ignore[operator]
    assert report["after"] == report["before"]

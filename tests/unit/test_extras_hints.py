"""Every optional import names the extra that installs it, never a bare ``No module named``.

Each case runs in a child interpreter where the optional package is hidden
(``sys.modules[name] = None``: importing it raises ``ModuleNotFoundError``, as if it were
not installed), so this runs the same in the sync and the async environments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, json, sys
for name in {hidden!r}:
    sys.modules[name] = None
try:
{action}
except ModuleNotFoundError as exc:
    print(json.dumps({{"name": exc.name, "message": str(exc)}}))
else:
    print(json.dumps(None))
"""

CASES = {
    "SyncServiceClient": (
        ["requests"],
        "import commclient\ncommclient.SyncServiceClient('http://127.0.0.1:1', "
        "service_name='a', target_service='b')",
        "sync",
    ),
    "AsyncServiceClient": (
        ["httpx"],
        "import commclient\ncommclient.AsyncServiceClient('http://127.0.0.1:1', "
        "service_name='a', target_service='b')",
        "async",
    ),
    "AsyncRedisCache.from_url": (
        ["redis"],
        "from commclient.cache import AsyncRedisCache\n"
        "AsyncRedisCache.from_url('redis://127.0.0.1:1/0', prefix='p')",
        "redis",
    ),
    "SyncRedisCache.from_url": (
        ["redis"],
        "from commclient.cache import SyncRedisCache\n"
        "SyncRedisCache.from_url('redis://127.0.0.1:1/0', prefix='p')",
        "redis",
    ),
    "create_async_cache": (
        ["redis"],
        "from commclient.cache import create_async_cache\n"
        "create_async_cache('redis://127.0.0.1:1/0', prefix='p')",
        "redis",
    ),
    "circuit_breaker_redis_url": (
        ["redis"],
        "import importlib.util, commclient\n"
        "facade = commclient.SyncServiceClient if importlib.util.find_spec('requests') "
        "else commclient.AsyncServiceClient\n"
        "facade('http://127.0.0.1:1', service_name='a', target_service='b', "
        "config=commclient.ClientConfig(circuit_breaker_redis_url='redis://127.0.0.1:1/0'))",
        "redis",
    ),
    "cron_migration": (
        ["apscheduler"],
        "import cron_migration\ncron_migration.migrate_scheduler",
        "scheduler",
    ),
    "compat.run_sync": (
        ["anyio"],
        "import compat\nasync def ping() -> int:\n    return 1\ncompat.run_sync(ping)",
        "async",
    ),
}


def run_child(hidden: list[str], action: str) -> object:
    indented = "\n".join("    " + line for line in action.splitlines())
    code = CHILD.format(hidden=hidden, action=indented)
    result = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("feature", sorted(CASES))
def test_a_missing_optional_package_names_its_extra(feature: str) -> None:
    hidden, action, extra = CASES[feature]
    outcome = run_child(hidden, action)
    assert isinstance(outcome, dict), f"{feature} worked without {hidden}"
    assert outcome["name"].partition(".")[0] == hidden[0]
    assert f"needs {hidden[0]}, which the {extra!r} extra installs" in outcome["message"]
    assert f"pip install 'commclient[{extra}]'" in outcome["message"]
    # The package is not published yet: the hint gives the install from a clone too.
    assert f"from a clone: pip install -e '.[{extra}]'" in outcome["message"]


def test_a_benchmark_without_its_dependency_names_the_bench_extra() -> None:
    outcome = run_child(
        ["apscheduler"],
        "from benchmarks.__main__ import run_module\n"
        "outcome = run_module('cron', quick=True)\n"
        "print(json.dumps({'name': None, 'message': outcome.skipped}))\n"
        "sys.exit(0)",
    )
    assert isinstance(outcome, dict)
    assert outcome["message"] is not None
    assert "needs apscheduler" in outcome["message"]
    assert "pip install -e '.[bench]'" in outcome["message"]

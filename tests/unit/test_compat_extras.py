"""compat with only the sync extra: importable, and a clear message when anyio is needed.

Not marked ``facade_async``: this runs in the sync environment too, where anyio is
really missing. Elsewhere anyio is hidden from a child interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

WITHOUT_ANYIO = """
import asyncio, json, sys
sys.modules["anyio"] = None  # as if the async extra were not installed
import compat

class Client:
    async def ping(self) -> int:
        return 1

async def ping() -> int:
    return 1

def legacy_function(mode):
    shim = compat.LegacyShim(Client, name="old_module", mode=mode)
    return shim.function(list, name="fetch")(Client.ping)

attempts = {
    "run_sync": lambda: compat.run_sync(ping),
    "sync_proxy": lambda: compat.sync_proxy(Client()).ping(),
    "run_blocking": lambda: asyncio.run(compat.run_blocking(print)),
    "start_bridge": compat.start_bridge,
    "strict shim": lambda: legacy_function("strict")(),
    "legacy shim": lambda: legacy_function("legacy")(),
}
outcomes = {}
for label, attempt in attempts.items():
    try:
        attempt()
    except ModuleNotFoundError as exc:
        outcomes[label] = {"name": exc.name, "message": str(exc)}
    else:
        outcomes[label] = None
print(json.dumps({"imported": sorted(m for m in ("httpx", "requests") if m in sys.modules),
                  "outcomes": outcomes}))
"""


def run_child(code: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def test_without_anyio_compat_imports_and_each_bridge_names_the_extra() -> None:
    report = run_child(WITHOUT_ANYIO)
    assert report["imported"] == []
    outcomes = report["outcomes"]
    assert isinstance(outcomes, dict)
    assert sorted(outcomes) == sorted(
        ["run_sync", "sync_proxy", "run_blocking", "start_bridge", "strict shim", "legacy shim"]
    )
    for label, outcome in outcomes.items():
        assert outcome is not None, f"{label} worked without anyio"
        assert outcome["name"] == "anyio", label
        assert "pip install 'commclient[async]'" in outcome["message"], label


def test_importing_compat_imports_no_async_library() -> None:
    report = run_child(
        "import json, sys; import compat; "
        "print(json.dumps(sorted(m for m in ('anyio', 'httpx', 'asgiref') if m in sys.modules)))"
    )
    assert report == []

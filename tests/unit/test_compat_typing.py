"""What mypy sees of compat's bridges: checked with mypy itself on a small program."""

from __future__ import annotations

import importlib.util
import re
import textwrap
from pathlib import Path

import pytest

from tests.typecheck import run_mypy

pytestmark = pytest.mark.facade_async


PROGRAM = textwrap.dedent(
    """
    from typing import Any, Protocol

    from compat import LegacyShim, run_blocking, run_sync, sync_proxy


    class Client:
        async def get_reminder(self, reminder_id: int) -> dict[str, Any]:
            return {}

        async def __aenter__(self) -> "Client":
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            return None


    class ClientApi(Protocol):
        def get_reminder(self, reminder_id: int) -> dict[str, Any]: ...


    async def double(value: int) -> int:
        return 2 * value


    def legacy(value: int) -> str:
        return str(value)


    async def main() -> None:
        reveal_type(await run_blocking(legacy, 1))  # R1


    reveal_type(run_sync(double, 2))  # R2
    run_sync(double, "two")  # E1
    reveal_type(run_sync(double, 2, timeout=1.5))  # R7
    run_sync(double, "two", timeout=1.5)  # E3
    proxy = sync_proxy(Client(), timeout=5)
    reveal_type(proxy)  # R3
    reveal_type(proxy.get_reminder(1))  # R4
    api: ClientApi = sync_proxy(Client())
    with sync_proxy(Client()) as entered:
        reveal_type(entered)  # R5
    shim = LegacyShim(Client, name="cron_service.rest_client")


    @shim.function()
    async def fetch_reminder(client: Client, reminder_id: int) -> dict[str, Any]:
        return await client.get_reminder(reminder_id)


    reveal_type(fetch_reminder)  # R6
    fetch_reminder("one")  # E2
    """
)

EXPECTED_REVEALS = {
    "R1": '"str"',
    "R2": '"int"',
    "R3": '"compat._proxy.SyncProxy[program.Client]"',
    "R4": '"Any"',
    "R5": '"compat._proxy.SyncProxy[program.Client]"',
    "R6": '"def (reminder_id: int) -> dict[str, Any] | None"',
    "R7": '"int"',
}


def test_mypy_sees_typed_bridges_and_an_any_typed_proxy(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        # mypy checks as setup.cfg's python_version whatever runs it: tox.ini installs it in
        # one environment only instead of repeating the same check under every interpreter.
        pytest.skip("mypy is not installed (tox.ini installs it in py313-async only)")
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    lines = PROGRAM.splitlines()
    result = run_mypy(tmp_path / "cache", program)
    reveals: dict[str, str] = {}
    errors: list[str] = []
    for line in result.stdout.splitlines():
        match = re.match(r".*program\.py:(\d+): (note|error): (.*)", line)
        if match is None:
            continue
        marker = lines[int(match[1]) - 1].rpartition("# ")[2]
        if match[2] == "note" and match[3].startswith("Revealed type is "):
            # Older mypy versions spell builtins out: "builtins.int".
            reveals[marker] = match[3].removeprefix("Revealed type is ").replace("builtins.", "")
        elif match[2] == "error":
            errors.append(marker)
    assert reveals == EXPECTED_REVEALS, result.stdout
    assert sorted(set(errors)) == ["E1", "E2", "E3"], result.stdout

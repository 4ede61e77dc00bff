"""``mypy --strict`` over files of a test's, run as a user's project runs it: from the
repository root, with the packages found on ``MYPYPATH`` and nothing else of this
environment's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_mypy(cache: Path, *paths: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """mypy's outcome for ``paths``, its cache in ``cache``; never raises on its errors."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-color-output",
            "--show-error-codes",
            "--cache-dir",
            str(cache),
            *map(str, paths),
        ],
        cwd=REPO_ROOT,
        env={"MYPYPATH": str(REPO_ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )

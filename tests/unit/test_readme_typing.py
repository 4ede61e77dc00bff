"""The README's complete examples pass ``mypy --strict`` and pyright, as users' code would.

An example marked ``<!-- typed example -->`` just above its fence is a whole program: it is
written to a file of its own and checked with both type checkers, which skip where they are
not installed (tox.ini installs them in the ``type`` environment).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.typecheck import run_mypy

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
TYPED = re.findall(r"^<!-- typed example -->\n```python\n(.*?)^```", README, re.DOTALL | re.M)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # The examples use both facades, pydantic and tenacity: checked where all are installed.
    for module in ("requests", "httpx", "anyio", "pydantic"):
        pytest.importorskip(module, reason="the type env installs every extra")
    directory = tmp_path_factory.mktemp("readme")
    paths = []
    for number, block in enumerate(TYPED, start=1):
        path = directory / f"readme_example_{number}.py"
        path.write_text(block, encoding="utf-8")
        paths.append(path)
    return paths


def test_the_readme_marks_its_complete_examples() -> None:
    assert len(TYPED) >= 4
    assert any("with sync_proxy(" in block for block in TYPED)


def test_mypy_strict_accepts_every_typed_example(examples: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed here (tox.ini: the type env)")
    result = run_mypy(tmp_path / "cache", *examples, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyright_accepts_every_typed_example(examples: list[Path]) -> None:
    pyright = shutil.which("pyright", path=str(Path(sys.executable).parent))
    if pyright is None:
        pytest.skip("pyright is not installed here (tox.ini: the type env)")
    config = examples[0].parent / "pyrightconfig.json"
    config.write_text(
        json.dumps({"extraPaths": [str(REPO_ROOT)], "typeCheckingMode": "standard"}),
        encoding="utf-8",
    )
    result = subprocess.run(
        [pyright, "--pythonpath", sys.executable, "--project", str(config), *map(str, examples)],
        cwd=examples[0].parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""Run inside a venv with the test extra: every module the tests import is installed.

``python -I tests_imports.py TESTS_DIR`` reads every ``import``, ``from ... import`` and
``pytest.importorskip("...")`` of the test files (as source, never importing them) and
prints the third-party modules that cannot be found; exits 1 if there are any.
Standard library only.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

FIRST_PARTY = {"commclient", "compat", "cron_migration", "examples", "tests", "benchmarks"}


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
        elif (
            # pytest.importorskip("x"), or importlib.util.find_spec("x") for a tool a test
            # skips without
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"importorskip", "find_spec"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.partition(".")[0])
    return names


def main() -> None:
    tests = Path(sys.argv[1])
    wanted: set[str] = set()
    for path in tests.rglob("*.py"):
        if "audit_corpus" in path.parts:  # legacy code read as text, never imported
            continue
        wanted |= imported(ast.parse(path.read_text(encoding="utf-8")))
    third_party = sorted(wanted - FIRST_PARTY - set(sys.stdlib_module_names))
    missing = [name for name in third_party if importlib.util.find_spec(name) is None]
    if missing:
        print("not installed by the test extra: " + ", ".join(missing))
        raise SystemExit(1)
    print(f"OK test: {len(third_party)} third-party modules: {', '.join(third_party)}")


if __name__ == "__main__":
    main()

"""README.md names only what exists: imports, ``python -m`` modules, scripts, the layout."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
OWN_PACKAGES = {"commclient", "compat", "cron_migration"}


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE)


def parse(block: str) -> ast.Module:
    """A README block as Python (``await`` at the top level allowed, as in the examples)."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree: ast.Module = compile(block, "README.md", "exec", flags)
    return tree


def layout_block() -> str:
    section = README.split("\n## Layout\n", 1)[1]
    blocks = re.findall(r"^```\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert blocks, "the Layout section has no code block"
    return blocks[0]


def own_imports() -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from <own package> import name`` in a Python block."""
    found: list[tuple[str, str]] = []
    for block in python_blocks():
        for node in ast.walk(parse(block)):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.partition(".")[0] in OWN_PACKAGES
            ):
                found.extend((node.module, alias.name) for alias in node.names)
    return found


def test_every_python_block_is_valid_python() -> None:
    blocks = python_blocks()
    assert len(blocks) > 10
    for block in blocks:
        parse(block)


@pytest.mark.parametrize(("module", "name"), own_imports())
def test_every_imported_name_exists(module: str, name: str) -> None:
    # __all__ first: the facades are in it, and looking them up would import their transport,
    # which this environment may not have.
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in OWN_PACKAGES:
            raise
        pytest.skip(f"{module} needs {exc.name}, an extra this environment does not install")
    exists = (
        name in getattr(imported, "__all__", ())
        or name in vars(imported)
        or (
            hasattr(imported, "__path__")
            and importlib.util.find_spec(f"{module}.{name}") is not None
        )
    )
    assert exists, f"README imports {name} from {module}, which has no such name"


def test_every_python_m_module_exists() -> None:
    modules = set(re.findall(r"python -m ([\w.]+)", README))
    assert {"benchmarks", "commclient.monitoring", "cron_migration"} <= modules
    missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
    assert not missing, f"README runs python -m on modules that do not exist: {missing}"


def test_every_script_exists() -> None:
    scripts = set(re.findall(r"(?<![\w/])\.?/?(scripts/[\w.]+)", README))
    assert "scripts/demo" in scripts
    missing = [s for s in sorted(scripts) if not (REPO_ROOT / s).is_file()]
    assert not missing, f"README names scripts that do not exist: {missing}"


def test_no_paths_of_a_development_machine() -> None:
    assert not re.findall(r"(?<![\w.])/(?:work|root|home|tmp)/\S*", README)


def test_the_layout_names_every_package_and_directory() -> None:
    layout = layout_block()
    top = [
        d.name
        for d in REPO_ROOT.iterdir()
        if d.is_dir() and ((d / "__init__.py").is_file() or d.name == "scripts")
    ]
    sub = [
        f"commclient/{d.name}"
        for d in (REPO_ROOT / "commclient").iterdir()
        if (d / "__init__.py").is_file()
    ]
    missing = [name for name in sorted(top + sub) if f"{name}/" not in layout]
    assert not missing, f"README's Layout leaves out {missing}"

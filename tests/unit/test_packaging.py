"""The packages' public surface: lazy transports, complete sorted ``__all__``, PEP 561 markers."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Top-level packages of the distribution: each ships a py.typed marker.
TOP_LEVEL_PACKAGES = ["commclient", "compat", "cron_migration"]
# Every package with a public namespace of its own.
PUBLIC_PACKAGES = [*TOP_LEVEL_PACKAGES, "commclient.cache", "commclient.monitoring"]
# Public modules that are not packages: their __all__ is checked for order and existence.
PUBLIC_MODULES = ["commclient.asgi", "commclient.wsgi"]
# Importing the core must not pull in either facade's transport.
TRANSPORTS = ["httpx", "requests"]
OWN_PACKAGES = {"commclient", "compat", "cron_migration"}


def import_or_skip(name: str) -> types.ModuleType:
    """Import ``name``; skip when it is not in this tree or an optional extra is missing."""
    parent = name.rpartition(".")[0]
    if parent:
        import_or_skip(parent)
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} does not exist in this tree")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not missing or missing in OWN_PACKAGES:
            raise
        pytest.skip(f"{name} needs {missing}, an optional extra that is not installed")


def public_names(module: types.ModuleType) -> set[str]:
    """Public names the package's ``__init__`` defines or re-exports from its own modules.

    Names imported from elsewhere (``Any``, ``TYPE_CHECKING``) are tools, not exports.
    """
    if module.__file__ is None:
        return set()  # a namespace package: no __init__ to define anything
    root = module.__name__.partition(".")[0]
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If | ast.Try | ast.With):
            # Module-level blocks such as `if TYPE_CHECKING:` bind names at module level too.
            pending.extend(node.body)
            pending.extend(getattr(node, "orelse", []))
            pending.extend(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            own = node.level > 0 or (node.module or "").partition(".")[0] == root
            if own:
                names.update(alias.asname or alias.name for alias in node.names)
    return {name for name in names if not name.startswith("_")}


def test_importing_commclient_does_not_import_a_transport() -> None:
    probe = (
        "import json, sys; import commclient; "
        f"print(json.dumps([m for m in {TRANSPORTS!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("name", [*PUBLIC_PACKAGES, *PUBLIC_MODULES])
def test_all_is_sorted_and_unique(name: str) -> None:
    module = import_or_skip(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} must define __all__ as a list in its __init__"
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"


@pytest.mark.parametrize("name", [*PUBLIC_PACKAGES, *PUBLIC_MODULES])
def test_all_names_exist(name: str) -> None:
    module = import_or_skip(name)
    missing = [attr for attr in getattr(module, "__all__", []) if not _has(module, attr)]
    assert missing == [], f"{name}.__all__ names what the package lacks"


def _has(module: object, attr: str) -> bool:
    """``hasattr``, where a name loaded lazily from an extra that is not installed counts
    when its error names the extra (cron_migration's names without APScheduler)."""
    try:
        return hasattr(module, attr)
    except ModuleNotFoundError as exc:
        return "extra installs: pip install 'commclient[" in str(exc)


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_all_is_complete(name: str) -> None:
    module = import_or_skip(name)
    unexported = sorted(public_names(module) - set(getattr(module, "__all__", [])))
    assert unexported == [], f"{name} has public names missing from __all__"


@pytest.mark.parametrize("name", TOP_LEVEL_PACKAGES)
def test_source_package_has_py_typed(name: str) -> None:
    assert (REPO_ROOT / name / "py.typed").is_file()


def installed_files() -> set[str]:
    """The files the installed distribution lists; skips where there is no such list."""
    try:
        distribution = importlib.metadata.distribution("commclient")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("commclient is not installed")
    direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("an editable install lists no package files")
    return {str(path) for path in distribution.files or []}


@pytest.mark.parametrize("name", TOP_LEVEL_PACKAGES)
def test_installed_distribution_ships_py_typed(name: str) -> None:
    assert f"{name}/py.typed" in installed_files()


def test_installed_distribution_ships_the_monitoring_files() -> None:
    from commclient.monitoring._files import SHIPPED_FILES

    expected = {f"commclient/monitoring/{name}" for name in SHIPPED_FILES}
    assert expected <= installed_files()


def test_version_is_the_distribution_version() -> None:
    import commclient

    try:
        installed = importlib.metadata.version("commclient")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("commclient is not installed: no distribution version to compare")
    assert commclient.__version__ == installed


def test_importing_commclient_reads_no_distribution_metadata() -> None:
    code = "import sys, commclient; print('importlib.metadata' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_installed_distribution_ships_the_license() -> None:
    files = installed_files()
    assert any(path.endswith("LICENSE") for path in files), sorted(files)[:20]

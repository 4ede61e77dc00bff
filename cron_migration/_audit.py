"""``audit``: the call sites still to migrate, found in the source tree's syntax.

Four kinds, each with a code:

- ``CM001`` a raw ``requests``/``httpx`` call outside the clients: it has no retry, breaker,
  metrics or correlation id; use ``SyncServiceClient``/``AsyncServiceClient`` instead.
- ``CM002`` ``asyncio.run``, ``get_event_loop``, ``new_event_loop`` or ``run_until_complete``
  inside a job: a new loop per run breaks clients bound to a loop, and ``get_event_loop()``
  fails in a worker thread.
- ``CM003`` a blocking call inside ``async def``: it stalls the scheduler's loop; await the
  async equivalent or wrap it in ``compat.run_blocking``.
- ``CM004`` a call of a function of the audited tree that makes a raw call itself (an old
  client helper such as ``rest_client.fetch_reminders()``): the call sites to move onto the
  service client before the old helpers can be removed.

Jobs are functions decorated with ``@migrated_job`` or ``@<scheduler>.scheduled_job(...)``,
and functions passed by name to ``<scheduler>.add_job(...)`` in the same module. Names are
resolved through the module's imports (``import requests as r``, ``from time import sleep``).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Directories never audited: the clients themselves, environments, caches.
SKIPPED_DIRECTORIES = frozenset(
    {"commclient", "compat", "cron_migration", "__pycache__", "node_modules", "site-packages"}
)

_HTTP_MODULES = ("requests", "httpx")
_LOOP_CALLS = frozenset(
    {
        "asyncio.run",
        "asyncio.get_event_loop",
        "asyncio.new_event_loop",
        "asyncio.run_until_complete",
    }
)
_BLOCKING_CALLS = frozenset(
    {
        "time.sleep",
        "urllib.request.urlopen",
        "subprocess.run",
        "subprocess.call",
        "subprocess.check_call",
        "subprocess.check_output",
        "os.system",
        "socket.create_connection",
        "compat.run_sync",
    }
)
# httpx's module-level functions and Client are blocking; AsyncClient is not.
_HTTPX_ASYNC = frozenset({"httpx.AsyncClient"})


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    column: int
    code: str
    message: str

    def render(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.code} {self.message}"


def iter_python_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            d for d in subdirectories if not d.startswith(".") and d not in SKIPPED_DIRECTORIES
        )
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory) / name


def module_name(path: Path) -> str:
    """The dotted module name of ``path``, from the packages (``__init__.py``) above it."""
    parts = [] if path.stem == "__init__" else [path.stem]
    parent = path.resolve().parent
    while (parent / "__init__.py").exists():
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts)


def audit_paths(paths: Iterable[Path]) -> list[Finding]:
    """Every finding under ``paths`` (files or directories), sorted by place."""
    findings: list[Finding] = []
    sources: list[tuple[Path, str]] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"audit: {root} does not exist")
        for path in iter_python_files(root):
            try:
                sources.append((path, path.read_text(encoding="utf-8")))
            except (UnicodeDecodeError, OSError) as exc:
                findings.append(Finding(str(path), 0, 0, "CM000", f"cannot read: {exc}"))
    # First the raw calls, and which functions make them; then the calls of those.
    helpers: dict[str, str] = {}  # dotted name of a function -> where its raw call is
    for path, source in sources:
        visitor = _visit(source, str(path))
        if visitor is not None:
            module = module_name(path)
            for function, finding in visitor.raw_callers.items():
                helpers.setdefault(f"{module}.{function}", f"{finding.path}:{finding.line}")
    for path, source in sources:
        findings.extend(audit_source(source, str(path), helpers))
    return sorted(findings)


def audit_source(source: str, path: str, helpers: dict[str, str] | None = None) -> list[Finding]:
    """The findings of one module; ``helpers``: functions making raw calls (for CM004)."""
    visitor = _visit(source, path, helpers)
    if visitor is None:
        try:
            ast.parse(source, filename=path)
        except SyntaxError as exc:
            message = f"cannot parse: {exc.msg}"
            return [Finding(path, exc.lineno or 0, exc.offset or 0, "CM000", message)]
    assert visitor is not None
    return visitor.findings


def _visit(source: str, path: str, helpers: dict[str, str] | None = None) -> _Visitor | None:
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError:
        return None
    visitor = _Visitor(path, _imports(tree), _job_names(tree), helpers or {})
    visitor.visit(tree)
    return visitor


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    root = alias.name.partition(".")[0]
                    names[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _job_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            dotted = _dotted(node.func) or ""
            if dotted.endswith("add_job") and node.args:
                target = _dotted(node.args[0])
                if target:
                    names.add(target.rpartition(".")[2])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                dotted = _dotted(call) or ""
                if dotted.endswith(("scheduled_job", "migrated_job")):
                    names.add(node.name)
    return names


class _Visitor(ast.NodeVisitor):
    def __init__(
        self, path: str, imports: dict[str, str], jobs: set[str], helpers: dict[str, str]
    ) -> None:
        self.path = path
        self.imports = imports
        self.jobs = jobs
        self.helpers = helpers
        self.findings: list[Finding] = []
        # Module-level function name -> its first raw HTTP call.
        self.raw_callers: dict[str, Finding] = {}
        self._functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    def _resolve(self, node: ast.expr) -> str | None:
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        resolved = self.imports.get(head)
        if resolved is None:
            return None  # a local name: not a module function we know
        return f"{resolved}.{rest}" if rest else resolved

    def visit_Call(self, node: ast.Call) -> None:
        name = self._resolve(node.func)
        on_any_loop = (
            isinstance(node.func, ast.Attribute) and node.func.attr == "run_until_complete"
        )
        if name is None and on_any_loop:
            name = "loop.run_until_complete"
        if name is not None:
            self._check(node, name)
        self.generic_visit(node)

    def _check(self, node: ast.Call, name: str) -> None:
        function = self._functions[-1] if self._functions else None
        in_async = isinstance(function, ast.AsyncFunctionDef)
        in_job = function is not None and function.name in self.jobs
        where = (
            f"in {'async def ' if in_async else ''}{function.name}"
            if function
            else "at module level"
        )
        module = name.partition(".")[0]
        if name in self.helpers:
            self._add(
                node,
                "CM004",
                f"{'.'.join(name.split('.')[-2:])}() {where} makes raw HTTP calls "
                f"({self.helpers[name]}): "
                "call the service client instead",
            )
            return
        if module in _HTTP_MODULES:
            finding = self._add(
                node, "CM001", f"raw {name}() {where}: use SyncServiceClient/AsyncServiceClient"
            )
            if self._functions:
                self.raw_callers.setdefault(self._functions[0].name, finding)
            if in_async and name not in _HTTPX_ASYNC:
                self._add(node, "CM003", f"blocking {name}() {where}: it stalls the event loop")
            return
        if name in _LOOP_CALLS or name.endswith(".run_until_complete"):
            if in_job:
                self._add(node, "CM002", f"{name}() {where}: a job must not make or look up a loop")
            return
        if in_async and name in _BLOCKING_CALLS:
            self._add(
                node,
                "CM003",
                f"blocking {name}() {where}: await an async equivalent or compat.run_blocking",
            )

    def _add(self, node: ast.AST, code: str, message: str) -> Finding:
        finding = Finding(
            self.path, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), code, message
        )
        self.findings.append(finding)
        return finding

"""``audit``: the call sites still to migrate, found in the source tree's syntax.

The rules, each with a code (:data:`RULES`):

- ``CM001`` a raw ``requests``/``httpx`` request outside the clients (``requests.get``,
  ``SESSION.get`` on a ``requests.Session``, ``await client.get`` on an
  ``httpx.AsyncClient``, or one handed to a thread: ``run_blocking(SESSION.get, url)``):
  it has no retry, breaker, metrics or correlation id; use
  ``SyncServiceClient``/``AsyncServiceClient`` instead.
- ``CM002`` ``asyncio.run``, ``get_event_loop``, ``new_event_loop`` or ``run_until_complete``
  inside a job, or in a function of the tree a job calls (a ``run_async(coro)`` helper):
  a new loop per run breaks clients bound to a loop, and ``get_event_loop()`` fails in a
  worker thread.
- ``CM003`` a blocking call inside ``async def`` (``time.sleep``, a sync request, a call of an
  old helper that makes one): it stalls the scheduler's loop; await the async equivalent or
  wrap it in ``compat.run_blocking``.
- ``CM004`` a call, from another module, of a function or method of the audited tree that
  makes a raw request, itself or through other functions of the tree (an old client helper
  such as ``rest_client.fetch_reminders()``, or ``LEGACY_CLIENT.fetch()`` over the client's
  own ``_request()``): the call sites to move onto the service client before the old
  helpers can be removed.

Names are followed through imports (absolute and relative), module-level and local
assignments (annotated ones by their declared type first), ``with ... as`` targets,
parameter and return annotations, what factories and properties of the tree return,
``self`` attributes and class attributes, so ``SESSION = requests.Session()`` at module
level makes ``SESSION.get()`` a raw request wherever ``SESSION`` is imported. Jobs are
the functions decorated with ``@migrated_job`` or ``@<scheduler>.scheduled_job(...)``, and
those passed to ``add_job`` (positionally, as ``func=``, as a ``"module:function"`` string,
a partial, a lambda, an object of the tree by its ``__call__``, or from a loop over a
literal collection of jobs) from any module of the tree; a function nested in a job belongs
to it. Constructing a client, an exception or a type annotation is not a call site.
Source files are decoded by their PEP 263 coding line.

A finding is ignored by a comment on its line, ``# cron-migration: ignore[CM001]`` (several
codes comma-separated; no brackets: every code), or by a baseline file.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import tokenize
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

#: Directories never audited: environments, caches.
SKIPPED_DIRECTORIES = frozenset({"__pycache__", "node_modules", "site-packages"})
#: The clients themselves, skipped where they sit side by side (as installed or vendored);
#: an application's own package of one of these names, alone, is audited.
OUR_PACKAGES = frozenset({"commclient", "compat", "cron_migration"})

#: code -> (name, what it finds and what to do). The README and SARIF's rules come from here.
RULES: dict[str, tuple[str, str]] = {
    "CM000": (
        "unreadable-source",
        "a file that cannot be decoded or parsed: nothing in it is audited",
    ),
    "CM001": (
        "raw-http-call",
        "a raw requests/httpx request: no retry, breaker, metrics or correlation id; "
        "use SyncServiceClient/AsyncServiceClient",
    ),
    "CM002": (
        "loop-in-job",
        "asyncio.run/get_event_loop/new_event_loop/run_until_complete inside a job: "
        "a loop per run breaks clients bound to a loop",
    ),
    "CM003": (
        "blocking-call-in-async",
        "a blocking call inside async def stalls the event loop: await an async "
        "equivalent or use compat.run_blocking",
    ),
    "CM004": (
        "old-helper-call",
        "a call of a function or method of the tree that makes raw requests: call the "
        "service client instead",
    ),
}

_REQUEST_METHODS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "request"}
)
_RAW_CALLS = frozenset(
    {f"requests.{name}" for name in _REQUEST_METHODS}
    | {f"httpx.{name}" for name in _REQUEST_METHODS | {"stream"}}
    | {f"requests.Session.{name}" for name in _REQUEST_METHODS | {"send"}}
    | {f"httpx.Client.{name}" for name in _REQUEST_METHODS | {"send", "stream"}}
    | {f"httpx.AsyncClient.{name}" for name in _REQUEST_METHODS | {"send", "stream"}}
)
# The client classes whose instances make requests, by every name they are imported as.
_CLIENT_CLASSES = {
    "requests.Session": "requests.Session",
    "requests.sessions.Session": "requests.Session",
    "requests.session": "requests.Session",  # a function returning a Session
    "requests.sessions.session": "requests.Session",
    "httpx.Client": "httpx.Client",
    "httpx.AsyncClient": "httpx.AsyncClient",
}
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
# Calls that run the function they are given in a thread: its position among the arguments.
_FORWARDERS = {
    "asyncio.to_thread": 0,
    "compat.run_blocking": 0,
    "anyio.to_thread.run_sync": 0,
}
# Methods that do so whatever their object (an executor, a loop): ``submit(fn, ...)``,
# ``run_in_executor(executor, fn, ...)``.
_FORWARDING_METHODS = {"submit": 0, "run_in_executor": 1}
_JOB_DECORATORS = ("scheduled_job", "migrated_job")
_Place = TypeVar("_Place")
# Codes are read case-insensitively; a bracket that names no code ignores nothing.
_IGNORE = re.compile(r"#\s*cron-migration:\s*ignore(?:\[(?P<codes>[^\]]*)\])?")
_MAX_DEPTH = 24


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
        ours = OUR_PACKAGES.intersection(subdirectories)
        if len(ours) < 2:
            ours = frozenset()
        subdirectories[:] = sorted(
            d
            for d in subdirectories
            if not d.startswith(".") and d not in SKIPPED_DIRECTORIES and d not in ours
        )
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory) / name


def module_name(path: Path) -> str:
    """The dotted module name of ``path``, from the packages (``__init__.py``) above it."""
    return _name_and_root(path)[0]


def _name_and_root(path: Path) -> tuple[str, Path]:
    """``path``'s module name, and the directory it is imported from (on ``sys.path``)."""
    parts = [] if path.stem == "__init__" else [path.stem]
    parent = path.resolve().parent
    while (parent / "__init__.py").exists():
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts), parent


def read_source(path: Path) -> str:
    """The text of ``path``, decoded as its PEP 263 coding line (or BOM) says."""
    data = path.read_bytes()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)


# --- what a name stands for -------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """The thing a dotted name names: a module, function, class or method."""

    name: str


@dataclass(frozen=True)
class Instance:
    """An instance of the class ``cls`` (dotted)."""

    cls: str


Value = Ref | Instance


@dataclass
class _Binding:
    kind: str  # "ref" (import, def, class), "expr", "annotation", "instance", "loop", "unknown"
    target: str | ast.expr
    scope: _Scope | None = None
    # An annotated assignment's value, for when its annotation names no class we know.
    value: ast.expr | None = None


@dataclass
class _Scope:
    module: _Module
    names: dict[str, _Binding] = field(default_factory=dict)
    parent: _Scope | None = None

    def lookup(self, name: str) -> _Binding | None:
        scope: _Scope | None = self
        while scope is not None:
            binding = scope.names.get(name)
            if binding is not None:
                return binding
            scope = scope.parent
        return None


@dataclass
class _Class:
    name: str  # dotted
    scope: _Scope  # the scope the class is defined in
    bases: list[ast.expr]
    methods: set[str] = field(default_factory=set)
    attributes: dict[str, _Binding] = field(default_factory=dict)


@dataclass
class _Module:
    name: str
    path: str
    source: str
    tree: ast.Module
    package: str  # the package relative imports start from
    # Top-level names that several roots of the tree have (two script directories with a
    # helpers.py, two services with an app package) -> the name of this root's one.
    tops: dict[str, str] = field(default_factory=dict)
    scope: _Scope = field(init=False)

    def __post_init__(self) -> None:
        self.scope = _Scope(self)

    def absolute(self, dotted: str) -> str:
        """``dotted`` as this module imports it: its own root's module of an ambiguous name."""
        top, dot, rest = dotted.partition(".")
        renamed = self.tops.get(top)
        return dotted if renamed is None else f"{renamed}{dot}{rest}"


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _absolute(module: _Module, node: ast.ImportFrom) -> str | None:
    """The module an ``from ... import`` names, relative imports resolved."""
    if node.level == 0:
        return node.module
    base = module.package.split(".") if module.package else []
    if node.level - 1 > len(base):
        return None
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _bind_import(scope: _Scope, node: ast.Import | ast.ImportFrom) -> None:
    module = scope.module
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                scope.names[alias.asname] = _Binding("ref", module.absolute(alias.name))
            else:
                root = alias.name.partition(".")[0]
                scope.names[root] = _Binding("ref", module.absolute(root))
        return
    source = _absolute(module, node)
    if source is None:
        return
    source = module.absolute(source)
    for alias in node.names:
        if alias.name != "*":
            scope.names[alias.asname or alias.name] = _Binding("ref", f"{source}.{alias.name}")


class _Project:
    """Every module of the audited tree, and what its names stand for."""

    def __init__(self, modules: list[_Module]) -> None:
        self.modules = {module.name: module for module in modules}
        self.classes: dict[str, _Class] = {}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.function_scopes: dict[ast.AST, _Scope] = {}
        self.job_lambdas: set[ast.Lambda] = set()
        for module in modules:
            self._index(module.tree.body, module.scope, module.name, None)

    # Indexing: the names each scope binds (flow-insensitive: any assignment counts).

    def _index(
        self, body: Sequence[ast.stmt], scope: _Scope, prefix: str, cls: _Class | None
    ) -> None:
        for statement in body:
            for node in _statements(statement):
                self._bind(node, scope, prefix, cls)

    def _bind(self, node: ast.stmt, scope: _Scope, prefix: str, cls: _Class | None) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            _bind_import(scope, node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            qualified = f"{prefix}.{node.name}"
            scope.names[node.name] = _Binding("ref", qualified)
            self.functions[qualified] = node
            if cls is not None:
                cls.methods.add(node.name)
            self._index_function(node, scope, qualified, cls)
        elif isinstance(node, ast.ClassDef):
            qualified = f"{prefix}.{node.name}"
            scope.names[node.name] = _Binding("ref", qualified)
            body_scope = _Scope(scope.module, parent=scope)
            new_class = _Class(qualified, scope, list(node.bases))
            self.classes[qualified] = new_class
            self._index(node.body, body_scope, qualified, new_class)
            new_class.attributes.update(body_scope.names)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                self._bind_target(target, node.value, scope)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            scope.names[node.target.id] = _Binding("annotation", node.annotation, scope, node.value)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                if item.optional_vars is not None:
                    self._bind_target(item.optional_vars, item.context_expr, scope)
        elif isinstance(node, ast.For | ast.AsyncFor):
            # A loop variable shadows a global of its name; it holds one of the iterable's
            # items (followed only to find jobs registered in a loop).
            for name in ast.walk(node.target):
                if isinstance(name, ast.Name):
                    scope.names.setdefault(name.id, _Binding("loop", node.iter, scope))

    def _bind_target(self, target: ast.expr, value: ast.expr, scope: _Scope) -> None:
        if isinstance(target, ast.Name):
            scope.names[target.id] = _Binding("expr", value, scope)

    def _index_function(
        self,
        node: ast.FunctionDef | ast.AsyncFunctionDef,
        scope: _Scope,
        qualified: str,
        cls: _Class | None,
    ) -> None:
        local = _Scope(scope.module, parent=scope if cls is None else scope.parent)
        self.function_scopes[node] = local
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for position, argument in enumerate(arguments):
            if position == 0 and cls is not None and not _is_static(node):
                local.names[argument.arg] = _Binding("instance", cls.name)
            elif argument.annotation is not None:
                local.names[argument.arg] = _Binding("annotation", argument.annotation, scope)
            else:
                local.names[argument.arg] = _Binding("unknown", "")
        self._index(node.body, local, f"{qualified}.<locals>", None)
        if cls is not None:
            # self.<name> = ... in any method: an attribute of the class's instances.
            self_name = arguments[0].arg if arguments and not _is_static(node) else None
            for inner in ast.walk(node):
                if isinstance(inner, ast.Assign | ast.AnnAssign) and inner.value is not None:
                    targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                    binding = (
                        _Binding("expr", inner.value, local)
                        if isinstance(inner, ast.Assign)
                        else _Binding("annotation", inner.annotation, local, inner.value)
                    )
                    for target in targets:
                        if (
                            isinstance(target, ast.Attribute)
                            and isinstance(target.value, ast.Name)
                            and target.value.id == self_name
                        ):
                            cls.attributes[target.attr] = binding

    # Resolution: what an expression stands for, as far as the syntax tells.

    def resolve(self, node: ast.expr, scope: _Scope, depth: int = 0) -> Value | None:
        if depth > _MAX_DEPTH:
            return None
        depth += 1
        if isinstance(node, ast.Name):
            binding = scope.lookup(node.id)
            return None if binding is None else self._value(binding, depth)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value, scope, depth)
            if isinstance(base, Instance):
                return self._member(base.cls, node.attr, depth)
            if isinstance(base, Ref):
                return self._global(f"{base.name}.{node.attr}", depth)
            return None
        if isinstance(node, ast.Call):
            return self._call_result(node, scope, depth)
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                resolved = self.resolve(value, scope, depth)
                if resolved is not None:
                    return resolved
            return None
        if isinstance(node, ast.IfExp):
            return self.resolve(node.body, scope, depth) or self.resolve(node.orelse, scope, depth)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
            return self.resolve(node.left, scope, depth) or self.resolve(node.right, scope, depth)
        return None

    def _string_annotation(self, text: str, scope: _Scope, depth: int) -> Value | None:
        try:
            expression = ast.parse(text, mode="eval").body
        except SyntaxError:
            return None
        return self.resolve(expression, scope, depth)

    def _value(self, binding: _Binding, depth: int) -> Value | None:
        if binding.kind in ("unknown", "loop"):
            return None
        if binding.kind == "ref":
            assert isinstance(binding.target, str)
            return self._global(binding.target, depth)
        if binding.kind == "instance":
            assert isinstance(binding.target, str)
            return Instance(binding.target)
        assert isinstance(binding.target, ast.expr)
        assert binding.scope is not None
        target = binding.target
        if binding.kind == "annotation":
            # The declared type first (a dataclass field's default_factory, an untyped
            # factory); the assigned value when the annotation names no class we know.
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                declared = self._string_annotation(target.value, binding.scope, depth)
            else:
                declared = self.resolve(target, binding.scope, depth)
            instance = self._instance_of(declared)
            if instance is None and binding.value is not None:
                return self.resolve(binding.value, binding.scope, depth)
            return instance
        return self.resolve(target, binding.scope, depth)

    def _instance_of(self, value: Value | None) -> Value | None:
        if isinstance(value, Ref):
            cls = _CLIENT_CLASSES.get(value.name)
            if cls is not None:
                return Instance(cls)
            if value.name in self.classes:
                return Instance(value.name)
        return None

    def _global(self, name: str, depth: int) -> Value:
        """``name`` followed through the module-level bindings of the tree's modules."""
        module, _, attribute = name.rpartition(".")
        if module in self.modules and attribute:
            binding = self.modules[module].scope.names.get(attribute)
            if binding is not None and not (binding.kind == "ref" and binding.target == name):
                value = self._value(binding, depth + 1)
                if value is not None:
                    return value
        if module in self.classes and attribute:
            member = self._member(module, attribute, depth + 1)
            if member is not None:
                return member
        return Ref(name)

    def _member(self, cls: str, attribute: str, depth: int) -> Value | None:
        if depth > _MAX_DEPTH:
            return None
        known = self.classes.get(cls)
        if known is None:
            return Ref(f"{cls}.{attribute}")
        if attribute in known.methods:
            method = self.functions.get(f"{cls}.{attribute}")
            if method is not None and _is_property(method):
                return self._returned(method, depth + 1)
            return Ref(f"{cls}.{attribute}")
        binding = known.attributes.get(attribute)
        if binding is not None:
            return self._value(binding, depth + 1)
        for base in known.bases:
            resolved = self.resolve(base, known.scope, depth + 1)
            if isinstance(resolved, Ref):
                name = _CLIENT_CLASSES.get(resolved.name, resolved.name)
                member = self._member(name, attribute, depth + 1)
                if member is not None:
                    return member
        return None

    def _call_result(self, node: ast.Call, scope: _Scope, depth: int) -> Value | None:
        if isinstance(node.func, ast.Call) and _is_job_decorator(
            self.resolve(node.func.func, scope, depth)
        ):
            # migrated_job(timeout=60)(function): the job is the function.
            return self.resolve(node.args[0], scope, depth) if node.args else None
        callee = self.resolve(node.func, scope, depth)
        if (_is_job_decorator(callee) or callee == Ref("functools.partial")) and node.args:
            # migrated_job(function), partial(function, ...): the function, for jobs.
            return self.resolve(node.args[0], scope, depth)
        function = self.functions.get(callee.name) if isinstance(callee, Ref) else None
        if function is not None:
            return self._returned(function, depth)  # a factory of the tree
        return self._instance_of(callee)

    def _returned(
        self, function: ast.FunctionDef | ast.AsyncFunctionDef, depth: int
    ) -> Value | None:
        """What ``function`` returns: its return annotation, else its return statements."""
        local = self.function_scopes[function]
        if function.returns is not None:
            return self._value(_Binding("annotation", function.returns, local), depth)
        for node in _own_nodes(function):
            if isinstance(node, ast.Return) and node.value is not None:
                value = self.resolve(node.value, local, depth)
                if value is not None:
                    return value
        return None

    # Jobs: what add_job, scheduled_job and migrated_job name, across the tree.

    def jobs(self) -> set[str]:
        names: set[str] = set()
        for module in self.modules.values():
            for node, scope in self._calls(module.tree.body, module.scope):
                if isinstance(node.func, ast.Attribute) and node.func.attr == "add_job":
                    target = node.args[0] if node.args else _keyword(node, "func")
                    name = self._job_target(target, scope) if target is not None else None
                    if name is not None:
                        names.add(name)
                    elif target is not None:
                        names.update(self._jobs_from_a_loop(target, scope))
        for qualified, function in self.functions.items():
            for decorator in function.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if (_dotted(call) or "").endswith(_JOB_DECORATORS):
                    names.add(qualified)
        return names

    def _calls(self, nodes: Iterable[ast.AST], scope: _Scope) -> Iterator[tuple[ast.Call, _Scope]]:
        """Every call under ``nodes``, with the scope its names are looked up in."""
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from self._calls(node.body, self.function_scopes.get(node, scope))
                continue
            if isinstance(node, ast.Call):
                yield node, scope
            yield from self._calls(ast.iter_child_nodes(node), scope)

    def _jobs_from_a_loop(self, target: ast.expr, scope: _Scope) -> set[str]:
        """The tree's functions in the collection a loop registers jobs from.

        ``for job_id, (function, seconds) in SCHEDULE.items(): add_job(function, ...)``:
        every function of the tree named in the literal ``SCHEDULE`` is a job.
        """
        found: set[str] = set()
        for name in ast.walk(target):
            binding = scope.lookup(name.id) if isinstance(name, ast.Name) else None
            if binding is None or binding.kind != "loop" or binding.scope is None:
                continue
            assert isinstance(binding.target, ast.expr)
            literal = self._literal(binding.target, binding.scope)
            for element in ast.walk(literal) if literal is not None else ():
                if isinstance(element, ast.Name | ast.Attribute):
                    value = self.resolve(element, binding.scope)
                    if isinstance(value, Ref) and value.name in self.functions:
                        found.add(value.name)
        return found

    def _literal(self, node: ast.expr, scope: _Scope, depth: int = 0) -> ast.expr | None:
        """The dict, list, tuple or set literal ``node`` iterates, through names."""
        if depth > _MAX_DEPTH:
            return None
        if isinstance(node, ast.Dict | ast.List | ast.Tuple | ast.Set):
            return node
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("items", "values"):
                return self._literal(node.func.value, scope, depth + 1)
            return None
        binding = scope.lookup(node.id) if isinstance(node, ast.Name) else None
        if binding is None or binding.scope is None:
            return None
        value = binding.target if binding.kind == "expr" else binding.value
        if isinstance(value, ast.expr):  # SCHEDULE = {...}, or SCHEDULE: dict[...] = {...}
            return self._literal(value, binding.scope, depth + 1)
        return None

    def _job_target(self, target: ast.expr, scope: _Scope) -> str | None:
        if isinstance(target, ast.Lambda):
            self.job_lambdas.add(target)
            return None
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            module, _, attribute = target.value.partition(":")
            return f"{scope.module.absolute(module)}.{attribute}" if attribute else None
        resolved = self.resolve(target, scope)
        if isinstance(resolved, Instance):  # an object of the tree's: its __call__ runs
            resolved = self._member(resolved.cls, "__call__", 0)
        if isinstance(resolved, Ref):
            return resolved.name
        return None


def _statements(statement: ast.stmt) -> Iterator[ast.stmt]:
    """``statement``, and those in its if/try/with/for blocks (not in nested scopes)."""
    yield statement
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return
    for name in ("body", "orelse", "finalbody", "handlers"):
        for child in getattr(statement, name, ()):
            if isinstance(child, ast.ExceptHandler):
                for inner in child.body:
                    yield from _statements(inner)
            elif isinstance(child, ast.stmt):
                yield from _statements(child)
    if isinstance(statement, ast.Match):
        for case in statement.cases:
            for inner in case.body:
                yield from _statements(inner)


def _own_nodes(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """The nodes of ``function``'s body, not those of the functions and classes nested in it."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))


def _is_property(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """``@property`` or ``@cached_property`` (``functools.cached_property``): read, not called."""
    return any(
        (_dotted(d) or "").rpartition(".")[2] in ("property", "cached_property")
        for d in node.decorator_list
    )


def _is_static(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(_dotted(d) == "staticmethod" for d in node.decorator_list)


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def _is_job_decorator(value: Value | None) -> bool:
    return isinstance(value, Ref) and value.name.rpartition(".")[2] == "migrated_job"


# --- the audit ---------------------------------------------------------------------------


@dataclass
class _Context:
    """Where a call is: the enclosing functions, innermost last."""

    functions: list[tuple[str, _FunctionNode]]
    jobs: set[str]
    job_lambdas: set[ast.Lambda]

    @property
    def in_async(self) -> bool:
        return bool(self.functions) and isinstance(self.functions[-1][1], ast.AsyncFunctionDef)

    @property
    def in_job(self) -> bool:
        return any(name in self.jobs or node in self.job_lambdas for name, node in self.functions)

    @property
    def owner(self) -> str | None:
        """The module-level function or method the call belongs to."""
        return self.functions[0][0] if self.functions else None

    def where(self) -> str:
        if not self.functions:
            return "at module level"
        node = self.functions[-1][1]
        if isinstance(node, ast.Lambda):
            return "in a lambda"
        prefix = "async def " if isinstance(node, ast.AsyncFunctionDef) else ""
        return f"in {prefix}{node.name}"


@dataclass
class _HelperCall:
    module: str
    node: ast.Call
    target: str
    context_where: str
    in_async: bool
    owner: str | None  # the module-level function or method the call is in
    in_job: bool = False


class _Auditor:
    """Walks one module: CM001-CM003 at once, the calls for CM004 kept for later."""

    def __init__(self, project: _Project, module: _Module, jobs: set[str]) -> None:
        self.project = project
        self.module = module
        self.jobs = jobs
        self.findings: list[Finding] = []
        self.raw_callers: dict[str, tuple[Finding, bool]] = {}  # owner -> (finding, blocking)
        self.loop_makers: dict[str, Finding] = {}  # owner -> where it makes or looks up a loop
        self.helper_calls: list[_HelperCall] = []

    def run(self) -> None:
        self._walk(self.module.tree.body, self.module.scope, [], self.module.name)

    def _walk(
        self,
        nodes: Iterable[ast.AST],
        scope: _Scope,
        functions: list[tuple[str, _FunctionNode]],
        prefix: str,
    ) -> None:
        for node in nodes:
            self._visit(node, scope, functions, prefix)

    def _visit(
        self,
        node: ast.AST,
        scope: _Scope,
        functions: list[tuple[str, _FunctionNode]],
        prefix: str,
    ) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            qualified = f"{prefix}.{node.name}"
            # Decorators and defaults run in the enclosing scope; annotations never run.
            self._walk([*node.decorator_list, *node.args.defaults], scope, functions, prefix)
            self._walk(
                [d for d in node.args.kw_defaults if d is not None], scope, functions, prefix
            )
            local = self.project.function_scopes.get(node, scope)
            self._walk(node.body, local, [*functions, (qualified, node)], f"{qualified}.<locals>")
            return
        if isinstance(node, ast.ClassDef):
            self._walk([*node.decorator_list, *node.bases], scope, functions, prefix)
            body_scope = _Scope(scope.module, parent=scope)
            self._walk(node.body, body_scope, functions, f"{prefix}.{node.name}")
            return
        if isinstance(node, ast.AnnAssign):
            # The annotation is a type, not a call site.
            if node.value is not None:
                self._visit(node.value, scope, functions, prefix)
            self._visit(node.target, scope, functions, prefix)
            return
        if isinstance(node, ast.Raise):
            # Building the exception raised is not a request.
            return
        if isinstance(node, ast.Lambda):
            self._walk(node.args.defaults, scope, functions, prefix)
            name = f"{prefix}.<lambda>"
            self._visit(node.body, scope, [*functions, (name, node)], prefix)
            return
        if isinstance(node, ast.Call):
            context = _Context(functions, self.jobs, self.project.job_lambdas)
            self._call(node, scope, context)
        for child in ast.iter_child_nodes(node):
            self._visit(child, scope, functions, prefix)

    def _call(self, node: ast.Call, scope: _Scope, context: _Context) -> None:
        callee = self.project.resolve(node.func, scope)
        name = callee.name if isinstance(callee, Ref) else None
        self._forwarded_call(node, name, scope, context)
        if (
            name is None
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run_until_complete"
        ):
            name = "loop.run_until_complete"
        if name is None:
            return
        where = context.where()
        if name in _RAW_CALLS:
            blocking = not name.startswith("httpx.AsyncClient.")
            finding = self._add(
                node, "CM001", f"raw {name}() {where}: use SyncServiceClient/AsyncServiceClient"
            )
            if context.owner is not None:
                self.raw_callers.setdefault(context.owner, (finding, blocking))
            if context.in_async and blocking:
                self._add(node, "CM003", f"blocking {name}() {where}: it stalls the event loop")
            return
        if name in _LOOP_CALLS or name.endswith(".run_until_complete"):
            message = f"{name}() {where}: a job must not make or look up a loop"
            place = Finding(self.module.path, node.lineno, node.col_offset, "CM002", message)
            if context.owner is not None:
                self.loop_makers.setdefault(context.owner, place)
            if context.in_job:
                self.findings.append(place)
            return
        if context.in_async and name in _BLOCKING_CALLS:
            self._add(
                node,
                "CM003",
                f"blocking {name}() {where}: await an async equivalent or compat.run_blocking",
            )
            return
        if name in self.project.functions:
            self.helper_calls.append(
                _HelperCall(
                    self.module.name,
                    node,
                    name,
                    where,
                    context.in_async,
                    context.owner,
                    context.in_job,
                )
            )

    def _forwarded_call(
        self, node: ast.Call, name: str | None, scope: _Scope, context: _Context
    ) -> None:
        """A function handed to a thread (``run_blocking(SESSION.get, url)``): still called.

        Off the loop it blocks nothing (no CM003), but a raw request is still raw (CM001)
        and an old helper still an old helper (CM004).
        """
        position = _FORWARDERS.get(name or "")
        if position is None and isinstance(node.func, ast.Attribute):
            position = _FORWARDING_METHODS.get(node.func.attr)
        if position is None or len(node.args) <= position:
            return
        forwarded = self.project.resolve(node.args[position], scope)
        if not isinstance(forwarded, Ref):
            return
        where = context.where()
        if forwarded.name in _RAW_CALLS:
            finding = self._add(
                node,
                "CM001",
                f"raw {forwarded.name}() run in a thread {where}: use "
                "SyncServiceClient/AsyncServiceClient",
            )
            if context.owner is not None:
                self.raw_callers.setdefault(context.owner, (finding, False))
        elif forwarded.name in self.project.functions:
            self.helper_calls.append(
                _HelperCall(
                    self.module.name,
                    node,
                    forwarded.name,
                    where,
                    False,
                    context.owner,
                    context.in_job,
                )
            )

    def _add(self, node: ast.AST, code: str, message: str) -> Finding:
        finding = Finding(
            self.module.path,
            getattr(node, "lineno", 0),
            getattr(node, "col_offset", 0),
            code,
            message,
        )
        self.findings.append(finding)
        return finding


def _ignored_codes(source: str) -> dict[int, frozenset[str] | None]:
    """Line -> the codes its ``# cron-migration: ignore[...]`` comment ignores (None: all)."""
    ignored: dict[int, frozenset[str] | None] = {}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return ignored
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        match = _IGNORE.search(token.string)
        if match is None:
            continue
        codes = match.group("codes")
        ignored[token.start[0]] = (
            None
            if codes is None
            else frozenset(code.strip().upper() for code in codes.split(",") if code.strip())
        )
    return ignored


def _modules_of(parsed: list[tuple[Path, str, ast.Module]]) -> list[_Module]:
    """The modules of the files, each named as its root imports it, ambiguous names apart."""
    named = [(path, source, tree, *_name_and_root(path)) for path, source, tree in parsed]
    roots: dict[str, set[Path]] = {}
    for _, _, _, name, root in named:
        roots.setdefault(name.partition(".")[0], set()).add(root)
    labels: dict[tuple[str, Path], str] = {}  # (top-level name, root) -> "<root>:<name>"
    for top, of_top in roots.items():
        if len(of_top) < 2:
            continue
        ordered = sorted(of_top)
        names = [root.name.replace(".", "_") or "root" for root in ordered]
        for index, (root, label) in enumerate(zip(ordered, names, strict=True)):
            unique = label if names.count(label) == 1 else f"{label}{index}"
            labels[(top, root)] = f"{unique}:{top}"
    modules = []
    for path, source, tree, name, root in named:
        tops = {top: label for (top, at), label in labels.items() if at == root}
        module = _Module("", str(path), source, tree, "", tops)
        module.name = module.absolute(name)
        module.package = module.name if path.stem == "__init__" else module.name.rpartition(".")[0]
        modules.append(module)
    return modules


def audit_paths(paths: Iterable[Path]) -> list[Finding]:
    """Every finding under ``paths`` (files or directories), sorted by place."""
    findings: list[Finding] = []
    parsed: list[tuple[Path, str, ast.Module]] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"audit: {root} does not exist")
        for path in iter_python_files(root):
            try:
                source = read_source(path)
            except (UnicodeDecodeError, SyntaxError, LookupError, OSError) as exc:
                findings.append(Finding(str(path), 0, 0, "CM000", f"cannot read: {exc}"))
                continue
            try:
                tree = ast.parse(source, filename=str(path))
            except SyntaxError as exc:
                message = f"cannot parse: {exc.msg}"
                findings.append(
                    Finding(str(path), exc.lineno or 0, exc.offset or 0, "CM000", message)
                )
                continue
            except ValueError as exc:  # a null byte, on Python 3.10
                findings.append(Finding(str(path), 0, 0, "CM000", f"cannot parse: {exc}"))
                continue
            parsed.append((path, source, tree))
    findings.extend(_audit_modules(_modules_of(parsed)))
    return sorted(findings)


def audit_source(source: str, path: str, module: str = "audited") -> list[Finding]:
    """The findings of one module's source, as if it were the whole tree."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return [
            Finding(path, exc.lineno or 0, exc.offset or 0, "CM000", f"cannot parse: {exc.msg}")
        ]
    except ValueError as exc:  # a null byte, on Python 3.10
        return [Finding(path, 0, 0, "CM000", f"cannot parse: {exc}")]
    return sorted(_audit_modules([_Module(module, path, source, tree, "")]))


def _audit_modules(modules: list[_Module]) -> list[Finding]:
    project = _Project(modules)
    jobs = project.jobs()
    auditors = [_Auditor(project, module, jobs) for module in modules]
    helpers: dict[str, tuple[Finding, bool]] = {}
    loop_makers: dict[str, Finding] = {}
    for auditor in auditors:
        auditor.run()
        helpers.update(auditor.raw_callers)
        loop_makers.update(auditor.loop_makers)
    calls = [call for auditor in auditors for call in auditor.helper_calls]
    _add_indirect(helpers, calls)
    _add_indirect(loop_makers, calls)
    findings: list[Finding] = []
    for auditor in auditors:
        findings.extend(auditor.findings)
        for call in auditor.helper_calls:
            loop = loop_makers.get(call.target)
            if loop is not None and call.in_job:
                findings.append(
                    Finding(
                        auditor.module.path,
                        call.node.lineno,
                        call.node.col_offset,
                        "CM002",
                        f"{'.'.join(call.target.split('.')[-2:])}() {call.context_where} makes "
                        f"or looks up an event loop ({loop.path}:{loop.line}): a job must not",
                    )
                )
            helper = helpers.get(call.target)
            if helper is None:
                continue
            raw, blocking = helper
            helper_module = _module_part(project, call.target)
            short = ".".join(call.target.split(".")[-2:])
            sync_helper = isinstance(project.functions[call.target], ast.FunctionDef)
            if call.in_async and blocking and sync_helper:
                findings.append(
                    Finding(
                        auditor.module.path,
                        call.node.lineno,
                        call.node.col_offset,
                        "CM003",
                        f"blocking {short}() {call.context_where}: it makes a blocking request "
                        f"({raw.path}:{raw.line}) and stalls the event loop",
                    )
                )
            if helper_module != call.module:
                findings.append(
                    Finding(
                        auditor.module.path,
                        call.node.lineno,
                        call.node.col_offset,
                        "CM004",
                        f"{short}() {call.context_where} makes raw HTTP calls "
                        f"({raw.path}:{raw.line}): call the service client instead",
                    )
                )
    by_path = {module.path: _ignored_codes(module.source) for module in modules}
    return [f for f in findings if not _is_ignored(f, by_path.get(f.path, {}))]


def _add_indirect(found: dict[str, _Place], calls: Sequence[_HelperCall]) -> None:
    """A function calling one of ``found`` does what it does too (a client's ``pending()``
    over its ``_request()``, a job over a helper running ``asyncio.run``): add it, with the
    place where that happens."""
    changed = True
    while changed:
        changed = False
        for call in calls:
            place = found.get(call.target)
            if place is not None and call.owner is not None and call.owner not in found:
                found[call.owner] = place
                changed = True


def _module_part(project: _Project, qualified: str) -> str:
    """The module a function's or method's dotted name belongs to."""
    name = qualified
    while name and name not in project.modules:
        name = name.rpartition(".")[0]
    return name


def _is_ignored(finding: Finding, ignored: dict[int, frozenset[str] | None]) -> bool:
    if finding.line not in ignored:
        return False
    codes = ignored[finding.line]
    return codes is None or finding.code in codes


# --- baselines and output formats ------------------------------------------------------


# Where a CM003/CM004 message says the helper makes its request: "(path:line)".
_HELPER_PLACE = re.compile(r"\((?P<path>[^()\s]+):\d+\)")


def _fingerprint(finding: Finding, line_text: str) -> str:
    """What identifies a finding across edits elsewhere (not its line, nor its helper's)."""
    message = _HELPER_PLACE.sub(r"(\g<path>)", finding.message)
    text = f"{finding.path}\0{finding.code}\0{message}\0{line_text.strip()}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def fingerprints(findings: Sequence[Finding]) -> list[str]:
    """One fingerprint per finding, from its file, code, message and line's text."""
    lines: dict[str, list[str]] = {}
    result = []
    for finding in findings:
        if finding.path not in lines:
            try:
                lines[finding.path] = read_source(Path(finding.path)).splitlines()
            except (OSError, UnicodeDecodeError, SyntaxError, LookupError):
                lines[finding.path] = []
        text = lines[finding.path]
        line_text = text[finding.line - 1] if 0 < finding.line <= len(text) else ""
        result.append(_fingerprint(finding, line_text))
    return result


def write_baseline(findings: Sequence[Finding], path: Path) -> None:
    """Record ``findings`` as accepted: later audits report only new ones."""
    entries = [
        {"fingerprint": fingerprint, "path": f.path, "code": f.code, "message": f.message}
        for f, fingerprint in zip(findings, fingerprints(findings), strict=True)
    ]
    path.write_text(json.dumps({"version": 1, "findings": entries}, indent=2) + "\n")


def apply_baseline(findings: Sequence[Finding], path: Path) -> list[Finding]:
    """``findings`` less those the baseline file at ``path`` accepts (each once)."""
    try:
        data: Any = json.loads(path.read_text())
        accepted = Counter(entry["fingerprint"] for entry in data["findings"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"baseline {path}: not a cron_migration audit baseline ({exc})") from exc
    new = []
    for finding, fingerprint in zip(findings, fingerprints(findings), strict=True):
        if accepted[fingerprint] > 0:
            accepted[fingerprint] -= 1
        else:
            new.append(finding)
    return new


def to_json(findings: Sequence[Finding]) -> dict[str, Any]:
    """The findings as the JSON document ``audit --format json`` prints (audit.schema.json)."""
    return {
        "version": 1,
        "count": len(findings),
        "findings": [
            {
                "path": f.path,
                "line": f.line,
                "column": f.column,
                "code": f.code,
                "rule": RULES[f.code][0],
                "message": f.message,
            }
            for f in findings
        ],
    }


def _sarif_uri(path: str) -> dict[str, str]:
    candidate = Path(path)
    if candidate.is_absolute():
        return {"uri": candidate.as_uri()}
    return {"uri": candidate.as_posix(), "uriBaseId": "%SRCROOT%"}


def to_sarif(findings: Sequence[Finding]) -> dict[str, Any]:
    """The findings as a SARIF 2.1.0 log (GitHub code scanning and other CI read it)."""
    codes = list(RULES)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "cron_migration audit",
                        "rules": [
                            {
                                "id": code,
                                "name": name,
                                "shortDescription": {"text": name.replace("-", " ")},
                                "fullDescription": {"text": description},
                                "defaultConfiguration": {
                                    "level": "error" if code == "CM000" else "warning"
                                },
                            }
                            for code, (name, description) in RULES.items()
                        ],
                    }
                },
                "results": [
                    {
                        "ruleId": f.code,
                        "ruleIndex": codes.index(f.code),
                        "level": "error" if f.code == "CM000" else "warning",
                        "message": {"text": f.message},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": _sarif_uri(f.path),
                                    "region": {
                                        "startLine": max(f.line, 1),
                                        "startColumn": f.column + 1,
                                    },
                                }
                            }
                        ],
                        "partialFingerprints": {"cronMigrationAudit/v1": fingerprint},
                    }
                    for f, fingerprint in zip(findings, fingerprints(findings), strict=True)
                ],
            }
        ],
    }

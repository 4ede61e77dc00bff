"""Refuse to start when a module of the user's shadows a package cron_migration imports.

cron_migration imports ``compat`` (and ``commclient``) by their top-level names, some of
them only when the first job runs. A ``compat.py`` of the user's earlier on ``sys.path``
would be imported instead and fail there with an ImportError naming neither file; this
check fails at ``import cron_migration`` instead, saying what shadows what; except under
``python -m cron_migration``, where ``audit`` and ``--help`` need neither package and
``plan`` fails with that error.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

#: The packages installed beside cron_migration that it imports by top-level name.
SIBLING_PACKAGES = ("compat", "commclient")


class ShadowedPackageError(ImportError):
    """A module of another origin takes the name of a package cron_migration needs."""


def _origin(name: str) -> Path | None:
    module = sys.modules.get(name)
    if module is not None:
        origin = getattr(module, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = None if spec is None else spec.origin
    return None if origin is None else Path(origin).resolve()


def running_the_command_line() -> bool:
    """Whether this process is ``python -m cron_migration`` (its package is being imported)."""
    argv: list[str] = list(getattr(sys, "orig_argv", ()))
    for position, argument in enumerate(argv):
        if argument == "-m":
            return argv[position + 1 : position + 2] == [__package__]
        if argument.startswith("-m"):
            return argument[2:] == __package__
    return False


def check_not_shadowed(packages: tuple[str, ...] = SIBLING_PACKAGES) -> None:
    """Raise :class:`ShadowedPackageError` when ``packages`` resolve outside our install.

    Then import them, so that a module put on ``sys.path`` later cannot take their place
    when a job's first run imports them.
    """
    install_root = Path(__file__).resolve().parent.parent
    for name in packages:
        expected = install_root / name / "__init__.py"
        if not expected.exists():
            continue  # installed some other way (a zipapp, a namespace): nothing to compare
        origin = _origin(name)
        if origin is not None and origin != expected:
            raise ShadowedPackageError(
                f"the module {name!r} at {origin} shadows commclient's package {name!r} "
                f"({expected}), which cron_migration imports: rename your {origin.name} (or "
                "move it off sys.path before the installed packages)",
                name=name,
                path=str(origin),
            )
    for name in packages:
        importlib.import_module(name)

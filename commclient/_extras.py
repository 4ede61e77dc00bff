"""Optional dependencies: import one, or fail with the extra that installs it.

Every optional import of the three packages goes through :func:`import_extra`, so that a
missing package always names the extra to install, never a bare ``No module named ...``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def extra_hint(extra: str) -> str:
    """The commands that install ``extra``: by name (once published), and from a clone."""
    return f"pip install 'commclient[{extra}]' (from a clone: pip install -e '.[{extra}]')"


def import_extra(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module``; when it is missing, raise ``ModuleNotFoundError`` naming ``extra``.

    ``feature`` is what needs the module, as the user knows it (``"AsyncRedisCache.from_url"``).
    A module missing *inside* an installed package (a broken install) is raised unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing.partition(".")[0] != module.partition(".")[0]:
            raise
        distribution = missing.partition(".")[0]
        raise ModuleNotFoundError(
            f"{feature} needs {distribution}, which the {extra!r} extra installs: "
            f"{extra_hint(extra)}",
            name=missing,
        ) from exc

"""MkDocs hooks: the guide pages are cut from README.md at build time, and every public name
must have a docstring.

README.md stays the one source of the guides: ``on_files`` slices it at the headings listed
in ``GUIDE_PAGES`` (each slice runs until the next page's heading, so nothing of the README
is left out), lifts each slice's headings so that it starts with its one ``#`` title, and points
the README's ``(#anchor)`` links at the page that now holds the anchor. A heading that is no
longer in the README fails the build.

``on_pre_build`` fails the build when a name in the ``__all__`` of a public module of
``commclient``, ``compat`` or ``cron_migration`` (or a public method of such a class) has no
docstring: the API reference would show it bare.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("commclient", "compat", "cron_migration")

# (page, the README heading it starts at); in README order. None: the top of the README.
GUIDE_PAGES: tuple[tuple[str, str | None], ...] = (
    ("index.md", None),
    ("guide/install.md", "## Install"),
    ("guide/client.md", "## Quick start"),
    ("guide/cache.md", "### Configuration cache"),
    ("guide/compat.md", "### Sync and async code together"),
    ("guide/cron_migration.md", "### Moving cron jobs to asyncio"),
    ("guide/testing.md", "### In your own tests"),
    ("guide/monitoring.md", "## Monitoring"),
    ("guide/demo.md", "## Run the demo"),
    ("guide/development.md", "## Run the tests"),
)

_FENCE = re.compile(r"^\s*```")
_HEADING = re.compile(r"^(#+) (.*)$")
_ANCHOR_LINK = re.compile(r"\]\(#([\w-]+)\)")


@dataclass
class Slice:
    page: str
    lines: list[str]


def _outside_fences(lines: list[str]) -> list[bool]:
    """For each line: True when it is prose, not inside a fenced block (nor a fence)."""
    prose, inside = [], False
    for line in lines:
        if _FENCE.match(line):
            inside = not inside
            prose.append(False)
        else:
            prose.append(not inside)
    return prose


def split_readme(text: str) -> list[Slice]:
    """The README cut into the guide pages, headings lifted, anchor links retargeted."""
    lines = text.splitlines()
    prose = _outside_fences(lines)
    starts: list[int] = []
    for page, heading in GUIDE_PAGES:
        if heading is None:
            starts.append(0)
            continue
        found = [
            number
            for number, line in enumerate(lines)
            if prose[number] and (line == heading or line.startswith(heading + " "))
        ]
        if len(found) != 1:
            raise PluginError(f"{page}: README.md has {len(found)} headings {heading!r}")
        starts.append(found[0])
    if starts != sorted(starts):
        raise PluginError("GUIDE_PAGES are not in the README's order")
    slices = []
    for index, (page, _) in enumerate(GUIDE_PAGES):
        end = starts[index + 1] if index + 1 < len(starts) else len(lines)
        chunk = list(range(starts[index], end))
        first = _HEADING.match(lines[chunk[0]])
        lift = len(first.group(1)) - 1 if first else 0
        out = []
        for number in chunk:
            line = lines[number]
            title = _HEADING.match(line) if prose[number] else None
            if title and lift:
                # The page's own title is its only level-1 heading.
                level = max(1 if number == chunk[0] else 2, len(title.group(1)) - lift)
                line = "#" * level + " " + title.group(2)
            out.append(line)
        slices.append(Slice(page, out))
    anchors = {
        slugify(match.group(2), "-"): piece.page
        for piece in slices
        for line in piece.lines
        if (match := _HEADING.match(line))
    }
    for piece in slices:
        piece.lines = [_retarget(line, piece.page, anchors) for line in piece.lines]
    return slices


def _retarget(line: str, page: str, anchors: dict[str, str]) -> str:
    def link(match: re.Match[str]) -> str:
        anchor = match.group(1)
        target = anchors.get(anchor)
        if target is None:
            raise PluginError(f"README.md links to #{anchor}, which no heading has")
        if target == page:
            return match.group(0)
        relative = posixpath.relpath(target, posixpath.dirname(page) or ".")
        return f"]({relative}#{anchor})"

    return _ANCHOR_LINK.sub(link, line)


def on_files(files: Files, config: Any) -> Files:
    for piece in split_readme((ROOT / "README.md").read_text(encoding="utf-8")):
        files.append(File.generated(config, piece.page, content="\n".join(piece.lines) + "\n"))
    return files


def public_modules() -> list[Any]:
    """The packages and their public modules (no ``_`` in the name), as griffe modules."""
    import griffe

    found: list[Any] = []
    for package in PACKAGES:
        modules = [griffe.load(package, search_paths=[str(ROOT)], resolve_aliases=True)]
        while modules:
            module = modules.pop()
            modules.extend(sub for name, sub in module.modules.items() if not name.startswith("_"))
            found.append(module)
    return found


def unreferenced_modules() -> list[str]:
    """Public modules with an ``__all__`` that no page of ``docs/reference/`` renders."""
    rendered = {
        match.group(1)
        for page in (ROOT / "docs" / "reference").glob("*.md")
        for match in re.finditer(r"^::: ([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M)
    }
    return sorted(
        module.path for module in public_modules() if module.exports and module.path not in rendered
    )


def undocumented_public_names() -> list[str]:
    """Public names (``__all__`` of public modules, and their classes' public methods and
    properties) without a docstring."""
    import griffe

    missing: list[str] = []
    for module in public_modules():
        for export in module.exports or ():
            name = str(export)
            target = module[name].final_target if module[name].is_alias else module[name]
            if not (target.docstring and target.docstring.value.strip()):
                missing.append(f"{module.path}.{name}")
            if target.kind is griffe.Kind.CLASS:
                missing.extend(
                    f"{module.path}.{name}.{member_name}"
                    for member_name, member in target.members.items()
                    if not member_name.startswith("_")
                    and not member.is_alias
                    and (member.kind is griffe.Kind.FUNCTION or "property" in member.labels)
                    and not (member.docstring and member.docstring.value.strip())
                )
    return sorted(missing)


def on_pre_build(config: Any) -> None:
    unreferenced = unreferenced_modules()
    if unreferenced:
        raise PluginError(
            "public modules without an API reference page: " + ", ".join(unreferenced)
        )
    missing = undocumented_public_names()
    if missing:
        raise PluginError("public names without a docstring: " + ", ".join(missing))

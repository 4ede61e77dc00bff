"""The fenced code blocks of README.md, as the README test and the docs build read them.

A block may be preceded (on the line right before its opening fence) by one HTML comment
``<!-- readme-test: DIRECTIVE: REASON -->``, invisible when the README is rendered:

``skip: REASON``
    the block is not run; REASON says why (and what covers it instead).
``echo-server: REASON``
    ``client`` is bound to a loopback server that answers every path with what it received
    (the block's paths stand for any endpoint).

Blocks in ``python`` and ``bash`` are code; ``text`` blocks and blocks without a language are
output, trees and tables, which are not run.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
CODE_LANGUAGES = ("python", "bash")
DIRECTIVES = ("skip", "echo-server")

_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<language>\S*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S
)
_DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(?P<name>[\w-]+)\s*:\s*(?P<reason>.*?)\s*-->")
_HEADING = re.compile(r"^#+ (?P<title>.+)$", re.M)


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code and its directive."""

    line: int
    heading: str
    language: str
    code: str
    directive: str | None
    reason: str | None

    @property
    def is_code(self) -> bool:
        return self.language in CODE_LANGUAGES

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"line{self.line}-{slug}"


def read_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README (or of ``text``), in order."""
    text = README.read_text() if text is None else text
    fences = list(_FENCE.finditer(text))
    headings = [
        heading
        for heading in _HEADING.finditer(text)
        if not any(fence.start() < heading.start() < fence.end() for fence in fences)
    ]
    blocks = []
    for match in fences:
        start = match.start()
        line = text.count("\n", 0, start) + 1
        above = [heading for heading in headings if heading.start() < start]
        heading = above[-1].group("title") if above else ""
        before = text[:start].rstrip("\n").rsplit("\n", 1)[-1].strip()
        directive = _DIRECTIVE.fullmatch(before)
        blocks.append(
            Block(
                line=line,
                heading=heading,
                language=match.group("language"),
                code=textwrap.dedent(match.group("body")),
                directive=directive.group("name") if directive else None,
                reason=directive.group("reason") if directive else None,
            )
        )
    return blocks

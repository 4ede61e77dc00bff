"""Generate the sync Redis cache driver from the async one.

    python scripts/generate_sync.py           # rewrite commclient/cache/_sync.py
    python scripts/generate_sync.py --check   # exit 1 if it is out of date

``commclient/cache/_async.py`` is the only source of the Redis driver. This script
removes ``async`` and ``await``, unwraps ``Awaitable[...]`` and renames what has another
name in blocking code (the table below), working on tokens so that strings and layout
are kept. What the two worlds do differently is in ``_io_async`` / ``_io_sync``, which
the driver imports under one name; nothing else is special-cased here.
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "commclient" / "cache" / "_async.py"
TARGET = ROOT / "commclient" / "cache" / "_sync.py"

RENAMES = {
    "AsyncRedisCache": "SyncRedisCache",
    "_io_async": "_io_sync",
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
}
"""Names (in code, docstrings and comments) that are called otherwise in blocking code."""

TEXT = {
    "``redis.asyncio``": "``redis``",
    "redis.asyncio.Redis": "redis.Redis",
    "for asyncio code": "for blocking code",
    "(``async def`` here)": "(a plain ``def`` here)",
    "async def load_user": "def load_user",
    "  # noqa: ASYNC110": "",
}
"""Phrases of docstrings and comments, and one lint marker that only async code needs."""

HEADER = '''"""SyncRedisCache: the cache on ``redis``, generated from :mod:`._async`: do not edit.

Change ``_async.py`` (or ``_io_sync.py``) and run ``python scripts/generate_sync.py``;
a test fails while this file is out of date.
"""'''


def generate(source: str) -> str:
    """The sync driver for the async driver's ``source``."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(position: tuple[int, int]) -> int:
        return offsets[position[0] - 1] + position[1]

    edits: list[tuple[int, int, str]] = []
    docstring_done = False
    depth_of_awaitable: list[int] = []
    depth = 0
    for index, token in enumerate(tokens):
        start, end = at(token.start), at(token.end)
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.type == tokenize.STRING and not docstring_done:
            docstring_done = True
            edits.append((start, end, HEADER))
        elif token.type in (tokenize.STRING, tokenize.COMMENT):
            edits.append((start, end, _rewrite_text(token.string)))
        elif token.type == tokenize.NAME and token.string in ("async", "await"):
            assert following is not None
            edits.append((start, at(following.start), ""))
        elif token.type == tokenize.NAME and token.string == "Awaitable":
            assert following is not None
            assert following.string in ("[", ",")
            if following.string == "[":  # Awaitable[X] -> X: drop this and its "]"
                depth_of_awaitable.append(depth + 1)
                edits.append((start, at(following.end), ""))
            else:  # in an import: "Awaitable, " goes
                edits.append((start, at(tokens[index + 2].start), ""))
        elif token.type == tokenize.NAME and token.string == "asyncio" and index >= 2:
            # redis.asyncio -> redis
            if tokens[index - 1].string == "." and tokens[index - 2].string == "redis":
                edits.append((at(tokens[index - 1].start), end, ""))
        elif token.type == tokenize.NAME and token.string in RENAMES:
            edits.append((start, end, RENAMES[token.string]))
        elif token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            if depth_of_awaitable and depth_of_awaitable[-1] == depth:
                depth_of_awaitable.pop()
                edits.append((start, end, ""))
            depth -= 1
    output = source
    for start, end, replacement in sorted(edits, reverse=True):
        output = output[:start] + replacement + output[end:]
    # An async alias of a renamed name (``close = aclose``) becomes ``close = close``: the
    # sync driver has the name already, so the line and the comment above it go.
    return re.sub(r"\n(?:[ \t]*#:[^\n]*\n)*[ \t]*(\w+) = \1\n", "", output)


def _rewrite_text(text: str) -> str:
    for old, new in TEXT.items():
        text = text.replace(old, new)
    for old, new in RENAMES.items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    return text


def main(argv: list[str]) -> int:
    generated = generate(SOURCE.read_text())
    if argv[1:] == ["--check"]:
        if TARGET.read_text() != generated:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run scripts/generate_sync.py")
            return 1
        return 0
    TARGET.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

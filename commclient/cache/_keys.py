"""Key layout, groups and Redis glob patterns (escaping, building, matching).

A logical key such as ``"assistant:42"`` belongs to the group ``"assistant"`` (its first
``:``-separated segment). In Redis it is stored as ``{prefix}:{key}#{generation}`` (the
braces are Redis Cluster's hash tag), where the generation is the group's counter at
``{prefix}!gen:{group}``: one ``INCR`` of that
counter makes every key of the group unreachable at once, whatever its size. The
generation is a suffix behind a ``#`` (a character keys may not contain), so a caller's
pattern ``P`` over logical keys becomes the Redis pattern ``{prefix}:P#*`` and can never
match across the key/generation boundary. A read-through lease lives beside its key at
``{prefix}:{key}#L`` so that deleting or invalidating a key also revokes a load in flight.

A data key can only be named with a generation, and every read and write names it in
advance (a script must declare every key it touches): with the generation last seen for
the group. Redis reads the counter in the same atomic step (a script, or a hit's native
``MGET``); when it moved on, nothing is read or written and the client repeats the
operation with the new generation. Generations move only when a group is invalidated, so
the guess is nearly always right and costs no round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from ._exceptions import InvalidCacheKeyError

GENERATION_SEPARATOR = "#"
LEASE_SUFFIX = "L"
MAX_KEY_LENGTH = 1024
_GLOB_SPECIALS = frozenset("*?[]\\")
_PREFIX_FORBIDDEN = frozenset("!{}")
_FORBIDDEN_KEY_CHARACTERS = frozenset(GENERATION_SEPARATOR) | {chr(c) for c in range(32)} | {"\x7f"}


def group_of(key: str) -> str:
    """Return the key's group: its first ``:``-separated segment."""
    return key.partition(":")[0]


def validate_key(key: str) -> str:
    """Return ``key`` if it can be stored, else raise :class:`InvalidCacheKeyError`."""
    if not isinstance(key, str):
        raise InvalidCacheKeyError(f"cache keys are str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidCacheKeyError(
            f"cache keys have 1 to {MAX_KEY_LENGTH} characters, got {len(key)}"
        )
    if not _FORBIDDEN_KEY_CHARACTERS.isdisjoint(key):
        raise InvalidCacheKeyError(
            f"cache key {key!r} contains '#' or a control character "
            "('#' separates the key from its group generation)"
        )
    if not group_of(key):
        raise InvalidCacheKeyError(f"cache key {key!r} has an empty group (it starts with ':')")
    _check_encodable("cache key", key)
    return key


def _check_encodable(what: str, text: str) -> None:
    """Redis keys are UTF-8: a lone surrogate (``json.loads`` of ``"\\ud800"`` makes one)
    cannot be sent, and must be refused here as the caller's error, not fail in the
    client as if Redis were down."""
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise InvalidCacheKeyError(f"{what} {text!r} is not valid UTF-8 text: {error}") from None


def validate_group(group: str) -> str:
    """Return ``group`` if it names a group, else raise :class:`InvalidCacheKeyError`."""
    validate_key(group)
    if ":" in group:
        raise InvalidCacheKeyError(f"a group is one key segment, got {group!r}")
    return group


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if keys may live under it, else raise ``ValueError``."""
    if not prefix or not _FORBIDDEN_KEY_CHARACTERS.isdisjoint(prefix):
        raise ValueError(f"prefix must be non-empty without '#' or control characters: {prefix!r}")
    if not _GLOB_SPECIALS.isdisjoint(prefix) or not _PREFIX_FORBIDDEN.isdisjoint(prefix):
        raise ValueError(f"prefix must not contain glob characters, '!', '{{' or '}}': {prefix!r}")
    try:
        prefix.encode()
    except UnicodeEncodeError:
        raise ValueError(f"prefix must be valid UTF-8 text: {prefix!r}") from None
    return prefix


def escape_glob(text: str) -> str:
    """Escape ``*``, ``?``, ``[``, ``]`` and ``\\`` so that ``text`` matches only itself."""
    return "".join("\\" + char if char in _GLOB_SPECIALS else char for char in text)


class Glob(str):
    """A pattern part the caller wants matched as a glob rather than literally."""

    __slots__ = ()


def build_pattern(template: str, *parts: object) -> str:
    """Fill the ``{}`` fields of ``template`` with ``parts``, escaping each part.

    The template is written by the developer and may hold glob characters; the parts
    usually come from a request (an id in a URL) and must not widen the match, so they
    are escaped unless wrapped in :class:`Glob`.

    >>> build_pattern("user:{}:*", "4*")
    'user:4\\\\*:*'
    """
    escaped = [part if isinstance(part, Glob) else escape_glob(str(part)) for part in parts]
    return template.format(*escaped)


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a usable glob over logical keys."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidCacheKeyError("an invalidation pattern is a non-empty str")
    if len(pattern) > MAX_KEY_LENGTH * 2:
        raise InvalidCacheKeyError("invalidation pattern too long")
    if GENERATION_SEPARATOR in pattern or any(ord(char) < 32 for char in pattern):
        raise InvalidCacheKeyError(
            f"pattern {pattern!r} contains '#' or a control character, which no key has"
        )
    _check_encodable("pattern", pattern)
    return pattern


def glob_to_regex(pattern: str) -> bytes:
    """Translate a Redis glob (``*``, ``?``, ``[...]``, ``[^...]``, ``\\x``) to a bytes regex.

    The local tier must drop exactly the entries Redis would have matched, so this follows
    Redis's ``stringmatchlen``, not :mod:`fnmatch` (which negates with ``!`` and has no
    backslash escape), and works on the UTF-8 bytes as Redis does: ``?`` is one byte, so
    it does not match ``é``, which ``??`` does.
    """
    raw = pattern.encode()
    out: list[bytes] = []
    index, length = 0, len(raw)
    while index < length:
        byte = raw[index : index + 1]
        if byte == b"*":
            out.append(b".*")
        elif byte == b"?":
            out.append(b".")
        elif byte == b"\\" and index + 1 < length:
            index += 1
            out.append(re.escape(raw[index : index + 1]))
        elif byte == b"[":
            translated, index = _translate_class(raw, index)
            out.append(translated)
        else:
            out.append(re.escape(byte))
        index += 1
    return b"".join(out)


def _translate_class(raw: bytes, start: int) -> tuple[bytes, int]:
    """Translate the class opening at ``start``; return it and the index of its ``]``."""
    index = start + 1
    negate = raw[index : index + 1] == b"^"
    if negate:
        index += 1
    members: list[bytes] = []
    while index < len(raw) and raw[index : index + 1] != b"]":
        byte = raw[index : index + 1]
        if byte == b"\\" and index + 1 < len(raw):
            index += 1
            members.append(re.escape(raw[index : index + 1]))
        elif len(raw) - index >= 3 and raw[index + 1 : index + 2] == b"-":
            low, high = sorted((byte, raw[index + 2 : index + 3]))
            members.append(re.escape(low) + b"-" + re.escape(high))
            index += 2
        else:
            members.append(re.escape(byte))
        index += 1
    # Redis treats an unterminated class as running to the end of the pattern.
    body = b"".join(members)
    if not body:
        return (b"[^\\s\\S]" if not negate else b"[\\s\\S]"), index
    return b"[" + (b"^" if negate else b"") + body + b"]", index


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[bytes]:
    """Compile a Redis glob into a bytes regex (cached: patterns repeat)."""
    return re.compile(glob_to_regex(pattern), re.DOTALL)


def glob_matches(pattern: str, key: str) -> bool:
    """Tell whether the Redis glob ``pattern`` matches ``key`` as Redis would (per byte)."""
    return compile_glob(pattern).fullmatch(key.encode()) is not None


@dataclass(frozen=True)
class KeyLayout:
    """Where a cache under ``prefix`` keeps its keys in Redis.

    Every key starts with the hash tag ``{prefix}``: on Redis Cluster all keys of one
    cache live in one hash slot, so each script may touch several of them; and a prefix
    nested in another (``outer`` and ``outer:tenant``) can never address the other's keys.
    """

    prefix: str

    @cached_property
    def tag(self) -> str:
        """``{prefix}`` (computed once: every key of a miss is built from it)."""
        return f"{{{self.prefix}}}"

    def data_base(self, key: str) -> str:
        """The data key without its generation (the client appends the one it names)."""
        return f"{self.tag}:{key}{GENERATION_SEPARATOR}"

    def data_key(self, key: str, generation: str) -> str:
        return f"{self.tag}:{key}{GENERATION_SEPARATOR}{generation}"

    def lease_key(self, key: str) -> str:
        return f"{self.tag}:{key}{GENERATION_SEPARATOR}{LEASE_SUFFIX}"

    def generation_key(self, group: str) -> str:
        return f"{self.tag}!gen:{group}"

    def scan_pattern(self, pattern: str) -> str:
        """The Redis pattern matching every stored generation (and lease) of ``pattern``."""
        return f"{escape_glob(self.tag)}:{pattern}{GENERATION_SEPARATOR}*"

    def is_lease(self, redis_key: str) -> bool:
        return redis_key.endswith(GENERATION_SEPARATOR + LEASE_SUFFIX)

    def split(self, redis_key: str) -> tuple[str, str] | None:
        """The logical key and generation (or lease suffix) of a Redis key of this cache."""
        head = f"{self.tag}:"
        if not redis_key.startswith(head):
            return None
        key, separator, generation = redis_key[len(head) :].rpartition(GENERATION_SEPARATOR)
        return (key, generation) if separator else None

    def logical_key(self, redis_key: str) -> str | None:
        """The logical key a Redis data or lease key belongs to, or ``None`` if foreign."""
        parts = self.split(redis_key)
        return None if parts is None else parts[0]

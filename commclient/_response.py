"""ServiceResponse: a response as ``request_raw()`` returns it, the same on both facades."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any


def decode_json(body: bytes) -> Any:
    """``json.loads`` that fails only with ``ValueError``.

    A document nested a few thousand levels deep makes the decoder raise
    ``RecursionError``; a hostile server must not be able to raise anything the
    caller does not expect from a malformed body.
    """
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("the JSON document is nested too deeply") from None


class Headers(Mapping[str, str]):
    """Response headers, read-only; names look up case-insensitively.

    Built from either transport's headers, so callers see one type whichever facade
    they use. Repeated headers are joined with ``", "`` as both transports do.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in (items or {}).items():
            self._items[name.lower()] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class ServiceResponse:
    """A response the client read completely (decoded, at most ``max_response_bytes``)."""

    __slots__ = ("content", "elapsed", "headers", "reason_phrase", "status_code", "url")

    def __init__(
        self,
        status_code: int,
        headers: Headers,
        content: bytes,
        url: str,
        reason_phrase: str = "",
        elapsed: timedelta = timedelta(0),
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        #: The URL that answered (after redirects), without credentials or secret values.
        self.url = url
        #: The status line's text (``"Not Found"``), as the server sent it.
        self.reason_phrase = reason_phrase
        #: From sending the request of the attempt that answered to its body's last byte.
        self.elapsed = elapsed

    @property
    def text(self) -> str:
        """The body as text, in the charset of ``Content-Type`` (UTF-8 if none is named)."""
        charset = self.charset or "utf-8"
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"
        return self.content.decode(charset, errors="replace")

    @property
    def charset(self) -> str | None:
        """The ``charset`` parameter of ``Content-Type``, or ``None`` when it names none."""
        for parameter in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = parameter.strip().partition("=")
            if name.lower() == "charset" and value:
                return value.strip('"')
        return None

    def json(self) -> Any:
        """The body decoded as JSON; ``ValueError`` when it is not JSON."""
        return decode_json(self.content)

    def __repr__(self) -> str:
        return f"<ServiceResponse {self.status_code} {len(self.content)} bytes>"

"""What goes on the wire and comes off it, without I/O: request bodies, response bodies.

Both facades hand the transport the bytes built here and feed the raw bytes they read
back into a :class:`BodyReader`, so that encoding, decompression and the size limit are
one piece of code, whichever transport carries them.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from ._policy import is_ascii_digits


class _JsonNull:
    """The ``json=`` value that sends the JSON document ``null`` (``json=None`` sends nothing)."""

    _instance: _JsonNull | None = None

    def __new__(cls) -> _JsonNull:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "JSON_NULL"


JSON_NULL = _JsonNull()
"""Pass as ``json=JSON_NULL`` to send the JSON document ``null`` (``json=None`` sends no body)."""

FileValue = bytes | tuple[str, bytes] | tuple[str, bytes, str]


class Request(NamedTuple):
    """What the transport sends: the URL with its query, and the exact body bytes.

    An ``auth=`` callable receives it for each attempt, to sign it.
    """

    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None


class Body(NamedTuple):
    content: bytes
    content_type: str


def encode_body(
    *,
    json_value: Any,
    content: Any,
    data: Mapping[str, Any] | None,
    files: Mapping[str, Any] | None,
) -> Body | None:
    """The request body and its ``Content-Type``, built once so every attempt resends it."""
    given = [
        name
        for name, value in (
            ("json", json_value),
            ("content", content),
            ("data/files", data or files),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"pass one body only, got {' and '.join(given)}")
    if json_value is not None:
        document = None if json_value is JSON_NULL else json_value
        try:
            encoded = json.dumps(document, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"json= is not JSON-serialisable: {exc}") from exc
        return Body(encoded, "application/json")
    if content is not None:
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"content= must be bytes, got {type(content).__name__} (encode text first)"
            )
        return Body(bytes(content), "application/octet-stream")
    if files:
        return _multipart(data or {}, files)
    if data is not None:
        from urllib.parse import urlencode

        if not isinstance(data, Mapping):
            raise TypeError(f"data= must be a mapping of form fields, got {type(data).__name__}")
        return Body(
            urlencode(_fields(data), doseq=True).encode(), "application/x-www-form-urlencoded"
        )
    return None


def _fields(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for name, value in data.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise TypeError(f"form field {name!r} must be str, int or float, got {item!r}")
            pairs.append((str(name), str(item)))
    return pairs


def _quote(value: str) -> str:
    # As browsers do (HTML's multipart/form-data encoding): a quote or a line break in a
    # name cannot end the parameter or the header.
    for character, escaped in (('"', "%22"), ("\r", "%0D"), ("\n", "%0A")):
        value = value.replace(character, escaped)
    return value


def _multipart(data: Mapping[str, Any], files: Mapping[str, Any]) -> Body:
    boundary = os.urandom(16).hex()
    parts: list[bytes] = []
    for name, value in _fields(data):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    for name, file in files.items():
        filename, payload, media_type = _file(name, file)
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{_quote(str(name))}"; filename="{_quote(filename)}"\r\n'
            f"Content-Type: {media_type}\r\n\r\n"
        )
        parts.append(head.encode() + payload + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return Body(b"".join(parts), f"multipart/form-data; boundary={boundary}")


def _file(name: str, file: Any) -> tuple[str, bytes, str]:
    media_type = "application/octet-stream"
    filename = str(name)
    if isinstance(file, tuple) and len(file) in (2, 3):
        filename, payload = file[0], file[1]
        if len(file) == 3:
            media_type = file[2]
    else:
        payload = file
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        # A stream could not be sent again by a retry: the caller reads it first.
        raise TypeError(
            f"files[{name!r}] must hold bytes (read the file first), got {type(payload).__name__}"
        )
    if not isinstance(filename, str) or not isinstance(media_type, str):
        raise TypeError(
            f"files[{name!r}] must be bytes, (filename, bytes) or (filename, bytes, type)"
        )
    if any(c in media_type for c in "\r\n"):
        raise ValueError(f"files[{name!r}] has a content type with a line break")
    return filename, bytes(payload), media_type


def declared_size(headers: Mapping[str, str]) -> int | None:
    """The body size a response announces, so that an oversized body is refused unread."""
    length = headers.get("content-length")
    return int(length) if length is not None and is_ascii_digits(length) else None


def content_length_error(headers: Mapping[str, str]) -> str | None:
    """Why a response's ``Content-Length`` cannot frame its body, or ``None`` when it can.

    RFC 9112 6.3: an invalid value (``-1``, ``\u00b2``) or different repeated values are
    an unrecoverable error; a transport that ignores them reads the body to the close.
    Repeated identical values (``2, 2``, as urllib3 joins two headers) are one value.
    """
    length = headers.get("content-length")
    if length is None:
        return None
    values = {value.strip() for value in length.split(",")}
    if len(values) == 1 and is_ascii_digits(values.pop()):
        return None
    return f"the response's Content-Length {length!r} is not one size in bytes"


#: Decoded bytes one layer of a nested encoding hands on at a time: memory stays bounded
#: whatever a middle layer inflates to, and only the last layer counts against the limit.
_PIECE = 64 * 1024


class _Inflater:
    """gzip or deflate, inflated a bounded piece at a time (no decompression bomb)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(self._wbits)
        # "deflate" in the wild is often raw deflate without the zlib header; the first
        # two bytes tell which (RFC 1950's header check), so they are held until both came.
        self._start = b"" if not gzip else None
        self._fed = False

    @property
    def ended(self) -> bool:
        """Whether the stream is complete: nothing was fed, or its end was inflated."""
        if self._start is not None:
            return not self._start
        return self._fed is False or self._inflater.eof

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """The inflated form of ``data``, in pieces of at most ``_PIECE`` bytes."""
        if data:
            self._fed = True
        if self._start is not None:
            data = self._start + data
            if len(data) < 2:
                self._start = data
                return
            self._start = None
            if not _is_zlib_header(data):
                self._wbits = -zlib.MAX_WBITS
                self._inflater = zlib.decompressobj(self._wbits)
        while data:
            piece = self._inflater.decompress(data, _PIECE)
            if piece:
                yield piece
            if self._inflater.unconsumed_tail:
                data = self._inflater.unconsumed_tail
            elif self._inflater.eof and self._gzip:
                # A gzip body may hold several members one after the other.
                data = self._inflater.unused_data
                if data:
                    self._inflater = zlib.decompressobj(self._wbits)
            else:
                data = b""


def _is_zlib_header(data: bytes) -> bool:
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


_CODINGS = {"gzip": True, "x-gzip": True, "deflate": False}
#: Encodings one response may chain, as urllib3 (since 2.6) and curl allow.
MAX_ENCODINGS = 5
#: Bytes an encoding may add to what it encodes: deflate's stored blocks add 5 bytes per
#: 64 kB, gzip a header and a trailer. An encoded body announcing more than the limit
#: plus this (per layer) cannot decode within the limit, and is refused unread.
_OVERHEAD = 1024


class BodyReader:
    """Collects a response body from raw chunks: decoded, and never past ``limit`` bytes.

    The limit applies to the decoded bytes: a 65 kB gzip body that would inflate to
    64 MiB stops being read (and inflated) at ``limit + 1`` bytes, and a gzip body of
    random bytes a little larger on the wire than the limit is read when it decodes
    within it. An encoding this reader does not know is kept as it came, with its
    ``Content-Encoding`` header.
    """

    __slots__ = (
        "_chunks",
        "_decoders",
        "_size",
        "_wire_limit",
        "_wire_size",
        "error",
        "limit",
        "stray_body",
        "too_large",
    )

    def __init__(self, headers: Mapping[str, str], limit: int, *, announced: bool = True) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._wire_size = 0
        self.error: str | None = None
        encoding = headers.get("content-encoding")
        self._decoders: list[_Inflater] = []
        if encoding:
            codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
            if all(c in _CODINGS or c == "identity" for c in codings):
                decoded = [_CODINGS[c] for c in reversed(codings) if c in _CODINGS]
                if len(decoded) > MAX_ENCODINGS:
                    # Each layer is a decoder and a level of recursion per piece: a server
                    # could otherwise exhaust the stack (or the CPU) with a long header.
                    if announced:
                        self.error = (
                            f"the response's Content-Encoding chains {len(decoded)} "
                            f"encodings; at most {MAX_ENCODINGS} are decoded"
                        )
                    decoded = []
                self._decoders = [_Inflater(gzip) for gzip in decoded]
        # Raw bytes read at most: the limit itself when nothing is decoded; with encodings,
        # what an encoding of ``limit`` bytes can take (empty gzip members add up too).
        self._wire_limit = limit + len(self._decoders) * (limit // 8192 * 5 + _OVERHEAD)
        size = declared_size(headers) if announced else None
        self.too_large = size is not None and size > self._wire_limit
        #: A response that carries no body (to a HEAD, a 204, a 304) announces one: a
        #: broken server may send it anyway, after the head, where the next response on
        #: the connection would be read. The connection is not to be used again.
        self.stray_body = not announced and (
            "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"
        )
        if announced and self.error is None:
            self.error = content_length_error(headers)

    @property
    def wants_more(self) -> bool:
        """Whether the transport should go on reading."""
        return not self.too_large and self.error is None

    def feed(self, chunk: bytes) -> bool:
        """Take one raw chunk; return whether reading should go on."""
        self._wire_size += len(chunk)
        if self._wire_size > self._wire_limit:
            self.too_large = True
            return False
        try:
            return self._decode(0, chunk)
        except zlib.error as exc:
            self.error = f"the body does not decode as its Content-Encoding says: {exc}"
            return False

    def _decode(self, layer: int, data: bytes) -> bool:
        if layer == len(self._decoders):
            self._size += len(data)
            if self._size > self.limit:
                self.too_large = True
                return False
            if data:
                self._chunks.append(data)
            return True
        return all(self._decode(layer + 1, piece) for piece in self._decoders[layer].pieces(data))

    def finish(self) -> None:
        """The body has been read to its end: a compressed stream must have ended too.

        A body cut short whose ``Content-Length`` says the shorter size (or that ends with
        its connection) frames nothing wrong for the transport; only the encoding knows.
        """
        complete = all(decoder.ended for decoder in self._decoders)
        if self.error is None and not self.too_large and not complete:
            self.error = "the response body ends before its encoding does (cut short)"

    def body(self) -> bytes:
        return b"".join(self._chunks)

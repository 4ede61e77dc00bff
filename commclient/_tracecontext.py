"""W3C trace context (``traceparent`` / ``tracestate``) without OpenTelemetry.

A request that arrives with a ``traceparent`` continues that trace: its trace id is kept
for the request's duration (in a private context variable beside the correlation id), and
every outgoing attempt sends a ``traceparent`` with that trace id and a span id of its own.
A request without one gets a trace id derived from the correlation id: the id itself when
it is 32 lowercase hex digits (what :func:`new_correlation_id` makes), else the first 32 hex
digits of its SHA-256, so that one correlation id always maps to one trace id.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextvars import ContextVar
from typing import NamedTuple

TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
# W3C: at most 32 list members of at most 256 characters each, so 512 is the documented
# floor a vendor must keep; anything beyond is dropped rather than propagated.
MAX_TRACESTATE_LENGTH = 512

# version "00" has exactly four fields; a later version may append fields after a dash.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-[\x21-\x7e]*)?"
)
# sampled (level 1) and random (level 2): W3C has the others set to zero when propagated.
_KNOWN_FLAGS = 0x03
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_HEX32 = re.compile(r"[0-9a-f]{32}")
_TRACESTATE_VALUE = re.compile(r"[\x20-\x7e]*")


class TraceParent(NamedTuple):
    """A parsed ``traceparent`` (and the ``tracestate`` that came with it)."""

    trace_id: str
    parent_id: str
    flags: int
    tracestate: str | None = None

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 0x01)


#: The trace context a request arrived with, for the request's duration.
inbound_trace_ctx: ContextVar[TraceParent | None] = ContextVar(
    "commclient_inbound_trace", default=None
)


def parse_traceparent(value: str | None, tracestate: str | None = None) -> TraceParent | None:
    """The trace context in a ``traceparent`` header, or None when it is absent or invalid.

    Invalid means what the W3C recommendation says a receiver must ignore: a malformed
    value, version ``ff``, an all-zero trace or parent id, or extra fields on version 00.
    """
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, parent_id = match["version"], match["trace_id"], match["parent_id"]
    if version == "ff" or (version == "00" and match["rest"] is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_SPAN_ID:
        return None
    flags = int(match["flags"], 16) & _KNOWN_FLAGS
    return TraceParent(trace_id, parent_id, flags, _clean_tracestate(tracestate))


def _clean_tracestate(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_TRACESTATE_LENGTH or not _TRACESTATE_VALUE.fullmatch(value):
        return None
    return value


def trace_id_for(correlation_id: str) -> str:
    """The trace id that stands for ``correlation_id`` when no trace came in."""
    if _HEX32.fullmatch(correlation_id) and correlation_id != _ZERO_TRACE_ID:
        return correlation_id
    return hashlib.sha256(correlation_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def new_span_id() -> str:
    """A random, non-zero 16-hex-digit span id."""
    while True:
        span_id = os.urandom(8).hex()
        if span_id != _ZERO_SPAN_ID:
            return span_id


def outgoing_trace_headers(correlation_id: str | None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) for one outgoing attempt, without OpenTelemetry.

    The inbound trace when the current request carried one; else a trace derived from the
    correlation id; nothing when there is neither.
    """
    inbound = inbound_trace_ctx.get()
    if inbound is not None:
        headers = {TRACEPARENT_HEADER: format_traceparent(inbound.trace_id, inbound.flags)}
        if inbound.tracestate:
            headers[TRACESTATE_HEADER] = inbound.tracestate
        return headers
    if correlation_id is None:
        return {}
    return {TRACEPARENT_HEADER: format_traceparent(trace_id_for(correlation_id), 0x01)}


def format_traceparent(trace_id: str, flags: int, span_id: str | None = None) -> str:
    """A version-00 ``traceparent`` naming a new span (``span_id``, random by default)."""
    return f"00-{trace_id}-{span_id or new_span_id()}-{flags & 0xFF:02x}"

"""Correlation id: the context variable, header validation and the logging filter."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

CORRELATION_HEADER = "X-Correlation-ID"
MAX_CORRELATION_ID_LENGTH = 128

correlation_id_ctx: ContextVar[str | None] = ContextVar("correlation_id", default=None)
"""The current correlation id: sent as ``X-Correlation-ID`` on every attempt and put on
every log record (``None``, the default: no header is sent)."""

logger = logging.getLogger("commclient")


def new_correlation_id() -> str:
    """Return a fresh random correlation id."""
    return uuid.uuid4().hex


def is_valid_correlation_id(value: str) -> bool:
    """Tell whether ``value`` may be sent as a header value.

    Control characters (CR/LF above all) would let a caller inject headers, and an
    unbounded value would let one bloat every log line downstream.
    """
    return 0 < len(value) <= MAX_CORRELATION_ID_LENGTH and value.isascii() and value.isprintable()


def outgoing_correlation_id() -> str | None:
    """Return the id to send for the current context, replacing an unsafe one.

    The replacement is stored back into the context so that every attempt of the
    call, and every log record, carries the same id.
    """
    value = correlation_id_ctx.get()
    if value is None or is_valid_correlation_id(value):
        return value
    replacement = new_correlation_id()
    logger.warning(
        "unsafe correlation id replaced",
        extra={"correlation_id": replacement, "rejected_length": len(value)},
    )
    correlation_id_ctx.set(replacement)
    return replacement


class CorrelationIdFilter(logging.Filter):
    """Put the current correlation id on every record as ``record.correlation_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.correlation_id`` unless the record has one; never drops a record."""
        if not hasattr(record, "correlation_id"):
            record.correlation_id = correlation_id_ctx.get()
        return True


def log_correlation_ids(*handlers: logging.Handler) -> None:
    """Give every record these handlers format a ``correlation_id`` (``None`` when unset).

    One line after the logging set-up (``logging.basicConfig(...)``, ``dictConfig``): a
    format with ``%(correlation_id)s`` then works for the application's own records too,
    not only for commclient's. Without arguments, every handler of the root logger.
    Calling it again adds no second filter.
    """
    for handler in handlers or tuple(logging.getLogger().handlers):
        if not any(isinstance(f, CorrelationIdFilter) for f in handler.filters):
            handler.addFilter(CorrelationIdFilter())


# ``sig`` alone: an Azure SAS or a signed URL's signature (OpenTelemetry's url.full list).
_SENSITIVE_NAME = re.compile(
    r"token|secret|passw|key|auth|signature|credential|session|^sig$", re.I
)
_SENSITIVE_PAIR = re.compile(
    r"(?P<name>[\w.\-]*(?:token|secret|passw|key|auth|signature|credential|session)[\w.\-]*"
    r"|(?<![\w.\-])sig)"
    r"=(?P<value>[^&\s'\";,)]*)",
    re.I,
)
_USERINFO = re.compile(r"//[^/@\s]+@")
REDACTED = "[REDACTED]"


def redact_params(params: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Query parameters (as pairs) for logs and errors, with secret-looking values replaced."""
    return [(name, REDACTED if _SENSITIVE_NAME.search(name) else value) for name, value in params]


def redact_exception(error: BaseException) -> None:
    """Redact, in place, the messages of ``error`` and of the exceptions it wraps.

    A transport's exception names the URL it failed on, secret query values included;
    chained as ``__cause__`` it would print them in every traceback of the caller.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        args = []
        for arg in current.args:
            if isinstance(arg, str):
                arg = redact_text(arg)
            elif isinstance(arg, BaseException):
                pending.append(arg)
            args.append(arg)
        current.args = tuple(args)
        for name in ("reason", "url", "__cause__", "__context__"):
            value = getattr(current, name, None)
            if isinstance(value, BaseException):
                pending.append(value)
            elif isinstance(value, str) and name == "url":
                with contextlib.suppress(AttributeError):
                    setattr(current, name, redact_text(value))


def redact_text(text: str) -> str:
    """Drop URL credentials and secret-looking ``name=value`` values from free text,
    such as a transport exception's message."""
    text = _USERINFO.sub("//", text)
    return _SENSITIVE_PAIR.sub(lambda m: f"{m['name']}={REDACTED}", text)


class TransportRedactionFilter(logging.Filter):
    """Rewrite a transport's log record without URL credentials or secret query values.

    httpx logs every request at INFO and urllib3 every path with its query at DEBUG, into
    handlers the service configured for its own lines; the record's arguments (a URL
    object) are dropped, so that no handler or formatter can print them either.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A record whose arguments do not fit its format: logging reports that from the
            # handler, but a filter that raised would raise into the transport's call.
            message = f"{record.msg} {record.args!r}"
        record.msg = redact_text(message)
        record.args = ()
        if record.exc_info is not None and record.exc_info[1] is not None:
            redact_exception(record.exc_info[1])
        return True


def redact_transport_logs(logger_names: Iterable[str]) -> None:
    """Attach the redaction filter to the loggers a transport writes to (once each).

    A logger's filter sees only the records logged on that very logger, not those its
    children propagate, so each logger that emits is named.
    """
    for name in logger_names:
        transport_logger = logging.getLogger(name)
        if not any(isinstance(f, TransportRedactionFilter) for f in transport_logger.filters):
            transport_logger.addFilter(TransportRedactionFilter())

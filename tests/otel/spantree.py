"""Walking the tree of finished spans."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan


def ancestors(span: ReadableSpan, finished: Sequence[ReadableSpan]) -> list[int]:
    """The ids of the spans above ``span`` among ``finished``, nearest first."""
    by_id = {s.context.span_id: s for s in finished}
    found: list[int] = []
    parent = span.parent
    while parent is not None:
        found.append(parent.span_id)
        above = by_id.get(parent.span_id)
        parent = None if above is None else above.parent
    return found

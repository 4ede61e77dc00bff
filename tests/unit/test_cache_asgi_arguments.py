"""InvalidationRule refuses, at set-up, what would silently invalidate the wrong thing."""

from __future__ import annotations

from typing import Any, ParamSpec, TypeVar

import pytest

from commclient.asgi import InvalidationRule, Scope

T = TypeVar("T")
P = ParamSpec("P")


async def app(scope: Scope, receive: Any, send: Any) -> None:
    return None


RULE = InvalidationRule("/api/things", groups=("thing",))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # Each string was taken character by character: groups "t", "h", ... were bumped,
        # and methods {"P", "O", "S", "T"} matched no request at all.
        ({"groups": "thing"}, r"groups takes a collection of strings, got the string 'thing'"),
        ({"patterns": "thing:*"}, r"patterns takes a collection of strings"),
        ({"groups": ("thing",), "methods": "POST"}, r"methods .* the string 'POST'; write"),
    ],
)
def test_a_string_where_a_collection_is_expected_is_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        InvalidationRule("/api/things", **kwargs)

"""What ``@cache.cached(...)`` knows of the function it decorates: its key and its model.

The key is a ``str.format`` template over the function's parameters, filled with the
arguments of each call (defaults included): ``"user:{user_id}"``, ``"user:{user.id}"``,
``"report:{day:%Y-%m-%d}"``. With ``group``, the key is put in that group
(``"{group}:{key}"``), so that ``invalidate_group(group)`` drops every value the function
cached. The model is the function's return annotation (``None``, ``Any`` or none: plain
JSON).
"""

from __future__ import annotations

import inspect
import re
import string
import typing
from collections.abc import Callable
from typing import Any

from ._keys import validate_group, validate_key

# What ``str()`` of an object without a ``__str__`` or ``__repr__`` of its own looks like:
# ``<Account object at 0x7f...>``. Its address is no identity: another object has it once
# this one is gone, and forked workers' objects share addresses from the start, so a key
# holding one would serve one object's value for another.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


class CachedCall:
    """The key template and the model of one decorated function."""

    def __init__(
        self, function: Callable[..., Any], template: str, group: str | None, model: Any = None
    ) -> None:
        self.signature = inspect.signature(function)
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
        if not fields and "{" not in template:
            self.constant: str | None = template
        else:
            self.constant = None
        for field in fields:
            name = field.split(".", 1)[0].split("[", 1)[0]
            if not name.isidentifier() or name not in self.signature.parameters:
                raise ValueError(
                    f"key template {template!r} uses {{{field}}}, which is not a parameter "
                    f"of {function.__qualname__}{self.signature}"
                )
        self.template = template
        self.prefix = f"{validate_group(group)}:" if group else ""
        if self.constant is not None:
            validate_key(self.prefix + self.constant)
        # An explicit model stands for the annotation, which then need not resolve (a
        # name imported under ``TYPE_CHECKING``, a class defined further down).
        self.model = model if model is not None else _model_of(function)

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The cache key of one call (validated when the cache uses it)."""
        if self.constant is not None:
            return self.prefix + self.constant
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = self.prefix + self.template.format(**bound.arguments)
        if _ADDRESS.search(key):
            raise TypeError(
                f"cache key {key!r} (template {self.template!r}) holds an object's address, "
                "which another object may have later or in another process: name an "
                "attribute that identifies it ({account.id}) or give it a __str__"
            )
        return key


def _model_of(function: Callable[..., Any]) -> Any:
    """The return annotation (resolved), or ``None`` for plain JSON.

    Only the return annotation is resolved: a parameter's may name what exists for type
    checkers alone (``if TYPE_CHECKING:``) and is no business of the cache's.
    """
    target = inspect.unwrap(function)
    annotations = getattr(target, "__annotations__", None) or {}
    if "return" not in annotations:
        return None

    def returns() -> None: ...

    returns.__annotations__ = {"return": annotations["return"]}
    try:
        annotation = typing.get_type_hints(
            returns, globalns=getattr(target, "__globals__", None)
        ).get("return")
    except Exception as error:
        raise TypeError(
            f"the return annotation of {function.__qualname__} cannot be resolved ({error}); "
            "pass model= to cached()"
        ) from error
    if annotation in (None, type(None), Any):
        return None
    return annotation

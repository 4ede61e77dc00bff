"""``response_model=``: a JSON body validated into a pydantic model or a dataclass.

The validation is the cache's (one ``TypeAdapter`` per model, pydantic imported only
when a model is used; dataclasses of JSON fields work without pydantic), so a model
reads the same from a response as from the cache. A mismatch names the field.
"""

from __future__ import annotations

from typing import Any


class ModelMismatch(Exception):
    """The document is JSON, but not of the model: the message names the field."""


def model_name(model: Any) -> str:
    return getattr(model, "__name__", None) or repr(model)


def validate_model(document: Any, model: Any) -> Any:
    """``document`` as an instance of ``model``; :class:`ModelMismatch` naming the field."""
    from .cache._codec import Codec, _has_pydantic, _pydantic
    from .cache._exceptions import CacheError

    try:
        return Codec(0).validate(document, model)
    except TypeError as exc:
        # A dataclass built without pydantic: Python names the field in the message.
        raise ModelMismatch(str(exc)) from exc
    except CacheError as exc:
        # Not the response's fault: the model needs pydantic, which is not installed.
        raise TypeError(f"response_model={model_name(model)}: {exc}") from None
    except Exception as exc:
        if not (_has_pydantic() and isinstance(exc, _pydantic().ValidationError)):
            raise
        raise ModelMismatch(_describe(exc.errors())) from exc


def _describe(errors: list[dict[str, Any]]) -> str:
    """pydantic's errors, each as ``field.path: message``."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "(the document)"
        parts.append(f"field {where!r}: {error.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)

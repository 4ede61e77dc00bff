"""JSON serialization of cached values (never pickle), with optional pydantic validation.

Plain JSON values (dict, list, str, int, float, bool, None) go through :mod:`json` with
``allow_nan=False``, so what is stored is what another process can read back. Pydantic
models, dataclasses and typing forms (``list[Tool]``) go through a cached pydantic
``TypeAdapter``; pydantic is imported only when a model is used. Without pydantic,
dataclasses of JSON fields still work (built with ``Model(**data)``).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import types
import typing
import uuid
from functools import lru_cache
from typing import Any

from ._exceptions import CacheError, CacheSerializationError, CacheValueTooLargeError

JSON_TYPES: tuple[type, ...] = (dict, list, str, int, float, bool, type(None))


class CorruptValueError(Exception):
    """A stored value is not valid JSON: nobody can read it."""


class ModelMismatchError(Exception):
    """A stored value is valid JSON but not of the requested model (another version's)."""


class _PydanticMissing:
    """Marker for "pydantic is not installed"."""


@lru_cache(maxsize=1)
def _pydantic() -> Any:
    try:
        import pydantic
    except ImportError:  # pragma: no cover - exercised in environments without pydantic
        return _PydanticMissing
    return pydantic


@lru_cache(maxsize=512)
def _adapter(model: Any) -> Any:
    """One ``TypeAdapter`` per model: building one costs far more than using it."""
    return _pydantic().TypeAdapter(model)


def _is_class(model: Any) -> bool:
    """A plain class (on Python 3.10, ``list[int]`` also passes ``isinstance(_, type)``)."""
    return isinstance(model, type) and not isinstance(model, types.GenericAlias)


def _type_of(value: object) -> Any:
    return type(value)


def _has_pydantic() -> bool:
    return _pydantic() is not _PydanticMissing


_IMMUTABLE_LEAVES: frozenset[Any] = frozenset(
    (str, int, float, bool, bytes, type(None), decimal.Decimal, uuid.UUID)
) | {datetime.date, datetime.datetime, datetime.time, datetime.timedelta}


@lru_cache(maxsize=512)
def is_immutable(model: Any) -> bool:
    """Tell whether values of ``model`` can be shared between callers.

    The local tier hands one decoded object to many callers only when none of them can
    change it under the others. Freezing is shallow (a frozen model's ``list`` field can
    still be appended to), so the whole type is checked: frozen pydantic models and
    frozen dataclasses whose fields are, all the way down, scalars, enums, literals,
    tuples, frozensets and such models. Anything else is decoded afresh for every hit.
    """
    return _deeply_immutable(model, frozenset())


def _deeply_immutable(annotation: Any, seen: frozenset[Any]) -> bool:
    if annotation in seen:
        return True  # a recursive model: the rest of the check decides
    if annotation in _IMMUTABLE_LEAVES:
        return True
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Literal:
        return True
    if origin is typing.Annotated:
        return _deeply_immutable(arguments[0], seen)
    if origin in (typing.Union, types.UnionType, tuple, frozenset):
        return all(a is Ellipsis or _deeply_immutable(a, seen) for a in arguments)
    if not _is_class(annotation):
        return False
    if issubclass(annotation, enum.Enum):
        return True
    seen = seen | {annotation}
    params = getattr(annotation, "__dataclass_params__", None)
    if params is not None:
        if not params.frozen:
            return False
        try:
            hints = typing.get_type_hints(annotation)
        except Exception:
            return False
        names = [field.name for field in dataclasses.fields(annotation)]
        return all(_deeply_immutable(hints.get(name, Any), seen) for name in names)
    config = getattr(annotation, "model_config", None)
    fields = getattr(annotation, "model_fields", None)
    if not isinstance(config, dict) or not config.get("frozen") or fields is None:
        return False
    return all(_deeply_immutable(field.annotation, seen) for field in fields.values())


def _jsonable(value: object) -> Any:
    """``json.dumps``'s fallback: models and dataclasses become JSON data, nothing else.

    Sets, bytes and arbitrary objects are refused rather than converted, so that what
    comes back from the cache is what went in.
    """
    if _has_pydantic() and isinstance(value, _pydantic().BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if _has_pydantic():
            return _adapter(_type_of(value)).dump_python(value, mode="json")
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _validation_errors() -> tuple[type[BaseException], ...]:
    # RecursionError: JSON nested deeper than the parser goes (100 000 ``[`` planted by
    # anyone who can write to Redis) is unreadable here, like any other corrupt value.
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, RecursionError)
    if _has_pydantic():
        errors += (_pydantic().ValidationError,)
    return errors


def _is_json(data: bytes | str) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


class Codec:
    """Encode values to JSON bytes and decode them back, within a size limit."""

    def __init__(self, max_value_bytes: int) -> None:
        self.max_value_bytes = max_value_bytes

    def encode(self, key: str, value: object) -> bytes:
        """Return the JSON bytes of ``value``; raise if it is not JSON or too large."""
        try:
            data = json.dumps(
                value,
                default=_jsonable,
                ensure_ascii=False,
                allow_nan=False,
                separators=(",", ":"),
            ).encode()
        except (TypeError, ValueError, RecursionError) as error:
            raise CacheSerializationError(
                f"value for cache key {key!r} cannot be stored as JSON: {error}"
            ) from error
        if len(data) > self.max_value_bytes:
            raise CacheValueTooLargeError(key, len(data), self.max_value_bytes)
        return data

    def decode(self, data: bytes | str, model: Any = None) -> Any:
        """Return the value in ``data``, validated as ``model`` when one is given."""
        try:
            if model is None:
                # A str skips json's detection of the bytes' encoding (always UTF-8 here).
                return json.loads(data.decode() if isinstance(data, bytes) else data)
            if _has_pydantic():
                return _adapter(model).validate_json(data)
            return self._build_without_pydantic(json.loads(data), model)
        except _validation_errors() as error:
            if model is not None and _is_json(data):
                raise ModelMismatchError(str(error)) from error
            raise CorruptValueError(str(error)) from error

    def validate(self, value: object, model: Any) -> Any:
        """Turn what a loader returned into an instance of ``model`` (dict → model)."""
        if model is None:
            return value
        if _has_pydantic():
            return _adapter(model).validate_python(value)
        return self._build_without_pydantic(value, model)

    @staticmethod
    def _build_without_pydantic(value: Any, model: Any) -> Any:
        if _is_class(model) and isinstance(value, model):
            return value
        if _is_class(model) and dataclasses.is_dataclass(model) and isinstance(value, dict):
            build: Any = model
            return build(**value)
        if model in JSON_TYPES:
            raise TypeError(f"expected {model.__name__}, got {type(value).__name__}")
        raise CacheError(f"validating cached values as {model!r} needs pydantic")

"""JSON serialization of cached values (never pickle), with optional pydantic validation.

Plain JSON values (dict, list, str, int, float, bool, None) go through :mod:`json` with
``allow_nan=False``, and values JSON would change (tuples, non-``str`` dict keys) are
refused, so what is stored is what another process reads back. Models are stored by
field name and read by name or alias, whatever their alias configuration. Pydantic
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
from collections.abc import Callable
from copy import deepcopy
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


def is_class(model: Any) -> bool:
    """A plain class (on Python 3.10, ``list[int]`` also passes ``isinstance(_, type)``)."""
    return isinstance(model, type) and not isinstance(model, types.GenericAlias)


def _type_of(value: object) -> Any:
    return type(value)


def _has_pydantic() -> bool:
    return _pydantic() is not _PydanticMissing


_IMMUTABLE_LEAVES: frozenset[Any] = frozenset(
    (str, int, float, bool, bytes, type(None), decimal.Decimal, uuid.UUID)
) | {datetime.date, datetime.datetime, datetime.time, datetime.timedelta}


Copier = Callable[[Any], Any]


class NotCopyableError(TypeError):
    """A value whose shape is not its model's (a subclass instance, an attribute the
    model does not declare): its model's copier cannot copy it. Copiers raise
    :class:`TypeError` for such values, this one or Python's own (``list.copy(())``)."""


def share(value: Any) -> Any:
    """The copier of immutable values: every caller may hold the same object."""
    return value


@lru_cache(maxsize=512)
def copier(model: Any) -> Copier | None:
    """How the local tier hands a decoded value of ``model`` to one more caller.

    Freezing is shallow (a frozen model's ``list`` field can still be appended to), so
    the whole type is walked once, per model:

    - :func:`share` when values are immutable all the way down (scalars, enums,
      literals, tuples, frozensets, and frozen pydantic models or frozen dataclasses of
      those): every caller gets the same object;
    - a function copying every ``list``, ``dict`` and ``set`` by its element type, and
      every pydantic model or dataclass field by field, sharing only immutable parts.
      A copy is of an object that was validated when it was decoded, so no validator
      runs again (as with pydantic's own ``__copy__``). It raises :class:`TypeError`
      for a value not of the model's shape;
    - ``None`` for what the walk does not understand (``Any``, bare ``list``, unions of
      mutable types, custom classes, models with private attributes or
      ``extra='allow'``, dataclasses with ``__slots__``): decode afresh for every caller.
    """
    walking: set[Any] = set()
    assumed: set[Any] = set()

    def walk(annotation: Any) -> Copier | None:
        if annotation in _IMMUTABLE_LEAVES:
            return share
        origin = typing.get_origin(annotation)
        arguments = typing.get_args(annotation)
        if origin is typing.Literal:
            return share
        if origin is typing.Annotated:
            return walk(arguments[0])
        if origin in (typing.Union, types.UnionType):
            members = [walk(a) for a in arguments if a is not type(None)]
            if all(member is share for member in members):
                return share
            if len(members) == 1 and members[0] is not None:
                return _optional(members[0])
            return None
        if origin in (tuple, frozenset):
            immutable = all(a is Ellipsis or walk(a) is share for a in arguments)
            return share if immutable else None
        if origin in (list, set, dict):
            parts = [walk(a) for a in arguments]
            return _container(origin, *parts) if len(parts) in (1, 2) else None
        if not is_class(annotation):
            return None
        if issubclass(annotation, enum.Enum):
            return share
        if annotation in walking:
            assumed.add(annotation)  # recursive: the rest of the walk decides
            return share
        walking.add(annotation)
        try:
            made = _fields_copier(annotation, walk)
        finally:
            walking.discard(annotation)
        if made is not share and annotation in assumed:
            return None  # a recursive model with mutable parts: copying it is not worth it
        return made

    return walk(model)


def private_copy(copy: Copier, value: Any, model: Any) -> Any:
    """``copy(value)``, refusing (:class:`TypeError`) to share an instance of a subclass of
    ``model``: it may have mutable fields of its own (a loader may return one)."""
    copied = copy(value)
    if copied is value and is_class(model) and type(value) is not model:
        raise NotCopyableError(f"a {type(value).__name__} where a {model.__name__} was declared")
    return copied


def caller_copy(value: Any, model: Any) -> Any:
    """``value`` for one more of the callers that share it (one load, several callers):
    a copy by ``model``'s copier, else a deep copy; ``value`` itself when immutable."""
    copy = copier(model)
    if copy is not None:
        try:
            return private_copy(copy, value, model)
        except TypeError:
            pass
    return deepcopy(value)


# They refuse (TypeError) what is not of their kind.
_SHALLOW_COPIES: dict[type, Copier] = {list: list.copy, set: set.copy, dict: dict.copy}


def _optional(inner: Copier) -> Copier:
    def copy(value: Any) -> Any:
        return None if value is None else inner(value)

    return copy


def _container(kind: type, first: Copier | None, second: Copier | None = share) -> Copier | None:
    """The copier of ``list[first]``, ``set[first]`` or ``dict[first, second]``."""
    element = second if kind is dict else first
    if element is None or (kind is not list and first is not share):
        return None  # unknown elements, or keys that are not immutable
    if element is share:
        return _SHALLOW_COPIES[kind]
    items = list.__iter__ if kind is list else dict.items  # refuse what is not of the kind

    def copy(value: Any, element: Copier = element) -> Any:
        if kind is list:
            return [element(item) for item in items(value)]
        return {key: element(item) for key, item in items(value)}

    return copy


def _fields_copier(cls: type, walk: Callable[[Any], Copier | None]) -> Copier | None:
    """The copier of a pydantic model or a dataclass, from its fields' copiers."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is not None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:
            return None
        frozen = params.frozen
        annotations = {field.name: hints.get(field.name, Any) for field in dataclasses.fields(cls)}
        model = False
    else:
        config = getattr(cls, "model_config", None)
        fields = getattr(cls, "model_fields", None)
        if not isinstance(config, dict) or not isinstance(fields, dict):
            return None
        if config.get("extra") == "allow" or getattr(cls, "__private_attributes__", None):
            return None  # extras of any type, or attributes that may change on any model
        frozen = bool(config.get("frozen"))
        annotations = {name: field.annotation for name, field in fields.items()}
        model = True
    # Attributes in slots of the class's own would not be copied (pydantic's are, below).
    base = _pydantic().BaseModel if model else object
    in_dict = next((vars(k)["__dict__"] for k in cls.__mro__ if "__dict__" in vars(k)), None)
    if in_dict is None or any(vars(k).get("__slots__") for k in cls.__mro__ if k is not base):
        return None
    copiers = {name: walk(annotation) for name, annotation in annotations.items()}
    if any(field is None for field in copiers.values()):
        return None
    if frozen and all(field is share for field in copiers.values()):
        return share
    mutable = tuple((name, field) for name, field in copiers.items() if field not in (None, share))
    return _object_copier(cls, len(copiers), mutable, in_dict, model)


def _object_copier(
    cls: Any, size: int, mutable: tuple[tuple[str, Copier], ...], in_dict: Any, model: bool
) -> Copier:
    """Copy an instance's ``__dict__`` (its fields; ``in_dict`` is its descriptor) and, for
    a pydantic model, the rest of what pydantic keeps on one: ``__pydantic_fields_set__``
    (copied), and no extras nor private attributes (the walk refuses models that can
    have either). Written out per model, as straight-line code: this runs on every
    local-tier hit, and a loop and a closure cost a tenth of it. The attributes are set
    through their descriptors: a frozen instance refuses ``setattr``."""
    names: dict[str, Any] = {
        "cls": cls,
        "new": object.__new__,
        "set_state": in_dict.__set__,
        "refuse": NotCopyableError,
    }
    lines = [
        "def copy(value):",
        "    if type(value) is not cls:",
        "        raise refuse(f'a {type(value).__name__} where a {cls.__name__} was declared')",
        "    state = value.__dict__.copy()",
        f"    if len(state) != {size}:",
        "        raise refuse(f'a {cls.__name__} with attributes that are not its fields')",
    ]
    for number, (name, field) in enumerate(mutable):
        names[f"field{number}"] = field
        lines.append(f"    state[{name!r}] = field{number}(state[{name!r}])")
    lines += ["    instance = new(cls)", "    set_state(instance, state)"]
    if model:
        slots = vars(_pydantic().BaseModel)
        for slot in ("fields_set", "extra", "private"):
            names[slot] = slots[f"__pydantic_{slot}__"].__set__
        lines += [
            "    fields_set(instance, value.__pydantic_fields_set__.copy())",
            "    extra(instance, None)",
            "    private(instance, None)",
        ]
    exec("\n".join([*lines, "    return instance"]), names)
    copy: Copier = names["copy"]
    return copy


def _jsonable(value: object) -> Any:
    """``json.dumps``'s fallback: models and dataclasses become JSON data, nothing else.

    Computed fields are left out: they are computed again when the value is read, and a
    model that forbids extras would refuse them as such.

    Sets, bytes and arbitrary objects are refused rather than converted, so that what
    comes back from the cache is what went in.
    """
    if _has_pydantic() and isinstance(value, _pydantic().BaseModel):
        return value.model_dump(mode="json", by_alias=False, exclude_computed_fields=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if _has_pydantic():
            return _adapter(_type_of(value)).dump_python(
                value, mode="json", by_alias=False, exclude_computed_fields=True
            )
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _is_structured(value: object) -> bool:
    """A pydantic model or dataclass instance (stored through :func:`_jsonable`)."""
    if _has_pydantic() and isinstance(value, _pydantic().BaseModel):
        return True
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _reads_back(value: Any) -> bool:
    """Whether a model or dataclass instance is equal to what its JSON validates back to
    (a field excluded from dumps, a serializer without its validator: it is not)."""
    kind = _type_of(value)
    try:
        if _has_pydantic():
            adapter = _adapter(kind)
            data = adapter.dump_json(value, by_alias=False, exclude_computed_fields=True)
            return bool(adapter.validate_json(data, by_alias=True, by_name=True) == value)
        return bool(kind(**json.loads(json.dumps(dataclasses.asdict(value)))) == value)
    except _validation_errors():
        return False


def _reads_back_as(model: Any, data: bytes, value: object) -> bool:
    """Whether ``data`` validates as ``model`` to a value equal to ``value``."""
    if not _has_pydantic():
        return False
    try:
        read = _adapter(model).validate_json(data, by_alias=True, by_name=True)
    except _validation_errors():
        return False
    return bool(read == value) and type(read) is type(value)


def unfaithful(value: object) -> str | None:
    """Why ``value`` would not read back from JSON as it is, or ``None`` if it would.

    JSON turns a tuple into a list and an ``int`` key into a ``str``: a reader would get
    another value than the writer stored (and a cache miss another value than a hit),
    so such values are refused rather than converted. Iterative: a value nested deeper
    than Python recurses was already refused by :func:`json.dumps`. Every loaded value
    is checked: the walk that names where the problem is runs only once one was found.
    """
    if _plain_json(value):
        return None
    return _where_unfaithful(value)


_PLAIN = (str, int, float)


def _plain_json(value: object) -> bool:
    """Whether ``value`` is made of dicts with ``str`` keys, lists and scalars only."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, _PLAIN) or item is None:
            continue
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    return False
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        else:
            return False
    return True


def _where_unfaithful(value: object) -> str | None:
    pending: list[tuple[object, str]] = [(value, "the value")]
    while pending:
        item, where = pending.pop()
        if isinstance(item, _PLAIN) or item is None:
            continue
        if isinstance(item, dict):
            for key, member in item.items():
                if not isinstance(key, str):
                    return (
                        f"{where} has the {type(key).__name__} key {key!r}, "
                        "which JSON would turn into a str"
                    )
                pending.append((member, f"{where}[{key!r}]"))
        elif isinstance(item, list):
            pending.extend((member, f"{where}[{index}]") for index, member in enumerate(item))
        elif isinstance(item, tuple):
            return f"{where} is a tuple, which JSON would turn into a list"
        elif _is_structured(item) and not _reads_back(item):
            return f"{where} (a {type(item).__name__}) does not validate back from its JSON"
    return None


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


def _equal(read: object, value: object) -> bool:
    """``read == value``, ``False`` where comparing them fails."""
    try:
        return bool(read == value)
    except Exception:
        return False


_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(text: str) -> Any:
    """``json.loads(text)``, through the scanner alone when ``text`` is one JSON value
    with nothing around it (every value this cache stores): ``json.loads`` adds two
    regular-expression matches and two Python calls to each read and miss."""
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(text):
        return json.loads(text)  # whitespace around it, more after it, or not JSON
    return value


_ENCODER = json.JSONEncoder(
    default=_jsonable, ensure_ascii=False, allow_nan=False, separators=(",", ":")
)
"""Built once: ``json.dumps`` with options builds an encoder on every call."""


class Codec:
    """Encode values to JSON bytes and decode them back, within a size limit."""

    def __init__(self, max_value_bytes: int) -> None:
        self.max_value_bytes = max_value_bytes

    def encode(self, key: str, value: object, model: Any = None) -> bytes:
        """Return the JSON bytes of ``value``; raise if it is not JSON or too large, or
        would not read back as it is: as plain JSON, or, with a ``model`` (a loader's
        value), as that model (a ``NamedTuple``, ``tuple[int, str]``, ``dict[int, str]``
        read back faithfully through it)."""
        return self.encode_and_read(key, value, model)[0]

    def encode_and_read(self, key: str, value: object, model: Any = None) -> tuple[bytes, Any]:
        """:meth:`encode`, and what its JSON decodes to (a new object, equal to ``value``
        when it is plain JSON). The decoded copy is also the faithfulness check: a value
        equal to what its JSON reads back as needs no walk through it; any other is
        walked, to find what would change (or, for a model instance, to accept it)."""
        try:
            text = _ENCODER.encode(value)
            data = text.encode()
        except (TypeError, ValueError, RecursionError) as error:
            raise CacheSerializationError(
                f"value for cache key {key!r} cannot be stored as JSON: {error}"
            ) from error
        read = _loads(text)
        if not _equal(read, value):
            problem = unfaithful(value)
            if problem is not None and model is not None and _reads_back_as(model, data, value):
                problem = None
            if problem is not None:
                raise CacheSerializationError(
                    f"value for cache key {key!r} would not read back as stored: {problem}"
                )
        if len(data) > self.max_value_bytes:
            raise CacheValueTooLargeError(key, len(data), self.max_value_bytes)
        return data, read

    def decode(self, data: bytes | str, model: Any = None) -> Any:
        """Return the value in ``data``, validated as ``model`` when one is given."""
        try:
            if model is None:
                # A str skips json's detection of the bytes' encoding (always UTF-8 here).
                return _loads(data.decode() if isinstance(data, bytes) else data)
            if _has_pydantic():
                # By name or by alias: values are stored by field name, and a model
                # with aliases may validate by alias only.
                return _adapter(model).validate_json(data, by_alias=True, by_name=True)
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
            return _adapter(model).validate_python(value, by_alias=True, by_name=True)
        return self._build_without_pydantic(value, model)

    @staticmethod
    def _build_without_pydantic(value: Any, model: Any) -> Any:
        if is_class(model) and isinstance(value, model):
            return value
        if is_class(model) and dataclasses.is_dataclass(model) and isinstance(value, dict):
            build: Any = model
            return build(**value)
        if model in JSON_TYPES:
            raise TypeError(f"expected {model.__name__}, got {type(value).__name__}")
        raise CacheError(f"validating cached values as {model!r} needs pydantic")

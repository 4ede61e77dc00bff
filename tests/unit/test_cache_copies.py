"""What the local tier hands out: one shared object for immutable models, else a copy of
the mutable parts made by a copier built once per model, else a fresh decode.

Whatever a caller mutates in what it got, the next caller gets the value as stored.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import threading
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import pydantic
import pytest
from prometheus_client import CollectorRegistry, Counter, multiprocess, values
from pydantic import BaseModel, ConfigDict, PrivateAttr, RootModel, field_validator

from commclient._metrics import metric_family
from commclient.cache import InvalidationMessage
from commclient.cache._codec import (
    Codec,
    ModelMismatchError,
    NotCopyableError,
    copier,
    share,
)
from commclient.cache._instruments import CacheMetrics
from commclient.cache._local import MISSING, LocalTier

CODEC = Codec(1 << 20)
T = TypeVar("T")


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Meta:
    items: list[int]
    label: str


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Tool(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    args: list[str]


class Profile(BaseModel):
    """Frozen on top, mutable underneath: every kind of mutable part the copier knows."""

    model_config = ConfigDict(frozen=True)
    name: str
    colour: Colour
    kind: Literal["a", "b"]
    point: Point
    tags: list[str]
    tool: Tool
    tools: list[Tool]
    limits: dict[str, list[int]]
    flags: set[str]
    note: list[str] | None
    missing: list[str] | None
    meta: Meta
    pairs: tuple[tuple[str, int], ...]


PROFILE_JSON = (
    b'{"name":"p","colour":"red","kind":"a","point":{"x":1,"y":2},"tags":["t"],'
    b'"tool":{"name":"t","args":["-v"]},"tools":[{"name":"u","args":["-q"]}],'
    b'"limits":{"a":[1,2]},"flags":["f"],"note":["n"],"missing":null,'
    b'"meta":{"items":[1],"label":"m"},"pairs":[["a",1]]}'
)


def mutate(profile: Profile) -> None:
    """Change everything a caller can reach in a (frozen) Profile."""
    profile.tags.append("x")
    profile.tool.args.append("x")
    profile.tools.append(Tool(name="x", args=[]))
    profile.tools[0].args.append("x")
    profile.limits["a"].append(3)
    profile.limits["b"] = []
    profile.flags.add("x")
    assert profile.note is not None
    profile.note.append("x")
    profile.meta.items.append(2)
    profile.meta.label = "changed"
    profile.model_fields_set.discard("name")


def test_a_copy_equals_a_fresh_decode_and_shares_nothing_mutable() -> None:
    copy = copier(Profile)
    assert copy is not None
    assert copy is not share
    stored = CODEC.decode(PROFILE_JSON, Profile)
    fresh = CODEC.decode(PROFILE_JSON, Profile)
    for _ in range(2):
        given = copy(stored)
        assert type(given) is Profile
        assert given == fresh
        assert given.model_dump() == fresh.model_dump()
        assert given.model_dump_json() == fresh.model_dump_json()
        assert given.model_fields_set == fresh.model_fields_set
        assert given.point is stored.point  # immutable parts are shared
        mutate(given)
        assert stored == fresh  # the stored object did not see any of it
        assert stored.model_fields_set == fresh.model_fields_set


class Page(BaseModel, Generic[T]):
    items: list[T]


@pydantic.dataclasses.dataclass
class Checked:
    items: list[int]


def test_copies_of_root_generic_and_dataclass_models() -> None:
    for model, data in [
        (RootModel[list[int]], b"[1,2]"),
        (Page[Tool], b'{"items":[{"name":"a","args":["x"]}]}'),
        (Checked, b'{"items":[1]}'),
    ]:
        copy = copier(model)
        assert copy is not None
        stored = CODEC.decode(data, model)
        given = copy(stored)
        assert given == CODEC.decode(data, model)
        assert type(given) is model
        given_items = given.root if isinstance(given, RootModel) else given.items
        stored_items = stored.root if isinstance(stored, RootModel) else stored.items
        assert given_items is not stored_items


def test_copies_of_generic_forms_and_plain_dataclasses() -> None:
    tools = CODEC.decode(b'[{"name":"a","args":["x"]}]', list[Tool])
    given = copier(list[Tool])(tools)  # type: ignore[misc]
    given[0].args.append("y")
    assert tools[0].args == ["x"]
    meta = CODEC.decode(b'{"items":[1],"label":"m"}', Meta)
    copied = copier(Meta)(meta)  # type: ignore[misc]
    copied.items.append(2)
    copied.label = "n"
    assert meta == Meta(items=[1], label="m")
    assert copied == Meta(items=[1, 2], label="n")


class WithAny(BaseModel):
    data: Any


class WithPrivate(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    _seen: list[str] = PrivateAttr(default_factory=list)


class WithExtra(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    name: str


class EitherContainer(BaseModel):
    value: list[int] | dict[str, int]


class Node(BaseModel):
    children: list[Node]


class FrozenNode(BaseModel):
    model_config = ConfigDict(frozen=True)
    children: tuple[FrozenNode, ...]


@dataclasses.dataclass(slots=True)
class Slotted:
    items: list[int]


@dataclasses.dataclass(slots=True)
class SlottedEmpty:
    pass


class SlottedModel(BaseModel):
    __slots__ = ("cache",)
    items: list[int]


class Opaque:
    """A class the walk knows nothing about."""


@pytest.mark.parametrize(
    "model",
    [
        None,
        Any,
        list,
        dict[str, Any],
        WithAny,
        WithPrivate,
        WithExtra,
        EitherContainer,
        Node,
        Slotted,
        SlottedEmpty,
        SlottedModel,
        Opaque,
        list[Opaque],
        set[Meta],
        dict[Meta, int],
        tuple[list[int], ...],
    ],
    ids=repr,
)
def test_what_the_walk_does_not_understand_is_decoded_per_hit(model: Any) -> None:
    assert copier(model) is None


@pytest.mark.parametrize(
    "model", [str, int, Colour, Point, FrozenNode, tuple[Point, ...], Literal["a"], int | None]
)
def test_immutable_models_are_shared(model: Any) -> None:
    assert copier(model) is share


def test_frozen_models_with_extras_or_private_attributes_are_not_shared() -> None:
    # Extras can be of any type, and private attributes can be set on a frozen model.
    assert copier(WithExtra) is not share
    assert copier(WithPrivate) is not share


def test_values_not_of_the_models_exact_shape_are_refused() -> None:
    class Sub(Tool):
        more: list[str] = []

    copy = copier(Tool)
    assert copy is not None
    with pytest.raises(NotCopyableError, match="Sub where a Tool"):
        copy(Sub(name="s", args=[], more=["m"]))
    with pytest.raises(TypeError, match="'tuple' object"):
        copy(Tool.model_construct(name="s", args=("a",)))

    class Cached(BaseModel):
        values: list[int]

        @functools.cached_property
        def total(self) -> list[int]:
            return [sum(self.values)]

    cached = Cached(values=[1])
    assert cached.total == [1]  # kept in the instance's __dict__, next to the fields
    with pytest.raises(NotCopyableError, match="not its fields"):
        copier(Cached)(cached)  # type: ignore[misc]


# -- in the local tier ------------------------------------------------------------------


def local_tier() -> LocalTier:
    local = LocalTier(10, 60.0, CODEC)
    local.activate()
    return local


def test_the_local_tier_keeps_its_own_copy_and_hands_out_copies() -> None:
    local = local_tier()
    value = CODEC.decode(PROFILE_JSON, Profile)
    fresh = CODEC.decode(PROFILE_JSON, Profile)
    local.put("p", PROFILE_JSON, 10, Profile, value, local.epoch)
    mutate(value)  # the caller that read it from Redis keeps its object
    first = local.get("p", Profile)
    assert first == fresh
    mutate(first)
    second = local.get("p", Profile)
    assert second == fresh
    assert second is not first
    assert second.tools[0] is not first.tools[0]


class CountingCodec(Codec):
    def __init__(self) -> None:
        super().__init__(1 << 20)
        self.decodes = 0

    def decode(self, data: bytes | str, model: Any = None) -> Any:
        self.decodes += 1
        return super().decode(data, model)


class FrozenTool(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str


class StrictTool(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str


def test_a_loaders_subclass_instance_is_kept_as_other_processes_read_it() -> None:
    """A loader may return an instance of a subclass, with mutable fields of its own: the
    tier keeps the stored JSON decoded as the model, once, as every other process reads it."""

    class Sub(Tool):
        more: list[str] = []

    class FrozenSub(FrozenTool):
        more: list[str] = []

    codec = CountingCodec()
    local = LocalTier(10, 60.0, codec)
    local.activate()
    for key, model, value in [
        ("copied", Tool, Sub(name="s", args=["a"], more=["m"])),
        ("shared", FrozenTool, FrozenSub(name="s", more=["m"])),
    ]:
        local.put(key, CODEC.encode(key, value), 10, model, value, local.epoch)
        decodes = codec.decodes
        got = local.get(key, model)
        assert type(got) is model
        assert got == CODEC.decode(CODEC.encode(key, value), model)
        value.more.append("x")  # the loader's object is the loader's business
        assert local.get(key, model) == got
        assert codec.decodes == decodes  # decoded once, when stored


def test_values_that_cannot_be_copied_are_decoded_per_hit() -> None:
    local = local_tier()
    data = b'{"data":{"a":[1]}}'
    local.put("any", data, 10, WithAny, CODEC.decode(data, WithAny), local.epoch)
    first = local.get("any", WithAny)
    first.data["a"].append(2)
    assert local.get("any", WithAny) == WithAny(data={"a": [1]})

    data = b'{"name":"w"}'
    local.put("private", data, 10, WithPrivate, CODEC.decode(data, WithPrivate), local.epoch)
    first = local.get("private", WithPrivate)
    first._seen.append("x")
    assert local.get("private", WithPrivate)._seen == []

    class Wider(StrictTool):
        more: list[str] = []

    wider = Wider(name="w", more=["m"])  # its JSON is not a StrictTool: decoding it fails
    local.put("strict", CODEC.encode("strict", wider), 10, StrictTool, wider, local.epoch)
    with pytest.raises(ModelMismatchError):  # the cache's read takes it for a miss
        local.get("strict", StrictTool)


class Counted(BaseModel):
    """A model whose validator normalises its field and counts its runs."""

    runs: ClassVar[int] = 0
    names: list[str]

    @field_validator("names")
    @classmethod
    def lower(cls, names: list[str]) -> list[str]:
        Counted.runs += 1
        return [name.lower() for name in names]


def test_a_copy_of_a_validated_value_is_not_validated_again() -> None:
    # Validators ran when the stored value was decoded; a copy is of that validated object
    # (as with pydantic's own copies), so it carries their result and runs none of them.
    local = local_tier()
    data = b'{"names":["A","B"]}'
    local.put("c", data, 10, Counted, CODEC.decode(data, Counted), local.epoch)
    runs = Counted.runs
    for _ in range(3):
        got = local.get("c", Counted)
        assert got.names == ["a", "b"]
        got.names.append("c")
    assert Counted.runs == runs


def test_hits_of_copyable_models_do_not_decode() -> None:
    codec = CountingCodec()
    local = LocalTier(10, 60.0, codec)
    local.activate()
    local.put("p", PROFILE_JSON, 10, Profile, CODEC.decode(PROFILE_JSON, Profile), local.epoch)
    local.put("m", b'{"data":1}', 10, WithAny, WithAny(data=1), local.epoch)
    for _ in range(3):
        assert local.get("p", Profile).tags == ["t"]
    assert codec.decodes == 0
    assert local.get("m", WithAny) == WithAny(data=1)  # not understood: decoded
    assert codec.decodes == 1


# -- the rest of the hit path: no lock in the tier, none in the hit counter ------------------


def test_eviction_gives_used_entries_a_second_chance() -> None:
    local = LocalTier(2, 60.0, CODEC)
    local.activate()
    local.put("a", b"1", 10, None, 1, local.epoch)
    local.put("b", b"2", 10, None, 2, local.epoch)
    assert local.get("a", None) == 1  # a used: b, not a, makes room for c
    local.put("c", b"3", 10, None, 3, local.epoch)
    assert list(local._entries) == ["c", "a"]
    local.put("d", b"4", 10, None, 4, local.epoch)  # a's chance was spent: c goes
    assert list(local._entries) == ["a", "d"]
    assert local.get("a", None) == 1
    assert local.get("d", None) == 4
    local.put("e", b"5", 10, None, 5, local.epoch)  # all used: never the entry being put
    assert list(local._entries) == ["d", "e"]


def test_hits_without_a_lock_stay_consistent_under_threads() -> None:
    """Readers take no lock while writers put, evict, drop and flush: no reader fails,
    and each reads the value of its key or a miss, never another key's value."""
    local = LocalTier(8, 60.0, CODEC)
    local.activate()
    keys = [f"k{number}:x" for number in range(16)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                for key in keys:
                    got = local.get(key, Tool)
                    assert got is MISSING or got == Tool(name=key, args=[key])
                    if got is not MISSING:
                        got.args.append("mutated")
        except BaseException as error:
            failures.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for round_ in range(300):
            for key in keys:
                data = Tool(name=key, args=[key]).model_dump_json().encode()
                local.put(key, data, 10, Tool, CODEC.decode(data, Tool), local.epoch)
            local.drop(InvalidationMessage.for_pattern("c", f"k{round_ % 16}*", round_, "o"))
            if round_ % 50 == 0:
                local.deactivate()
                local.activate()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert failures == []
    assert len(local) <= 8


def hits(registry: CollectorRegistry, cache: str = "c", pattern: str = "g") -> float | None:
    labels = {"cache_name": cache, "key_pattern": pattern}
    return registry.get_sample_value("redis_cache_hits_total", labels)


def test_hit_counts_are_exact_under_threads_and_scrapes() -> None:
    registry = CollectorRegistry()
    metrics = CacheMetrics(registry, "c", 8)
    twin = CacheMetrics(registry, "c", 8)  # another cache of the same name: the same series
    threads_, per_thread = 8, 20_000
    scrapes: list[float | None] = []

    def count(target: CacheMetrics) -> None:
        for _ in range(per_thread):
            target.hit("g")

    workers = [
        threading.Thread(target=count, args=(twin if n % 2 else metrics,)) for n in range(threads_)
    ]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        scrapes.append(hits(registry))  # scrapes in between lose nothing either
    for worker in workers:
        worker.join()
    assert hits(registry) == threads_ * per_thread
    assert hits(registry) == threads_ * per_thread  # a scrape is not a hit
    assert all(a is not None and b is not None and a <= b for a, b in pairwise(scrapes))
    family = metric_family(registry, Counter, "redis_cache_hits_total", "", ())
    family.labels("c", "g").reset()
    metrics.hit("g")
    assert hits(registry) == 1


def test_hit_counts_in_prometheus_multiprocess_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values kept in files for other processes to read are incremented the ordinary way."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    metrics = CacheMetrics(CollectorRegistry(), "c", 8)
    for _ in range(3):
        metrics.hit("g")
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=str(tmp_path))
    assert hits(merged) == 3

"""The sans-I/O core alone: keys and globs, JSON, messages, breaker, local tier, metrics.

No Redis, no sockets, no sleeping: time comes from a fake clock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict

from commclient.cache import (
    CacheConfig,
    CacheSerializationError,
    CacheValueTooLargeError,
    Glob,
    InvalidationMessage,
    InvalidCacheKeyError,
    _scripts,
    build_pattern,
    escape_glob,
    glob_matches,
    group_of,
)
from commclient.cache import _core as _core_module
from commclient.cache._codec import Codec, CorruptValueError, ModelMismatchError, copier, share
from commclient.cache._core import CacheCore
from commclient.cache._instruments import CacheMetrics
from commclient.cache._keys import KeyLayout, validate_key, validate_prefix
from commclient.cache._local import MISSING, LocalTier
from tests import conftest_cache
from tests.forking import in_forked_child, needs_fork

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- keys and globs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "group"),
    [("assistant:42", "assistant"), ("global_settings", "global_settings"), ("a:b:c", "a")],
)
def test_group_is_the_first_segment(key: str, group: str) -> None:
    assert group_of(key) == group


@pytest.mark.parametrize("key", ["", "a#b", "line\nbreak", ":no-group", "x" * 1025, 42])
def test_invalid_keys_are_refused(key: Any) -> None:
    with pytest.raises(InvalidCacheKeyError):
        validate_key(key)


@pytest.mark.parametrize("bad", ["", "a*", "a?b", "a[b]", "a!b", "a#b", "a\\b"])
def test_invalid_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        validate_prefix(bad)


def test_escape_and_build_pattern() -> None:
    assert escape_glob("a*b?c[d]e\\") == "a\\*b\\?c\\[d\\]e\\\\"
    assert build_pattern("user:{}:*", "4*") == "user:4\\*:*"
    assert build_pattern("user:{}:{}", Glob("1?"), "[x]") == "user:1?:\\[x\\]"
    assert glob_matches(build_pattern("user:{}", "*"), "user:*")
    assert not glob_matches(build_pattern("user:{}", "*"), "user:1")


GLOB_CASES = [
    ("user:*", ["user:1", "user:", "user:1:2"], ["users:1", "user", "xuser:1"]),
    ("user:?", ["user:1", "user:x"], ["user:12", "user:"]),
    ("h[ae]llo", ["hello", "hallo"], ["hillo", "hllo"]),
    ("h[^e]llo", ["hallo", "hbllo"], ["hello"]),
    ("h[a-c]llo", ["hallo", "hbllo", "hcllo"], ["hdllo"]),
    ("h[c-a]llo", ["hbllo"], ["hdllo"]),
    ("a\\*b", ["a*b"], ["axb", "ab"]),
    ("a[\\]]b", ["a]b"], ["ab", "a\\b"]),
    ("a[]b", [], ["ab", "a]b", "a[]b"]),
    ("a[b", ["ab"], ["a[b", "a"]),
    ("*", ["", "anything:at:all"], []),
    ("a.b", ["a.b"], ["axb"]),
]


@pytest.mark.parametrize(("pattern", "matching", "other"), GLOB_CASES)
def test_glob_matching(pattern: str, matching: list[str], other: list[str]) -> None:
    for key in matching:
        assert glob_matches(pattern, key), (pattern, key)
    for key in other:
        assert not glob_matches(pattern, key), (pattern, key)


@pytest.mark.redis_server
def test_glob_matching_agrees_with_redis(redis_url: str, prefix: str) -> None:
    """The local tier must drop exactly what Redis deletes: compare on Redis itself."""
    client = redis.Redis.from_url(redis_url)
    keys = sorted({key for _, matching, other in GLOB_CASES for key in matching + other})
    for index, key in enumerate(keys):
        client.set(f"{prefix}{key}", index)
    for pattern, _, _ in GLOB_CASES:
        in_redis = {
            raw.decode()[len(prefix) :] for raw in client.keys(escape_glob(prefix) + pattern)
        }
        ours = {key for key in keys if glob_matches(pattern, key)}
        assert ours == in_redis, pattern


def test_key_layout() -> None:
    layout = KeyLayout("cache")
    assert layout.data_key("assistant:1", "3") == "{cache}:assistant:1#3"
    assert layout.data_base("assistant:1") == "{cache}:assistant:1#"
    assert layout.generation_key("assistant") == "{cache}!gen:assistant"
    assert layout.lease_key("assistant:1") == "{cache}:assistant:1#L"
    assert layout.is_lease("{cache}:assistant:1#L")
    assert not layout.is_lease("{cache}:assistant:1#0")
    # A caller's pattern can never reach across the key/generation boundary ...
    assert layout.scan_pattern("user:*") == "{cache}:user:*#*"
    scan = layout.scan_pattern("user:1")
    assert glob_matches(scan, "{cache}:user:1#0")
    assert not glob_matches(scan, "{cache}:user:12#0")
    # ... nor match the generation counters, nor a nested prefix's keys.
    assert not glob_matches(layout.scan_pattern("*"), "{cache}!gen:user")
    assert not glob_matches(layout.scan_pattern("*"), "{cache:tenant}:user:1#0")
    assert layout.logical_key("{cache}:user:1#4") == "user:1"
    assert layout.logical_key("{other}:user:1#4") is None


# -- Lua scripts ------------------------------------------------------------------------

# Which arguments of each command a cache script may call are keys: "all" of them, the
# "first" one, or none (PUBLISH's first argument is a channel).
_KEY_ARGUMENTS = {
    "GET": "first",
    "SET": "first",
    "PTTL": "first",
    "PEXPIRE": "first",
    "INCR": "first",
    "EXISTS": "all",
    "DEL": "all",
    "UNLINK": "all",
    "PUBLISH": "none",
}


def _redis_calls(lua: str) -> list[list[str]]:
    """The argument lists of every ``redis.call(...)`` in ``lua``, split at top-level commas."""
    calls = []
    for match in re.finditer(r"redis\.(?:p?call)\s*\(", lua):
        depth, quote, current, args = 1, "", "", []
        for char in lua[match.end() :]:
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    break
            elif char == "," and depth == 1:
                args.append(current.strip())
                current = ""
                continue
            current += char
        args.append(current.strip())
        calls.append(args)
    return calls


def _scripts_by_name() -> dict[str, str]:
    return {
        name: text
        for name, text in vars(_scripts).items()
        if name.isupper() and isinstance(text, str) and "redis.call" in text
    }


def test_every_key_a_script_touches_is_declared() -> None:
    """Redis (and Redis Cluster's routing) requires a script to name every key it touches
    in KEYS: a key built inside the script is refused by a strict cluster and invisible
    to a proxy."""
    scripts = _scripts_by_name()
    assert {"READ", "WRITE", "DELETE", "READ_OR_LEASE", "BUMP_GENERATION"} <= set(scripts)
    undeclared = []
    for name, lua in scripts.items():
        calls = _redis_calls(lua)
        assert calls, name
        for args in calls:
            command = args[0].strip("'\"").upper()
            assert command in _KEY_ARGUMENTS, f"{name}: add {command} to the table of key arguments"
            positions = {"all": args[1:], "first": args[1:2], "none": []}[_KEY_ARGUMENTS[command]]
            undeclared += [
                f"{name}: {command} {key}"
                for key in positions
                # KEYS[n], or a run of KEYS (``unpack(KEYS, first, last)``)
                if not re.fullmatch(r"KEYS\[\d+\]|unpack\(KEYS\b.*\)", key)
            ]
    assert undeclared == []


def test_the_script_parser_sees_undeclared_keys() -> None:
    calls = _redis_calls("local v = redis.call('GET', ARGV[1] .. g)\nredis.call('DEL', KEYS[1], x)")
    assert calls == [["'GET'", "ARGV[1] .. g"], ["'DEL'", "KEYS[1]", "x"]]


# -- JSON -------------------------------------------------------------------------------


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str


class Mutable(BaseModel):
    name: str


@dataclasses.dataclass(frozen=True)
class FrozenData:
    value: int


@dataclasses.dataclass
class MutableData:
    value: int


def test_codec_round_trips() -> None:
    codec = Codec(1024)
    assert codec.decode(codec.encode("k", {"a": [1, None]})) == {"a": [1, None]}
    assert codec.decode(codec.encode("k", Frozen(name="x")), Frozen) == Frozen(name="x")
    assert codec.decode(codec.encode("k", MutableData(1)), MutableData) == MutableData(1)
    assert codec.decode(codec.encode("k", [Frozen(name="x")]), list[Frozen]) == [Frozen(name="x")]
    assert codec.encode("k", {"é": 1}) == '{"é":1}'.encode()
    assert codec.validate({"name": "x"}, Frozen) == Frozen(name="x")
    assert codec.validate({"value": 2}, MutableData) == MutableData(2)


@pytest.mark.parametrize(
    "value", [object(), {1, 2}, {"nan": math.nan}, {"inf": math.inf}, b"bytes"]
)
def test_codec_refuses_what_is_not_json(value: object) -> None:
    with pytest.raises(CacheSerializationError):
        Codec(1024).encode("k", value)


def test_codec_size_limit() -> None:
    with pytest.raises(CacheValueTooLargeError) as raised:
        Codec(10).encode("settings", "x" * 20)
    assert raised.value.size == 22
    assert raised.value.limit == 10
    assert "settings" in str(raised.value)


@pytest.mark.parametrize(("data", "model"), [(b"{", None), (b"\x80\x04", None), (b"{", Frozen)])
def test_codec_reports_corruption(data: bytes, model: Any) -> None:
    with pytest.raises(CorruptValueError):
        Codec(1024).decode(data, model)


@pytest.mark.parametrize(("data", "model"), [(b'{"other": 1}', Frozen), (b"[]", MutableData)])
def test_codec_tells_another_model_from_corruption(data: bytes, model: Any) -> None:
    with pytest.raises(ModelMismatchError):
        Codec(1024).decode(data, model)


def test_immutability() -> None:
    assert copier(Frozen) is share
    assert copier(FrozenData) is share
    assert copier(str) is share
    assert copier(Mutable) is not share
    assert copier(MutableData) is not share
    assert copier(None) is not share
    assert copier(list[Frozen]) is not share


def test_shallowly_frozen_models_are_not_shared() -> None:
    @dataclasses.dataclass(frozen=True)
    class Tagged:
        tags: list[str]

    @dataclasses.dataclass(frozen=True)
    class Nested:
        inner: FrozenData
        pairs: tuple[tuple[str, int], ...]
        label: str | None

    assert copier(Tagged) is not share
    assert (copier(Nested) is share) == (copier(FrozenData) is share)


# -- messages ---------------------------------------------------------------------------


def test_messages_round_trip_and_match() -> None:
    for message in (
        InvalidationMessage.for_key("cache", "user:[1]", 1, "me"),
        InvalidationMessage.for_pattern("cache", "user:*", 3, "me"),
        InvalidationMessage.for_group("cache", "assistant", "me"),
        InvalidationMessage("group", "cache", -1, "me", group="assistant", generation=7),
    ):
        assert InvalidationMessage.decode(message.encode()) == message
    key = InvalidationMessage.for_key("cache", "user:[1]", 1, "me")
    assert key.matches("user:[1]")
    assert not key.matches("user:1")
    group = InvalidationMessage.for_group("cache", "assistant", "me")
    assert group.matches("assistant:4")
    assert group.matches("assistant")
    assert not group.matches("assistants:4")


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "kind": "key", "prefix": "c", "count": 1, "origin": "o", "pattern": "k"}',
        b'{"v": 1, "kind": "drop", "prefix": "c", "count": 1, "origin": "o", "pattern": "k"}',
        b'{"v": 1, "kind": "group", "prefix": "c", "count": 1, "origin": "o", "pattern": "k"}',
        b'{"v": 1, "kind": "key", "prefix": "c", "count": "1", "origin": "o", "pattern": "k"}',
        b'{"v":1,"kind":"key","prefix":"c","count":1,"origin":"o","pattern":"k","generation":2}',
        b'{"v":1,"kind":"group","prefix":"c","count":-1,"origin":"o","group":"g","generation":"2"}',
        b'{"v":1,"kind":"group","prefix":"c","count":-1,"origin":"o","group":"g","generation":true}',
    ],
)
def test_malformed_messages_are_ignored(data: bytes) -> None:
    assert InvalidationMessage.decode(data) is None


# -- breaker ----------------------------------------------------------------------------


def _core_with_breaker(failure_threshold: int, cooldown: float) -> CacheCore:
    config = CacheConfig(breaker_failure_threshold=failure_threshold, breaker_cooldown=cooldown)
    return CacheCore("c", config, None, CollectorRegistry())


def test_breaker_opens_after_threshold_and_lets_one_probe_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cooldown = 0.05
    core = _core_with_breaker(failure_threshold=3, cooldown=cooldown)
    error = ConnectionError("refused")
    with caplog.at_level(logging.INFO, logger="commclient.cache"):
        for _ in range(3):
            admission = core.admit("get")
            assert admission is not None
            core.failed("get", error, admission)
        assert core.breaker.state == "open"
        assert core.admit("get") is None
        time.sleep(cooldown * 1.5)
        probe = core.admit("get")
        assert probe is not None
        assert probe.probe
        assert core.breaker.state == "half-open"
        assert core.admit("get") is None  # everyone else while the probe is out
        core.failed("get", error, probe)  # the probe failed: open again
        assert core.breaker.state == "open"
        assert core.admit("get") is None
        time.sleep(cooldown * 1.5)
        probe = core.admit("get")
        assert probe is not None
        core.succeeded("get", 0.001, probe)
        assert core.breaker.state == "closed"
        assert core.admit("get") is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one outage, one warning
    own = [r for r in caplog.records if r.name == "commclient.cache"]
    assert [r.getMessage() for r in own if r.levelno == logging.INFO] == ["redis cache recovered"]


def test_a_cancelled_probe_frees_the_half_open_state() -> None:
    core = _core_with_breaker(failure_threshold=1, cooldown=0.05)
    first = core.admit("get")
    assert first is not None
    core.failed("get", TimeoutError(), first)
    time.sleep(0.08)
    probe = core.admit("get")
    assert probe is not None
    assert probe.probe
    assert core.admit("get") is None
    core.abandoned(probe)  # its task was cancelled: no verdict
    assert core.admit("get") is not None


def test_failures_below_threshold_reset_on_success() -> None:
    core = _core_with_breaker(failure_threshold=3, cooldown=1.0)
    for _ in range(5):
        for outcome in ("fail", "fail", "ok"):
            admission = core.admit("get")
            assert admission is not None
            if outcome == "ok":
                core.succeeded("get", 0.001, admission)
            else:
                core.failed("get", TimeoutError(), admission)
    assert core.breaker.state == "closed"


# -- local tier -------------------------------------------------------------------------


def make_local(size: int = 3, ttl: float = 10.0) -> tuple[LocalTier, FakeClock]:
    clock = FakeClock()
    local = LocalTier(size, ttl, Codec(1024), clock=clock)
    local.activate()
    return local, clock


def test_local_tier_serves_only_while_active() -> None:
    local, _ = make_local()
    local.put("a", b"1", 5, None, 1, local.epoch)
    assert local.get("a", None) == 1
    local.deactivate()
    assert local.get("a", None) is MISSING
    local.put("a", b"1", 5, None, 1, local.epoch)
    local.activate()
    assert local.get("a", None) is MISSING  # flushed, and nothing stored while inactive


def test_local_tier_refuses_a_read_older_than_an_invalidation() -> None:
    local, _ = make_local()
    epoch = local.epoch  # a read from Redis begins
    local.drop(InvalidationMessage.for_key("c", "other", 1, "them"))  # any invalidation
    local.put("a", b"1", 5, None, 1, epoch)  # the read ends
    assert local.get("a", None) is MISSING
    local.put("a", b"1", 5, None, 1, local.epoch)
    assert local.get("a", None) == 1


def test_local_tier_is_bounded_lru_with_capped_ttl() -> None:
    local, clock = make_local(size=2, ttl=1.0)
    local.put("a", b"1", 300, None, 1, local.epoch)
    local.put("b", b"2", 300, None, 2, local.epoch)
    assert local.get("a", None) == 1  # a is now the most recent
    local.put("c", b"3", 300, None, 3, local.epoch)
    assert local.get("b", None) is MISSING
    assert local.get("a", None) == 1
    assert len(local) == 2
    clock.advance(1.0)  # the cap, not the 300 s TTL
    assert local.get("a", None) is MISSING


def test_local_tier_drops_by_key_pattern_and_group() -> None:
    local, _ = make_local(size=10)
    for key in ("user:1", "user:2", "user:[1]", "assistant:1", "assistant", "tool:1"):
        local.put(key, b"1", 5, None, 1, local.epoch)
    assert local.drop(InvalidationMessage.for_key("c", "user:[1]", 1, "o")) == 1
    assert local.drop(InvalidationMessage.for_pattern("c", "user:*", 2, "o")) == 2
    assert local.drop(InvalidationMessage.for_group("c", "assistant", "o")) == 2
    assert local.get("tool:1", None) == 1


def test_local_tier_shares_only_immutable_values() -> None:
    local, _ = make_local()
    frozen = Frozen(name="x")
    local.put("f", b'{"name":"x"}', 5, Frozen, frozen, local.epoch)
    assert local.get("f", Frozen) is frozen
    mutable = Mutable(name="x")
    local.put("m", b'{"name":"x"}', 5, Mutable, mutable, local.epoch)
    copy = local.get("m", Mutable)
    assert copy == mutable
    assert copy is not mutable


# -- metrics and config -----------------------------------------------------------------


def test_key_pattern_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = CacheMetrics(registry, "c", max_key_patterns=2)
    for group in ("a", "b", "c", "d", "a"):
        metrics.hit(group)
    value = registry.get_sample_value
    assert value("redis_cache_hits_total", {"cache_name": "c", "key_pattern": "a"}) == 2
    assert value("redis_cache_hits_total", {"cache_name": "c", "key_pattern": "b"}) == 1
    assert value("redis_cache_hits_total", {"cache_name": "c", "key_pattern": "other"}) == 2


def test_two_caches_share_one_registry() -> None:
    registry = CollectorRegistry()
    CacheMetrics(registry, "one", 8).miss("a")
    CacheMetrics(registry, "two", 8).miss("a")
    assert (
        registry.get_sample_value(
            "redis_cache_misses_total", {"cache_name": "two", "key_pattern": "a"}
        )
        == 1
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"operation_timeout": 0},
        {"operation_timeout": -1},
        {"operation_timeout": math.nan},
        {"max_value_bytes": 0},
        {"local_tier_size": -1},
        {"breaker_failure_threshold": 0},
        {"lease_poll_interval": 0},
        {"resubscribe_min_wait": 5.0, "resubscribe_max_wait": 1.0},
        {"channel": ""},
    ],
)
def test_config_validation(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="CacheConfig"):
        CacheConfig(**overrides)


def test_config_defaults() -> None:
    config = CacheConfig()
    assert config.operation_timeout == 0.1
    assert config.local_tier_size == 0
    assert config.channel == "cache:invalidation"


@needs_fork
def test_lease_tokens_are_128_random_bits_of_their_own_in_a_forked_child() -> None:
    tokens = {CacheCore.new_lease_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch("[0-9a-f]{32}", token) for token in tokens)
    generator = _core_module._generations
    before = generator.getstate()
    parent_next = CacheCore.new_lease_token()
    # The child inherits the state that drew ``parent_next``: only its reseeding at the
    # fork makes its token another one.
    generator.setstate(before)

    def child() -> int:
        return 1 if CacheCore.new_lease_token() != parent_next else 0

    assert in_forked_child(child, timeout=10) == 1


_FORK_WITHOUT_HOOKS = """
import ctypes, os
from commclient.cache._core import CacheCore, fresh_generation
CacheCore.new_lease_token()
read, write = os.pipe()
pid = ctypes.CDLL(None).fork()  # as uWSGI forks its workers: no at-fork hooks run
draws = (CacheCore.new_lease_token() + " " + fresh_generation()).encode()
if pid == 0:
    os.write(write, draws)
    os._exit(0)
os.close(write)
theirs = os.read(read, 100)
os.waitpid(pid, 0)
print(draws.decode(), theirs.decode(), sep="|")
"""


@needs_fork
def test_lease_tokens_differ_in_a_child_forked_without_python_at_fork_hooks() -> None:
    """A process forked outside Python's ``os.fork()`` (uWSGI's workers unless
    ``py-call-osafterfork`` is set, a C extension) skips ``os.register_at_fork``: the
    children went on from the parent's generator state, so two workers drew the same
    lease token, each taking the other's lease for its own."""
    root = str(Path(__file__).resolve().parents[2])
    environment = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", _FORK_WITHOUT_HOOKS],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=True,
    )
    parent, child = done.stdout.strip().split("|")
    assert re.fullmatch("[0-9a-f]{32} [0-9]+", child)
    assert parent.split()[0] != child.split()[0]
    assert parent.split()[1] != child.split()[1]


def test_duration_and_miss_metrics_read_as_prometheus_own_would() -> None:
    from prometheus_client import Counter, Histogram

    from commclient.cache._instruments import DURATION_BUCKETS

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = CacheMetrics(ours, "timed", 64)
    plain = Histogram(
        "redis_cache_operations_duration_seconds",
        "d",
        ("cache_name", "operation"),
        buckets=DURATION_BUCKETS,
        registry=theirs,
    ).labels("timed", "get")
    misses = Counter("redis_cache_misses", "m", ("cache_name", "key_pattern"), registry=theirs)
    samples = [0.0, 0.00005, 0.0001, 0.00011, 0.003, 0.25, 0.9999, 1.0, 7.5, 1e9]
    for seconds in samples:
        metrics.observe("get", seconds)
        plain.observe(seconds)
        metrics.miss("user")
        misses.labels("timed", "user").inc()

    def read(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (sample.name, sample.labels.get("le", "")): sample.value
            for family in registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
            and sample.name.startswith(("redis_cache_operations", "redis_cache_misses"))
        }

    expected = read(theirs)
    assert read(ours) == expected
    assert expected[("redis_cache_operations_duration_seconds_count", "")] == len(samples)
    assert expected[("redis_cache_misses_total", "")] == len(samples)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (b'{"a":[1,2.5,null,true]}', {"a": [1, 2.5, None, True]}),
        (b' {"a":1}\n', {"a": 1}),  # whitespace around the value, as json.loads allows
        ('"caf\u00e9"'.encode(), "caf\u00e9"),
        (b"7", 7),
    ],
)
def test_stored_json_decodes_as_json_loads_would(stored: bytes, expected: Any) -> None:
    assert Codec(1000).decode(stored) == expected


@pytest.mark.parametrize("stored", [b'{"a":1}x', b"", b"[1,", b"nul", b"[" * 100_000])
def test_stored_text_that_is_not_one_json_value_is_corrupt(stored: bytes) -> None:
    with pytest.raises(CorruptValueError):
        Codec(1000).decode(stored)

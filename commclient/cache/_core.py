"""The sans-I/O heart of both caches: every decision, none of the I/O.

The sync and async drivers ask this object what to send to Redis (script arguments),
hand it what came back, and it decides: hit or miss, corrupt or valid, fresh or stale,
what to count, what to log, what the local tier keeps. The drivers only move bytes,
sleep and wait, each in its own world.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from commclient._correlation import correlation_id_ctx
from commclient._tracing import CacheSpan, active_tracer, cache_event, cache_result

from ._codec import Codec, CorruptValueError, ModelMismatchError, caller_copy
from ._config import CacheConfig
from ._exceptions import CacheError, LoaderFailedError
from ._instruments import LOCAL_HIT, STALE, CacheMetrics
from ._keys import KeyLayout, group_of, validate_group, validate_key, validate_pattern
from ._local import MISSING, LocalTier
from ._messages import InvalidationMessage, new_origin_id

if TYPE_CHECKING:
    from commclient._breaker import Admission

logger = logging.getLogger("commclient.cache")

MAX_REMEMBERED_GENERATIONS = 4096
"""Groups whose generation a cache remembers to address their data keys (then it forgets all)."""

GENERATION_ATTEMPTS = 3
"""Tries of an operation whose group's generation moved under it before it gives up
(failed, like a Redis call that failed): moving twice in a row is already rare."""

SCAN_BATCH = 1000
"""COUNT hint of each SCAN page, and so the most keys one UNLINK removes."""

MISS_RATE_WEIGHT = 1 / 16
"""Weight of each ``get_or_set`` read in the cache's running miss rate."""

LEASE_FIRST_ABOVE = 0.25
"""The running miss rate above which ``get_or_set`` reads with the read-or-lease script
(a miss in two round trips, a hit a few microseconds dearer) rather than a plain ``MGET``
(a hit as cheap as a ``GET``, a miss in three): about where the two cost the same."""


_UNTRACED: AbstractContextManager[None] = nullcontext()


class _Marker:
    """A reply that is not a value; its name says which."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


FAILED: Any = _Marker("FAILED")
"""The Redis call did not happen or did not succeed (already accounted for)."""

MISMATCH: Any = _Marker("MISMATCH")
"""A stored value that is valid JSON but not of the requested model."""

UNCONFIRMED: Any = _Marker("UNCONFIRMED")
"""A write was sent (or may have been) but no reply came: Redis may apply it."""

FAILURE_MARK = "!"
"""Starts a lease that holds a loader's failure (tokens are hex: never a "!")."""

_WRITES_TOLD_UNCONFIRMED = frozenset({"set"})
"""Operations whose lost reply the flow is told about (:data:`UNCONFIRMED`); for every
other operation a lost reply is a failure like any other."""

_forkable: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_forkable):
        cache._in_forked_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def reentered(flight_key: Any) -> str:
    """Why a loader that asks for its own key (``flight_key``: the key and the model)
    fails: waiting for itself, it would wait for ever (without the cache, it would
    recurse without end)."""
    key = flight_key[0] if isinstance(flight_key, tuple) else flight_key
    return (
        f"the loader of cache key {key!r} asked for that key again "
        "(get_or_set or a cached function re-entered from its own loader)"
    )


def reset_after_fork(cache: Any) -> None:
    """Call ``cache._in_forked_child()`` in every child forked from now on (DESIGN §6)."""
    _forkable.add(cache)


def rebuild_client(module: Callable[[], Any], client: Any, overrides: dict[str, Any]) -> Any:
    """A ``Redis`` of ``module()`` like ``client`` on a pool of its own, with
    ``overrides``; the client itself when it has no pool to copy (a cluster client, the
    memory store). A Sentinel pool is copied as a Sentinel pool, so that the copy follows
    a failover too."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return client
    kwargs = {**pool.connection_kwargs, **overrides, "connection_class": pool.connection_class}
    kwargs.pop("connection_pool", None)  # a Sentinel pool's reference to itself
    if hasattr(pool, "sentinel_manager"):
        copy = type(pool)(
            pool.service_name,
            pool.sentinel_manager,
            is_master=pool.is_master,
            check_connection=pool.check_connection,
            **kwargs,
        )
    else:
        copy = module().ConnectionPool(**kwargs)
    return module().Redis(connection_pool=copy)


@dataclass(frozen=True)
class KeyPlan:
    """Everything the drivers need to address one logical key (built once per key)."""

    key: str
    group: str
    generation_key: str
    data_base: str
    lease_key: str

    def data_key(self, generation: str) -> str:
        """The Redis key of this key's value in ``generation`` of its group."""
        return self.data_base + generation


class Read:
    """What a read script returned: the group's generation, the value, its PTTL."""

    __slots__ = ("data", "generation", "ttl_ms")

    def __init__(self, generation: str, data: bytes | str | None, ttl_ms: int) -> None:
        self.generation = generation
        self.data = data
        self.ttl_ms = ttl_ms


def _config_values(reply: Any) -> list[bytes | str]:
    """The values of a ``CONFIG GET`` reply: a dict or a flat list of one server, or a
    dict of them by cluster node."""
    if isinstance(reply, dict):
        values = list(reply.values())
        if values and all(isinstance(value, (dict, list)) for value in values):
            return [found for value in values for found in _config_values(value)]
        return [value for value in values if isinstance(value, (bytes, str))]
    if isinstance(reply, list):
        return [value for value in reply[1::2] if isinstance(value, (bytes, str))]
    return []


_generations = random.Random()  # seeded from the OS; again in a forked child
_seeded_in = os.getpid()


def _random_bits(bits: int) -> int:
    """``bits`` random bits from :data:`_generations`, reseeded first in a process that
    was forked since it was seeded.

    By process id, not ``os.register_at_fork``: a process forked outside ``os.fork()``
    (uWSGI's workers unless ``py-call-osafterfork`` is set, a C extension's fork) runs no
    at-fork hook, and its children would draw the same tokens (each taking the other's
    lease for its own).
    """
    global _seeded_in
    pid = os.getpid()
    if pid != _seeded_in:
        _generations.seed()
        _seeded_in = pid
    return _generations.getrandbits(bits)


def fresh_generation() -> str:
    """A random start for a group's generation (see ``_scripts``): below 2**40, so that
    Redis's Lua (doubles, printed with 14 digits by cjson) keeps it and its increments
    exact, and above 0, the generation of the values of earlier versions.

    Drawn from a generator of the cache's own (a caller seeding ``random`` cannot make
    processes draw alike), seeded by the OS: every miss and write sends one, and the
    OS's own randomness costs a system call each time."""
    return str(_random_bits(40) or 1)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CacheCore:
    """Keys, serialization, invalidation messages, metrics, health and the local tier."""

    def __init__(
        self,
        prefix: str,
        config: CacheConfig | None,
        name: str | None,
        registry: CollectorRegistry | None,
    ) -> None:
        from ._keys import validate_prefix

        self.config = config or CacheConfig()
        self.prefix = validate_prefix(prefix)
        self.name = name or prefix
        self.layout = KeyLayout(self.prefix)
        self.codec = Codec(self.config.max_value_bytes)
        self.metrics = CacheMetrics(registry, self.name, self.config.max_key_patterns)
        self.local_tier_enabled = self.config.local_tier_size > 0
        self._lease_ms = max(1, round(self.config.lease_ttl * 1000))
        self._plans: dict[str, KeyPlan] = {}
        self._generations: dict[str, str] = {}
        self._mismatches_logged: set[tuple[str, str]] = set()
        self.random: Callable[[], float] = random.random  # early refresh's draw; tests fix it
        self.miss_rate = 0.0  # of get_or_set's reads, decayed (unlocked: an estimate)
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh what a forked child must not inherit: a local tier no listener
        keeps honest, the parent's origin id (its messages would look like ours), and
        locks another thread of the parent may have held."""
        # Imported here: pybreaker imports redis when it is installed, and importing the
        # cache package must stay free of optional dependencies.
        from commclient._breaker import Breaker

        self.breaker = Breaker(
            f"cache:{self.name}",
            fail_max=self.config.breaker_failure_threshold,
            reset_timeout=self.config.breaker_cooldown,
        )
        self._admit = self.breaker.admit  # bound once: it runs on every Redis call
        self._outage_lock = threading.Lock()
        self._outage_started_at: float | None = None
        self.local = LocalTier(
            self.config.local_tier_size,
            self.config.local_tier_ttl,
            self.codec,
            max_bytes=self.config.local_tier_max_bytes,
        )
        self.origin = new_origin_id()
        self._listener_outage = False

    def log(
        self,
        level: int,
        message: str,
        error: BaseException | None = None,
        *,
        exc_info: BaseException | None = None,
        **fields: object,
    ) -> None:
        """One structured record: this cache, the correlation id, ``error`` (type and
        text) and ``fields``."""
        extra: dict[str, object] = {"cache_name": self.name, **fields}
        extra["correlation_id"] = correlation_id_ctx.get()
        if error is not None:
            extra["error_type"] = type(error).__name__
            extra["error"] = str(error)[:300]
        logger.log(level, message, extra=extra, exc_info=exc_info)

    def traced(
        self,
        operation: str,
        key: str | None = None,
        *,
        group: str | None = None,
        pattern: str | None = None,
    ) -> AbstractContextManager[object]:
        """The span of the public ``operation`` (``with``), when a tracer provider is set;
        otherwise a context that does nothing (module ``commclient._tracing``).

        Its attributes are those the logs carry: the cache's name, the key or pattern as
        given, and the group (the key's, or the one invalidated).
        """
        tracer = active_tracer()
        if tracer is None:
            return _UNTRACED
        attributes = {"commclient.cache.name": self.name}
        if key is not None:
            attributes["commclient.cache.key"] = key
            group = group_of(key)
        if group is not None:
            attributes["commclient.cache.group"] = group
        if pattern is not None:
            attributes["commclient.cache.pattern"] = pattern
        return CacheSpan(tracer, f"cache {operation}", attributes)

    # -- keys ---------------------------------------------------------------------------

    def plan(self, key: str) -> KeyPlan:
        """Address ``key`` (validated once, then cached: hot keys repeat)."""
        plan = self._plans.get(key)
        if plan is None:
            validate_key(key)
            layout = self.layout
            group = group_of(key)
            plan = KeyPlan(
                key,
                group,
                layout.generation_key(group),
                layout.data_base(key),
                layout.lease_key(key),
            )
            if len(self._plans) < 4096:
                self._plans[key] = plan
        return plan

    # -- generations --------------------------------------------------------------------

    def guess(self, plan: KeyPlan) -> str:
        """The generation of ``plan``'s group as last seen here ("" if never): see ``_keys``."""
        return self._generations.get(plan.group, "")

    def generation_moved(self, plan: KeyPlan, guessed: str, seen: bytes | str | None) -> bool:
        """Whether Redis saw the generation ``seen`` (``None``: never bumped) rather than
        the one ``guessed``; if so it is remembered, and the caller tries again with it."""
        generation = "" if seen is None else _text(seen)
        if generation == guessed:
            return False
        self.remember_generation(plan.group, generation)
        return True

    def remember_generation(self, group: str, generation: str) -> None:
        """Address ``group``'s keys with ``generation`` from now on."""
        if len(self._generations) >= MAX_REMEMBERED_GENERATIONS:
            self._generations.clear()
        self._generations[group] = generation

    def moved_too_often(self, operation: str, plan: KeyPlan) -> Any:
        """The group's generation moved on every attempt: give up as a failed call does
        (counted, logged); :data:`FAILED`."""
        self.metrics.error(operation, "generation_moved")
        self.log(
            logging.WARNING,
            "cache group generation kept moving; operation given up",
            operation=operation,
            key=plan.key,
        )
        return FAILED

    # -- reads --------------------------------------------------------------------------

    def parse_read(self, plan: KeyPlan, guessed: str, reply: Any) -> Read | None:
        """The read in a hit's ``MGET`` reply or the read script's "GENERATION PTTL VALUE"
        (or "GENERATION": absent); ``None`` when the guessed generation was stale."""
        if isinstance(reply, list):
            if self.generation_moved(plan, guessed, reply[0]):
                return None
            return Read(guessed, reply[1], -2)
        separator: Any = b" " if isinstance(reply, bytes) else " "
        generation, found, rest = reply.partition(separator)
        if self.generation_moved(plan, guessed, generation):
            return None
        if not found:
            return Read(guessed, None, -2)
        ttl_ms, _, data = rest.partition(separator)
        return Read(guessed, data, int(ttl_ms))

    def local_get(self, plan: KeyPlan, model: Any, stale_seconds: float = 0.0) -> Any:
        """A local-tier hit (counted), or :data:`MISSING`.

        With ``stale_seconds``, an entry in the last ``stale_seconds`` of its Redis TTL
        is not served: the caller must go to Redis, see it stale and refresh it.
        """
        if not self.local.active:
            return MISSING
        try:
            value = self.local.get(plan.key, model, stale_seconds)
        except (CorruptValueError, ModelMismatchError):
            # Bytes that validated a moment ago but not as this model: the caller asked
            # for another model, which Redis will answer (and reject) just the same.
            return MISSING
        if value is not MISSING:
            self.metrics.hit(plan.group, LOCAL_HIT)
        return value

    def local_epoch(self) -> int:
        return self.local.epoch

    def decode_read(
        self, plan: KeyPlan, read: Read, model: Any, epoch: int, *, count: bool = True
    ) -> Any:
        """The value in ``read`` (a hit, kept locally), :data:`MISSING` (a miss), or
        :data:`MISMATCH` (a miss: valid JSON of another model, left in place).

        Raises :class:`CorruptValueError` for a stored value that is not valid JSON; the
        driver then deletes it and calls :meth:`corrupt`. A value of another model is
        not deleted: in a rolling deploy, it is what the other version reads.
        ``count=False`` for the polls of a caller already counted as a miss.
        """
        if read.data is None:
            if count:
                self.metrics.miss(plan.group)
            return MISSING
        try:
            value = self.codec.decode(read.data, model)
        except ModelMismatchError as error:
            self.mismatch(plan, error, model)
            return MISMATCH
        if count:
            self.metrics.hit(plan.group)
        if self.local.active and read.ttl_ms > 0:
            data = read.data.encode() if isinstance(read.data, str) else read.data
            self.local.put(plan.key, data, read.ttl_ms / 1000, model, value, epoch)
        return value

    def mismatch(self, plan: KeyPlan, error: ModelMismatchError, model: Any) -> None:
        """Count a value of another model (a miss); log it once per group and model."""
        self.metrics.miss(plan.group)
        self.metrics.error("get", "model_mismatch")
        model_name = getattr(model, "__name__", repr(model))
        seen = (plan.group, model_name)
        if seen in self._mismatches_logged or len(self._mismatches_logged) >= 1024:
            return
        self._mismatches_logged.add(seen)
        self.log(
            logging.WARNING,
            # The key and model in the text too: with logging's default format, the only
            # sign that every read of this key goes to the loader.
            f"cached value of {plan.key!r} does not fit the model {model_name}; treated as"
            " a miss and kept",
            error,
            key=plan.key,
            model=model_name,
        )

    def delete_corrupt_args(self, plan: KeyPlan, read: Read) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV deleting the corrupt value ``read`` found, and only that value."""
        return [plan.data_key(read.generation)], [read.data]

    def corrupt(self, plan: KeyPlan, error: CorruptValueError, model: Any) -> None:
        self.metrics.miss(plan.group)
        self.metrics.error("get", "corrupt_value")
        model_name = getattr(model, "__name__", repr(model))
        self.log(
            logging.WARNING, "corrupt cache value dropped", error, key=plan.key, model=model_name
        )

    def lease_first(self) -> bool:
        """Whether ``get_or_set`` should read with the read-or-lease script: its recent
        reads mostly missed (see :data:`LEASE_FIRST_ABOVE`)."""
        return self.miss_rate > LEASE_FIRST_ABOVE

    def read_through(self, missed: bool) -> None:
        """Count a ``get_or_set`` read (a hit or a miss) in the running miss rate."""
        self.miss_rate += (missed - self.miss_rate) * MISS_RATE_WEIGHT

    def unavailable(self, plan: KeyPlan) -> None:
        """A lookup that could not reach Redis: a miss."""
        self.missed(plan)

    def missed(self, plan: KeyPlan) -> None:
        """Count a miss of ``plan``'s key."""
        self.metrics.miss(plan.group)

    def refresh_early(self, read: Read, stale_seconds: float, window: float) -> bool:
        """Whether this read refreshes a fresh value before its TTL ends (XFetch): with
        probability ``e**(-remaining / window)``, 1 at the end, 0.37 at ``window`` before
        it, under 1 % at five windows; never without a ``window``."""
        if window <= 0:
            return False
        remaining = read.ttl_ms / 1000 - stale_seconds
        return -window * math.log(1.0 - self.random()) >= remaining

    @staticmethod
    def is_fresh(read: Read, stale_seconds: float) -> bool:
        """With serve-stale, the last ``stale_seconds`` of a value's Redis TTL are stale
        (a hit, which the operation's span calls ``stale``)."""
        if stale_seconds <= 0 or read.ttl_ms > stale_seconds * 1000:
            return True
        cache_result(STALE)
        return False

    # -- writes -------------------------------------------------------------------------

    def encode(self, key: str, value: object, model: Any = None) -> bytes:
        return self.codec.encode(key, value, model)

    def encode_loaded(self, key: str, value: object, model: Any) -> tuple[bytes, Any]:
        """A loaded ``value``'s JSON bytes, and the value as a hit returns it (see
        :meth:`as_read`), from one encoding and one decoding."""
        data, read = self.codec.encode_and_read(key, value, model)
        return data, (value if model is not None else read)

    def validate(self, value: object, model: Any) -> Any:
        return self.codec.validate(value, model)

    def as_read(self, value: Any, model: Any, data: bytes | None = None) -> Any:
        """A loaded ``value`` as a hit returns it, so that a miss and a hit never differ:
        without a model, the plain JSON of ``data`` (its stored form; a model instance
        becomes a dict), or a deep copy of the value when it cannot be stored: either
        way an object that the loader does not hold, and the caller may keep."""
        if model is not None:
            return value
        try:
            return self.codec.decode(data if data is not None else self.encode("", value))
        except CacheError:
            return caller_copy(value, None)  # the loader's object, not shared with it

    def write_args(
        self,
        plan: KeyPlan,
        data: bytes,
        ttl_ms: int,
        generation: str,
        *,
        lease_token: str = "",
        explicit: bool = False,
        replaces: bool = False,
        watched_lease: bool = False,
    ) -> tuple[list[str], list[bytes | str | int]]:
        """KEYS and ARGV of the write script, to the data key of ``generation``.

        An explicit ``set`` revokes any load in flight and, if the group moved on, is told
        the current generation to write to; a loader's write is refused then. A loader's
        write holds the lease ``lease_token``, or (``watched_lease``) gave up waiting for
        its holder ``lease_token``: then it is refused unless that holder still holds it
        and nothing was stored, so it cannot undo a ``set``, ``delete`` or invalidation
        made since its wait began. An explicit ``set`` and a refresh (``replaces``) tell
        the other processes' local tiers. A fill writes where there was nothing, which no
        local tier can hold, and tells nobody.
        """
        message = self.key_message(plan, 1).encode() if explicit or replaces else b""
        return [plan.generation_key, plan.lease_key, plan.data_key(generation)], [
            data,
            ttl_ms,
            generation,
            "1" if explicit else "2" if watched_lease else "0",
            lease_token,
            self.config.channel,
            message,
            fresh_generation(),
        ]

    def delete_args(self, plan: KeyPlan, guessed: str) -> tuple[list[str], list[str | bytes]]:
        """KEYS and ARGV of the delete script (which publishes the key's message)."""
        keys = [plan.generation_key, plan.lease_key, plan.data_key(guessed)]
        return keys, [guessed, self.config.channel, self.key_message(plan, 0).encode()]

    def after_local_change(self, message: InvalidationMessage) -> None:
        """Apply this process's own change to its local tier (after Redis applied it)."""
        self.local.drop(message)

    # -- leases -------------------------------------------------------------------------

    def read_or_lease_args(
        self, plan: KeyPlan, token: str, guessed: str
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of the script that reads the value or, if absent, takes the lease."""
        keys = [plan.generation_key, plan.lease_key, plan.data_key(guessed)]
        return keys, [guessed, token, self.lease_ms(), fresh_generation()]

    @staticmethod
    def read_or_lease_moved(reply: bytes | str) -> bytes | str | None:
        """The generation a read-or-lease reply says the group moved on to, or ``None``
        (the reply is a read)."""
        separator: Any = b" " if isinstance(reply, bytes) else " "
        return None if separator in reply else reply

    @staticmethod
    def parse_read_or_lease(reply: bytes | str) -> tuple[Read, bool, str]:
        """The read, whether the lease was taken, and the token of the lease's holder
        when the value was absent and the lease not taken ("" otherwise)."""
        separator: Any = b" " if isinstance(reply, bytes) else " "
        generation, _, rest = reply.partition(separator)
        kind, _, rest = rest.partition(separator)
        kind = _text(kind)
        if kind == "V":
            ttl_ms, _, data = rest.partition(separator)
            return Read(_text(generation), data, int(ttl_ms)), False, ""
        holder = _text(rest) if kind == "H" else ""
        return Read(_text(generation), None, -2), kind == "L", holder

    @staticmethod
    def new_lease_token() -> str:
        """A lease's owner: 128 random bits from the cache's own generator (distinct per
        process, forked children included; a system call per miss for the OS's would
        cost more than the rest of the token)."""
        return f"{_random_bits(128):032x}"

    def lease_ms(self) -> int:
        return self._lease_ms

    def lease_renew_interval(self) -> float:
        """How often a loader's lease is extended: three times per lease TTL, so that a
        late renewal or two still keep it."""
        return self.config.lease_ttl / 3

    def release_lease_args(
        self, plan: KeyPlan, token: str, error: BaseException | None
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV releasing the lease ``token``, leaving the loader's ``error``
        (an exception, not a cancellation) in its place for ``loader_failure_ttl``."""
        failure_ms = round(self.config.loader_failure_ttl * 1000)
        if not isinstance(error, Exception) or failure_ms <= 0:
            return [plan.lease_key], [token, "", 0]
        detail = f"{type(error).__name__}: {error}"[:300]
        marker = FAILURE_MARK + detail.encode("utf-8", "replace").decode()
        return [plan.lease_key], [token, marker, failure_ms]

    def failed_elsewhere(self, plan: KeyPlan, holder: str) -> LoaderFailedError | None:
        """The error of another process's failed load if the lease holds one (counted)."""
        if not holder.startswith(FAILURE_MARK):
            return None
        self.metrics.error("get_or_set", "loader_failed_elsewhere")
        return LoaderFailedError(plan.key, holder[len(FAILURE_MARK) :])

    @staticmethod
    def waiting_for_lease() -> None:
        """Another process holds the key's lease: this caller waits for its value (an
        event of the operation's span)."""
        cache_event("lease_wait", {})

    @staticmethod
    def refreshing() -> None:
        """This caller took the lease to refresh a value (stale, or early): it runs the
        loader, where a caller served meanwhile does not (an event of the operation's
        span, whose result says what the lookup found)."""
        cache_event("refresh", {})

    def renew_lease_args(self, plan: KeyPlan, token: str) -> tuple[list[str], list[str | int]]:
        return [plan.lease_key], [token, self.lease_ms()]

    def loaded(
        self,
        plan: KeyPlan,
        data: bytes,
        ttl_ms: int,
        model: Any,
        value: Any,
        epoch: int,
        *,
        stored: bool,
    ) -> None:
        """A loader's value was written to Redis (or refused: the key moved on meanwhile)."""
        if stored:
            if self.local.active:
                self.local.put(plan.key, data, ttl_ms / 1000, model, value, epoch)
        else:
            self.log(
                logging.DEBUG,
                "loaded value not stored: invalidated during the load, or Redis unavailable",
                key=plan.key,
            )

    def refresh_failed(self, plan: KeyPlan, error: Exception) -> None:
        """Refreshing a stale value failed: the stale value is served instead."""
        self.metrics.error("get_or_set", "refresh_failed")
        self.log(
            logging.WARNING,
            "refresh of a stale cache value failed; serving the stale value",
            error,
            key=plan.key,
        )

    def unstorable_load(self, plan: KeyPlan, error: Exception) -> None:
        """A loader's value too large, or not JSON that reads back as it is: returned to
        the caller, not cached (the next call loads again)."""
        self.metrics.error("get_or_set", type(error).__name__)
        self.log(logging.WARNING, "loaded value not cached", error, key=plan.key)

    # -- invalidation -------------------------------------------------------------------

    def key_message(self, plan: KeyPlan, count: int) -> InvalidationMessage:
        return InvalidationMessage.for_key(self.prefix, plan.key, count, self.origin)

    def pattern_message(self, pattern: str, count: int) -> InvalidationMessage:
        return InvalidationMessage.for_pattern(self.prefix, pattern, count, self.origin)

    def group_message(self, group: str) -> InvalidationMessage:
        return InvalidationMessage.for_group(self.prefix, validate_group(group), self.origin)

    def scan_pattern(self, pattern: str) -> str:
        return self.layout.scan_pattern(validate_pattern(pattern))

    @staticmethod
    def parse_scan(page: Sequence[Any]) -> tuple[int, Sequence[bytes | str]]:
        """The cursor and keys of a SCAN reply; a cluster client's cursor is a dict of
        one node (the owner of the cache's slot) to its cursor."""
        cursor = page[0]
        if isinstance(cursor, dict):
            (cursor,) = cursor.values()
        return int(cursor), page[1]

    def split_scanned(self, keys: Sequence[bytes | str]) -> tuple[list[str], list[str]]:
        """Split a SCAN page into data keys and lease keys (leases are not counted)."""
        data: list[str] = []
        leases: list[str] = []
        for raw in keys:
            key = _text(raw)
            (leases if self.layout.is_lease(key) else data).append(key)
        return data, leases

    def generation_keys_of(self, data_keys: Sequence[str]) -> list[str]:
        """The generation keys of the groups ``data_keys`` belong to, each once."""
        found: dict[str, None] = {}
        for data_key in data_keys:
            parts = self.layout.split(data_key)
            if parts is not None:
                found[self.layout.generation_key(group_of(parts[0]))] = None
        return list(found)

    def count_current(
        self, data_keys: Sequence[str], generation_keys: Sequence[str], generations: Sequence[Any]
    ) -> int:
        """How many of ``data_keys`` are of their group's current generation: the logical
        keys that held a value (older copies were unreachable already)."""
        current = {
            key: "" if generation is None else _text(generation)
            for key, generation in zip(generation_keys, generations, strict=True)
        }
        count = 0
        for data_key in data_keys:
            parts = self.layout.split(data_key)
            if parts is None:
                continue
            key, generation = parts
            count += current.get(self.layout.generation_key(group_of(key))) == generation
        return count

    def invalidation_failed(self, message: InvalidationMessage) -> None:
        """A pattern invalidation Redis did not complete: counted and logged (the keys
        removed before the failure were broadcast with their page)."""
        self.metrics.invalidation(message.kind, "failed")
        self.log(
            logging.WARNING,
            "cache invalidation not completed; redis unavailable",
            kind=message.kind,
            pattern=message.pattern,
            count=message.count,
        )

    def sent(self, message: InvalidationMessage) -> None:
        self.metrics.invalidation(message.kind, "sent")
        self.log(
            logging.INFO,
            "cache invalidated",
            kind=message.kind,
            pattern=message.pattern,
            group=message.group,
            count=message.count,
        )

    def malformed_message(self, data: bytes | str) -> None:
        self.log(logging.DEBUG, "ignored a malformed invalidation message", size=len(data))

    def apply(self, message: InvalidationMessage) -> None:
        """Apply a message from the channel to the local tier.

        Messages of another prefix are not applied; messages this cache sent itself
        were applied before they were sent, so they are recognised by origin id and not
        applied twice.
        """
        if message.prefix == self.prefix and message.origin != self.origin:
            self.metrics.invalidation(message.kind, "received")
            self.local.drop(message)
            if message.group is not None and message.generation is not None:
                self.remember_generation(message.group, str(message.generation))

    # -- the server -------------------------------------------------------------------

    def eviction_policy(self, reply: Any, error: BaseException | None = None) -> str | None:
        """Log the ``maxmemory-policy`` in a ``CONFIG GET`` reply (of one server, or of a
        cluster's nodes); every policy is supported, ``noeviction`` with a warning."""
        policies = sorted({_text(value) for value in _config_values(reply)})
        if not policies:
            self.log(logging.DEBUG, "redis eviction policy unknown", error)
            return None
        policy = ",".join(policies)
        if "noeviction" in policies:
            self.log(
                logging.WARNING,
                "redis maxmemory-policy is noeviction: once redis is full, cache writes "
                "are refused (set returns False, loaded values are not stored)",
                policy=policy,
            )
        else:
            self.log(logging.INFO, "redis eviction policy", policy=policy)
        return policy

    # -- listener state -----------------------------------------------------------------

    def listener_subscribed(self) -> None:
        """The subscription is live: the local tier may serve again, from empty."""
        if self._listener_outage:
            self._listener_outage = False
            self.log(logging.INFO, "cache invalidation listener resubscribed")
        self.local.activate()

    def listener_heard(self) -> None:
        """The listener has run: the local tier may serve for a while more."""
        self.local.heard()

    def listener_lost(self, error: BaseException) -> None:
        """Messages may be lost from now on: flush and bypass the local tier."""
        self.local.deactivate()
        if not self._listener_outage:
            self._listener_outage = True
            self.metrics.error("listen", type(error).__name__)
            self.log(
                logging.WARNING,
                "cache invalidation listener disconnected; local tier flushed and bypassed",
                error,
            )

    def subscriber_lost(self, error: BaseException) -> None:
        self.log(logging.WARNING, "invalidation subscription disconnected; resubscribing", error)

    def listener_stopped(self) -> None:
        self.local.deactivate()

    def callback_failed(self, error: Exception) -> None:
        self.log(logging.ERROR, "invalidation callback failed", error, exc_info=error)

    # -- Redis health -------------------------------------------------------------------
    # After ``breaker_failure_threshold`` consecutive failures the cache skips Redis for
    # ``breaker_cooldown`` seconds, then lets one probe through (the project's breaker,
    # driven as the HTTP clients drive it); each outage is logged once, when it begins
    # and when it ends.

    def admit(self, operation: str) -> Admission | None:
        """The breaker's permit to call Redis now, or ``None`` (counted) to skip it."""
        admission = self._admit()
        if admission.permitted:
            return admission
        self.metrics.error(operation, "circuit_open")
        return None

    def succeeded(self, operation: str, seconds: float, admission: Admission) -> None:
        self._answered(admission)
        self.metrics.observe(operation, seconds)

    def abandoned(self, admission: Admission) -> None:
        """The call was cancelled: no verdict on Redis."""
        self.breaker.release(admission)

    def failed(self, operation: str, error: BaseException, admission: Admission) -> Any:
        """A Redis call failed: an outage, or a reply about one key (``WRONGTYPE``...).

        Returns :data:`FAILED`, or :data:`UNCONFIRMED` for a write that Redis may still
        apply: any failure but an error reply may come after the command left (a paused
        Redis applies it when it resumes), and redis-py's retry can turn a lost reply into
        a connection error, so only an error reply proves the write was not applied.
        """
        self.metrics.error(operation, type(error).__name__)
        if not is_outage(error):
            # Redis answered: it is up, and this key's trouble must not switch the
            # cache off for every other key.
            self._answered(admission)
            self.log(
                logging.WARNING,
                "redis refused a cache command; treated as a miss for this key",
                error,
                operation=operation,
            )
            return FAILED
        self.breaker.record_failure(admission)
        with self._outage_lock:
            first_of_outage = self._outage_started_at is None
            if first_of_outage:
                self._outage_started_at = time.monotonic()
        if first_of_outage:
            self.log(
                logging.WARNING,
                "redis cache unavailable; serving misses until it recovers",
                error,
                operation=operation,
            )
        self.log(logging.DEBUG, "redis cache operation failed", error, operation=operation)
        if operation in _WRITES_TOLD_UNCONFIRMED and not is_error_reply(error):
            return UNCONFIRMED
        return FAILED

    def _answered(self, admission: Admission) -> None:
        """Redis answered: a success for the breaker, and the end of an outage if one was on."""
        self.breaker.record_success(admission)
        if self._outage_started_at is None:
            return
        with self._outage_lock:
            started_at, self._outage_started_at = self._outage_started_at, None
        if started_at is not None:
            outage_seconds = round(time.monotonic() - started_at, 3)
            self.log(logging.INFO, "redis cache recovered", outage_seconds=outage_seconds)


class CoreFacade:
    """The properties every cache (Redis or in memory, sync or async) reads off its core."""

    _core: CacheCore

    @property
    def config(self) -> CacheConfig:
        return self._core.config

    @property
    def prefix(self) -> str:
        return self._core.prefix

    @property
    def origin(self) -> str:
        """This cache's origin id, carried by every invalidation message it sends."""
        return self._core.origin

    @property
    def local_tier_active(self) -> bool:
        """True while the local tier serves (its listener is subscribed)."""
        return self._core.local.active


class _NeverRaised(Exception):
    """Stands for redis-py's ``NoScriptError`` where redis is not installed."""


def no_script_error() -> type[Exception]:
    """redis-py's ``NoScriptError`` (the memory backend works without redis-py)."""
    try:
        from redis.exceptions import NoScriptError
    except ImportError:
        return _NeverRaised
    return NoScriptError


def is_outage(error: BaseException) -> bool:
    """Tell a failure of Redis itself from an error reply about a key or a command.

    Error replies (``WRONGTYPE``, a script error) say Redis is up, and so does an
    argument the client could not encode (the caller's error, never sent); a read-only
    replica after a failover, connection and timeout errors, and anything unknown say
    it is not usable.
    """
    try:
        from redis.exceptions import DataError, ReadOnlyError
    except ImportError:  # pragma: no cover - the Redis drivers always have redis
        return True
    if isinstance(error, (UnicodeError, DataError)):
        return False
    return not is_error_reply(error) or isinstance(error, ReadOnlyError)


def is_error_reply(error: BaseException) -> bool:
    """Tell whether Redis answered ``error``: the command was refused, not lost."""
    try:
        from redis.exceptions import ResponseError
    except ImportError:  # pragma: no cover - the Redis drivers always have redis
        return False
    return isinstance(error, ResponseError)

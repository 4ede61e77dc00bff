"""The Redis caches' multi-step operations as sans-I/O flows, one for both drivers.

A flow is a generator that decides, and yields what it needs done: a :class:`Call` to
Redis (answered with the reply, or :data:`FAILED`), a :class:`Sleep`, or :data:`LOAD`
(answered with the loader's raw result, or with the loader's error thrown in; while it
runs, the driver repeats its ``keep_alive`` call, which renews the lease of the load). Each
driver runs a flow in a short loop with its own transport, sleep and loader call, as
httpx drives ``Auth.auth_flow`` and psycopg drives its ``generators``. Plain reads do not
go through a flow: they are the path of every hit, and stay a straight line in each driver.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, TypeVar

from . import _scripts
from ._codec import CorruptValueError
from ._core import (
    FAILED,
    GENERATION_ATTEMPTS,
    MISMATCH,
    SCAN_BATCH,
    UNCONFIRMED,
    CacheCore,
    KeyPlan,
    Read,
    fresh_generation,
)
from ._exceptions import CacheSerializationError, CacheUnavailableError, CacheValueTooLargeError
from ._keys import build_pattern
from ._local import MISSING
from ._messages import InvalidationMessage

T = TypeVar("T")


class Command(enum.Enum):
    """The Redis commands and scripts a flow may ask for."""

    # Members are singletons: hashed by identity, a driver's lookup of the command to
    # run spares a call of ``Enum.__hash__`` (Python code) on every Redis call of a flow.
    __hash__ = object.__hash__

    WRITE = "write"
    DELETE = "delete"
    DELETE_IF_EQUAL = "delete_if_equal"
    BUMP_GENERATION = "bump_generation"
    RELEASE_LEASE = "release_lease"
    RENEW_LEASE = "renew_lease"
    MGET = "mget"
    READ_OR_LEASE = "read_or_lease"
    LEASE = "lease"
    SCAN = "scan"
    UNLINK_AND_PUBLISH = "unlink_and_publish"
    PUBLISH = "publish"


def commands(
    client: Any,
    hash_tag: str,
    *,
    mget: Callable[..., Any],
    script: Callable[[str], Callable[..., Any]],
) -> dict[Command, Callable[..., Any]]:
    """What runs each :class:`Command` on ``client`` (``redis.Redis`` or its asyncio twin:
    they have the same methods; or a cluster client); ``hash_tag`` is the tag every key of
    the cache carries, the driver's own ``mget`` runs that command, and ``script(text)``
    is what runs a script (called with its KEYS and ARGV, two lists)."""
    scan = client.scan
    if hasattr(client, "get_node_from_key"):
        scan = partial(_scan_slot_owner, client, hash_tag)
    return {
        Command.WRITE: script(_scripts.WRITE),
        Command.DELETE: script(_scripts.DELETE),
        Command.DELETE_IF_EQUAL: script(_scripts.DELETE_IF_EQUAL),
        Command.BUMP_GENERATION: script(_scripts.BUMP_GENERATION),
        Command.RELEASE_LEASE: script(_scripts.RELEASE_LEASE),
        Command.RENEW_LEASE: script(_scripts.RENEW_LEASE),
        Command.MGET: mget,
        Command.READ_OR_LEASE: script(_scripts.READ_OR_LEASE),
        Command.LEASE: client.set,
        Command.SCAN: scan,
        Command.UNLINK_AND_PUBLISH: script(_scripts.UNLINK_AND_PUBLISH),
        Command.PUBLISH: client.publish,
    }


def _scan_slot_owner(client: Any, hash_tag: str, cursor: int, **kwargs: Any) -> Any:
    """SCAN on Redis Cluster: only the primary owning the cache's slot holds its keys."""
    return client.scan(cursor, target_nodes=client.get_node_from_key(hash_tag), **kwargs)


class Call:
    """Run ``command`` (counted as ``operation``); send back its reply or FAILED."""

    __slots__ = ("args", "command", "kwargs", "operation")

    def __init__(self, operation: str, command: Command, *args: Any, **kwargs: Any) -> None:
        self.operation = operation
        self.command = command
        self.args = args
        self.kwargs = kwargs


class Sleep:
    """Sleep ``seconds``; send back ``None``."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Load:
    """Call the loader (awaiting it if need be); send back its result, or throw its error.

    While it runs, the driver makes ``keep_alive`` every ``CacheCore.lease_renew_interval``.
    """

    __slots__ = ("keep_alive",)

    def __init__(self, keep_alive: Call | None = None) -> None:
        self.keep_alive = keep_alive


LOAD = Load()


class Superseded:
    """What a load returns when Redis refused its write: a ``set``, ``delete`` or
    invalidation came while it loaded, so ``value`` may be older than that change
    (see ``AsyncRedisCache._join``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


Step = Call | Sleep | Load
Flow = Generator[Step, Any, T]


class ReadThrough:
    """One ``get_or_set`` call: what its loads need to know."""

    __slots__ = ("epoch", "model", "plan", "stale_s", "ttl_ms")

    def __init__(self, plan: KeyPlan, ttl_ms: int, stale_s: float, model: Any, epoch: int) -> None:
        self.plan = plan
        self.ttl_ms = ttl_ms
        self.stale_s = stale_s
        self.model = model
        self.epoch = epoch


# -- the current generation -------------------------------------------------------------


def at_current_generation(
    core: CacheCore,
    plan: KeyPlan,
    operation: str,
    command: Command,
    arguments: Callable[[str], tuple[list[str], list[Any]]],
    moved_to: Callable[[Any], Any] | None = None,
) -> Flow[Any]:
    """Run a script addressed to the generation ``core`` guesses for ``plan``'s group
    (``arguments(generation)`` are its KEYS and ARGV); while it answers that the group
    moved on (the current generation, a string; or what ``moved_to(reply)`` finds in a
    reply that is a string either way), run it again with that generation.
    The reply, or :data:`FAILED` (counted, logged) once it moved on every attempt."""
    for _ in range(GENERATION_ATTEMPTS):
        guessed = core.guess(plan)
        keys, args = arguments(guessed)
        reply = yield Call(operation, command, keys, args)
        seen = reply if moved_to is None or reply is FAILED else moved_to(reply)
        if not isinstance(seen, (bytes, str)) or not core.generation_moved(plan, guessed, seen):
            return reply
    return core.moved_too_often(operation, plan)


# -- writes -----------------------------------------------------------------------------


def set_value(core: CacheCore, key: str, value: object, ttl_ms: int) -> Flow[bool | None]:
    """``True`` once written, ``None`` when Redis may still apply it, else ``False``."""
    plan = core.plan(key)
    data = core.encode(key, value)
    arguments = partial(core.write_args, plan, data, ttl_ms, explicit=True)
    written = yield from at_current_generation(core, plan, "set", Command.WRITE, arguments)
    core.after_local_change(core.key_message(plan, 1))
    if written is UNCONFIRMED:
        return None
    return written is not FAILED and bool(written)


def delete(core: CacheCore, key: str) -> Flow[bool]:
    """Delete ``key``; the script broadcasts the deletion in the same step."""
    plan = core.plan(key)
    arguments = partial(core.delete_args, plan)
    deleted = yield from at_current_generation(core, plan, "delete", Command.DELETE, arguments)
    message = core.key_message(plan, 0 if deleted is FAILED else int(deleted))
    core.after_local_change(message)
    return message.count > 0


def invalidate(
    core: CacheCore, pattern: str, parts: tuple[object, ...], *, strict: bool = False
) -> Flow[int]:
    """Delete the keys matching ``pattern`` page by page; each page is removed and
    broadcast in one script, so that what was removed is always announced. A pattern
    matching nothing is broadcast too (a message of count 0). With ``strict``, an
    invalidation Redis did not complete raises :class:`CacheUnavailableError`."""
    if parts:
        pattern = build_pattern(pattern, *parts)
    match = core.scan_pattern(pattern)
    deleted, cursor, reachable, published = 0, 0, True, False
    while reachable:
        page = yield Call("invalidate_scan", Command.SCAN, cursor, match=match, count=SCAN_BATCH)
        if page is FAILED:
            reachable = False
            break
        cursor, keys = core.parse_scan(page)
        data_keys, lease_keys = core.split_scanned(keys)
        if data_keys or lease_keys:
            generation_keys = core.generation_keys_of(data_keys)
            generations = []
            if generation_keys:
                generations = yield Call("invalidate_scan", Command.MGET, *generation_keys)
            if generations is FAILED:
                reachable = False
                break
            count = core.count_current(data_keys, generation_keys, generations)
            page_message = core.pattern_message(pattern, count).encode()
            removed = yield Call(
                "invalidate_unlink",
                Command.UNLINK_AND_PUBLISH,
                [*data_keys, *lease_keys],
                [core.config.channel, page_message],
            )
            reachable = removed is not FAILED
            deleted += count if reachable else 0
            published = published or reachable
        if cursor == 0:
            break
    message = core.pattern_message(pattern, deleted)
    core.after_local_change(message)
    if reachable and not published:
        reachable = yield from publish(core, message)
    if reachable:
        core.sent(message)
        return deleted
    core.invalidation_failed(message)
    if strict:
        raise CacheUnavailableError(
            f"invalidating {pattern!r} did not complete: redis unavailable "
            f"({deleted} keys removed and broadcast before the failure)"
        )
    return deleted


def invalidate_group(core: CacheCore, group: str) -> Flow[bool]:
    message = core.group_message(group)
    keys = [core.layout.generation_key(group)]
    args: list[str | bytes] = [core.config.channel, message.encode(), fresh_generation()]
    bumped = yield Call("invalidate_group", Command.BUMP_GENERATION, keys, args)
    core.after_local_change(message)
    if bumped is FAILED:
        return False
    core.remember_generation(group, str(bumped))
    core.sent(message)
    return True


def publish(core: CacheCore, message: InvalidationMessage) -> Flow[bool]:
    published = yield Call("publish", Command.PUBLISH, core.config.channel, message.encode())
    return published is not FAILED


# -- reads ------------------------------------------------------------------------------


def drop_corrupt(
    core: CacheCore, plan: KeyPlan, read: Read, error: CorruptValueError, model: Any
) -> Flow[Any]:
    """Count and log a corrupt value, delete it (only it); :data:`MISSING`."""
    core.corrupt(plan, error, model)
    keys, args = core.delete_corrupt_args(plan, read)
    yield Call("delete", Command.DELETE_IF_EQUAL, keys, args)
    return MISSING


def decode(
    core: CacheCore, plan: KeyPlan, read: Read, model: Any, epoch: int, *, count: bool = True
) -> Flow[Any]:
    """The value ``read`` holds, or :data:`MISSING` (absent, or corrupt and deleted)."""
    try:
        return core.decode_read(plan, read, model, epoch, count=count)
    except CorruptValueError as error:
        return (yield from drop_corrupt(core, plan, read, error, model))


# -- read-through -----------------------------------------------------------------------


def load(core: CacheCore, job: ReadThrough) -> Flow[Any]:
    """Only call the loader (Redis is unreachable): its value, validated, as a hit
    would return it."""
    return core.as_read(core.validate((yield LOAD), job.model), job.model)


def fill(core: CacheCore, job: ReadThrough, *, first_read: bool = False) -> Flow[Any]:
    """Load a missing value under the lease, or wait for the process holding it.

    A waiter that gives up (``lease_wait``) loads too, and stores its value only if the
    holder it first waited for still holds the lease: any ``set``, ``delete`` or
    invalidation since then revoked that lease, and its value would be older than theirs.

    With ``first_read``, the caller has not read the key yet: the read-or-lease script is
    its read (a hit is served from it, and counted as the caller's hit or miss), which
    saves a miss the round trip of a plain read first.
    """
    plan = job.plan
    deadline = time.monotonic() + core.config.lease_wait
    first_holder = ""
    while True:
        token = core.new_lease_token()
        arguments = partial(core.read_or_lease_args, plan, token)
        try:
            reply = yield from at_current_generation(
                core,
                plan,
                "lease_acquire",
                Command.READ_OR_LEASE,
                arguments,
                core.read_or_lease_moved,
            )
        except GeneratorExit:
            raise
        except BaseException:
            # Interrupted (a cancelled caller) while Redis may have granted the lease:
            # release it, or every other process would wait for it to expire.
            yield from release(core, plan, token)
            raise
        if reply is FAILED:
            if first_read:
                core.unavailable(plan)
            return (yield from load(core, job))
        read, leased, holder = core.parse_read_or_lease(reply)
        if first_read:
            core.read_through(read.data is None)
        if read.data is not None:
            value = yield from decode(core, plan, read, job.model, job.epoch, count=first_read)
            if value is MISMATCH:
                # Another version's value: serve ours without replacing theirs.
                return (yield from load(core, job))
            if value is not MISSING:
                return value
            first_read = False  # counted as a miss: corrupt, and deleted
            continue  # try again at once
        if first_read:
            core.missed(plan)
            first_read = False
        if leased:
            return (yield from load_and_store(core, job, read.generation, token))
        failure = core.failed_elsewhere(plan, holder)
        if failure is not None:
            raise failure
        if not first_holder:
            core.waiting_for_lease()
            first_holder = holder
        if time.monotonic() >= deadline:
            return (
                yield from load_and_store(core, job, read.generation, first_holder, watched=True)
            )
        yield Sleep(core.config.lease_poll_interval)


def refresh(core: CacheCore, job: ReadThrough, generation: str, stale_value: Any) -> Flow[Any]:
    """Reload a stale value, unless another process holds the lease (then serve it)."""
    token = core.new_lease_token()
    plan = job.plan
    acquired = yield Call(
        "lease_acquire", Command.LEASE, plan.lease_key, token, nx=True, px=core.lease_ms()
    )
    if acquired is FAILED or not acquired:
        return stale_value
    core.refreshing()
    return (yield from load_and_store(core, job, generation, token, replaces=True))


def load_and_store(
    core: CacheCore,
    job: ReadThrough,
    generation: str,
    token: str,
    *,
    replaces: bool = False,
    watched: bool = False,
) -> Flow[Any]:
    """Call the loader and write its value (releasing the lease if it cannot be written).

    The lease is renewed while the loader runs, so that a loader slower than the lease
    TTL still keeps the other processes waiting rather than loading too. With
    ``watched``, ``token`` is another process's lease, which this load neither renews
    nor releases (see :func:`fill`).
    """
    plan = job.plan
    keep_alive = None
    token_held = "" if watched else token
    if token_held:
        renew_keys, renew_args = core.renew_lease_args(plan, token)
        keep_alive = Call("lease_renew", Command.RENEW_LEASE, renew_keys, renew_args)
    try:
        value = core.validate((yield Load(keep_alive)), job.model)
        data, read = core.encode_loaded(plan.key, value, job.model)
    except (CacheValueTooLargeError, CacheSerializationError) as error:
        core.unstorable_load(plan, error)
        yield from release(core, plan, token_held)
        return core.as_read(value, job.model)
    except BaseException as error:
        # A refresh's failure serves the stale value: nobody waits on it.
        yield from release(core, plan, token_held, None if replaces else error)
        raise
    ttl_ms = job.ttl_ms + round(job.stale_s * 1000)
    keys, args = core.write_args(
        plan, data, ttl_ms, generation, lease_token=token, replaces=replaces, watched_lease=watched
    )
    written = yield Call("set", Command.WRITE, keys, args)
    core.loaded(plan, data, ttl_ms, job.model, read, job.epoch, stored=written == 1)
    return Superseded(read) if written == 0 else read


def release(
    core: CacheCore, plan: KeyPlan, token: str, error: BaseException | None = None
) -> Flow[None]:
    """Release the lease ``token`` (leaving the loader's ``error`` in it, if any)."""
    if token:
        keys, args = core.release_lease_args(plan, token, error)
        yield Call("lease_release", Command.RELEASE_LEASE, keys, args)

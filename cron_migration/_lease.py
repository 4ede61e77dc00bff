"""One replica per scheduled run: a Redis lease keyed by job id, slot and call.

Every replica's scheduler fires the same slot; the first ``SET key NX PX`` wins and the
others skip it. The key names the slot as every replica does (see ``_slots``) and the
call's arguments. It is never released when the run ends: it lives until no replica can
start the slot any more (the slot's end plus its ``misfire_grace_time``, or plus the
job's ``timeout`` when the grace is unlimited) plus the clock skew allowed between
replicas, and a replica that gets it later than that refuses the run instead.

A replica that gives up on Redis (timeout, error) must not leave a key that makes the
others skip: the ``SET`` runs in a script that does nothing once the caller's give-up
time has passed (redis-py resends a command after a timeout, and a frozen server runs
the first copy when it wakes), and a replica that gave up deletes the key if it holds
its own token (a ``SET`` that ran but whose answer was lost).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import inspect
import logging
import math
import os
import socket
import time
import weakref
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from commclient._correlation import redact_text
from commclient._extras import import_extra

from ._context import check_seconds
from ._slots import utc_text

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger("cron_migration")

#: Seconds two replicas' clocks (and schedulers' wake-ups) may differ. The lease outlives
#: the last moment its slot may start by this much, so a replica that far off still sees it.
DEFAULT_CLOCK_SKEW = 30.0
#: Seconds one Redis command may take before Redis counts as unreachable.
DEFAULT_REDIS_TIMEOUT = 2.0
DEFAULT_KEY_PREFIX = "cron_migration:lease"
#: Longest pause between two attempts to release a key after a give-up (Redis still away).
MAX_RELEASE_PAUSE = 10.0

OnRedisError = Literal["run", "skip"]

# KEYS[1] the key; ARGV: token, milliseconds to live, the caller's give-up time (ms since
# the epoch). A copy that reaches Redis after the caller gave up sets nothing.
GIVE_UP_CHECK = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ms > tonumber(ARGV[3]) then return -1 end
"""
ACQUIRE_SCRIPT = (
    GIVE_UP_CHECK
    + """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
)
# Compare-and-delete: only the holder's own token.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseDecision(enum.Enum):
    ACQUIRED = "acquired"
    HELD_ELSEWHERE = "held_elsewhere"
    REDIS_UNAVAILABLE = "redis_unavailable"


def owner_token(run_id: str) -> str:
    """A value naming this process and run (the pid changes in a fork)."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


class RedisScripts:
    """Runs a script on a URL's client (one per loop), an asyncio client or a sync client."""

    def __init__(self, redis_or_url: str | Any, redis_timeout: float, what: str) -> None:
        self.redis_timeout = check_seconds("redis_timeout", redis_timeout)
        if isinstance(redis_or_url, str):
            _check_url(redis_or_url, what)
            self._url: str | None = redis_or_url
            self._client: Any = None
        elif callable(getattr(redis_or_url, "eval", None)):
            self._url = None
            self._client = redis_or_url
        else:
            raise TypeError(f"{what} must be a Redis URL or a Redis client, got {redis_or_url!r}")
        self._what = what
        # The loop a given asyncio client was first used on (its connections are there).
        self._home: weakref.ref[asyncio.AbstractEventLoop] | None = None
        # Set when the URL's server answered MOVED: its clients are Redis Cluster clients.
        self._cluster = False
        # Per loop: the URL's client, or a copy of a given asyncio client (closed by aclose).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        # Threads for a sync client's calls (created on first use, daemon-like at exit:
        # concurrent.futures joins them, and each ends with its client's socket timeout).
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        _script_runners.add(self)

    @property
    def wait_seconds(self) -> float:
        """How long a caller waits for one script before giving up."""
        return self.redis_timeout * 2

    async def run(self, script: str, keys: list[str], *args: str | int) -> Any:
        """Run ``script`` on ``keys``; waits at most :attr:`wait_seconds`."""
        return await asyncio.wait_for(self._eval(script, keys, *args), self.wait_seconds)

    async def _eval(self, script: str, keys: list[str], *args: str | int) -> Any:
        client = self._client
        if client is None:
            import redis.exceptions

            client = self._client_for_this_loop()
            try:
                return await client.eval(script, len(keys), *keys, *args)
            except redis.exceptions.AskError:  # MOVED too: the URL names a Cluster node
                if self._cluster:
                    raise
                logger.warning(
                    "%s: the Redis URL names a Redis Cluster node: using the cluster", self._what
                )
                self._cluster = True
                stale = self._clients.pop(asyncio.get_running_loop(), None)
                if stale is not None:
                    await stale.aclose()
                client = self._client_for_this_loop()
                return await client.eval(script, len(keys), *keys, *args)
        elif not _is_async_client(client):
            # Not compat's run_blocking, which waits for the thread even when cancelled: a
            # frozen Redis must not hold the caller past its give-up time. The thread runs
            # on until the client's own socket timeout; what it sends then sets nothing.
            call = functools.partial(client.eval, script, len(keys), *keys, *args)
            return await asyncio.get_running_loop().run_in_executor(self._threads(), call)
        client = self._given_client_for_this_loop(client)
        return await client.eval(script, len(keys), *keys, *args)

    def _given_client_for_this_loop(self, client: Any) -> Any:
        """The given asyncio client on the first loop that uses it; a copy on any other.

        Its connections belong to the loop that opened them: another loop (compat's, a
        new ``asyncio.run``) gets a client like it on a pool of its own.
        """
        loop = asyncio.get_running_loop()
        if self._home is None:
            self._home = weakref.ref(loop)
        if self._home() is loop:
            return client
        copy = self._clients.get(loop)
        if copy is None:
            import redis.asyncio

            from commclient.cache._core import rebuild_client

            copy = rebuild_client(lambda: redis.asyncio, client, {})
            self._clients[loop] = copy
        return copy

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="cron-migration-redis"
            )
        return self._pool

    def _client_for_this_loop(self) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
        # An asyncio Redis client's connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio

            assert self._url is not None
            kind = redis.asyncio.RedisCluster if self._cluster else redis.asyncio.Redis
            client = kind.from_url(
                self._url,
                socket_timeout=self.redis_timeout,
                socket_connect_timeout=self.redis_timeout,
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def forget_clients(self) -> None:
        self._clients = weakref.WeakKeyDictionary()
        self._pool = None  # its threads stayed in the parent


class Lease:
    """A ``SET NX PX`` lease per (job id, slot, call) in Redis.

    ``redis_or_url``: a URL, a ``redis.asyncio.Redis`` client (used as is on the first loop
    that uses it; any other loop gets a copy on a pool of its own) or a ``redis.Redis``
    client (its calls run in a worker thread; a frozen Redis holds that thread until the
    server answers or the client's own timeouts and retries give up).
    ``on_redis_error``: what a replica does with a slot when Redis cannot be reached:
    ``"skip"`` (the default: at most once; the run is counted ``skipped_no_lease``) or
    ``"run"`` (at least once: every replica that cannot reach Redis runs the slot).
    Either way it is logged.
    """

    def __init__(
        self,
        redis_or_url: str | Any,
        *,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        on_redis_error: OnRedisError = "skip",
        key_prefix: str = DEFAULT_KEY_PREFIX,
        redis_timeout: float = DEFAULT_REDIS_TIMEOUT,
    ) -> None:
        if on_redis_error not in ("run", "skip"):
            raise ValueError(f"on_redis_error must be 'run' or 'skip', got {on_redis_error!r}")
        self.clock_skew = check_seconds("clock_skew", clock_skew, allow_zero=True)
        self._redis = RedisScripts(redis_or_url, redis_timeout, "lease")
        self.redis_timeout = self._redis.redis_timeout
        self.on_redis_error: OnRedisError = on_redis_error
        self.key_prefix = key_prefix
        # Compare-and-deletes after a give-up, kept alive until they end.
        self._releases: set[asyncio.Task[None]] = set()

    def key(self, job_id: str, slot: str | datetime, call: str = "") -> str:
        """The lease key of one call in one slot; the same on every replica."""
        if isinstance(slot, datetime):
            slot = utc_text(slot)
        return f"{self.key_prefix}:{job_id}:{slot}" + (f":{call}" if call else "")

    async def acquire(self, key: str, until: float, run_id: str) -> LeaseDecision:
        """Try to take ``key`` until ``until`` (epoch seconds) plus the clock skew."""
        token = owner_token(run_id)
        sent = time.time()
        milliseconds = max(1, math.ceil((until + self.clock_skew - sent) * 1000))
        give_up_ms = math.ceil((sent + self._redis.wait_seconds) * 1000)
        try:
            answer = await self._redis.run(ACQUIRE_SCRIPT, [key], token, milliseconds, give_up_ms)
        except asyncio.CancelledError:
            self._release_after_give_up(key, token, until, give_up_ms / 1000)
            raise
        except Exception as exc:
            answer = exc
        if answer == 1:
            return LeaseDecision.ACQUIRED
        if answer == 0:
            logger.info("%s runs on another replica (lease %s held)", key, key)
            return LeaseDecision.HELD_ELSEWHERE
        if answer == -1:
            answer = RuntimeError(
                "Redis ran the lease's SET after this replica's give-up time: a frozen "
                "server, or its clock is ahead of this replica's"
            )
        action = "running it anyway" if self.on_redis_error == "run" else "skipping it"
        logger.error(
            "lease %s: Redis unreachable (%r); %s (on_redis_error=%r)",
            key,
            answer,
            action,
            self.on_redis_error,
        )
        if self.on_redis_error == "skip":
            self._release_after_give_up(key, token, until, give_up_ms / 1000)
        return LeaseDecision.REDIS_UNAVAILABLE

    def _release_after_give_up(self, key: str, token: str, until: float, gave_up: float) -> None:
        # A copy of the SET passes the give-up check until Redis's clock reads ``gave_up``:
        # up to clock_skew later by this replica's clock when Redis's clock lags behind.
        settled = gave_up + self.clock_skew
        task = asyncio.get_running_loop().create_task(
            self._release(key, token, settled, until + self.clock_skew), name=f"release {key}"
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, key: str, token: str, settled: float, expires: float) -> None:
        """Delete ``key`` if it holds ``token``, until a try sent after ``settled`` is answered.

        An answer before ``settled`` may come before a late copy of the SET lands (each
        copy redis-py resends is one more), so tries go on every ``2 x redis_timeout``.
        Retried, backing off, while Redis is away; never past ``expires`` (the key's end).
        """
        pause = min(0.5, self.redis_timeout)
        while (sent := time.time()) < expires:
            try:
                if await self._redis.run(RELEASE_SCRIPT, [key], token):
                    logger.warning("lease %s: a SET given up on had landed; released", key)
            except Exception:  # Redis still away: try again
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RELEASE_PAUSE)
                continue
            if sent >= settled:
                return
            # Tried again every 2 x redis_timeout: a late copy holds the key that long.
            await asyncio.sleep(min(settled, expires, sent + self._redis.wait_seconds) - sent)

    async def aclose(self) -> None:
        """Close the client this lease opened for the current loop (none for a given client)."""
        await self._redis.aclose()

    close = aclose


def _check_url(url: str, what: str) -> None:
    """Refuse, when the job is decorated, a URL every run would fail to connect with."""
    shown = redact_text(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{what}: {shown!r} is not a Redis URL (redis://host:port/db)")
    redis_asyncio = import_extra("redis.asyncio", extra="redis", feature=f"{what}=<Redis URL>")
    try:
        redis_asyncio.ConnectionPool.from_url(url)  # parses only; connects on first use
    except ValueError as exc:
        raise ValueError(f"{what}: {shown!r} is not a usable Redis URL: {exc}") from None


def _is_async_client(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio") or inspect.iscoroutinefunction(
        client.eval
    )


_script_runners: weakref.WeakSet[RedisScripts] = weakref.WeakSet()


def _forget_clients_after_fork() -> None:
    # A client's connections are the parent's sockets: a child using them would interleave
    # its commands with the parent's. Dropped, not closed (closing talks on the socket);
    # the child opens its own on first use. A client given to the lease is the caller's.
    for runner in list(_script_runners):
        runner.forget_clients()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_clients_after_fork)

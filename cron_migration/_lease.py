"""One replica per scheduled run: a Redis lease keyed by job id and scheduled run time.

Every replica's scheduler fires the same slot; the first ``SET key NX PX`` wins and the
others skip it. The lease is never released when the run ends: a replica whose clock or
scheduler fires later than the run lasted would otherwise find the key gone and run the
slot again. It expires after the run's timeout plus the clock skew allowed between
replicas, so that a replica firing that much later still finds it.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import os
import socket
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from commclient._correlation import redact_text
from commclient._extras import import_extra

from ._context import check_seconds

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger("cron_migration")

#: Seconds two replicas' clocks (and schedulers' wake-ups) may differ. The lease lasts
#: the run's timeout plus this, so a replica firing up to this late still sees it.
DEFAULT_CLOCK_SKEW = 30.0
#: Seconds one Redis command may take before Redis counts as unreachable.
DEFAULT_REDIS_TIMEOUT = 2.0
DEFAULT_KEY_PREFIX = "cron_migration:lease"

OnRedisError = Literal["run", "skip"]


class LeaseDecision(enum.Enum):
    ACQUIRED = "acquired"
    HELD_ELSEWHERE = "held_elsewhere"
    REDIS_UNAVAILABLE = "redis_unavailable"


class Lease:
    """A ``SET NX PX`` lease per (job id, scheduled run time) in Redis.

    ``redis_or_url``: a URL, a ``redis.asyncio.Redis`` client (used on the loop the job runs on)
    or a ``redis.Redis`` client (its calls run in a worker thread).
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
        self.redis_timeout = check_seconds("redis_timeout", redis_timeout)
        if isinstance(redis_or_url, str):
            _check_url(redis_or_url)
            self._url: str | None = redis_or_url
            self._client: Any = None
        elif callable(getattr(redis_or_url, "set", None)):
            self._url = None
            self._client = redis_or_url
        else:
            raise TypeError(f"lease must be a Redis URL or a Redis client, got {redis_or_url!r}")
        self.on_redis_error: OnRedisError = on_redis_error
        self.key_prefix = key_prefix
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        _leases.add(self)

    def key(self, job_id: str, scheduled_at: datetime) -> str:
        """The lease key of one slot; the same on every replica whatever its time zone."""
        when = scheduled_at.astimezone(timezone.utc).isoformat(timespec="microseconds")
        return f"{self.key_prefix}:{job_id}:{when}"

    def hold_seconds(self, timeout: float) -> float:
        """How long a run's lease lives: its ``timeout`` plus the clock skew allowed."""
        return timeout + self.clock_skew

    async def acquire(
        self, job_id: str, scheduled_at: datetime, timeout: float, run_id: str
    ) -> LeaseDecision:
        """Try to take the slot's lease for ``timeout`` plus the clock skew."""
        key = self.key(job_id, scheduled_at)
        milliseconds = max(1, math.ceil(self.hold_seconds(timeout) * 1000))
        value = f"{socket.gethostname()}:{os.getpid()}:{run_id}"  # the pid changes in a fork
        try:
            acquired = await asyncio.wait_for(
                self._set_nx(key, value, milliseconds), self.redis_timeout * 2
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            action = "running it anyway" if self.on_redis_error == "run" else "skipping it"
            logger.error(
                "lease for job %s at %s: Redis unreachable (%r); %s (on_redis_error=%r)",
                job_id,
                scheduled_at.isoformat(),
                exc,
                action,
                self.on_redis_error,
            )
            return LeaseDecision.REDIS_UNAVAILABLE
        if acquired:
            return LeaseDecision.ACQUIRED
        logger.info(
            "job %s at %s runs on another replica (lease %s held)",
            job_id,
            scheduled_at.isoformat(),
            key,
        )
        return LeaseDecision.HELD_ELSEWHERE

    async def _set_nx(self, key: str, value: str, milliseconds: int) -> bool:
        client = self._client
        if client is None:
            client = self._client_for_this_loop()
        elif not _is_async_client(client):
            from compat import run_blocking

            return bool(await run_blocking(client.set, key, value, nx=True, px=milliseconds))
        return bool(await client.set(key, value, nx=True, px=milliseconds))

    def _client_for_this_loop(self) -> redis.asyncio.Redis:
        # An asyncio Redis client's connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio

            assert self._url is not None
            client = redis.asyncio.Redis.from_url(
                self._url,
                socket_timeout=self.redis_timeout,
                socket_connect_timeout=self.redis_timeout,
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the client this lease opened for the current loop (none for a given client)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _check_url(url: str) -> None:
    """Refuse, when the job is decorated, a URL every run would fail to connect with."""
    shown = redact_text(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"lease: {shown!r} is not a Redis URL (redis://host:port/db)")
    redis_asyncio = import_extra("redis.asyncio", extra="redis", feature="lease=<Redis URL>")
    try:
        redis_asyncio.ConnectionPool.from_url(url)  # parses only; connects on first use
    except ValueError as exc:
        raise ValueError(f"lease: {shown!r} is not a usable Redis URL: {exc}") from None


def _is_async_client(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio") or inspect.iscoroutinefunction(
        client.set
    )


_leases: weakref.WeakSet[Lease] = weakref.WeakSet()


def _forget_clients_after_fork() -> None:
    # A client's connections are the parent's sockets: a child using them would interleave
    # its commands with the parent's. Dropped, not closed (closing talks on the socket);
    # the child opens its own on first use. A client given to the lease is the caller's.
    for lease in list(_leases):
        lease._clients = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_clients_after_fork)

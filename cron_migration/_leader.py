"""Leader election: one replica at a time runs the scheduler's jobs; the others stand by.

Every replica keeps its scheduler ticking, and its :class:`MigrationExecutor` asks the
election before each run. The leader holds a Redis key (``<prefix>:{name}``) whose value
is its id and a fencing token; it renews the key every ``ttl / 3`` seconds, and standby
replicas try to take it just as often. A fencing token comes from ``INCR`` on every new
leadership, so it only grows; a missing counter (the first election, or Redis lost its
data) starts from Redis's clock in milliseconds, above every token handed out before as
long as that clock does not go back.

Before each run the executor checks, in Redis, that the key still holds this replica's
id and token: a leader paused (SIGSTOP, a long GC, a frozen VM) past its ``ttl`` finds a
newer leader's value when it wakes and skips the run. A pause *between* that check and
the job's own writes is not covered; a job that needs that passes
``current_scheduled_run().fencing_token`` to the system it writes to, which refuses
tokens older than the newest it has seen.

When the leader dies, its key expires ``ttl`` after its last renewal and a standby takes
it at its next attempt: a new leader within ``ttl + ttl / 3`` (+ one Redis timeout).
A leader that stops cleanly (its executor shuts down; ``await`` :meth:`LeaderElection.aclose`
to wait for it) deletes its key, so a standby takes over within ``ttl / 3``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

from ._context import check_seconds
from ._lease import GIVE_UP_CHECK, RedisScripts, owner_token

logger = logging.getLogger("cron_migration")

#: Seconds the leader's key lives after each renewal: how long the service may go
#: without a leader when the leader dies (plus ``ttl / 3`` for a standby's next attempt).
DEFAULT_LEADER_TTL = 15.0
# A renewal every ttl/3 must be able to wait for Redis twice (2 x 2 x redis_timeout), so
# the leader's default is shorter than a lease's: 4 s of waiting fits in the default 5 s.
DEFAULT_LEADER_REDIS_TIMEOUT = 1.0
DEFAULT_LEADER_PREFIX = "cron_migration:leader"

# KEYS: the leader key, the fencing counter; ARGV: candidate id, ttl ms, give-up ms.
# Returns the fencing token when this candidate leads (now or already), 0 when another
# does, -1 when the call arrived after the candidate gave up on it. ``ms`` is Redis's
# clock (GIVE_UP_CHECK).
CAMPAIGN_SCRIPT = (
    GIVE_UP_CHECK
    + """
local current = redis.call('GET', KEYS[1])
if current then
  local id, fence = string.match(current, '^(.*)|(%d+)$')
  if id == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(fence)
  end
  return 0
end
local fence = redis.call('INCR', KEYS[2])
if fence == 1 then
  -- No counter: the first election, or a Redis that lost its data (restarted without
  -- persistence, the key evicted). Counting from Redis's clock in milliseconds keeps
  -- every token above those handed out before.
  fence = ms
  redis.call('SET', KEYS[2], string.format('%d', fence))
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%d', fence), 'PX', ARGV[2])
return fence
"""
)
# KEYS: the leader key; ARGV: the value this replica holds. 1 if it still does.
CHECK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""
RESIGN_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeadershipLostError(RuntimeError):
    """A run confirmed under a leadership that lapsed before its job function started."""


class LeaderElection:
    """Elects one replica to run a scheduler's jobs, through a Redis key with fencing.

    Pass it to :func:`migrate_scheduler` (``leader=``) or :class:`MigrationExecutor`; the
    executor campaigns while the scheduler runs and checks leadership before every run.
    ``redis_or_url``: a Redis URL, a ``redis.asyncio.Redis`` or a ``redis.Redis`` client.
    ``name``: the scheduler's name; replicas of one service share it. ``ttl``: see the
    module doc (default 15 s, with the default ``redis_timeout`` of 1 s: a dead leader is
    replaced within 22 s).
    """

    def __init__(
        self,
        redis_or_url: str | Any,
        *,
        name: str = "scheduler",
        ttl: float = DEFAULT_LEADER_TTL,
        key_prefix: str = DEFAULT_LEADER_PREFIX,
        redis_timeout: float = DEFAULT_LEADER_REDIS_TIMEOUT,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.ttl = check_seconds("ttl", ttl)
        self._redis = RedisScripts(redis_or_url, redis_timeout, "leader election")
        if self._redis.wait_seconds * 2 >= self.ttl / 3:
            raise ValueError(
                f"ttl={ttl:g}s is too short for redis_timeout={redis_timeout:g}s: a renewal "
                "every ttl/3 must be able to wait for Redis twice; make ttl at least "
                f"{self._redis.wait_seconds * 6 + 0.001:g}s or redis_timeout smaller"
            )
        self.name = name
        # A hash tag keeps the key and its fencing counter in one Redis Cluster slot.
        self.key = f"{key_prefix}:{{{name}}}"
        self._fence_key = f"{self.key}:fence"
        self._instance = uuid.uuid4().hex
        self._fencing_token: int | None = None
        self._leads_until = 0.0  # time.monotonic(): when the key may have expired
        self._campaign: asyncio.Task[None] | None = None
        self._campaign_failing = False  # the last campaign got no answer
        self._answered = False  # a campaign got an answer from Redis

    @property
    def renew_every(self) -> float:
        """Seconds between two campaigns (renewals for the leader)."""
        return self.ttl / 3

    @property
    def candidate_id(self) -> str:
        """This replica's id in the election (the pid changes in a fork)."""
        return owner_token(self._instance)

    @property
    def fencing_token(self) -> int | None:
        """The token of this replica's leadership, or None when it does not lead (locally)."""
        if self._fencing_token is not None and time.monotonic() < self._leads_until:
            return self._fencing_token
        return None

    @property
    def is_leader(self) -> bool:
        """Whether this replica led at its last renewal, and that renewal has not lapsed."""
        return self.fencing_token is not None

    async def campaign_once(self) -> bool:
        """Take the leadership, or renew it; whether this replica leads now."""
        sent = time.monotonic()
        give_up_ms = math.ceil((time.time() + self._redis.wait_seconds) * 1000)
        try:
            answer = await self._redis.run(
                CAMPAIGN_SCRIPT,
                [self.key, self._fence_key],
                self.candidate_id,
                math.ceil(self.ttl * 1000),
                give_up_ms,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer = exc
        self._note_campaign_failure(answer)
        was = self.is_leader
        if isinstance(answer, int) and answer > 0:
            if answer != self._fencing_token:
                logger.warning(
                    "leader election %s: this replica leads (fencing token %d)", self.name, answer
                )
            self._fencing_token = answer
            # The key lives ttl from when Redis ran the script, which is after ``sent``.
            self._leads_until = sent + self.ttl
            return True
        if answer == 0 and was:
            logger.warning("leader election %s: leadership lost to another replica", self.name)
            self._fencing_token = None
        return self.is_leader

    def _note_campaign_failure(self, answer: object) -> None:
        """Log a campaign that got no answer: each for a leader, the first of a streak else.

        A standby that cannot reach Redis (down, a wrong password, a Cluster node that
        answers MOVED) never leads: when that is every replica, no job runs anywhere.
        """
        if isinstance(answer, int) and answer >= 0:
            self._answered = True
            if self._campaign_failing:
                logger.warning("leader election %s: Redis answers again", self.name)
            self._campaign_failing = False
            return
        if answer == -1:
            answer = "Redis answered after this replica's give-up time"
        if self._fencing_token is not None:
            logger.error("leader election %s: renewal failed (%r)", self.name, answer)
        elif not self._campaign_failing:
            logger.error(
                "leader election %s: cannot campaign (%r); this replica runs no job until "
                "it reaches Redis",
                self.name,
                answer,
            )
        self._campaign_failing = True

    async def confirm(self) -> int | None:
        """The fencing token if Redis still names this replica the leader, else None."""
        if not self._answered:
            # Runs due at the scheduler's first tick (a replica started mid-slot, missed
            # runs within their grace) come before the campaign's first answer.
            await self.campaign_once()
        token = self.fencing_token
        if token is None:
            return None
        try:
            held = await self._redis.run(CHECK_SCRIPT, [self.key], f"{self.candidate_id}|{token}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("leader election %s: cannot confirm leadership (%r)", self.name, exc)
            return None
        if held != 1:
            self._fencing_token = None
            logger.warning("leader election %s: no longer the leader", self.name)
            return None
        # Paused between the check and here past the lease: not the leader any more.
        return self.fencing_token

    def check_leads(self, token: int) -> None:
        """Raise :class:`LeadershipLostError` unless this replica still leads with ``token``.

        Local, without Redis: for a run confirmed earlier that waited (for a worker
        thread) before starting; the leadership lapses ``ttl`` after the last renewal.
        """
        if self.fencing_token != token:
            raise LeadershipLostError(
                f"leader election {self.name}: the leadership this run was confirmed under "
                f"(fencing token {token}) lapsed before it started; another replica may "
                "lead, so it is not started"
            )

    async def campaign(self) -> None:
        """Campaign every :attr:`renew_every` seconds until cancelled; then resign."""
        try:
            while True:
                await self.campaign_once()
                await asyncio.sleep(self.renew_every)
        finally:
            await asyncio.shield(self.resign())

    async def resign(self) -> None:
        """Give the leadership up now (if held), so that a standby takes over at once."""
        token, self._fencing_token = self._fencing_token, None
        if token is None:
            return
        try:
            await self._redis.run(RESIGN_SCRIPT, [self.key], f"{self.candidate_id}|{token}")
        except Exception as exc:
            logger.warning("leader election %s: could not resign (%r)", self.name, exc)

    def start(self) -> None:
        """Start campaigning on the running loop (the executor does it when it starts)."""
        if self._campaign is None or self._campaign.done():
            self._campaign = asyncio.get_running_loop().create_task(
                self.campaign(), name=f"leader election {self.name}"
            )

    def stop(self) -> None:
        """Stop campaigning (call it on the campaign's loop); the campaign resigns as it ends."""
        if self._campaign is not None:
            self._campaign.cancel()

    async def aclose(self) -> None:
        """Stop campaigning, resign, and close the Redis client opened for this loop."""
        campaign, self._campaign = self._campaign, None
        if campaign is not None:
            campaign.cancel()
            await asyncio.gather(campaign, return_exceptions=True)
        await self.resign()
        await self._redis.aclose()

    close = aclose

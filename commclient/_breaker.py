"""Circuit breakers over pybreaker: one per (service, target), driven without its call().

pybreaker's ``call()`` holds an RLock for the whole guarded call (every caller is
serialised behind one slow request) and records a success for a coroutine it never
awaited. So the core asks :meth:`Breaker.admit` before a call and reports the
outcome afterwards; a pybreaker circuit over its memory storage keeps the state and
notifies the listeners (the state gauge).

Every check-then-act (is it open, has the reset timeout passed, is a probe out) runs
under the breaker's one lock, and nothing under that lock does I/O: half-open lets
exactly one probe through while the others fail fast, whatever the threads do. Only
answers that change nothing (admit to a closed breaker, refuse while open) read the
state without it, which keeps the hot paths lock-free.

**State shared through Redis.** The local state stays authoritative for admission;
callers never touch Redis. A :class:`_RedisMirror` per breaker collects what happened
locally (failures, a success, opening, closing) and one background thread per process
(:class:`_Syncer`) exchanges it with Redis every ``circuit_breaker_redis_sync_interval``
seconds (at once after a local transition), in one round trip of a Lua script that adds
this process's failures to the shared counter, trips the shared state when the counter
reaches ``fail_max``, and returns the shared state, which the breaker then adopts. So a
frozen or dead Redis never stalls an event loop nor serialises threads: it only delays
what other processes learn. Redis calls have short socket timeouts and no retries; when
Redis cannot be reached (at start or later) the breaker goes on with its local state,
logs one warning per outage, and pushes what happened meanwhile once Redis answers. A
Redis that refuses the URL's credentials is logged as an error, once, and no longer
asked: the breaker stays on its local state.

The keys are pybreaker's ``CircuitRedisStorage`` layout (``<namespace>:pybreaker:state``,
``fail_counter``, ``opened_at`` in whole epoch seconds). That storage itself is not used
on the call path: each of its properties is a blocking round trip, and it swallows Redis
errors into fallback values that cannot be told apart from real ones.

**Fork.** After ``os.fork()`` the child rebuilds each breaker's locks and pybreaker
circuit, forgets a probe that was in flight in the parent (no thread of the child would
ever finish it), drops the parent's unpushed Redis events (the parent pushes them) and
its Redis connections, and starts its own sync thread on first use. The local state is
kept: it is the child's own copy of what the parent knew about the target.

**Reset.** :meth:`Breakers.clear` resets every breaker in place, so clients that hold
one keep using it and see the fresh state; the next client of a pair configures it anew.

**Exit.** The sync thread is a daemon: events not yet pushed when the interpreter exits
(at most one interval's worth) are not sent.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from ._config import ClientConfig
from ._correlation import redact_text
from ._extras import import_extra
from ._lazy import import_pybreaker
from ._policy import Clock, SystemClock

if TYPE_CHECKING:
    import pybreaker
    from prometheus_client.metrics import Gauge
else:
    pybreaker = import_pybreaker()

logger = logging.getLogger("commclient.breaker")

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
#: The state gauge's values, ordered by how bad the state is, so that ``max`` over the
#: replicas (or the processes) of a pair shows the worst one: one replica open and
#: another half-open reads open.
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
#: Seconds a Redis connect or reply may take in the sync thread before Redis counts as down.
REDIS_TIMEOUT = 0.25
#: Seconds the sync thread sleeps at most when it has nothing due.
IDLE_WAKE = 1.0


class Settings(NamedTuple):
    """What the first client of a pair decides about its breaker."""

    fail_max: int
    reset_timeout: float
    clock: Clock | None
    redis_url: str | None
    sync_interval: float


class Admission(NamedTuple):
    """The breaker's answer to a call: go ahead (maybe as the one probe), or wait."""

    permitted: bool
    probe: bool
    retry_after: float


ADMITTED = Admission(permitted=True, probe=False, retry_after=0.0)

Watcher = Callable[[str, str], None]
"""Told ``(old_state, new_state)`` of each transition (``closed``, ``open``, ``half-open``)."""


class Breaker:
    """A pybreaker circuit plus the one-probe rule of the half-open state."""

    def __init__(
        self,
        name: str,
        fail_max: int,
        reset_timeout: float,
        *,
        clock: Clock | None = None,
        redis_url: str | None = None,
        sync_interval: float = 0.5,
        storage: pybreaker.CircuitMemoryStorage | None = None,
    ) -> None:
        """``storage``: where the local state lives (a closed memory storage by default)."""
        self.name = name
        self._gauges: weakref.WeakSet[Gauge] = weakref.WeakSet()
        self._watchers: list[Watcher] = []
        self._lock = threading.Lock()
        self._configure(Settings(fail_max, reset_timeout, clock, redis_url, sync_interval), storage)
        _live_breakers.add(self)

    def _configure(
        self, settings: Settings, storage: pybreaker.CircuitMemoryStorage | None = None
    ) -> None:
        """Settings and a fresh closed state; called at creation and after a reset."""
        if storage is not None and not isinstance(storage, pybreaker.CircuitMemoryStorage):
            raise TypeError(
                "storage must be a pybreaker.CircuitMemoryStorage (for state in Redis, pass "
                f"redis_url), got {type(storage).__name__}"
            )
        self.settings = settings
        self.fail_max = settings.fail_max
        self.reset_timeout = settings.reset_timeout
        self._clock: Clock = SystemClock() if settings.clock is None else settings.clock
        self._storage = pybreaker.CircuitMemoryStorage(CLOSED) if storage is None else storage
        self.circuit = self._new_circuit()
        # The probe in flight: identity, not equality, tells it from stale admissions
        # (made before a reset, a forced transition or a fork).
        self._probe: Admission | None = None
        self._opened_at = 0.0
        self._retry_at = 0.0
        # Bumped by every local transition, so that the sync thread does not overwrite
        # one that happened while its round trip was in flight.
        self._version = 0
        self._mirror = (
            None
            if settings.redis_url is None
            else _RedisMirror(self, settings.redis_url, settings.sync_interval)
        )
        self._start_sync = self._mirror is not None
        self._warned_unlike = False
        for gauge in list(self._gauges):
            gauge.set(STATE_VALUES[CLOSED])

    def _new_circuit(self) -> pybreaker.CircuitBreaker:
        return pybreaker.CircuitBreaker(
            fail_max=self.fail_max,
            reset_timeout=self.reset_timeout,
            state_storage=self._storage,
            name=self.name,
            listeners=[_StateListener(self._gauges, self._watchers)],
        )

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (as last synchronised, with Redis)."""
        return self._storage.state

    def admit(self) -> Admission:
        if self._start_sync:
            # First use, or first use in a forked child.
            self.start_sync()
        # Admitting a call to a closed breaker, or refusing one while it is open, changes
        # nothing, so it needs no lock: a call that races a transition is one that came a
        # moment earlier. Whatever acts on the state (half-open, the probe) re-reads it
        # under the lock.
        answer = self._answer_without_change()
        if answer is not None:
            return answer
        with self._lock:
            answer = self._answer_without_change()
            if answer is not None:
                return answer
            if self._storage.state == OPEN:
                self._version += 1
                self.circuit.half_open()
            elif self._probe is not None:
                # One probe is out: the others fail fast instead of piling onto a
                # service that may still be down.
                return Admission(False, False, self.reset_timeout)
            probe = Admission(True, True, 0.0)
            self._probe = probe
            return probe

    def refusal(self) -> Admission | None:
        """The refusal :meth:`admit` would give now, found without a lock; else ``None``.

        Changes nothing and takes no permit: a caller may ask it before it has anything
        to release (``None`` means "ask :meth:`admit`", not "admitted").
        """
        if self._start_sync:
            return None
        answer = self._answer_without_change()
        if answer is None or answer.permitted:
            return None
        return answer

    def _answer_without_change(self) -> Admission | None:
        """Admitted when closed, refused while open; ``None`` when a probe may be due.

        ``_retry_at`` is set after the state, so a stale value only sends the caller to
        the lock. (Positional NamedTuples: keywords cost more on this path.)
        """
        state = self._storage.state
        if state == CLOSED:
            return ADMITTED
        if state == OPEN:
            remaining = self._retry_at - self._clock.time()
            if remaining > 0:
                return Admission(False, False, remaining)
        return None

    def record_success(self, admission: Admission) -> None:
        if not admission.probe and self._mirror is None and not self._storage.counter:
            # Nothing to reset or to tell (the common case); a failure racing this read
            # is one that came just after the success.
            return
        with self._lock:
            if self._storage.counter:
                self._storage.reset_counter()
            if self._mirror is not None:
                self._mirror.note_success()
            if admission is self._probe:
                self._probe = None
                self._close()

    def record_failure(self, admission: Admission) -> None:
        with self._lock:
            self._storage.increment_counter()
            if self._mirror is not None:
                self._mirror.failures += 1
            if admission is self._probe:
                self._probe = None
                self._open(self._clock.time())
            elif self._storage.state == CLOSED and self._storage.counter >= self.fail_max:
                self._open(self._clock.time())

    def release(self, admission: Admission) -> None:
        """End a call without judging the target (cancelled, or already recorded)."""
        if admission.probe:
            with self._lock:
                if admission is self._probe:
                    self._probe = None

    def warn_if_unlike(self, settings: Settings) -> None:
        """Say once that a later client asked for other settings than this breaker has.

        The pair has one breaker, set up by its first client: the later client's
        settings are not used, which must not go unnoticed.
        """
        current = self.settings
        differences = [
            f"{name}={theirs!r} (the breaker has {ours!r})"
            for name, ours, theirs in (
                ("circuit_breaker_fail_max", current.fail_max, settings.fail_max),
                ("circuit_breaker_reset_timeout", current.reset_timeout, settings.reset_timeout),
                ("circuit_breaker_redis_url", current.redis_url, settings.redis_url),
                (
                    "circuit_breaker_redis_sync_interval",
                    current.sync_interval,
                    settings.sync_interval,
                ),
            )
            if ours != theirs
        ]
        if not differences or self._warned_unlike:
            return
        self._warned_unlike = True
        logger.warning(
            "breaker %s is shared by every client of the pair and keeps the settings of its "
            "first client; this client's %s are not used",
            self.name,
            ", ".join(redact_text(text) for text in differences),
        )

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(old, new)`` on every transition from now on; returns the stop."""
        self._watchers.append(watcher)

        def stop() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return stop

    def attach_gauge(self, gauge: Gauge) -> None:
        """Keep ``gauge`` equal to the state from now on, on every transition."""
        self._gauges.add(gauge)
        gauge.set(STATE_VALUES[self.state])

    def force(self, state: str) -> None:
        """Move to ``open`` or ``closed`` at once (for operators and tests).

        With Redis, every process sees it after its next synchronisation.
        """
        if state not in (OPEN, CLOSED):
            raise ValueError(f"state must be 'open' or 'closed', got {state!r}")
        with self._lock:
            self._probe = None
            if state == OPEN:
                self._open(self._clock.time())
            else:
                self._close()

    def _open(self, opened_at: float) -> None:
        self._version += 1
        self.circuit.open()
        self._storage.opened_at = datetime.fromtimestamp(opened_at, timezone.utc)
        self._opened_at = opened_at
        self._retry_at = opened_at + self.reset_timeout
        if self._mirror is not None:
            self._mirror.note_transition(OPEN)

    def _close(self) -> None:
        self._version += 1
        self.circuit.close()
        if self._mirror is not None:
            self._mirror.note_transition(CLOSED)

    def start_sync(self) -> None:
        """Have the sync thread look after this breaker's Redis state (if it has one)."""
        with self._lock:
            mirror = self._mirror if self._start_sync else None
            self._start_sync = False
        if mirror is not None:
            _syncer.add(mirror)

    def _adopt(self, remote_state: str, remote_opened_at: float, version: int) -> None:
        """Take the state Redis holds, unless this process changed its own meanwhile."""
        with self._lock:
            if version != self._version:
                return
            local = self._storage.state
            if remote_state == OPEN:
                if local == CLOSED:
                    self._version += 1
                    self.circuit.open()
                    self._set_opened_at(remote_opened_at)
                elif local == OPEN and remote_opened_at > self._opened_at + 1:
                    # Another process's probe failed later than ours opened the circuit.
                    self._set_opened_at(remote_opened_at)
            elif remote_state == CLOSED and local != CLOSED:
                # Another process's probe succeeded, or an operator closed the circuit.
                self._version += 1
                self._probe = None
                self.circuit.close()

    def _set_opened_at(self, opened_at: float) -> None:
        self._storage.opened_at = datetime.fromtimestamp(opened_at, timezone.utc)
        self._opened_at = opened_at
        self._retry_at = opened_at + self.reset_timeout

    def reset(self) -> None:
        """Closed, no failures, no probe, no Redis; settings stay until :meth:`reconfigure`."""
        mirror = self._mirror
        if mirror is not None:
            # What was forced or recorded last reaches Redis before the breaker lets go.
            if mirror.reachable is not False:
                mirror.push_now()
            _syncer.remove(mirror)
        with self._lock:
            self._configure(self.settings._replace(redis_url=None))

    def reconfigure(self, settings: Settings) -> None:
        """Take the settings of the first client after a reset."""
        with self._lock:
            self._configure(settings)

    def after_fork_in_child(self) -> None:
        """Make the inherited breaker usable in a forked child (see the module docstring)."""
        self._lock = threading.Lock()
        self._probe = None
        self.circuit = self._new_circuit()
        if self._mirror is not None:
            self._mirror = _RedisMirror(self, self._mirror.url, self._mirror.interval)
            self._start_sync = True


class _StateListener(pybreaker.CircuitBreakerListener):
    """Keeps the state gauges and tells the watchers, on every transition."""

    def __init__(self, gauges: weakref.WeakSet[Gauge], watchers: list[Watcher]) -> None:
        self._gauges = gauges
        self._watchers = watchers

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        value = STATE_VALUES[new_state.name]
        for gauge in list(self._gauges):
            gauge.set(value)
        old = getattr(old_state, "name", None)
        if old is None or old == new_state.name:  # pybreaker also notifies closed -> closed
            return
        # One record per transition, the breaker's own account (a sampled gauge misses
        # short states). Information: the caller's failures and the cache's outage are
        # already warned about where they happen, and the state gauge feeds the alerts.
        logger.info(
            "circuit breaker %s: %s -> %s",
            cb.name,
            old,
            new_state.name,
            extra={"breaker": cb.name, "old_state": old, "new_state": new_state.name},
        )
        for watcher in list(self._watchers):
            try:
                watcher(old, new_state.name)
            except Exception:
                logger.exception("a breaker watcher failed", extra={"breaker": cb.name})


# One round trip per synchronisation. KEYS: state, fail_counter, opened_at.
# ARGV: reset the counter first (0/1), failures to add, local transition ('' | open |
# closed), local state (open | closed), local opened_at, now (whole epoch seconds), fail_max.
# Returns the shared state and opened_at.
_SYNC_SCRIPT = """
local function open_at(at)
  local current = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
  if at > current then redis.call('SET', KEYS[3], at) end
  redis.call('SET', KEYS[1], 'open')
end
if ARGV[1] == '1' then redis.call('SET', KEYS[2], 0) end
local failures = tonumber(ARGV[2])
local count = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if failures > 0 then count = redis.call('INCRBY', KEYS[2], failures) end
if ARGV[3] == 'open' then
  open_at(tonumber(ARGV[5]))
elseif ARGV[3] == 'closed' then
  redis.call('SET', KEYS[1], 'closed')
  redis.call('SET', KEYS[2], 0)
  count = 0
end
local state = redis.call('GET', KEYS[1])
if not state then
  -- A new or restarted Redis: it learns this process's state.
  if ARGV[4] == 'open' then open_at(tonumber(ARGV[5])) else redis.call('SET', KEYS[1], 'closed') end
  state = redis.call('GET', KEYS[1])
end
if state == 'closed' and failures > 0 and count >= tonumber(ARGV[7]) then
  open_at(tonumber(ARGV[6]))
  state = 'open'
end
return {state, redis.call('GET', KEYS[3]) or '0'}
"""


class _RedisMirror:
    """What one breaker has to tell Redis, and the round trip that tells it.

    The ``note_*`` methods and the pending fields are used under the breaker's lock;
    :meth:`push_now` runs in the sync thread (or in a reset), outside it. Its own lock
    only orders those two, so that a reset returns after the last push landed; no
    caller of the breaker ever waits on it.
    """

    def __init__(self, breaker: Breaker, url: str, interval: float) -> None:
        redis = import_extra("redis", extra="redis", feature="circuit_breaker_redis_url")
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._breaker = weakref.ref(breaker)
        self.url = url
        self.interval = interval
        parts = urlsplit(url)
        # For log lines: never the password.
        self.where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        # No I/O here: an unreachable Redis is found, and reported, by the sync thread.
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ValueError(
                f"circuit_breaker_redis_url {self.where!r} is not a Redis URL: {exc}"
            ) from None
        self._script = self._client.register_script(_SYNC_SCRIPT)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        # Redis answered, and said no: waiting will not change that, a fixed URL will.
        self._refusals: tuple[type[BaseException], ...] = (
            redis.AuthenticationError,
            redis.exceptions.AuthorizationError,
            redis.exceptions.NoPermissionError,
        )
        namespace = f"commclient:{breaker.name.replace('->', ':')}:pybreaker"
        self.keys = [f"{namespace}:state", f"{namespace}:fail_counter", f"{namespace}:opened_at"]
        self._push_lock = threading.Lock()
        self.due = 0.0
        self.reachable: bool | None = None
        self.reset_counter = False
        self.failures = 0
        self.transition = ""

    def note_success(self) -> None:
        # A success anywhere ends the run of consecutive failures, here and in Redis.
        self.reset_counter = True
        self.failures = 0

    def note_transition(self, state: str) -> None:
        self.transition = state
        _syncer.wake()

    def push_now(self) -> bool:
        """Send what happened here, take what Redis holds; False once the breaker is gone."""
        with self._push_lock:
            return self._push()

    def _push(self) -> bool:
        breaker = self._breaker()
        if breaker is None:
            return False
        with breaker._lock:
            if breaker._mirror is not self:
                return False
            reset, failures, transition = self.reset_counter, self.failures, self.transition
            self.reset_counter, self.failures, self.transition = False, 0, ""
            local = CLOSED if breaker._storage.state == CLOSED else OPEN
            opened_at = breaker._opened_at
            version = breaker._version
            now = breaker._clock.time()
        try:
            state, remote_opened_at = self._script(
                keys=self.keys,
                args=[
                    int(reset),
                    failures,
                    transition,
                    local,
                    math.ceil(opened_at),
                    math.ceil(now),
                    breaker.fail_max,
                ],
            )
        except self._refusals as exc:
            self.reachable = False
            logger.error(
                "breaker %s: Redis at %s refused the credentials of circuit_breaker_redis_url "
                "(%s); the breaker keeps this process's state and no longer synchronises: "
                "fix the URL's user or password",
                breaker.name,
                self.where,
                exc,
            )
            return False
        except self._errors as exc:
            with breaker._lock:
                # Keep the events for the next round trip, in their order.
                if not self.reset_counter:
                    self.reset_counter = reset
                    self.failures += failures
                self.transition = self.transition or transition
            if self.reachable is not False:
                self.reachable = False
                logger.warning(
                    "breaker %s: Redis at %s cannot be reached (%s); "
                    "using this process's state until it answers",
                    breaker.name,
                    self.where,
                    exc,
                )
            return True
        if self.reachable is False:
            logger.info("breaker %s: Redis at %s answers again", breaker.name, self.where)
        self.reachable = True
        breaker._adopt(_text(state), float(remote_opened_at), version)
        return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Syncer:
    """The process's one thread that synchronises every Redis-backed breaker."""

    def __init__(self) -> None:
        self._after_fork()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._mirrors: list[_RedisMirror] = []
        self._thread: threading.Thread | None = None

    def add(self, mirror: _RedisMirror) -> None:
        with self._lock:
            self._mirrors.append(mirror)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="commclient-breaker-sync", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def remove(self, mirror: _RedisMirror) -> None:
        with self._lock:
            if mirror in self._mirrors:
                self._mirrors.remove(mirror)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                mirrors = list(self._mirrors)
            now = time.monotonic()
            next_due = now + IDLE_WAKE
            for mirror in mirrors:
                # A local transition goes out at once, unless Redis is known to be down
                # (then it waits for the next round, instead of spinning on refusals).
                urgent = mirror.transition != "" and mirror.reachable is not False
                if urgent or now >= mirror.due:
                    mirror.due = now + mirror.interval
                    if not mirror.push_now():
                        self.remove(mirror)
                        continue
                next_due = min(next_due, mirror.due)
            self._wake.wait(max(0.0, next_due - time.monotonic()))
            self._wake.clear()


_syncer = _Syncer()
_live_breakers: weakref.WeakSet[Breaker] = weakref.WeakSet()


class Breakers:
    """The process's breakers, one per (service_name, target_service), sync and async alike.

    The first client of a pair fixes the breaker's settings; later clients share it.
    """

    def __init__(self) -> None:
        self._breakers: dict[tuple[str, str], Breaker] = {}
        # Breakers forgotten by a reset that some client still holds: the next client of
        # the pair joins them, and they go away with their last client.
        self._retired: weakref.WeakValueDictionary[tuple[str, str], Breaker] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def get(
        self,
        service_name: str,
        target_service: str,
        config: ClientConfig,
        clock: Clock | None = None,
    ) -> Breaker:
        key = (service_name, target_service)
        settings = Settings(
            config.circuit_breaker_fail_max,
            config.circuit_breaker_reset_timeout,
            clock,
            config.circuit_breaker_redis_url,
            config.circuit_breaker_redis_sync_interval,
        )
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is not None:
                breaker.warn_if_unlike(settings)
                return breaker
            breaker = self._retired.pop(key, None)
            if breaker is None:
                breaker = Breaker(
                    f"{service_name}->{target_service}",
                    settings.fail_max,
                    settings.reset_timeout,
                    clock=clock,
                    redis_url=settings.redis_url,
                    sync_interval=settings.sync_interval,
                )
            else:
                breaker.reconfigure(settings)
            self._breakers[key] = breaker
        # Synchronising starts with the first client, so that a new process learns the
        # shared state while it is still setting up.
        breaker.start_sync()
        return breaker

    def find(self, service_name: str, target_service: str) -> Breaker:
        key = (service_name, target_service)
        breaker = self._breakers.get(key) or self._retired.get(key)
        if breaker is None:
            raise LookupError(
                f"no client has been created for {service_name!r} -> {target_service!r}"
            )
        return breaker

    def clear(self) -> None:
        """Reset every breaker; clients that hold one see it closed and fresh at once."""
        with self._lock:
            forgotten = list(self._breakers.items())
            self._breakers.clear()
            for key, breaker in forgotten:
                self._retired[key] = breaker
        for _, breaker in forgotten:
            breaker.reset()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


breakers = Breakers()


def _after_fork_in_child() -> None:
    _syncer._after_fork()
    breakers._after_fork_in_child()
    for breaker in list(_live_breakers):
        breaker.after_fork_in_child()


_register: Callable[..., None] | None = getattr(os, "register_at_fork", None)
if _register is not None:
    _register(after_in_child=_after_fork_in_child)

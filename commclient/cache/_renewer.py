"""One thread renews the leases of every slow loader of the process (the sync driver).

A thread per cache miss cost more than the miss itself (started and joined around a
loader that mostly returns in microseconds). Here a miss only registers its lease, and
unregisters it when its loader returns; the one daemon thread renews those whose loader
outlives the renewal interval. It is started with the first lease of the process and
stays, asleep while there is nothing due; as a daemon it never delays interpreter exit
(a renewal cut off at exit leaves the lease to expire, as a crashed process would).

A renewal runs outside the lock, one after another: a slow Redis delays the others'
renewals by at most its socket timeout, which the renewal interval (a third of the
lease) absorbs. A miss does not wake the thread either: idle, it sleeps one renewal
interval at a time, so a lease registered meanwhile is due no earlier than its wake-up
(it is woken only for a lease due sooner, one of a shorter interval).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("commclient.cache")


class _Lease:
    """A loader's lease, renewed in the context of the operation that took it (its span
    and correlation id tell of a renewal that failed, as in the async driver, whose
    renewals are a task of the operation)."""

    __slots__ = ("context", "due", "interval", "renew")

    def __init__(self, interval: float, renew: Callable[[], object], due: float) -> None:
        self.interval = interval
        self.renew = renew
        self.due = due
        self.context = contextvars.copy_context()


class _Renewal:
    """One lease registered while a loader runs (a class: ``contextmanager``'s generator
    costs every miss a few microseconds more)."""

    __slots__ = ("_interval", "_lease", "_renew", "_renewer")

    def __init__(self, renewer: LeaseRenewer, interval: float, renew: Callable[[], object]) -> None:
        self._renewer = renewer
        self._interval = interval
        self._renew = renew
        self._lease: _Lease | None = None

    def __enter__(self) -> None:
        self._lease = self._renewer._add(self._interval, self._renew)

    def __exit__(self, *exc_info: object) -> None:
        if self._lease is not None:
            self._renewer._remove(self._lease)


class LeaseRenewer:
    """Renews registered leases every ``interval`` seconds from one shared thread.

    The leases of the loaders running now are a set: a miss adds its lease and removes
    it in constant time, and only the thread, when it wakes, looks for those due.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._leases: set[_Lease] = set()
        self._thread: threading.Thread | None = None
        self._idle_wait = 0.0  # how long the thread sleeps with nothing due
        self._wakes_at = float("inf")  # when the sleeping thread wakes by itself

    @property
    def started(self) -> bool:
        return self._thread is not None

    def renewing(self, interval: float, renew: Callable[[], object]) -> _Renewal:
        """Call ``renew`` every ``interval`` seconds while the body (``with``) runs."""
        return _Renewal(self, interval, renew)

    def _add(self, interval: float, renew: Callable[[], object]) -> _Lease:
        lease = _Lease(interval, renew, time.monotonic() + interval)
        # A set's add and discard are atomic: the lock is only for waking the thread.
        self._leases.add(lease)
        if self._thread is None or lease.due < self._wakes_at:
            with self._condition:
                self._idle_wait = interval
                if self._thread is None:
                    # In an empty context: it serves every operation, none in particular.
                    self._thread = threading.Thread(
                        target=contextvars.Context().run,
                        args=(self._run,),
                        name="commclient-cache-lease-renewer",
                        daemon=True,
                    )
                    self._thread.start()
                elif lease.due < self._wakes_at:
                    self._condition.notify()
        return lease

    def _remove(self, lease: _Lease) -> None:
        self._leases.discard(lease)

    def _next_due(self, now: float) -> _Lease | None:
        """A lease due by ``now``, rescheduled, if any; else ``None`` and ``_wakes_at`` set."""
        soonest = now + self._idle_wait
        for lease in list(self._leases):  # a copy: misses add and remove meanwhile
            if lease.due <= now:
                lease.due = now + lease.interval
                return lease
            soonest = min(soonest, lease.due)
        self._wakes_at = soonest
        # A lease added while the copy was made compared its due time with the previous
        # ``_wakes_at`` (without the lock): it is in the set by now.
        self._wakes_at = min([soonest, *(lease.due for lease in list(self._leases))])
        return None

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    now = time.monotonic()
                    lease = self._next_due(now)
                    if lease is not None:
                        break
                    # Idle, one interval at a time (see the module's docstring).
                    self._condition.wait(self._wakes_at - now)
            if lease not in self._leases:
                continue  # its loader returned meanwhile
            try:
                lease.context.run(lease.renew)
            except Exception:
                # The driver's commands report their own failures; this one must not end
                # the thread every lease of the process depends on.
                logger.exception("renewing a cache lease failed")

    def after_fork_in_child(self) -> None:
        """The parent's thread does not exist here: no thread, no leases (the loaders
        that registered them run in the parent), a lock no parent thread holds."""
        self._condition = threading.Condition(threading.Lock())
        self._leases = set()
        self._thread = None
        self._wakes_at = float("inf")


#: The renewer of this process (a forked child gets its own on its first lease).
lease_renewer = LeaseRenewer()
os.register_at_fork(after_in_child=lease_renewer.after_fork_in_child)

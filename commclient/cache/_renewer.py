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
import heapq
import itertools
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

    __slots__ = ("active", "context", "interval", "renew")

    def __init__(self, interval: float, renew: Callable[[], object]) -> None:
        self.interval = interval
        self.renew = renew
        self.active = True
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
    """Renews registered leases every ``interval`` seconds from one shared thread."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, _Lease]] = []
        self._order = itertools.count()
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
        lease = _Lease(interval, renew)
        due = time.monotonic() + interval
        with self._condition:
            heapq.heappush(self._due, (due, next(self._order), lease))
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
            elif due < self._wakes_at:
                self._condition.notify()
        return lease

    def _remove(self, lease: _Lease) -> None:
        with self._condition:
            lease.active = False
            # Eagerly, so that many quick misses leave nothing behind; the heap only
            # ever holds the loaders running now.
            self._due = [entry for entry in self._due if entry[2] is not lease]
            heapq.heapify(self._due)

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    now = time.monotonic()
                    if self._due and self._due[0][0] <= now:
                        _, _, lease = heapq.heappop(self._due)
                        heapq.heappush(self._due, (now + lease.interval, next(self._order), lease))
                        break
                    # Idle, one interval at a time (see the module's docstring).
                    self._wakes_at = self._due[0][0] if self._due else now + self._idle_wait
                    self._condition.wait(self._wakes_at - now)
            if not lease.active:
                continue
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
        self._due = []
        self._thread = None
        self._wakes_at = float("inf")


#: The renewer of this process (a forked child gets its own on its first lease).
lease_renewer = LeaseRenewer()
os.register_at_fork(after_in_child=lease_renewer.after_fork_in_child)

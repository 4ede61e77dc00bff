"""Where a migrated scheduler's runs go: the per-job switch and the per-alias run slots."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Iterable
from types import TracebackType


class LoopSwitch:
    """The per-job switch of an incremental migration, as a rule.

    An async job runs on the scheduler's event loop unless its id is switched off; a
    switched-off async job runs on compat's background loop, as it did under the legacy
    scheduler. The rule holds for jobs added at any time (``add_job``, ``scheduled_job``),
    so that a job added after the migration uses the loop its clients, locks and queues
    are bound to. Sync jobs run in compat's worker pool either way.
    """

    def __init__(self, off: Iterable[str] = ()) -> None:
        if isinstance(off, str):
            raise TypeError(f"off must be a collection of job ids, not a string: {off!r}")
        self._lock = threading.Lock()
        self._off = set(off)

    def __contains__(self, job_id: object) -> bool:
        """Whether the job ``job_id`` runs on the scheduler's loop."""
        with self._lock:
            return job_id not in self._off

    def __repr__(self) -> str:
        return f"LoopSwitch(off={sorted(self.off)!r})"

    @property
    def off(self) -> frozenset[str]:
        """The ids of the async jobs that run on compat's background loop."""
        with self._lock:
            return frozenset(self._off)

    def switch_on(self, job_id: str) -> None:
        """Run the job ``job_id`` on the scheduler's loop from its next run on."""
        with self._lock:
            self._off.discard(job_id)

    def switch_off(self, job_id: str) -> None:
        """Run the async job ``job_id`` on compat's background loop from its next run on."""
        with self._lock:
            self._off.add(job_id)


class RunSlots:
    """At most ``size`` runs at once (None: no limit), as the legacy thread pool allowed.

    An asyncio semaphore belongs to one loop; the executor's runs happen on the
    scheduler's loop or compat's, so there is one semaphore per loop.
    """

    def __init__(self, size: int | None) -> None:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"max_workers must be an integer >= 1 or None, got {size!r}")
        self.size = size
        self._lock = threading.Lock()
        self._semaphores: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()

    def _semaphore(self) -> asyncio.Semaphore | None:
        if self.size is None:
            return None
        loop = asyncio.get_running_loop()
        with self._lock:
            semaphore = self._semaphores.get(loop)
            if semaphore is None:
                semaphore = self._semaphores[loop] = asyncio.Semaphore(self.size)
            return semaphore

    async def __aenter__(self) -> asyncio.Semaphore | None:
        semaphore = self._semaphore()
        if semaphore is not None:
            await semaphore.acquire()
        return semaphore

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        semaphore = self._semaphore()
        if semaphore is not None:
            semaphore.release()

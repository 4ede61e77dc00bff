"""Which scheduled run the current code belongs to.

APScheduler 3 calls a job with its own arguments only; it never tells the job which
of its scheduled run times this call is. :class:`MigrationExecutor` sets this context
variable around every call, and the lease and the run records read it from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ScheduledRun:
    """The job id, the scheduled run time and the scheduler of the run in progress.

    ``scheduler`` is the scheduler running the job: a job that adds, reschedules or
    modifies jobs uses it instead of a module-level scheduler object, which after a
    migration is the old scheduler, never started. ``slot``: the slot as every replica
    names it (the lease's key; "" = the run time); ``slot_ends_at``: when the slot ends
    (its run time; the end of its window for an interval trigger); ``misfire_grace_time``:
    seconds after that a run may still start (None: no limit); ``lease_refusal``: why a
    lease cannot key this job's slots, if so; ``fencing_token``: under a
    :class:`LeaderElection`, the token of the leadership this run was started under (pass
    it to writes that must refuse an old leader); ``lease_id``: the job as lease keys name
    it on every replica ("" = ``job_id``).
    """

    job_id: str
    scheduled_at: datetime
    scheduler: Any = field(default=None, compare=False)
    slot: str = ""
    slot_ends_at: datetime | None = None
    misfire_grace_time: float | None = None
    lease_refusal: str | None = None
    fencing_token: int | None = None
    lease_id: str = ""


_scheduled_run: ContextVar[ScheduledRun | None] = ContextVar(
    "cron_migration_scheduled_run", default=None
)


# The function the executor called for the scheduled run: only that job's run *is* the
# scheduled run. A migrated job it calls in turn runs within the slot under its own name,
# so that its lease and record are its own, not a second claim on the caller's key.
_run_target: ContextVar[object | None] = ContextVar("cron_migration_run_target", default=None)


# Called in the worker thread right before a sync job function starts: raises when the
# run may no longer start (its replica's leadership lapsed while it waited for a thread).
_run_guard: ContextVar[Callable[[], None] | None] = ContextVar(
    "cron_migration_run_guard", default=None
)


def current_scheduled_run() -> ScheduledRun | None:
    """The run the scheduler started this call for; None outside a :class:`MigrationExecutor`."""
    return _scheduled_run.get()


#: Marks cron_migration's own scheduler listeners, which migrate_scheduler does not copy.
INTERNAL_LISTENER = "_cron_migration_listener"


def mark_internal_listener(listener: Callable[..., Any]) -> None:
    setattr(listener, INTERNAL_LISTENER, True)


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite number of seconds (> 0, or >= 0), else ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return float(value)

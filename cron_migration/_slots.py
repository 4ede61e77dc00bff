"""The slot a run belongs to, as every replica names it, and the calls within it.

A lease is only as good as its key: every replica must name one slot the same way.

- Date and cron triggers give every replica the same run times: the slot is the run time.
- An interval trigger without ``start_date`` starts counting when its process starts, so
  replicas fire at different moments. Its slot is the interval-long window, counted from
  the Unix epoch (UTC), that the run time falls in; each replica fires once per window,
  the first one to fire runs it. With a ``start_date`` shared by every replica, the run
  times are the same everywhere and each falls in a window of its own.
- ``jitter`` is drawn by each replica on its own: replicas disagree on a slot's run time,
  and a late draw can fall into the next interval window. Refused with a lease.
- A combining trigger with an interval in it, or with jitter: refused (as above).
- Any other trigger (a class of your own) is keyed by its run time: it must give every
  replica the same run times.
- A job added without ``id=`` has a random id in each process: its key names it by its
  name and trigger instead.

A slot can start up to ``misfire_grace_time`` seconds after it ends (after its run time;
after its window for an interval trigger); the lease must outlive that.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import hashlib
import json
import re
import types
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from ._context import ScheduledRun

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def lease_refusal(trigger: Any) -> str | None:
    """Why a lease cannot key the slots of ``trigger``; None when it can."""
    from apscheduler.triggers.combining import BaseCombiningTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    jitter = getattr(trigger, "jitter", None)
    if jitter:
        return (
            f"its trigger has jitter={jitter}: each replica draws its own delay, so replicas "
            "disagree on each run's time and a lease cannot tell they are the same slot; "
            "drop the jitter, or run one scheduler at a time with LeaderElection"
        )
    if isinstance(trigger, BaseCombiningTrigger):
        for inner in trigger.triggers:
            if isinstance(inner, IntervalTrigger):
                return (
                    f"{type(trigger).__name__} combines an interval trigger, whose run times "
                    "depend on when each replica started; use LeaderElection"
                )
            reason = lease_refusal(inner)
            if reason is not None:
                return reason
    return None


def scheduled_run_of(
    job: Any, run_time: dt.datetime, fencing_token: int | None = None, scheduler: Any = None
) -> ScheduledRun:
    """The :class:`ScheduledRun` of ``job`` at ``run_time``: its slot as replicas name it."""
    from apscheduler.triggers.interval import IntervalTrigger

    trigger = job.trigger
    grace = job.misfire_grace_time
    refusal = lease_refusal(trigger)
    if isinstance(trigger, IntervalTrigger):
        interval: dt.timedelta = trigger.interval
        # timedelta // timedelta is exact (whole microseconds): the same on every replica.
        window = (run_time - EPOCH) // interval
        starts = EPOCH + window * interval
        slot = f"{utc_text(starts)}/PT{interval.total_seconds():g}S"  # ISO 8601: start/length
        ends = starts + interval
    else:
        slot = utc_text(run_time)
        ends = run_time
    return ScheduledRun(
        job.id,
        run_time,
        scheduler=scheduler,
        slot=slot,
        slot_ends_at=ends,
        misfire_grace_time=None if grace is None else float(grace),
        lease_refusal=refusal,
        fencing_token=fencing_token,
        lease_id=lease_id_of(job),
    )


# The id APScheduler 3 gives a job added without ``id=``: ``uuid4().hex``.
_DRAWN_ID = re.compile(r"[0-9a-f]{32}")


def stable_job_id(job_id: str, name: str) -> str:
    """The id metrics and run records use: ``job_id``, unless APScheduler drew it at random
    (a job added without ``id=``), then ``name``: the same in every process and after every
    restart, so the job keeps one series instead of a new one per process."""
    return name if _DRAWN_ID.fullmatch(job_id) else job_id


def lease_id_of(job: Any) -> str:
    """The job as every replica names it: its id, unless APScheduler drew it at random.

    A job added without ``id=`` gets a random id in each process; its name (a migrated
    job's own) and trigger, the same on every replica running the same code, name it
    instead.
    """
    if not _DRAWN_ID.fullmatch(job.id):
        return str(job.id)
    from ._job import MigratedJob

    target = job.func
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    # A migrated job's own name: jobs made by one factory share their function's name.
    name = target.name if isinstance(target, MigratedJob) else job.name
    trigger = hashlib.sha256(str(job.trigger).encode()).hexdigest()[:8]
    return f"{name}@{trigger}"


class UnstableArgumentError(TypeError):
    """A leased job's argument has no form that every replica would write the same way."""


def call_digest(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """A digest of the arguments, the same in every process for equal arguments."""
    encoded = json.dumps(
        [[_stable(arg) for arg in args], {k: _stable(v) for k, v in sorted(kwargs.items())}],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]


def _stable(value: Any) -> Any:
    """``value`` as JSON whose text depends only on the value, not on the process."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return repr(value)  # nan, inf; and 1.0 apart from 1
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [type(value).__name__, [_stable(item) for item in value]]
    if isinstance(value, Mapping):
        items = sorted(
            (json.dumps(_stable(k), sort_keys=True), _stable(v)) for k, v in value.items()
        )
        return ["mapping", items]
    if isinstance(value, set | frozenset):
        return ["set", sorted(json.dumps(_stable(item), sort_keys=True) for item in value)]
    if isinstance(value, enum.Enum):
        return [_type_name(value), _stable(value.value)]
    if isinstance(value, dt.datetime | dt.date | dt.time | dt.timedelta | decimal.Decimal):
        return [_type_name(value), str(value)]
    if isinstance(value, uuid.UUID | PurePath):
        return [_type_name(value), str(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _stable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return [_type_name(value), fields]
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump):
        return [_type_name(value), _stable(dump(mode="json"))]
    if isinstance(value, functools.partial):
        parts = [value.func, value.args, value.keywords]
        return [_type_name(value), [_stable(part) for part in parts]]
    if isinstance(value, types.MethodType):
        return [_type_name(value), [_stable(value.__self__), _stable(value.__func__)]]
    if isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
        return ["named", _qualified_name(value)]
    own_repr: object = type(value).__repr__
    if own_repr is not object.__repr__:
        shown = repr(value)
        if not _MEMORY_ADDRESS.search(shown):
            return [_type_name(value), shown]
    raise UnstableArgumentError(
        f"{_type_name(value)} has no value-based form (its repr shows its memory address), "
        "so replicas would key the same call differently; pass something plain (an id, a "
        "dataclass, a pydantic model) or give the class a __repr__ that names its value"
    )


# How CPython shows an object's address in a repr ("<... object at 0x7f...>").
_MEMORY_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+")


def _qualified_name(value: Any) -> str:
    """A function's or class's module and qualified name; refused when it names no one thing."""
    module = getattr(value, "__module__", None) or ""
    name = getattr(value, "__qualname__", None) or ""
    if not name or "<lambda>" in name or "<locals>" in name:
        raise UnstableArgumentError(
            f"{value!r} is a lambda or a function defined inside another: its name does not "
            "tell one such function from another, so different calls could share a key; "
            "pass a module-level function, or the value it stands for"
        )
    return f"{module}.{name}"


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"

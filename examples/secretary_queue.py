"""Reminder triggers for the assistant: the ``queue:to_secretary`` Redis stream.

Each due reminder is appended at most once, whoever appends it (a retried run, a second
replica, the legacy job and the migrated one): one Lua script sets a marker
``queue:to_secretary:appended:{reminder_id}`` with ``SET NX`` and only then ``XADD``\\ s the
trigger, atomically, so no crash between the two can leave a marker without its entry.
The marker expires after ``marker_ttl`` seconds (7 days by default), far beyond any
reminder's retry window.

Without Redis, :class:`InProcessQueue` keeps the triggers in memory with the same rule.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from commclient import stream_entry_fields
from examples.domain import reminder_trigger

STREAM = "queue:to_secretary"
MARKER_TTL = 7 * 24 * 3600

# KEYS[1] the marker, KEYS[2] the stream; ARGV[1] the marker's TTL, then field, value...
_APPEND_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
return false
"""


class TriggerQueue(Protocol):
    """Where the sync (legacy) jobs append reminder triggers."""

    def append_reminder(self, reminder: Mapping[str, Any]) -> bool:
        """Append the trigger; ``False`` if this reminder was appended before."""
        ...


class AsyncTriggerQueue(Protocol):
    """Where the async jobs append reminder triggers."""

    async def append_reminder(self, reminder: Mapping[str, Any]) -> bool: ...


def _entry(reminder: Mapping[str, Any]) -> dict[str, str]:
    """The trigger of ``reminder`` with the chain of the run appending it: the assistant
    continues it with ``commclient.continue_from_stream_entry(fields)``."""
    return {**reminder_trigger(reminder), **stream_entry_fields()}


def _script_arguments(
    stream: str, reminder: Mapping[str, Any], marker_ttl: int
) -> tuple[list[str], list[str]]:
    trigger = _entry(reminder)
    keys = [f"{stream}:appended:{trigger['reminder_id']}", stream]
    arguments = [str(marker_ttl)]
    for field, value in trigger.items():
        arguments += [field, value]
    return keys, arguments


class InProcessQueue:
    """The stream in memory, for one process; usable from threads and from the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._appended: set[str] = set()
        self.entries: list[dict[str, str]] = []

    def append_reminder(self, reminder: Mapping[str, Any]) -> bool:
        trigger = _entry(reminder)
        with self._lock:
            if trigger["reminder_id"] in self._appended:
                return False
            self._appended.add(trigger["reminder_id"])
            self.entries.append(trigger)
            return True

    def triggers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.entries)


class AsyncInProcessQueue:
    """:class:`InProcessQueue` for async callers (the same store: nothing blocks)."""

    def __init__(self, queue: InProcessQueue) -> None:
        self.queue = queue

    async def append_reminder(self, reminder: Mapping[str, Any]) -> bool:
        return self.queue.append_reminder(reminder)

    def triggers(self) -> list[dict[str, str]]:
        return self.queue.triggers()


class RedisStreamQueue:
    """The Redis stream through a sync ``redis.Redis`` client."""

    def __init__(self, redis: Any, *, stream: str = STREAM, marker_ttl: int = MARKER_TTL) -> None:
        self.redis = redis
        self.stream = stream
        self.marker_ttl = marker_ttl
        self._script = redis.register_script(_APPEND_ONCE)

    def append_reminder(self, reminder: Mapping[str, Any]) -> bool:
        keys, arguments = _script_arguments(self.stream, reminder, self.marker_ttl)
        return self._script(keys=keys, args=arguments) is not None


class AsyncRedisStreamQueue:
    """The Redis stream through a ``redis.asyncio.Redis`` client."""

    def __init__(self, redis: Any, *, stream: str = STREAM, marker_ttl: int = MARKER_TTL) -> None:
        self.redis = redis
        self.stream = stream
        self.marker_ttl = marker_ttl
        self._script = redis.register_script(_APPEND_ONCE)

    async def append_reminder(self, reminder: Mapping[str, Any]) -> bool:
        keys, arguments = _script_arguments(self.stream, reminder, self.marker_ttl)
        return await self._script(keys=keys, args=arguments) is not None


def read_triggers(redis: Any, stream: str = STREAM) -> list[dict[str, str]]:
    """Every trigger in the stream, oldest first (sync client; for tests and the demo)."""
    entries = redis.xrange(stream)
    return [
        {_text(field): _text(value) for field, value in fields.items()} for _, fields in entries
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Switches that make the REST service misbehave on purpose: errors, stalls, an outage.

:class:`FaultControl` holds the switches (thread-safe, so a test or the demo can flip them
from another thread); :class:`FaultMiddleware` applies them to requests under
``path_prefix`` (``/api/`` by default), so the admin endpoints and ``/metrics`` keep
answering while the API is broken. A stalled request waits *before* it reaches the
application: a client that gives up and retries never races a half-applied write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import threading
from dataclasses import dataclass
from typing import Any

from commclient.asgi import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True)
class FaultSettings:
    """What the REST service does wrong; the defaults do nothing wrong."""

    #: Share of requests (0..1) answered with ``status`` instead of being handled.
    error_rate: float = 0.0
    #: The next this many requests are answered with ``status``, whatever ``error_rate`` is.
    fail_next: int = 0
    #: The status of an injected error (a 5xx or 429).
    status: int = 503
    #: Seconds every request waits before it is handled (or answered with an error).
    latency: float = 0.0
    #: Every request is answered with ``status`` until this is switched off.
    outage: bool = False
    #: ``Retry-After`` seconds sent with injected errors; ``None`` sends none.
    retry_after: float | None = None
    #: Only paths starting with this are affected.
    path_prefix: str = "/api/"

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate!r}")
        if isinstance(self.fail_next, bool) or self.fail_next < 0:
            raise ValueError(f"fail_next must be an integer >= 0, got {self.fail_next!r}")
        if not (self.status == 429 or 500 <= self.status <= 599):
            raise ValueError(f"status must be 429 or a 5xx status, got {self.status!r}")
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"latency must be a finite number >= 0, got {self.latency!r}")
        if self.retry_after is not None and not (
            math.isfinite(self.retry_after) and self.retry_after >= 0
        ):
            raise ValueError(f"retry_after must be a number >= 0, got {self.retry_after!r}")
        if not self.path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/', got {self.path_prefix!r}")


@dataclass(frozen=True)
class FaultDecision:
    delay: float
    status: int | None  # None: let the request through
    retry_after: float | None


FIELDS = frozenset(field.name for field in dataclasses.fields(FaultSettings))


class FaultControl:
    """The switches. ``configure(...)`` changes some, ``clear()`` turns them all off."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._random = random.Random(seed)
        self.injected_errors = 0
        self.delayed_requests = 0

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return self._settings

    def configure(self, **changes: Any) -> FaultSettings:
        """Change the named switches; an unknown name or a bad value raises ``ValueError``."""
        unknown = sorted(set(changes) - FIELDS)
        if unknown:
            raise ValueError(f"unknown fault switches {unknown}; known: {sorted(FIELDS)}")
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **changes)
            return self._settings

    def clear(self) -> FaultSettings:
        with self._lock:
            self._settings = FaultSettings()
            return self._settings

    def decide(self, path: str) -> FaultDecision:
        """What to do with one request for ``path`` (counts the decision)."""
        with self._lock:
            settings = self._settings
            if not path.startswith(settings.path_prefix):
                return FaultDecision(0.0, None, None)
            fail = settings.outage or settings.fail_next > 0
            if settings.fail_next > 0:
                self._settings = dataclasses.replace(settings, fail_next=settings.fail_next - 1)
            if not fail and settings.error_rate > 0:
                fail = self._random.random() < settings.error_rate
            self.injected_errors += fail
            self.delayed_requests += settings.latency > 0
            return FaultDecision(
                settings.latency, settings.status if fail else None, settings.retry_after
            )


class FaultMiddleware:
    """Apply a :class:`FaultControl` to every HTTP request (pure ASGI)."""

    def __init__(self, app: ASGIApp, control: FaultControl) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        decision = self.control.decide(str(scope.get("path", "")))
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.status is None:
            await self.app(scope, receive, send)
            return
        payload = json.dumps({"detail": "injected fault", "status": decision.status}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if decision.retry_after is not None:
            headers.append((b"retry-after", str(math.ceil(decision.retry_after)).encode()))
        await send({"type": "http.response.start", "status": decision.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

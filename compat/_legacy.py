"""A shim that keeps old module-level client functions working on top of a new client.

The cron service's former ``rest_client`` module exposed functions such as
``fetch_active_reminders()`` that made a fresh ``requests`` call and returned ``[]`` or
``None`` on any error. During the migration the module's body becomes::

    shim = LegacyShim(make_client, name="cron_service.rest_client", mode="legacy")

    @shim.function(fallback=list, replacement="CronRestClient.get_active_reminders")
    async def fetch_active_reminders(client: CronRestClient) -> list[dict[str, Any]]:
        return await client.get_active_reminders()

and every old call site keeps working unchanged, now through one async client on the
bridge loop (retries, breaker, metrics). Every call issues a ``DeprecationWarning``
pointing at its call site; Python's warning filters decide what becomes of it (by
default shown once per call site; under ``-W error::DeprecationWarning`` every call
raises, whatever ran before).

Modes: ``"strict"`` (the default) lets the client's errors propagate. ``"legacy"``
keeps the old convention for failures of the service: a
:class:`commclient.ServiceClientError` becomes the fallback value, logged and counted
in ``legacy_shim_swallowed_errors_total``, an explicit, visible debt rather than silent
empty results. Anything else (a misspelt method's ``AttributeError``, a stopped bridge,
a timeout of the bridge) is a bug or a state of this process and is raised in both
modes. A write (POST, PUT, PATCH, DELETE) that timed out after its request was sent is
logged and counted with ``outcome="unknown"``: the server may have applied it, unlike a
write that ``outcome="failed"``. ``legacy_shim_calls_total`` shows which old functions
are still called, and so when the shim can go.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

from prometheus_client import CollectorRegistry, Counter

from commclient import ServiceClientError, ServiceTimeoutError
from commclient._callables import require_function
from commclient._metrics import metric_family

from ._bridge import Bridge, _Held, default_bridge, reset_in_forked_child
from ._proxy import is_async_callable

ClientT = TypeVar("ClientT")
P = ParamSpec("P")
R = TypeVar("R")
FallbackT = TypeVar("FallbackT")

#: ``"strict"``: errors propagate. ``"legacy"``: the old functions' fallback value is
#: returned when the service call fails (``ServiceClientError``), logged and counted.
LegacyMode = Literal["legacy", "strict"]
"""``"legacy"``: a service failure becomes the old fallback value; ``"strict"``: it is raised."""
_MODES = ("legacy", "strict")
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Transport timeouts raised before a request leaves the process (httpx, requests).
_NOT_SENT_TIMEOUTS = frozenset({"ConnectTimeout", "PoolTimeout"})

logger = logging.getLogger("compat.legacy")


class LegacyShim(Generic[ClientT]):
    """Builds old-style blocking functions on one new async client.

    ``client_factory`` makes the client on first use, on the bridge loop; the client
    is entered there (``async with``) and serves every function of the shim until
    :meth:`close` or the end of the process. ``name`` (the old module's name) appears
    in warnings, logs and the metrics' ``shim`` label.
    """

    def __init__(
        self,
        client_factory: Callable[[], ClientT],
        *,
        name: str,
        mode: LegacyMode = "strict",
        registry: CollectorRegistry | None = None,
    ) -> None:
        require_function(
            client_factory,
            "compat.LegacyShim()",
            asynchronous=False,
            async_hint="the factory must return the client itself (its class will do)",
            wanted="a function that makes the client (its class, or lambda: Client(...))",
        )
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.name = name
        self.mode: LegacyMode = mode
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._bridge: Bridge | None = None
        self._client: ClientT | None = None
        self._held: _Held | None = None
        self._swallowed: dict[str, int] = {}
        self._calls_total = metric_family(
            registry,
            Counter,
            "legacy_shim_calls_total",
            "Calls of old module-level client functions kept alive by compat.LegacyShim.",
            ("shim", "function"),
        )
        self._swallowed_total = metric_family(
            registry,
            Counter,
            "legacy_shim_swallowed_errors_total",
            "Errors a legacy-mode shim turned into the old fallback value instead of raising; "
            "outcome is 'unknown' for a write that may have been applied, else 'failed'.",
            ("shim", "function", "error_type", "outcome"),
        )
        reset_in_forked_child(self)

    def _after_fork_in_child(self) -> None:
        # The client and its loop are the parent's: the child makes its own on first use.
        self._lock = threading.Lock()
        self._bridge = self._client = self._held = None

    @overload
    def function(
        self,
        fallback: None = None,
        *,
        name: str | None = None,
        replacement: str | None = None,
    ) -> Callable[[Callable[Concatenate[ClientT, P], Awaitable[R]]], Callable[P, R | None]]: ...

    @overload
    def function(
        self,
        fallback: Callable[[], FallbackT],
        *,
        name: str | None = None,
        replacement: str | None = None,
    ) -> Callable[
        [Callable[Concatenate[ClientT, P], Awaitable[R]]], Callable[P, R | FallbackT]
    ]: ...

    def function(
        self,
        fallback: Callable[[], Any] | None = None,
        *,
        name: str | None = None,
        replacement: str | None = None,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Any]]:
        """Decorate ``async def old_name(client, ...)`` into the blocking ``old_name(...)``.

        ``fallback`` makes what the old function returned on error (``list`` for
        ``[]``; ``None``, the default, for ``None``); it is called anew each time so
        callers cannot share a mutable fallback. ``name`` overrides the decorated
        function's name, to wrap a client method directly::

            fetch_active_reminders = shim.function(list, name="fetch_active_reminders")(
                CronRestClient.get_active_reminders
            )

        ``replacement`` names the new API in the deprecation warning.
        """

        def decorate(adapter: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
            if not is_async_callable(adapter):
                raise TypeError(
                    f"{adapter!r} is not async: LegacyShim.function decorates "
                    "`async def old_name(client, ...)` or a coroutine method of the client"
                )
            return self._build(adapter, fallback, name or adapter.__name__, replacement)

        return decorate

    def _build(
        self,
        adapter: Callable[..., Awaitable[Any]],
        fallback: Callable[[], Any] | None,
        name: str,
        replacement: str | None,
    ) -> Callable[..., Any]:
        adapter_signature = inspect.signature(adapter)
        parameters = list(adapter_signature.parameters.values())[1:]
        signature = adapter_signature.replace(parameters=parameters)
        calls = self._calls_total.labels(self.name, name)
        advice = f"use {replacement} instead" if replacement else "use the async client instead"
        message = f"{self.name}.{name}() is deprecated; {advice}"

        def legacy_function(*args: Any, **kwargs: Any) -> Any:
            # A wrong call fails as the old function did, before any request is made.
            signature.bind(*args, **kwargs)
            # Every call: the warning filters, not this shim, decide how often it shows.
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            calls.inc()
            try:
                bridge, client = self._bridge_and_client()
                return bridge.call(adapter, (client, *args), kwargs)
            except ServiceClientError as exc:
                # Only a failure of the service: anything else is a bug of this process.
                if self.mode == "strict":
                    raise
                value = fallback() if fallback is not None else None
                self._record_swallowed(name, exc, value)
                return value

        functools.update_wrapper(legacy_function, adapter)
        legacy_function.__name__ = name
        legacy_function.__qualname__ = name
        legacy_function.__signature__ = signature  # type: ignore[attr-defined]
        client_parameter = next(iter(adapter_signature.parameters), None)
        legacy_function.__annotations__ = {
            key: value for key, value in adapter.__annotations__.items() if key != client_parameter
        }
        return legacy_function

    def _record_swallowed(self, name: str, exc: ServiceClientError, value: Any) -> None:
        error_type = type(exc).__name__
        outcome = "unknown" if outcome_unknown(exc) else "failed"
        with self._lock:
            self._swallowed[name] = self._swallowed.get(name, 0) + 1
        self._swallowed_total.labels(self.name, name, error_type, outcome).inc()
        if outcome == "unknown":
            text = (
                "%s.%s(): outcome unknown: %s after the request was sent, so the server may "
                "have applied this %s: %s; returning %r as the old client did (legacy mode)"
            )
            arguments: tuple[Any, ...] = (error_type, exc.method)
        else:
            text = "%s.%s() failed with %s: %s; returning %r as the old client did (legacy mode)"
            arguments = (error_type,)
        logger.error(
            text,
            self.name,
            name,
            *arguments,
            exc,
            value,
            exc_info=exc,
            extra={
                "legacy_shim": self.name,
                "legacy_function": name,
                "error_type": error_type,
                "outcome": outcome,
            },
        )

    def swallowed_errors(self) -> dict[str, int]:
        """How many errors each function swallowed so far (legacy mode)."""
        with self._lock:
            return dict(self._swallowed)

    def _bridge_and_client(self) -> tuple[Bridge, ClientT]:
        bridge, client = self._bridge, self._client
        if bridge is not None and client is not None and bridge.running:
            return bridge, client
        with self._lock:
            if self._bridge is None or self._client is None or not self._bridge.running:
                # First use, or the bridge was stopped (tests): a client per loop.
                bridge = default_bridge()
                client = bridge.call(_construct, (self._client_factory,), {})
                held = bridge.enter(client)[0] if hasattr(client, "__aenter__") else None
                self._bridge, self._client, self._held = bridge, client, held
            return self._bridge, self._client

    def close(self) -> None:
        """Close the client (``__aexit__`` on its loop); the next call makes a new one."""
        with self._lock:
            bridge, held = self._bridge, self._held
            self._bridge = self._client = self._held = None
        if bridge is not None and held is not None and bridge.running:
            bridge.exit(held, (None, None, None))


def outcome_unknown(error: ServiceClientError) -> bool:
    """Whether a failed call may have been applied by the server: a write that timed out
    after its request was sent (a connect or pool timeout means it never left)."""
    if error.method.upper() not in _WRITE_METHODS or not isinstance(error, ServiceTimeoutError):
        return False
    cause = error.__cause__
    while cause is not None:
        if any(cls.__name__ in _NOT_SENT_TIMEOUTS for cls in type(cause).__mro__):
            return False
        cause = cause.__cause__
    return True


async def _construct(factory: Callable[[], Any]) -> Any:
    # On the bridge loop, so a client that grabs the running loop when made gets this one.
    return factory()

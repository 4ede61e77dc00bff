"""What tracing costs a call when OpenTelemetry is not in use.

The core's call flow (no I/O: a canned 200 answers every attempt) is timed with the
OpenTelemetry API imported and no tracer provider set (the ``otel`` extra without an SDK), and
without the API in ``sys.modules`` at all, interleaved in rounds. Limit: at most 2 µs more per
call. The trace context every attempt sends (``traceparent``) is in both.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks._table import Row, spread

LIMIT_US = 2.0


def _core() -> Any:
    from commclient._core import build_core

    return build_core(
        "http://tracing.bench", "bench", "tracing-target", None, CollectorRegistry(), None
    )


def _per_call(core: Any, calls: int) -> float:
    from commclient._core import Response

    answer = Response(200, {"content-type": "application/json"}, b"{}", "OK")
    started = time.perf_counter()
    for _ in range(calls):
        flow = core.call("GET", "/api/items/{item_id}", path_params={"item_id": 7}).flow()
        next(flow)
        with contextlib.suppress(StopIteration):
            flow.send(answer)
    return (time.perf_counter() - started) / calls


def _without_api() -> dict[str, Any]:
    """Take the OpenTelemetry modules out of ``sys.modules``; returns them to put back."""
    return {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "opentelemetry" or name.startswith("opentelemetry.")
    }


def run(quick: bool) -> list[Row]:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            "bench_tracing needs opentelemetry-api: pip install -e '.[bench]'",
            name="opentelemetry",
        ) from None
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise RuntimeError("a tracer provider is set: this measures the library without one")
    core = _core()
    calls, rounds = (2_000, 5) if quick else (20_000, 9)
    _per_call(core, calls // 4)  # warm the label children and the caches
    with_api: list[float] = []
    without: list[float] = []
    for _ in range(rounds):
        with_api.append(_per_call(core, calls))
        removed = _without_api()
        try:
            without.append(_per_call(core, calls))
        finally:
            sys.modules.update(removed)
    return [
        Row(
            group="tracing off",
            candidate="core call, OpenTelemetry API, no provider",
            baseline="core call, no OpenTelemetry",
            candidate_value=statistics.median(with_api) * 1e6,
            baseline_value=statistics.median(without) * 1e6,
            unit="µs",
            limit=LIMIT_US,
            limit_kind="difference",
            candidate_spread=spread(with_api),
            baseline_spread=spread(without),
        )
    ]

"""What tracing costs a call and a cache hit when OpenTelemetry is not in use, and a cache
hit's span when it is.

The core's call flow (no I/O: a canned 200 answers every attempt) and a local-tier cache
hit (a real redis-server behind it, not reached) are timed with the OpenTelemetry API
imported and no tracer provider set (the ``otel`` extra without an SDK), and without the API
in ``sys.modules`` at all, interleaved in rounds. Limit: at most 2 µs more per call or hit.
The trace context every attempt sends (``traceparent``) is in both.

With the SDK installed, the local-tier hit is also timed in a process of its own with a
tracer provider whose spans go to a batch processor (the usual production setup), for
comparison: the SDK's span (start, end, hand-over to the processor) is most of it, well
above the 5 µs an untraced local-tier hit may cost.
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks._table import Row, spread

LIMIT_US = 2.0
KEY = "settings:global"


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


def _per_hit(hit: Callable[[], Any], calls: int) -> float:
    """A batch's CPU time per hit (time spent preempted is not the cache's)."""
    gc.collect()
    started = time.thread_time()
    for _ in range(calls):
        hit()
    return (time.thread_time() - started) / calls


@contextlib.contextmanager
def _local_hit(redis_url: str) -> Iterator[Callable[[], Any]]:
    """A local-tier hit of a sync cache (warmed)."""
    from commclient.cache import CacheConfig, SyncRedisCache

    cache = SyncRedisCache.from_url(
        redis_url,
        "bench-tracing",
        config=CacheConfig(local_tier_size=10),
        registry=CollectorRegistry(),
    )
    try:
        if not cache.start():
            raise RuntimeError("the local tier did not start")
        cache.set(KEY, {"theme": "dark", "limits": list(range(10))})
        cache.get(KEY)

        def hit() -> Any:
            return cache.get(KEY)

        for _ in range(100):
            hit()
        yield hit
    finally:
        cache.close()


_TRACED_HIT = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

class Dropped(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(Dropped()))
trace.set_tracer_provider(provider)
from benchmarks.bench_tracing import _local_hit, _per_hit
calls, rounds = int(sys.argv[2]), int(sys.argv[3])
with _local_hit(sys.argv[1]) as hit:
    times = [_per_hit(hit, calls) for _ in range(rounds)]
provider.shutdown()
print(json.dumps(times))
"""


def _traced_hits(redis_url: str, calls: int, rounds: int) -> list[float] | None:
    """Local-tier hits with an SDK tracer provider, in a process of their own (one global
    provider per process); None without the SDK."""
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return None
    done = subprocess.run(
        [sys.executable, "-c", _TRACED_HIT, redis_url, str(calls), str(rounds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"the traced local-tier hits failed: {done.stderr}")
    times: list[float] = json.loads(done.stdout)
    return times


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
    with_api, without = _with_and_without_api(lambda: _per_call(core, calls), rounds)
    row = _off_row("core call", with_api, without)
    return [row, *_cache_rows(quick)]


def _with_and_without_api(
    measure: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """``measure`` in interleaved rounds: with the API imported, then as if absent."""
    with_api: list[float] = []
    without: list[float] = []
    for _ in range(rounds):
        with_api.append(measure())
        removed = _without_api()
        try:
            without.append(measure())
        finally:
            sys.modules.update(removed)
    return with_api, without


def _off_row(what: str, with_api: list[float], without: list[float]) -> Row:
    return Row(
        group="tracing off",
        candidate=f"{what}, OpenTelemetry API, no provider",
        baseline=f"{what}, no OpenTelemetry",
        candidate_value=statistics.median(with_api) * 1e6,
        baseline_value=statistics.median(without) * 1e6,
        unit="µs",
        limit=LIMIT_US,
        limit_kind="difference",
        candidate_spread=spread(with_api),
        baseline_spread=spread(without),
    )


def _cache_rows(quick: bool) -> list[Row]:
    from benchmarks._redis_server import RedisServer

    hits, rounds = (5_000, 5) if quick else (20_000, 9)
    with RedisServer() as server:
        with _local_hit(server.url) as hit:
            with_api, without = _with_and_without_api(lambda: _per_hit(hit, hits), rounds)
        traced = _traced_hits(server.url, hits, rounds)
    rows = [_off_row("local-tier hit", with_api, without)]
    if traced is not None:
        rows.append(
            Row(
                group="tracing on",
                candidate="local-tier hit with its span (SDK, batch processor)",
                baseline="local-tier hit, no OpenTelemetry",
                candidate_value=statistics.median(traced) * 1e6,
                baseline_value=statistics.median(without) * 1e6,
                unit="µs",
                limit=0.0,
                limit_kind="none",  # the SDK's span is most of it: shown, not a target
                candidate_spread=spread(traced),
                baseline_spread=spread(without),
            )
        )
    return rows

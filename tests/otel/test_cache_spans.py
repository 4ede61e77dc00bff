"""A span per cache operation (sync and async caches, a real redis-server): what the lookup
found, in the words of the cache's metrics, the group, errors, lease waits, and the
loader's calls as its children."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from commclient import AsyncServiceClient, ClientConfig, SyncServiceClient, correlation_id_ctx
from commclient.asgi import CacheInvalidationMiddleware, CorrelationIdMiddleware, InvalidationRule
from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache
from tests.conftest_cache import eventually
from tests.http_server import ServerProcess
from tests.otel.spantree import ancestors
from tests.redis_server import RedisServer, free_port

WORLDS = ["sync", "async"]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with ServerProcess() as server:
        yield server.base_url


async def settle(result: Any) -> Any:
    """A sync cache's result, or an async cache's, awaited."""
    return await result if inspect.isawaitable(result) else result


def make_cache(world: str, url: str, prefix: str, **config: Any) -> Any:
    """A cache whose operations wait for a slow Redis (a loaded machine) rather than
    time out after the default 0.1 s, which would add a ``cache_error`` to their span."""
    config.setdefault("operation_timeout", 30.0)
    kind = SyncRedisCache if world == "sync" else AsyncRedisCache
    return kind.from_url(url, prefix, config=CacheConfig(**config), registry=CollectorRegistry())


async def close(cache: Any) -> None:
    await settle(cache.close())


def cache_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name.startswith("cache ")]


def summary(span: ReadableSpan) -> tuple[str, object, object, object]:
    attributes = span.attributes or {}
    return (
        span.name,
        attributes.get("commclient.cache.key"),
        attributes.get("commclient.cache.group"),
        attributes.get("commclient.cache.result"),
    )


def run(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())


def wait_until(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll ``condition`` from a sync cache's loader (no event loop to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s")
        time.sleep(0.005)


@pytest.mark.parametrize("world", WORLDS)
def test_reads_say_hit_miss_and_local_hit(
    world: str, redis_url: str, spans: InMemorySpanExporter
) -> None:
    async def body() -> None:
        cache = make_cache(world, redis_url, f"reads-{world}", local_tier_size=100)
        assert await settle(cache.start())
        await settle(cache.set("user:1", {"name": "Ada"}))
        spans.clear()
        assert await settle(cache.get("user:1")) == {"name": "Ada"}  # from Redis
        assert await settle(cache.get("user:1")) == {"name": "Ada"}  # kept locally
        assert await settle(cache.get("user:2")) is None
        await close(cache)

    run(body)
    found = cache_spans(spans)
    assert [summary(s) for s in found] == [
        ("cache get", "user:1", "user", "hit"),
        ("cache get", "user:1", "user", "local_hit"),
        ("cache get", "user:2", "user", "miss"),
    ]
    for span in found:
        assert span.kind is SpanKind.INTERNAL
        assert span.attributes is not None
        assert span.attributes["commclient.cache.name"] == f"reads-{world}"
        assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("world", WORLDS)
def test_a_value_past_its_ttl_is_stale_and_refreshed_inside_the_span(
    world: str, redis_url: str, spans: InMemorySpanExporter
) -> None:
    loads: list[int] = []

    def load() -> dict[str, int]:
        loads.append(1)
        return {"theme": 2}

    async def aload() -> dict[str, int]:
        return load()

    async def body() -> Any:
        cache = make_cache(world, redis_url, f"stale-{world}")
        # 30 s left of a value kept 60 s past its ttl: in its stale window.
        await settle(cache.set("settings:global", {"theme": 1}, ttl=30))
        spans.clear()
        loader = load if world == "sync" else aload
        value = await settle(cache.get_or_set("settings:global", loader, stale_ttl=60))
        await close(cache)
        return value

    assert run(body) == {"theme": 2}  # this caller refreshed it (others are served the old)
    assert loads == [1]
    assert [summary(s) for s in cache_spans(spans)] == [
        ("cache get_or_set", "settings:global", "settings", "stale")
    ]


@pytest.mark.parametrize("world", WORLDS)
def test_a_loaders_call_is_a_child_of_the_get_or_set_span(
    world: str, redis_url: str, http_url: str, spans: InMemorySpanExporter
) -> None:
    config = ClientConfig(max_retries=1, timeout=5)

    async def body() -> Any:
        cache = make_cache(world, redis_url, f"loader-{world}")
        if world == "sync":
            client: Any = SyncServiceClient(
                http_url, service_name="cache-test", target_service="users", config=config
            )

            def loader() -> Any:
                return client.get("/echo/users/7")["path"]

        else:
            client = AsyncServiceClient(
                http_url, service_name="cache-test", target_service="users", config=config
            )

            async def loader() -> Any:  # type: ignore[misc]
                return (await client.get("/echo/users/7"))["path"]

        spans.clear()
        value = await settle(cache.get_or_set("user:7", loader))
        await settle(client.close())
        await close(cache)
        return value

    assert run(body) == "/echo/users/7"
    finished = spans.get_finished_spans()
    [outer] = cache_spans(spans)
    assert summary(outer) == ("cache get_or_set", "user:7", "user", "miss")
    calls = [s for s in finished if s.name.startswith("GET ")]
    assert calls, [s.name for s in finished]
    for call in calls:
        assert outer.context.span_id in ancestors(call, finished)
        assert call.context.trace_id == outer.context.trace_id


@pytest.mark.parametrize("world", WORLDS)
def test_writes_and_invalidations_have_spans_with_their_group(
    world: str, redis_url: str, spans: InMemorySpanExporter
) -> None:
    async def body() -> None:
        cache = make_cache(world, redis_url, f"writes-{world}")
        spans.clear()
        await settle(cache.set("order:1", {"total": 3}))
        await settle(cache.delete("order:1"))
        await settle(cache.invalidate("order:*"))
        await settle(cache.invalidate_group("order"))
        await close(cache)

    run(body)
    found = cache_spans(spans)
    assert [summary(s) for s in found] == [
        ("cache set", "order:1", "order", None),
        ("cache delete", "order:1", "order", None),
        ("cache invalidate", None, None, None),
        ("cache invalidate_group", None, "order", None),
    ]
    assert (found[2].attributes or {}).get("commclient.cache.pattern") == "order:*"


@pytest.mark.parametrize("world", WORLDS)
def test_a_failing_loader_sets_the_error_type(
    world: str, redis_url: str, spans: InMemorySpanExporter
) -> None:
    def load() -> Any:
        raise LookupError("no such user")

    async def aload() -> Any:
        return load()

    async def body() -> None:
        cache = make_cache(world, redis_url, f"errors-{world}")
        spans.clear()
        with pytest.raises(LookupError):
            await settle(cache.get_or_set("user:9", load if world == "sync" else aload))
        await close(cache)

    run(body)
    [span] = cache_spans(spans)
    assert summary(span) == ("cache get_or_set", "user:9", "user", "miss")
    assert (span.attributes or {}).get("error.type") == "LookupError"
    assert span.status.status_code is StatusCode.ERROR
    assert "no such user" not in str(span.status.description)
    assert not span.events  # the text of a loader's error is not recorded


@pytest.mark.parametrize("world", WORLDS)
def test_redis_unreachable_is_a_miss_with_the_failure_as_an_event(
    world: str, spans: InMemorySpanExporter
) -> None:
    async def body() -> Any:
        cache = make_cache(world, f"redis://127.0.0.1:{free_port()}/0", f"down-{world}")
        spans.clear()
        value = await settle(cache.get("user:1", default="absent"))
        await close(cache)
        return value

    assert run(body) == "absent"
    [span] = cache_spans(spans)
    assert summary(span) == ("cache get", "user:1", "user", "miss")
    assert span.status.status_code is StatusCode.UNSET  # the cache absorbed the failure
    [event] = span.events
    assert event.name == "cache_error"
    assert dict(event.attributes or {}) == {
        "commclient.cache.operation": "get",
        "error.type": "ConnectionError",
    }


@pytest.mark.parametrize("world", WORLDS)
def test_waiting_for_another_process_lease_is_an_event(
    world: str, redis_url: str, spans: InMemorySpanExporter
) -> None:
    async def body() -> Any:
        cache = make_cache(
            world, redis_url, f"lease-{world}", lease_wait=0.05, lease_poll_interval=0.01
        )
        lease_key = cache._core.plan("report:1").lease_key
        redis.Redis.from_url(redis_url).set(lease_key, "another-process", px=60_000)

        def load() -> str:
            return "mine"

        async def aload() -> str:
            return load()

        spans.clear()
        value = await settle(cache.get_or_set("report:1", load if world == "sync" else aload))
        await close(cache)
        return value

    assert run(body) == "mine"
    [span] = cache_spans(spans)
    assert summary(span) == ("cache get_or_set", "report:1", "report", "miss")
    assert [event.name for event in span.events] == ["lease_wait"]


class _Witness(logging.Handler):
    """Keeps, per cache log message, the correlation id it carried and the trace that was
    current where it was logged (what a log-to-trace correlation would stamp on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, tuple[object, int]] = {}
        self.heard = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        current = trace.get_current_span().get_span_context().trace_id
        self.seen[record.getMessage()] = (getattr(record, "correlation_id", None), current)
        if record.getMessage() == LISTENER_LOST:
            self.heard.set()


LISTENER_LOST = "cache invalidation listener disconnected; local tier flushed and bypassed"


@pytest.mark.parametrize("world", WORLDS)
def test_the_listener_started_by_an_operation_keeps_nothing_of_its_context(
    world: str, redis_url: str, spans: InMemorySpanExporter
) -> None:
    """The local tier's listener, started by the first operation that needs it, outlives
    it: it must not tell that operation's span of its own failures, nor log under the
    correlation id and trace of the request that happened to start it."""
    admin = redis.Redis.from_url(redis_url)
    witness = _Witness()
    logger = logging.getLogger("commclient.cache")
    logger.addHandler(witness)

    async def body() -> Any:
        cache = make_cache(world, redis_url, f"listener-{world}", local_tier_size=10)

        async def disconnect_the_listener() -> str:
            # The listener started with this get_or_set; once it serves, drop its
            # connection while the operation is still running.
            await eventually(serving, timeout=30)
            admin.client_kill_filter(_type="pubsub")
            await eventually(heard, timeout=30)
            return "loaded"

        async def serving() -> bool:
            return bool(cache._core.local.active)

        async def heard() -> bool:
            return witness.heard.is_set()

        def load() -> str:  # the same, in the sync cache's thread
            wait_until(lambda: cache._core.local.active)
            admin.client_kill_filter(_type="pubsub")
            assert witness.heard.wait(30)
            return "loaded"

        spans.clear()
        token = correlation_id_ctx.set("request-42")
        try:
            if world == "sync":
                value = cache.get_or_set("user:5", load)
            else:
                value = await cache.get_or_set("user:5", disconnect_the_listener)
        finally:
            correlation_id_ctx.reset(token)
        await close(cache)
        return value

    try:
        assert run(body) == "loaded"
    finally:
        logger.removeHandler(witness)
    [span] = cache_spans(spans)
    assert summary(span) == ("cache get_or_set", "user:5", "user", "miss")
    assert [event.name for event in span.events] == []  # the listener's error is not its own
    correlation_id, trace_id = witness.seen[LISTENER_LOST]
    assert correlation_id is None
    assert trace_id != span.context.trace_id


def test_a_failed_invalidation_retried_later_is_not_part_of_the_request_that_failed(
    redis_url: str, spans: InMemorySpanExporter
) -> None:
    """The middleware retries a failed invalidation in the background, long after the
    request that made it has ended: the retry's spans and logs are not that request's."""
    witness = _Witness()
    logger = logging.getLogger("commclient.cache")
    logger.addHandler(witness)
    level = logger.level
    logger.setLevel(logging.INFO)
    tracer = trace.get_tracer("tests")

    class FailingOnce(AsyncRedisCache):
        failed = False

        async def invalidate_group(self, group: str) -> bool:
            if not self.failed:
                self.failed = True
                return False  # as when Redis is unreachable
            return await super().invalidate_group(group)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def body() -> tuple[int, int]:
        config = CacheConfig(operation_timeout=30.0)  # the retry succeeds at once
        cache = FailingOnce.from_url(
            redis_url, "retried", config=config, registry=CollectorRegistry()
        )
        rules = [InvalidationRule("/api/users", groups=("user",))]
        middleware = CorrelationIdMiddleware(
            CacheInvalidationMiddleware(app, cache, rules, retry_max_wait=0.05)
        )
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.request"}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/users/1",
            "headers": [(b"x-correlation-id", b"request-43")],
        }
        with tracer.start_as_current_span("POST /api/users") as request:
            await middleware(scope, receive, send)
        assert sent[0]["status"] == 204

        async def retried() -> bool:
            return cache.failed and APPLIED in witness.seen

        await eventually(retried, timeout=30)
        await close(cache)
        return request.get_span_context().trace_id, request.get_span_context().span_id

    try:
        request_trace, request_span = run(body)
    finally:
        logger.removeHandler(witness)
        logger.setLevel(level)
    [retry] = [s for s in cache_spans(spans) if s.name == "cache invalidate_group"]
    assert retry.parent is None or retry.parent.span_id != request_span
    assert retry.context.trace_id != request_trace
    correlation_id, trace_id = witness.seen[APPLIED]
    assert correlation_id != "request-43"
    assert trace_id != request_trace


APPLIED = "pending cache invalidation applied"


def test_a_cancelled_operation_says_cancelled_as_a_calls_span_does(
    redis_url: str, spans: InMemorySpanExporter
) -> None:
    """A caller that gives up (a timeout around ``get_or_set``) cancels the operation:
    ``error.type`` is ``cancelled``, the word a cancelled call's span uses, not the name of
    the exception that carried the cancellation."""

    async def body() -> None:
        cache = make_cache("async", redis_url, "cancelled")
        started = asyncio.Event()

        async def never() -> str:
            started.set()
            await asyncio.Event().wait()
            return "never"

        spans.clear()
        task = asyncio.create_task(cache.get_or_set("report:2", never))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await close(cache)

    run(body)
    [span] = cache_spans(spans)
    assert (span.attributes or {}).get("error.type") == "cancelled"
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("world", WORLDS)
def test_a_lease_renewal_that_fails_is_an_event_of_the_loading_operation(
    world: str, spans: InMemorySpanExporter
) -> None:
    """While a loader runs, its lease is renewed (a task of the operation in the async
    cache, one shared thread in the sync cache): a renewal Redis does not answer is a
    ``cache_error`` of that operation's span in both worlds, as the errors counter counts
    it."""
    registry = CollectorRegistry()
    with RedisServer() as server:
        kind = SyncRedisCache if world == "sync" else AsyncRedisCache
        config = CacheConfig(lease_ttl=0.3, operation_timeout=0.2, breaker_failure_threshold=100)
        cache = kind.from_url(server.url, f"renew-{world}", config=config, registry=registry)

        def renewals_failed() -> float:
            sample = registry.get_sample_value(
                "redis_cache_errors_total",
                {
                    "cache_name": f"renew-{world}",
                    "operation": "lease_renew",
                    "error_type": "TimeoutError",
                },
            )
            return sample or 0.0

        async def failed() -> bool:
            return renewals_failed() > 0

        def load() -> str:  # the same, blocking the sync cache's thread
            server.pause()
            try:
                wait_until(lambda: renewals_failed() > 0)
            finally:
                server.resume()
            return "loaded"

        async def aload() -> str:
            server.pause()
            try:
                await eventually(failed, timeout=30)
            finally:
                server.resume()
            return "loaded"

        async def body() -> Any:
            spans.clear()
            value = await settle(cache.get_or_set("report:3", load if world == "sync" else aload))
            await close(cache)
            return value

        assert run(body) == "loaded"
    [span] = cache_spans(spans)
    operations = [(e.attributes or {}).get("commclient.cache.operation") for e in span.events]
    assert "lease_renew" in operations, operations


def test_concurrent_operations_on_one_cache_each_tell_their_own_span(
    redis_url: str, spans: InMemorySpanExporter
) -> None:
    """Many tasks on one cache at once (hits, misses sharing one load, writes): each
    operation's span is a child of its own task's span and says what that operation
    found, whatever the others found meanwhile."""
    tracer = trace.get_tracer("tests")

    async def body() -> None:
        cache = make_cache("async", redis_url, "concurrent", local_tier_size=100)
        assert await cache.start()
        await cache.set("hot:1", "cached")
        spans.clear()
        gate = asyncio.Event()

        async def load() -> str:
            await gate.wait()
            return "loaded"

        async def one(n: int) -> None:
            with tracer.start_as_current_span(f"task {n}"):
                if n % 3 == 0:
                    assert await cache.get("hot:1") == "cached"
                elif n % 3 == 1:
                    assert await cache.get_or_set(f"cold:{n % 2}", load) == "loaded"
                else:
                    await cache.set(f"write:{n}", n)

        tasks = [asyncio.create_task(one(n)) for n in range(60)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        await close(cache)

    run(body)
    finished = spans.get_finished_spans()
    parents = {s.context.span_id: s.name for s in finished if s.name.startswith("task ")}
    operations = cache_spans(spans)
    assert len(operations) == 60
    for span in operations:
        assert span.parent is not None
        n = int(parents[span.parent.span_id].split()[1])
        name, key, _, result = summary(span)
        if n % 3 == 0:
            assert (name, key, result) in {
                ("cache get", "hot:1", "hit"),
                ("cache get", "hot:1", "local_hit"),
            }
        elif n % 3 == 1:  # the load's, or a late task's that found it done
            assert (name, key) == ("cache get_or_set", f"cold:{n % 2}")
            assert result in {"miss", "hit", "local_hit"}
        else:
            assert (name, key, result) == ("cache set", f"write:{n}", None)


@pytest.mark.parametrize("world", WORLDS)
def test_a_refresh_this_caller_runs_is_an_event_told_from_a_stale_value_served(
    world: str, redis_url: str, spans: InMemorySpanExporter
) -> None:
    """``stale`` says what the lookup found; whether this caller then ran the loader (its
    calls under the span, its latency) or was served while another process refreshes is
    a ``refresh`` event, or none."""

    async def body() -> list[Any]:
        cache = make_cache(world, redis_url, f"refresh-{world}")
        loader = (lambda: "new") if world == "sync" else (lambda: asyncio.sleep(0, "new"))
        values = []
        for key in ("theme:1", "theme:2"):
            await settle(cache.set(key, "old", ttl=30))  # in the stale window of 60 s
        lease_key = cache._core.plan("theme:2").lease_key
        redis.Redis.from_url(redis_url).set(lease_key, "another-process", px=60_000)
        spans.clear()
        for key in ("theme:1", "theme:2"):
            values.append(await settle(cache.get_or_set(key, loader, stale_ttl=60)))
        await close(cache)
        return values

    assert run(body) == ["new", "old"]
    refreshed, served = cache_spans(spans)
    assert summary(refreshed)[3] == summary(served)[3] == "stale"
    assert [event.name for event in refreshed.events] == ["refresh"]
    assert [event.name for event in served.events] == []

"""Every expression of the shipped monitoring files, parsed by a real PromQL parser and
checked against the metrics the library really exports.

The library's side comes from running it: the resilience core (sans-I/O, so no transport
is needed) and the in-memory cache record into a fresh registry through every outcome —
success, a 4xx, retried 5xx, 429, timeout, connection error, undecodable body, calls
refused by the open breaker, a half-open probe — and the test reads back which metric
names, label names, label values and breaker values appear.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, ServiceClientError, testing
from commclient._core import Core, Outcome, Response, Sleep, TransportFailure, build_core
from commclient._policy import FailureKind
from commclient.cache import SyncMemoryCache
from commclient.monitoring._definitions import BREAKER_STATE, BREAKER_STATES
from tests.monitoring_queries import Expression, all_expressions, rule_expressions

promql = pytest.importorskip("promql_parser")

#: Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up": TARGET_LABELS}


@dataclass
class Exported:
    """What the library put in a registry: per sample name, its labels and their values."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    breaker_values: set[float] = field(default_factory=set)
    # Per sample name, the label sets of its samples that are not 0: series the library
    # creates at 0 up front are exported before anything happened.
    counted: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def read(self, registry: CollectorRegistry) -> None:
        for family in registry.collect():
            for sample in family.samples:
                self.labels.setdefault(sample.name, set()).update(sample.labels)
                per_label = self.values.setdefault(sample.name, defaultdict(set))
                for name, value in sample.labels.items():
                    per_label[name].add(value)
                if sample.name == BREAKER_STATE:
                    self.breaker_values.add(sample.value)
                if sample.value:
                    self.counted.setdefault(sample.name, []).append(sample.labels)


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


def _drive(core: Core, outcomes: list[Outcome]) -> None:
    replies = iter(outcomes)
    try:
        # An open breaker refuses when the flow is made.
        flow = core.call("GET", "/api/users/{user_id}", path_params={"user_id": 1}).flow()
        action = next(flow)
        while True:
            action = flow.send(None if isinstance(action, Sleep) else next(replies))
    except (StopIteration, ServiceClientError):
        pass


@pytest.fixture(scope="module")
def exported() -> Exported:
    testing.reset()
    registry = CollectorRegistry()
    seen = Exported()
    config = ClientConfig(
        max_retries=2, circuit_breaker_fail_max=3, circuit_breaker_reset_timeout=0.05
    )
    core = build_core(
        "http://rest.test", "cron_service", "rest_service", config, registry, testing.FakeClock()
    )
    seen.read(registry)
    ok = Response(200, {}, b"{}")
    for outcomes in (
        [ok],
        [Response(404, {}, b"{}")],
        [Response(503, {}, b"{}"), ok],
        [Response(429, {}, b"{}"), ok],
        [Response(200, {}, b"<html>")],
        [TransportFailure(FailureKind.READ_TIMEOUT, TimeoutError()), ok],
        # This client's pool was full: no retry, nothing against the breaker.
        [TransportFailure(FailureKind.POOL_TIMEOUT, TimeoutError())],
        [TransportFailure(FailureKind.CONNECT, ConnectionRefusedError())] * 2,
        [Response(500, {}, b"{}")] * 2,
        [Response(502, {}, b"{}")] * 2,
        [ok],  # refused: the breaker is open by now
    ):
        _drive(core, outcomes)
        seen.read(registry)
    assert core.breaker.state == "open"
    time.sleep(0.1)
    probe = core.call("GET", "/api/users/{user_id}", path_params={"user_id": 1}).flow()
    next(probe)
    seen.read(registry)  # half-open while the probe is out
    with pytest.raises(StopIteration):
        probe.send(ok)
    seen.read(registry)
    cache = SyncMemoryCache("assistant_cache", registry=registry)
    assert cache.get("user:1") is None
    cache.set("user:1", {"name": "a"})
    assert cache.get("user:1") == {"name": "a"}
    seen.read(registry)
    testing.reset()
    return seen


def _recorded_labels() -> dict[str, set[str]]:
    """The labels each recording rule's series carry, from its expression."""
    recorded: dict[str, set[str]] = {}
    for rule in rule_expressions():
        if rule.kind == "recording_rule":
            recorded[rule.source] = Checker(Exported(), recorded).labels_of(
                promql.parse(rule.concrete())
            )
    return recorded


class Checker:
    """Walks one parsed expression; collects every problem instead of stopping at one."""

    def __init__(self, exported: Exported, recorded: dict[str, set[str]]) -> None:
        self.exported = exported
        self.recorded = recorded
        self.problems: list[str] = []

    def selector_labels(self, name: str) -> set[str]:
        if name in self.recorded:
            return set(self.recorded[name])
        if name in self.exported.labels:
            return self.exported.labels[name] | TARGET_LABELS
        if name in PROMETHEUS_SERIES:
            return set(PROMETHEUS_SERIES[name])
        self.problems.append(f"metric {name} is neither exported by the library nor recorded")
        return set(TARGET_LABELS)

    def check_matchers(self, selector: Any) -> set[str]:
        """Check the matchers of ``selector``; return the labels its series carry."""
        name = selector.name
        available = self.selector_labels(name)
        for matcher in selector.matchers.matchers:
            if matcher.name == "__name__":
                continue
            if matcher.name not in available:
                self.problems.append(f"{name} has no label {matcher.name}")
                continue
            emitted = self.exported.values.get(name, {}).get(matcher.name)
            if emitted is None:
                continue  # a recorded series: its source selectors are checked themselves
            op = str(matcher.op)
            if op.endswith("Equal") and not op.endswith("NotEqual"):
                if matcher.value not in emitted:
                    self.problems.append(
                        f"{name}{{{matcher.name}={matcher.value!r}}}: the library emits"
                        f" {sorted(emitted)}"
                    )
            elif op.endswith("Re") and not op.endswith("NotRe"):
                for alternative in matcher.value.split("|"):
                    if not any(re.fullmatch(alternative, value) for value in emitted):
                        self.problems.append(
                            f"{name}{{{matcher.name}=~...{alternative!r}...}}: the library"
                            f" emits {sorted(emitted)}"
                        )
        return available

    def labels_of(self, node: Any) -> set[str]:
        """The labels of ``node``'s result series; checks its subtree on the way."""
        kind = type(node).__name__
        if kind == "VectorSelector":
            return self.check_matchers(node)
        if kind == "MatrixSelector":
            return self.labels_of(node.vector_selector)
        if kind in ("ParenExpr", "UnaryExpr"):
            return self.labels_of(node.expr)
        if kind == "NumberLiteral" or kind == "StringLiteral":
            return set()
        if kind == "AggregateExpr":
            inner = self.labels_of(node.expr)
            modifier = node.modifier
            if modifier is None:
                # topk/bottomk keep their input's labels; sum/max/... keep none.
                return inner if str(node.op) in ("topk", "bottomk") else set()
            missing = set(modifier.labels) - inner
            if missing:
                self.problems.append(f"aggregation by {sorted(missing)} over {sorted(inner)}")
            if str(modifier.type).endswith("By"):
                return set(modifier.labels)
            return inner - set(modifier.labels)
        if kind == "Call":
            arguments = [self.labels_of(arg) for arg in node.args]
            if node.func.name == "histogram_quantile":
                if "le" not in arguments[1]:
                    self.problems.append("histogram_quantile over series without le")
                return arguments[1] - {"le"}
            return next((labels for labels in arguments if labels), set())
        if kind == "BinaryExpr":
            self.check_breaker_comparison(node)
            lhs, rhs = self.labels_of(node.lhs), self.labels_of(node.rhs)
            return lhs or rhs
        self.problems.append(f"unexpected node {kind}")
        return set()

    def check_breaker_comparison(self, node: Any) -> None:
        operand = node.lhs
        while type(operand).__name__ == "ParenExpr":
            operand = operand.expr
        if type(operand).__name__ != "VectorSelector" or operand.name != BREAKER_STATE:
            return
        if type(node.rhs).__name__ == "NumberLiteral" and (
            node.rhs.val not in self.exported.breaker_values
        ):
            self.problems.append(
                f"{BREAKER_STATE} compared with {node.rhs.val}; the library sets"
                f" {sorted(self.exported.breaker_values)}"
            )


def test_the_scenario_saw_every_breaker_state_and_status(exported: Exported) -> None:
    # Guards the guard: the checks below are only as strong as what the scenario exported.
    assert exported.breaker_values == set(BREAKER_STATES) == {0.0, 1.0, 2.0}
    statuses = exported.values["http_client_requests_total"]["status"]
    assert {
        "success",
        "404",
        "503",
        "429",
        "timeout",
        "connect_error",
        "pool_timeout",
        "circuit_open",
        "decode_error",
    } <= statuses
    assert "redis_cache_hits_total" in exported.labels
    assert "redis_cache_misses_total" in exported.labels


def _is_cron(expression: Expression) -> bool:
    return re.search(r"\bcron_", expression.expr) is not None


def _check(expression: Expression, exported: Exported) -> list[str]:
    checker = Checker(exported, _recorded_labels())
    labels = checker.labels_of(promql.parse(expression.concrete()))
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", expression.legend))
    if legend_labels - labels:
        checker.problems.append(f"legend names {sorted(legend_labels - labels)}, not in {labels}")
    return checker.problems


@pytest.mark.parametrize(
    "expression",
    [e for e in all_expressions() if not _is_cron(e)],
    ids=lambda e: f"{e.kind}:{e.source}",
)
def test_expression_uses_what_the_library_exports(
    expression: Expression, exported: Exported
) -> None:
    assert _check(expression, exported) == [], expression.concrete()


@pytest.fixture(scope="module")
def cron_exported() -> Exported:
    """cron_migration's families after runs of every outcome the alerts and panels name."""
    pytest.importorskip("apscheduler")
    pytest.importorskip("anyio")
    from cron_migration import (
        EventLoopLagMonitor,
        JobTimeoutError,
        MigrationExecutor,
        migrated_job,
        shutdown_gracefully,
    )

    registry = CollectorRegistry()

    @migrated_job(timeout=5, registry=registry, name="send_reminders")
    async def succeeds() -> None:
        await asyncio.sleep(0)

    @migrated_job(timeout=5, registry=registry, name="send_reminders")
    async def fails() -> None:
        raise RuntimeError("the REST service said no")

    @migrated_job(timeout=0.05, registry=registry, name="send_reminders")
    async def hangs() -> None:
        await asyncio.sleep(30)

    @migrated_job(timeout=5, registry=registry, name="late_job")
    async def late() -> None:
        """Scheduled in the past, beyond its grace time: a missed run."""

    succeeds()
    with pytest.raises(RuntimeError):
        fails()
    with pytest.raises(JobTimeoutError):
        hangs()

    async def scheduler_run() -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor(registry=registry)})
        past = datetime.now(timezone.utc) - timedelta(seconds=30)
        scheduler.add_job(
            late, "interval", hours=1, id="late", next_run_time=past, misfire_grace_time=1
        )
        async with EventLoopLagMonitor(interval=0.005, registry=registry):
            scheduler.start()
            deadline = time.monotonic() + 30
            while not registry.get_sample_value("cron_job_missed_total", {"cron_job": "late"}):
                assert time.monotonic() < deadline, "the scheduler never reported the missed run"
                await asyncio.sleep(0.01)
        await shutdown_gracefully(scheduler, timeout=5)

    asyncio.run(scheduler_run())
    seen = Exported()
    seen.read(registry)
    return seen


@pytest.mark.facade_async  # cron_migration runs jobs through compat's bridge (anyio)
@pytest.mark.parametrize(
    "expression", [e for e in all_expressions() if _is_cron(e)], ids=lambda e: e.source
)
def test_cron_expression_uses_what_cron_migration_exports(
    expression: Expression, cron_exported: Exported, exported: Exported
) -> None:
    # An expression may read both (the target-down alert): the client's families too.
    both = Exported(
        labels={**exported.labels, **cron_exported.labels},
        values={**exported.values, **cron_exported.values},
    )
    assert _check(expression, both) == [], expression.concrete()


@pytest.mark.facade_async
def test_the_cron_scenario_saw_every_outcome_the_queries_name(cron_exported: Exported) -> None:
    outcomes = {labels["outcome"] for labels in cron_exported.counted["cron_job_runs_total"]}
    assert {"success", "error", "timeout"} <= outcomes
    missed = cron_exported.counted["cron_job_missed_total"]
    assert [labels["cron_job"] for labels in missed] == ["late"]  # labelled by job id
    assert "cron_event_loop_lag_seconds_bucket" in cron_exported.labels


@pytest.mark.parametrize("expression", all_expressions(), ids=lambda e: f"{e.kind}:{e.source}")
def test_every_expression_parses(expression: Expression) -> None:
    promql.parse(expression.concrete())


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('rate(http_client_requests_total{status="circuit-open"}[1m])', "status='circuit-open'"),
        ('rate(http_client_requests_total{status=~"5..|connect-error"}[1m])', "'connect-error'"),
        ('http_client_retries_total{status="503"}', "has no label status"),
        ("sum by (endpointt) (rate(http_client_requests_total[1m]))", "by ['endpointt']"),
        ("rate(http_client_request_total[1m])", "http_client_request_total is neither"),
        ("http_client_circuit_breaker_state == 3", "compared with 3.0"),
        (
            "histogram_quantile(0.9, sum by (source_service)"
            " (rate(http_client_request_duration_seconds_bucket[1m])))",
            "without le",
        ),
        ("sum by (route) (service_target:http_client_requests:rate5m)", "by ['route']"),
    ],
)
def test_a_mistake_is_caught(exported: Exported, expr: str, problem: str) -> None:
    checker = Checker(exported, _recorded_labels())
    checker.labels_of(promql.parse(expr))
    assert len(checker.problems) == 1, checker.problems
    assert problem in checker.problems[0]

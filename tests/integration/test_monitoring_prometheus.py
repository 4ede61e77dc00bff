"""The shipped queries against a real Prometheus scraping the example services through an outage.

On loopback: the example ``rest_service`` (FastAPI, its own ``/metrics``), the example
``cron_service`` (its migrated schedule with run records and the event-loop lag monitor, an
in-memory cache, plus a job that overruns its timeout and a missed run) and a
``legacy_service`` calling with ``SyncServiceClient``; the two callers expose ``/metrics``
with ``start_metrics_server``. The REST service's fault switches inject two 503s per round,
then a total outage, then nothing. Prometheus scrapes all three every second and evaluates
the shipped rules every second; then every dashboard panel and every alert is evaluated
through its HTTP API.

The run is short (about 25 s); ``MONITORING_PHASE_SECONDS`` lengthens each phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from commclient import ClientConfig, ServiceClientError, SyncServiceClient
from commclient.cache import AsyncMemoryCache
from commclient.monitoring import export, start_metrics_server
from commclient.monitoring._definitions import ALERTS, BREAKER_STATES
from examples.rest_service import create_app
from examples.serving import serve
from tests.http_server import ServerProcess
from tests.monitoring_queries import (
    Expression,
    grafana_alert_expressions,
    panel_expressions,
    rule_expressions,
)
from tests.prerequisites import missing

pytestmark = [pytest.mark.prometheus, pytest.mark.facade_async, pytest.mark.facade_sync]

PHASE_SECONDS = float(os.environ.get("MONITORING_PHASE_SECONDS", "7"))
SCRAPE_INTERVAL = "1s"
#: What Grafana's $__rate_interval comes to with a 1 s scrape interval: four scrapes.
RATE_INTERVAL = "4s"
#: Seconds between runs of the example cron service's jobs (its schedule is hours long).
JOB_INTERVALS = {
    "send_due_reminders": 1.0,
    "poll_batch_jobs": 1.0,
    "extract_memories": 2.0,
    "schedule_nightly_cleanup": 2.0,
}
#: Long enough for a phase to stay open through it; then a probe closes it on recovery.
BREAKER_RESET_SECONDS = 3.0
#: The breaker alert's window for this run: shorter than an outage phase.
BREAKER_WINDOW = "3s"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def operator_labels(name: str) -> dict[str, str]:
    """Target labels as prometheus-operator sets them for a ServiceMonitor's endpoint."""
    return {
        "namespace": "prod",
        "service": f"{name}-svc",
        "endpoint": "http-metrics",
        "pod": f"{name}-7d9f-x2",
        "container": name,
    }


class Prometheus:
    """A prometheus server on loopback with its own storage, stopped at the end."""

    def __init__(
        self,
        directory: Path,
        targets: dict[str, int],
        rules: Path,
        intervals: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        intervals = intervals or {}
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": name,
                    "scrape_interval": intervals.get(name, SCRAPE_INTERVAL),
                    # Prometheus' default; the target labels prometheus-operator sets from a
                    # ServiceMonitor. No library label may clash with them.
                    "honor_labels": False,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": operator_labels(name)}
                    ],
                }
                for name, port in targets.items()
            ],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        self.log = (directory / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=5
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def wait_targets_up(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.get("/api/v1/query", query="up == 1")["data"]["result"]
            if len(result) >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"fewer than {count} targets up: {self.get('/api/v1/targets')}")

    def query_range(self, expr: str, start: float, end: float, step: int = 1) -> list[Any]:
        answer = self.get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=str(step),
        )
        assert answer["status"] == "success", answer
        series: list[Any] = answer["data"]["result"]
        return series

    def query(self, expr: str) -> list[Any]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        result: list[Any] = answer["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.query(expr):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result for {expr} in {timeout} s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@dataclass
class Run:
    """What happened when, in Prometheus' time (Unix seconds), and how much traffic."""

    prometheus: Prometheus
    started: float
    outage_started: float
    outage_ended: float
    ended: float
    calls: dict[str, int]
    #: Alert name -> expression, as exported for this run.
    alerts: dict[str, str]
    #: Runs of each cron job, as the cron service's registry counted them at the end.
    cron_runs: dict[str, float]


def _config() -> ClientConfig:
    """Quick retries; a breaker that opens after three failed calls; a retry budget (shared
    by every client of the target) large enough that every retryable failure is retried."""
    return ClientConfig(
        timeout=1.0,
        connect_timeout=0.5,
        max_retries=3,
        retry_min_wait=0.01,
        retry_max_wait=0.05,
        circuit_breaker_fail_max=3,
        circuit_breaker_reset_timeout=BREAKER_RESET_SECONDS,
        retry_budget_max_tokens=1000.0,
    )


#: Scrape interval of the burst target: its burst of failures fits between two scrapes.
BURST_SCRAPE_INTERVAL = "5s"
BURST_CALLS = 30
BURST_SERIES = (
    'http_client_requests_total{source_service="burst_service", route="/status/{code}",'
    ' status="503"}'
)


#: A target that hangs: every call waits for its read timeout. With these timings the
#: breaker cycles open (2 s) and half-open (a 1 s probe) and never closes.
HANG_CONFIG = ClientConfig(
    timeout=1.0,
    connect_timeout=0.5,
    max_retries=1,
    circuit_breaker_fail_max=2,
    circuit_breaker_reset_timeout=2.0,
)
HANG_PAIR = 'source_service="hang_service", target_service="hanging_service"'


def _hanging(url: str, registry: CollectorRegistry, stop: threading.Event) -> None:
    with SyncServiceClient(
        url,
        service_name="hang_service",
        target_service="hanging_service",
        config=HANG_CONFIG,
        registry=registry,
    ) as client:
        while not stop.is_set():
            with contextlib.suppress(ServiceClientError):
                client.get("/slow", params={"seconds": "30"})
            stop.wait(0.05)


#: Two replicas of one service, each its own process with its own breaker for the pair.
REPLICA_STATES = ("open", "half_open")
REPLICA = textwrap.dedent(
    """
    import sys, threading, time
    from commclient import ClientConfig, ServiceClientError, SyncServiceClient, testing
    from commclient.monitoring import start_metrics_server

    state, url = sys.argv[1], sys.argv[2]
    server = start_metrics_server(0)
    client = SyncServiceClient(
        url, service_name="replica_service", target_service="replica_target",
        config=ClientConfig(
            timeout=120, max_retries=1, circuit_breaker_fail_max=1,
            circuit_breaker_reset_timeout=0.2,
        ),
    )
    if state == "open":
        testing.force_open("replica_service", "replica_target")
    else:
        try:
            client.get("/status/{code}", path_params={"code": 503})
        except ServiceClientError:
            pass
        time.sleep(0.5)
        # The probe: a call to a target that hangs holds the breaker half-open.
        threading.Thread(
            target=lambda: client.get("/slow", params={"seconds": "300"}), daemon=True
        ).start()
        while testing.breaker_state("replica_service", "replica_target") != "half-open":
            time.sleep(0.01)
    print(server.port, flush=True)
    sys.stdin.read()
    """
)


class _Replica:
    """A replica process in a given breaker state, serving its metrics."""

    def __init__(self, state: str, url: str) -> None:
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [sys.executable, "-c", REPLICA, state, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _burst(url: str, registry: CollectorRegistry, prometheus: Prometheus) -> None:
    """A route that succeeded, scraped; then thirty 503s within one scrape interval."""
    config = ClientConfig(max_retries=1, circuit_breaker_fail_max=1000)
    with SyncServiceClient(
        url,
        service_name="burst_service",
        target_service="status_service",
        config=config,
        registry=registry,
    ) as client:
        for _ in range(3):
            client.get("/status/{code}", path_params={"code": 200})
        prometheus.wait_for(BURST_SERIES.replace('status="503"', 'status="success"') + " == 3")
        for _ in range(BURST_CALLS):
            with contextlib.suppress(ServiceClientError):
                client.get("/status/{code}", path_params={"code": 503})


def _legacy_traffic(url: str, registry: CollectorRegistry, stop: threading.Event) -> int:
    calls = 0
    with SyncServiceClient(
        url,
        service_name="legacy_service",
        target_service="rest_service",
        config=_config(),
        registry=registry,
    ) as client:
        while not stop.is_set():
            for path in ("/api/global-settings/", "/api/reminders/999999"):
                calls += 1
                with contextlib.suppress(ServiceClientError):
                    client.get(path)
            stop.wait(0.1)
    return calls


async def _cron_service(
    app: Any, url: str, registry: CollectorRegistry, phases: list[float]
) -> int:
    """The example cron service, plus calls and cache lookups of its own, in three phases.

    Two jobs join its schedule: one that overruns its timeout and one due long ago, which
    the scheduler reports missed.
    """
    from cron_migration import migrated_job
    from examples.cron_service.service import CronService

    service = CronService(
        url,
        cache=AsyncMemoryCache("assistant_cache", registry=registry),
        client_config=_config(),
        registry=registry,
        intervals=JOB_INTERVALS,
        run_timeout=5,
    )
    client, cache = service.client, service.cache

    @migrated_job(timeout=0.2, registry=registry, name="slow_report")
    async def slow_report() -> None:
        await asyncio.sleep(5)

    @migrated_job(timeout=5, registry=registry, name="late_job")
    async def late_job() -> None:
        """Due 30 s ago with a 1 s grace time: the scheduler reports it missed."""

    past = datetime.now(timezone.utc) - timedelta(seconds=30)
    service.scheduler.add_job(
        late_job, "interval", hours=1, next_run_time=past, misfire_grace_time=1
    )
    service.scheduler.add_job(slow_report, "interval", seconds=2, max_instances=1)

    async def one_round(number: int, phase: str) -> None:
        if phase == "healthy":
            # Two injected 503s: retried, and the calls succeed.
            app.faults.configure(fail_next=2)
        with contextlib.suppress(ServiceClientError):
            await client.get_global_settings()
        with contextlib.suppress(ServiceClientError):
            await client.get_reminder(100_000 + number)  # 404: the caller's mistake
        with contextlib.suppress(ServiceClientError):
            await client.get_pending_batch_jobs()
        # Two lookups of new keys for one of a known key: a cache that mostly misses.
        if await cache.get(f"user:{number}") is None:
            await cache.set(f"user:{number}", {"n": number})
        await cache.get(f"conversation:{number}")
        await cache.get(f"user:{number - 1}")

    rounds = 0
    await service.start()
    try:
        phases.append(time.time())
        for phase in ("healthy", "outage", "recovery"):
            if phase == "outage":
                app.faults.configure(outage=True)
            elif phase == "recovery":
                app.faults.clear()
            phases.append(time.time())
            phase_ends = time.monotonic() + PHASE_SECONDS
            while time.monotonic() < phase_ends:
                rounds += 1
                await one_round(rounds, phase)
                await asyncio.sleep(0.05)
        phases.append(time.time())
    finally:
        await service.stop(timeout=10)
    return rounds


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if shutil.which("prometheus") is None:
        missing("prometheus is not on PATH (Debian package prometheus)")
    directory = tmp_path_factory.mktemp("prometheus")
    # The breaker alert's window shortened to the run's time scale (the default, 2m, is
    # proved by the shipped promtool tests at the default timings).
    # Scoped as a prometheus-operator user would: this namespace, and namespaces kept apart.
    export(
        directory / "exported",
        breaker_window=BREAKER_WINDOW,
        selector='namespace="prod"',
        group_by=("namespace",),
    )
    rules = directory / "exported" / "prometheus" / "commclient-rules.yml"
    cron_registry, legacy_registry = CollectorRegistry(), CollectorRegistry()
    burst_registry, hang_registry = CollectorRegistry(), CollectorRegistry()
    app = create_app()
    status_server = ServerProcess()
    status_server.start()
    replicas = {
        f"replica_{state}": _Replica(state, status_server.base_url) for state in REPLICA_STATES
    }
    with (
        serve(app) as rest_url,
        start_metrics_server(0, registry=cron_registry) as cron_metrics,
        start_metrics_server(0, registry=legacy_registry) as legacy_metrics,
        start_metrics_server(0, registry=burst_registry) as burst_metrics,
        start_metrics_server(0, registry=hang_registry) as hang_metrics,
    ):
        prometheus = Prometheus(
            directory,
            {
                "rest_service": int(rest_url.rsplit(":", 1)[1]),
                "cron_service": cron_metrics.port,
                "legacy_service": legacy_metrics.port,
                "burst_service": burst_metrics.port,
                "hang_service": hang_metrics.port,
                **{name: replica.port for name, replica in replicas.items()},
            },
            rules,
            {"burst_service": BURST_SCRAPE_INTERVAL},
        )
        try:
            prometheus.wait_ready()
            prometheus.wait_targets_up(5 + len(replicas))
            burst = threading.Thread(
                target=_burst,
                args=(status_server.base_url, burst_registry, prometheus),
                daemon=True,
            )
            burst.start()
            hang_stop = threading.Event()
            hanging = threading.Thread(
                target=_hanging,
                args=(status_server.base_url, hang_registry, hang_stop),
                daemon=True,
            )
            hanging.start()
            stop = threading.Event()
            legacy_calls: list[int] = []
            legacy = threading.Thread(
                target=lambda: legacy_calls.append(
                    _legacy_traffic(rest_url, legacy_registry, stop)
                ),
                daemon=True,
            )
            legacy.start()
            phases: list[float] = []
            try:
                rounds = asyncio.run(_cron_service(app, rest_url, cron_registry, phases))
            finally:
                stop.set()
                legacy.join(30)
                burst.join(60)
                hang_stop.set()
                hanging.join(60)
                # The burst service goes away: its target is down from the next scrape.
                burst_metrics.close()
            # Two more scrapes (of the burst target too) and rule evaluations see the last
            # values.
            time.sleep(11)
            started, _, outage_started, outage_ended, _ = phases
            yield Run(
                prometheus,
                started,
                outage_started,
                outage_ended,
                time.time(),
                {"rounds": rounds, "legacy_calls": sum(legacy_calls)},
                {
                    rule["alert"]: rule["expr"]
                    for group in yaml.safe_load(rules.read_text())["groups"]
                    for rule in group["rules"]
                    if "alert" in rule
                },
                _runs_per_job(cron_registry),
            )
        finally:
            prometheus.stop()
            status_server.stop()
            for replica in replicas.values():
                replica.stop()


#: Alerts whose value has data only when the recording rules are not loaded.
RULES_ABSENT = {alert.name for alert in ALERTS if alert.recording_rules_absent}


def test_rules_missing_alert_is_quiet_with_the_rules_loaded(run: Run) -> None:
    (name,) = RULES_ABSENT
    # From the third evaluation on: the recorded series need two scrapes.
    assert run.prometheus.query_range(run.alerts[name], run.started + 5, run.ended) == []


def _runs_per_job(registry: CollectorRegistry) -> dict[str, float]:
    runs: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "cron_job_runs_total":
                job = sample.labels["cron_job"]
                runs[job] = runs.get(job, 0.0) + sample.value
    return runs


def test_a_burst_of_failures_within_one_scrape_counts(run: Run) -> None:
    """The 503 series existed at 0 before the burst, so increase() sees all of it, and the
    pair's recorded error ratio is above 0."""
    raw = run.prometheus.query(f"{BURST_SERIES}[10m]")
    (series,) = raw
    values = {float(value) for _, value in series["values"]}
    # Scraped before and after the burst, never in the middle of it.
    assert values == {0.0, float(BURST_CALLS)}, values
    (increase,) = run.prometheus.query(f"increase({BURST_SERIES}[10m])")
    assert float(increase["value"][1]) >= BURST_CALLS, increase
    ratio = run.prometheus.query_range(
        'service_target:http_client_request_error_ratio:rate5m{source_service="burst_service"}',
        run.started,
        run.ended,
    )
    assert max(_values(ratio)) > 0


def test_breaker_alert_holds_through_open_half_open_cycling(run: Run) -> None:
    """Against a target that hangs, probes hold the breaker half-open for a read timeout
    at a time: Prometheus sees it cycle and never close, and the alert's expression stays
    true from one window after the first trip, where "is it open now" keeps dropping."""
    state = f"http_client_circuit_breaker_state{{{HANG_PAIR}}}"
    seen = _values(run.prometheus.query_range(state, run.started, run.ended))
    assert {1.0, 2.0} <= set(seen), seen
    first_open = min(
        float(t)
        for s in run.prometheus.query_range(f"{state} == 2", run.started, run.ended)
        for t, _ in s["values"]
    )
    start, end = first_open + 4, run.outage_ended
    steps = int(end - start)
    assert steps > 5
    alert = run.prometheus.query_range(run.alerts["CommClientCircuitBreakerOpen"], start, end)
    pairs = {(s["metric"]["source_service"], len(s["values"])) for s in alert}
    hang_points = [n for source, n in pairs if source == "hang_service"]
    assert hang_points, pairs
    assert hang_points[0] >= steps, (pairs, steps)
    # "Open right now", the old rule, is false at every probe.
    now_open = run.prometheus.query_range(f"max({state}) == bool 2", start, end)
    assert 0.0 in _values(now_open)


def test_the_breaker_panel_shows_open_when_one_replica_is_open_and_another_half_open(
    run: Run,
) -> None:
    state = 'http_client_circuit_breaker_state{source_service="replica_service"}'
    per_replica = {
        s["metric"]["job"]: set(_values([s]))
        for s in run.prometheus.query_range(state, run.ended - 5, run.ended)
    }
    assert per_replica == {"replica_open": {2.0}, "replica_half_open": {1.0}}
    (panel,) = [e for e in panel_expressions() if e.source == "Circuit breaker state A"]
    drawn = run.prometheus.query_range(panel.concrete(), run.ended - 5, run.ended)
    shown = {
        BREAKER_STATES[int(value)]
        for s in drawn
        if s["metric"]["source_service"] == "replica_service"
        for value in _values([s])
    }
    assert shown == {"OPEN"}


def test_target_down_alert_is_true_for_the_service_that_went_away(run: Run) -> None:
    series = run.prometheus.query_range(
        run.alerts["CommClientTargetDown"], run.ended - 3, run.ended
    )
    assert {s["metric"]["job"] for s in series} == {"burst_service"}


def test_count_bars_add_up_to_the_true_count(run: Run) -> None:
    """The runs panel's bars, one per $__interval, sum to the runs the service counted."""
    (panel,) = [e for e in panel_expressions() if e.source == "Cron runs by outcome A"]
    step = 5
    # Grafana's $__rate_interval: four scrapes, at least; $__interval: the step.
    expr = panel.concrete(rate_interval=f"{4 * step}s", interval=f"{step}s")
    series = run.prometheus.query_range(expr, run.started - step, run.ended + step, step=step)
    drawn: dict[str, float] = {}
    for one in series:
        job = one["metric"]["cron_job"]
        drawn[job] = drawn.get(job, 0.0) + sum(float(value) for _, value in one["values"])
    counted = run.cron_runs["send_due_reminders"]
    assert counted > 10
    print(f"bars drawn {drawn['send_due_reminders']:.1f}, runs counted {counted:.0f}")
    assert 0.75 * counted <= drawn["send_due_reminders"] <= 1.25 * counted, (drawn, counted)


def test_count_bars_add_up_when_the_step_is_one_scrape(run: Run) -> None:
    """At the dashboard's default range (1 h) Grafana's $__interval falls to its floor, the
    data source's scrape interval: one bar per scrape must still add up to the runs."""
    (panel,) = [e for e in panel_expressions() if e.source == "Cron runs by outcome A"]
    expr = panel.concrete(rate_interval=RATE_INTERVAL, interval=SCRAPE_INTERVAL)
    series = run.prometheus.query_range(expr, run.started - 1, run.ended + 1, step=1)
    drawn = sum(
        float(value)
        for one in series
        if one["metric"]["cron_job"] == "send_due_reminders"
        for _, value in one["values"]
    )
    counted = run.cron_runs["send_due_reminders"]
    print(f"bars drawn at a one-scrape step {drawn:.1f}, runs counted {counted:.0f}")
    assert 0.75 * counted <= drawn <= 1.25 * counted, (drawn, counted)


def _values(series: list[Any]) -> list[float]:
    return [float(value) for s in series for _, value in s["values"] if value != "NaN"]


def test_the_run_made_traffic_in_every_phase(run: Run) -> None:
    assert run.calls["rounds"] > 10, run.calls
    assert run.calls["legacy_calls"] > 10, run.calls
    assert run.outage_started < run.outage_ended < run.ended


def test_prometheus_loaded_every_rule(run: Run) -> None:
    groups = run.prometheus.get("/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = {e.source for e in rule_expressions()}
    assert set(loaded) == expected
    unhealthy = {
        name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"
    }
    assert unhealthy == {}


@pytest.mark.parametrize("expression", panel_expressions(), ids=lambda e: e.source)
def test_every_panel_returns_data(run: Run, expression: Expression) -> None:
    series = run.prometheus.query_range(expression.concrete(RATE_INTERVAL), run.started, run.ended)
    assert _values(series), f"no data for {expression.concrete(RATE_INTERVAL)}"


@pytest.mark.parametrize(
    "expression",
    [e for e in grafana_alert_expressions() if e.source not in RULES_ABSENT],
    ids=lambda e: e.source,
)
def test_every_alert_value_returns_data(run: Run, expression: Expression) -> None:
    series = run.prometheus.query_range(expression.concrete(), run.started, run.ended)
    assert _values(series), f"no data for {expression.expr}"


def _rest_service(series: list[Any]) -> list[Any]:
    """The series of the pairs calling the REST service (not the hanging target's)."""
    return [s for s in series if s["metric"]["target_service"] == "rest_service"]


def test_breaker_open_alert_is_true_during_the_outage_only(run: Run) -> None:
    expr = run.alerts["CommClientCircuitBreakerOpen"]
    prometheus = run.prometheus
    during = _rest_service(prometheus.query_range(expr, run.outage_started, run.outage_ended))
    pairs = {(s["metric"]["source_service"], s["metric"]["target_service"]) for s in during}
    assert pairs == {("cron_service", "rest_service"), ("legacy_service", "rest_service")}
    before = _rest_service(prometheus.query_range(expr, run.started, run.outage_started - 1))
    assert before == []
    # After the restart a probe closes each breaker: the expression is false again.
    final = _rest_service(prometheus.query_range(expr, run.ended - 2, run.ended))
    assert final == []


def test_breaker_open_alert_went_pending(run: Run) -> None:
    series = run.prometheus.query_range(
        'ALERTS{alertname="CommClientCircuitBreakerOpen", alertstate="pending",'
        ' target_service="rest_service"}',
        run.outage_started,
        run.outage_ended + 2,
    )
    assert {s["metric"]["source_service"] for s in series} == {"cron_service", "legacy_service"}


@pytest.mark.parametrize(
    ("alert", "label", "value"),
    [
        ("CommClientHighErrorRate", "source_service", "cron_service"),
        ("CommClientHighRetryRate", "source_service", "cron_service"),
        ("CommClientLowCacheHitRate", "cache_name", "assistant_cache"),
        ("CronJobRunFailures", "cron_job", "send_due_reminders"),
        ("CronJobRunFailures", "cron_job", "slow_report"),
    ],
)
def test_provoked_alerts_are_true(run: Run, alert: str, label: str, value: str) -> None:
    series = run.prometheus.query_range(run.alerts[alert], run.started, run.ended)
    assert value in {s["metric"].get(label) for s in series}, series


def test_cron_job_label_survives_the_scrape(run: Run) -> None:
    series = run.prometheus.query_range(
        # > 0: cron_migration exports every (job, outcome) series at 0 from the start.
        'sum by (cron_job, outcome) (cron_job_runs_total{outcome=~"success|error|timeout"}) > 0',
        run.started,
        run.ended,
    )
    seen = {(s["metric"]["cron_job"], s["metric"]["outcome"]) for s in series}
    assert {
        ("send_due_reminders", "success"),
        ("send_due_reminders", "error"),
        ("extract_memories", "success"),
        ("poll_batch_jobs", "success"),
        ("slow_report", "timeout"),
    } <= seen


def test_library_labels_survive_operator_target_labels(run: Run) -> None:
    """With honor_labels false, the target's service/endpoint/namespace/pod/job labels sit
    beside the library's own: nothing is renamed exported_*, nothing is overwritten."""
    series = run.prometheus.query_range(
        'http_client_requests_total{status="success"}', run.started, run.ended
    )
    labels = [s["metric"] for s in series]
    assert labels
    assert [name for one in labels for name in one if name.startswith("exported_")] == []
    by_target = {(one["job"], one["source_service"], one["service"]) for one in labels}
    assert by_target == {
        ("cron_service", "cron_service", "cron_service-svc"),
        ("legacy_service", "legacy_service", "legacy_service-svc"),
        ("burst_service", "burst_service", "burst_service-svc"),
    }
    assert {one["endpoint"] for one in labels} == {"http-metrics"}
    assert {one["route"] for one in labels} >= {"/api/global-settings/"}
    # The exported rules kept the namespace apart (export group_by): alerts carry it.
    errors = run.prometheus.query_range(
        run.alerts["CommClientHighErrorRate"], run.started, run.ended
    )
    assert {(s["metric"]["namespace"], s["metric"]["source_service"]) for s in errors} >= {
        ("prod", "cron_service")
    }
    cron = run.prometheus.query_range("cron_job_runs_total", run.started, run.ended)
    assert {s["metric"]["job"] for s in cron} == {"cron_service"}
    assert "send_due_reminders" in {s["metric"]["cron_job"] for s in cron}


def test_the_rest_service_was_scraped(run: Run) -> None:
    series = run.prometheus.query_range('up{job="rest_service"}', run.started, run.ended)
    # A scrape may time out on a loaded machine (the service shares this process's GIL);
    # the target is scraped all the same.
    assert 1.0 in _values(series)

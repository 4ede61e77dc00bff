"""The one definition of every query: recording rules, alerts and dashboard panels.

Shaped like a Prometheus monitoring mixin: the dashboard, the Grafana alert rules and the
Prometheus rules are all rendered from the objects below (``python -m
commclient.monitoring generate``), so a metric name or a threshold is written once.

Heavy expressions (the p95 of a service pair, the error and retry ratios, the cache hit
ratio) are recording rules; the dashboard and both kinds of alert read the recorded series,
so Prometheus must load ``commclient-rules.yml`` for either to work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Metric families of the library (DESIGN.md §4) and of cron_migration.
REQUESTS = "http_client_requests_total"
DURATION = "http_client_request_duration_seconds"
RETRIES = "http_client_retries_total"
BREAKER_STATE = "http_client_circuit_breaker_state"
RETRY_BUDGET = "http_client_retry_budget_tokens"
CACHE_HITS = "redis_cache_hits_total"
CACHE_MISSES = "redis_cache_misses_total"
CRON_RUNS = "cron_job_runs_total"
CRON_DURATION = "cron_job_duration_seconds"
CRON_MISSED = "cron_job_missed_total"
LOOP_LAG = "cron_event_loop_lag_seconds"
RUN_RECORDS_PENDING = "cron_run_records_pending"
RUN_RECORDS_DROPPED = "cron_run_records_dropped_total"

#: Breaker gauge values, as the library sets them, and how the dashboard names them: the
#: worse the state, the higher the value, so ``max`` over replicas shows the worst one.
BREAKER_STATES = {0: "CLOSED", 1: "HALF-OPEN", 2: "OPEN"}
#: A pair whose breaker was not closed once over this window is in an outage. Not "open
#: for a minute": against a target that hangs, each half-open probe holds the state for a
#: read timeout, and the state cycles open, half-open, open without ever closing.
BREAKER_WINDOW = "2m"

#: ``status`` values of a failed call: 5xx, 429, transport errors, calls refused by an
#: open breaker, calls that found every pooled connection busy (``pool_timeout``: the
#: client's saturation, not the target's, but the caller got no answer) and bodies that
#: are not JSON. Other 4xx are the caller's mistakes and do not count.
ERROR_STATUSES = "5..|429|timeout|connect_error|pool_timeout|circuit_open|decode_error"
#: ``outcome`` values of a cron run that failed.
CRON_FAILURE_OUTCOMES = "error|timeout"

# Recorded series: level:metric:operation (the Prometheus naming convention).
PAIR = "source_service, target_service"
REQUEST_RATE = "service_target:http_client_requests:rate5m"
ERROR_RATE = "service_target:http_client_request_errors:rate5m"
ERROR_RATIO = "service_target:http_client_request_error_ratio:rate5m"
RETRY_RATE = "service_target:http_client_retries:rate5m"
RETRY_RATIO = "service_target:http_client_retry_ratio:rate5m"
P95_DURATION = "service_target:http_client_request_duration_seconds:p95_5m"
CACHE_HIT_RATE = "cache_name:redis_cache_hits:rate5m"
CACHE_MISS_RATE = "cache_name:redis_cache_misses:rate5m"
CACHE_HIT_RATIO = "cache_name:redis_cache_hit_ratio:rate5m"
LOOP_LAG_P99 = "instance:cron_event_loop_lag_seconds:p99_5m"

#: Dashboard variables narrowing the client panels to some pairs.
PAIR_FILTER = 'source_service=~"$source_service", target_service=~"$target_service"'
#: The variables and what the dashboard puts in place of each when "All" is selected.
DASHBOARD_VARIABLES = {"source_service": ".*", "target_service": ".*"}

DEFAULT_DATASOURCE_UID = "prometheus"


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str


RECORDING_RULES = (
    RecordingRule(REQUEST_RATE, f"sum by ({PAIR}) (rate({REQUESTS}[5m]))"),
    RecordingRule(
        ERROR_RATE, f'sum by ({PAIR}) (rate({REQUESTS}{{status=~"{ERROR_STATUSES}"}}[5m]))'
    ),
    # A pair without a single error has no error series: count it as zero errors, so that
    # its ratio is 0 and not absent.
    RecordingRule(ERROR_RATIO, f"({ERROR_RATE} or {REQUEST_RATE} * 0) / {REQUEST_RATE}"),
    RecordingRule(RETRY_RATE, f"sum by ({PAIR}) (rate({RETRIES}[5m]))"),
    RecordingRule(RETRY_RATIO, f"({RETRY_RATE} or {REQUEST_RATE} * 0) / {REQUEST_RATE}"),
    RecordingRule(
        P95_DURATION,
        f"histogram_quantile(0.95, sum by (le, {PAIR}) (rate({DURATION}_bucket[5m])))",
    ),
    RecordingRule(CACHE_HIT_RATE, f"sum by (cache_name) (rate({CACHE_HITS}[5m]))"),
    RecordingRule(CACHE_MISS_RATE, f"sum by (cache_name) (rate({CACHE_MISSES}[5m]))"),
    # A cache that only misses has no hit series, and that is the worst case: fill in
    # the missing side with zero before dividing.
    RecordingRule(
        CACHE_HIT_RATIO,
        f"({CACHE_HIT_RATE} or {CACHE_MISS_RATE} * 0)"
        f" / (({CACHE_HIT_RATE} or {CACHE_MISS_RATE} * 0)"
        f" + ({CACHE_MISS_RATE} or {CACHE_HIT_RATE} * 0))",
    ),
    RecordingRule(
        LOOP_LAG_P99,
        f"histogram_quantile(0.99, sum by (le, job, instance) (rate({LOOP_LAG}_bucket[5m])))",
    ),
)


@dataclass(frozen=True)
class InputSeries:
    """One series of a promtool test: a selector and its values in promtool's notation."""

    series: str
    values: str


@dataclass(frozen=True)
class AlertCase:
    """A promtool test case: the alert fires with ``labels``, or stays quiet (``None``).

    ``interval`` is the time between two input samples (the scrape interval); rules are
    evaluated every minute, as Prometheus does by default.
    """

    name: str
    input_series: tuple[InputSeries, ...]
    eval_time: str
    labels: dict[str, str] | None = None
    interval: str = "1m"


@dataclass(frozen=True)
class Alert:
    """One alert for Prometheus and for Grafana: ``value op threshold`` held for ``for_``.

    ``summary`` and ``description`` may use ``{{ $labels.NAME }}``, which both Prometheus
    and Grafana expand.
    """

    name: str
    title: str
    value: str
    op: Literal[">", "<"]
    threshold: float
    for_: str
    severity: Literal["critical", "warning"]
    summary: str
    description: str
    firing: AlertCase
    quiet: AlertCase
    runbook: str = ""
    #: Further promtool cases (recovery, edge cases).
    more: tuple[AlertCase, ...] = ()

    @property
    def expr(self) -> str:
        return f"{self.value} {self.op} {self.threshold:g}"


def _requests(pair: str, status: str, values: str) -> InputSeries:
    return InputSeries(
        f'{REQUESTS}{{{pair}, method="GET", route="/api/users/{{id}}", status="{status}"}}',
        values,
    )


_PAIR_LABELS = 'source_service="cron_service", target_service="rest_service"'


def _breaker_cycling(
    opens: int,
    recovers: int,
    until: int,
    *,
    reset_timeout: int = 30,
    probe_seconds: int = 10,
    scrape: int = 15,
) -> str:
    """The breaker gauge, one sample per ``scrape`` seconds, against a target that hangs.

    Closed until ``opens``; then open for ``reset_timeout``, half-open for as long as the
    probe waits for its read timeout, open again, ...; the first probe after ``recovers``
    succeeds and the breaker stays closed until ``until``. The defaults are the library's
    (``circuit_breaker_reset_timeout=30``, ``timeout=10``) and a 15 s scrape.
    """
    cycle = reset_timeout + probe_seconds
    # The first probe let through once the target answers again closes the breaker.
    first_probe = opens + reset_timeout
    closes = first_probe + max(0, -(-(recovers - first_probe) // cycle)) * cycle
    values = []
    for now in range(0, until + 1, scrape):
        if now < opens or now >= closes:
            state = 0
        elif (now - opens) % cycle < reset_timeout:
            state = 2
        else:
            state = 1
        values.append(str(state))
    return " ".join(values)


_PAIR_DICT = {"source_service": "cron_service", "target_service": "rest_service"}


def _lag_buckets(fast: str) -> tuple[InputSeries, ...]:
    """Ten loop-lag samples a minute, ``fast`` of them under 0.1 s and the rest above 1 s."""
    labels = 'job="cron_service", instance="cron:8001"'
    return (
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="0.1"}}', fast),
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="0.5"}}', fast),
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="1"}}', fast),
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="+Inf"}}', "0+10x20"),
    )


ALERTS = (
    Alert(
        name="CommClientCircuitBreakerOpen",
        title="Circuit breaker open",
        value=f"max by ({PAIR}) (min_over_time({BREAKER_STATE}[{BREAKER_WINDOW}]))",
        op=">",
        threshold=0,
        for_="1m",
        severity="critical",
        summary="Circuit breaker {{ $labels.source_service }} -> {{ $labels.target_service }} is open",
        description=(
            "The breaker of {{ $labels.source_service }} for {{ $labels.target_service }} has not"
            f" been closed once in {BREAKER_WINDOW} (open, or half-open probes that fail):"
            " calls fail fast with ServiceUnavailableError."
        ),
        firing=AlertCase(
            "a hanging target at the default timings: open 30 s, a probe that times out"
            " after 10 s, open again; scraped every 15 s, and every other rule evaluation"
            " sees a probe in flight",
            (InputSeries(f"{BREAKER_STATE}{{{_PAIR_LABELS}}}", _breaker_cycling(50, 600, 900)),),
            "5m",
            _PAIR_DICT,
            interval="15s",
        ),
        quiet=AlertCase(
            "a 90 s outage ended by a probe, and a half-open moment, are not an outage",
            (
                InputSeries(
                    f"{BREAKER_STATE}{{{_PAIR_LABELS}}}",
                    _breaker_cycling(60, 150, 900),
                ),
                InputSeries(
                    f'{BREAKER_STATE}{{source_service="cron_service", target_service="other"}}',
                    "0x10 1 0x50",
                ),
            ),
            "5m",
            interval="15s",
        ),
        more=(
            AlertCase(
                "resolved two minutes after the cycling ends with a successful probe",
                (
                    InputSeries(
                        f"{BREAKER_STATE}{{{_PAIR_LABELS}}}", _breaker_cycling(50, 600, 900)
                    ),
                ),
                "12m",
                interval="15s",
            ),
            AlertCase(
                "one replica open, another half-open: the pair is open",
                (
                    InputSeries(f'{BREAKER_STATE}{{{_PAIR_LABELS}, instance="a"}}', "0x4 2x40"),
                    InputSeries(f'{BREAKER_STATE}{{{_PAIR_LABELS}, instance="b"}}', "0x4 1x40"),
                ),
                "5m",
                _PAIR_DICT,
                interval="15s",
            ),
        ),
    ),
    Alert(
        name="CommClientHighErrorRate",
        title="High error rate",
        value=ERROR_RATIO,
        op=">",
        threshold=0.05,
        for_="5m",
        severity="warning",
        summary="Over 5% of calls {{ $labels.source_service }} -> {{ $labels.target_service }} fail",
        description=(
            "Attempts ending in 5xx, 429, a timeout, a connection error, a full connection"
            " pool, an open breaker or an undecodable body, as a share of all attempts over"
            " 5 minutes."
        ),
        firing=AlertCase(
            "one attempt in seven gets a 503",
            (
                _requests(_PAIR_LABELS, "success", "0+60x20"),
                _requests(_PAIR_LABELS, "503", "0+10x20"),
            ),
            "15m",
            _PAIR_DICT,
        ),
        quiet=AlertCase(
            "404s are the caller's mistakes; 1% of 503s is below the threshold",
            (
                _requests(_PAIR_LABELS, "success", "0+100x20"),
                _requests(_PAIR_LABELS, "404", "0+50x20"),
                _requests(_PAIR_LABELS, "503", "0+1x20"),
            ),
            "15m",
        ),
    ),
    Alert(
        name="CommClientHighRetryRate",
        title="High retry rate",
        value=RETRY_RATIO,
        op=">",
        threshold=0.1,
        for_="5m",
        severity="warning",
        summary="Over 10% of calls {{ $labels.source_service }} -> {{ $labels.target_service }} retry",
        description=(
            "Retries per attempt over 5 minutes. The retry budget caps them; a high ratio"
            " means the target is degrading before the breaker opens."
        ),
        firing=AlertCase(
            "one retry per two attempts",
            (
                _requests(_PAIR_LABELS, "success", "0+60x20"),
                InputSeries(
                    f'{RETRIES}{{{_PAIR_LABELS}, method="GET", route="/api/users/{{id}}",'
                    f' error_type="timeout"}}',
                    "0+30x20",
                ),
            ),
            "15m",
            _PAIR_DICT,
        ),
        quiet=AlertCase(
            "one retry per sixty attempts",
            (
                _requests(_PAIR_LABELS, "success", "0+60x20"),
                InputSeries(
                    f'{RETRIES}{{{_PAIR_LABELS}, method="GET", route="/api/users/{{id}}",'
                    f' error_type="503"}}',
                    "0+1x20",
                ),
            ),
            "15m",
        ),
    ),
    Alert(
        name="CommClientLowCacheHitRate",
        title="Low cache hit rate",
        value=CACHE_HIT_RATIO,
        op="<",
        threshold=0.5,
        for_="10m",
        severity="warning",
        summary="Cache {{ $labels.cache_name }} answers under half of its lookups",
        description=(
            "Hits as a share of lookups over 5 minutes. Redis may be unreachable (every"
            " lookup then counts as a miss), or the TTLs are too short for the traffic."
        ),
        firing=AlertCase(
            "every lookup misses (Redis down): no hit series at all",
            (
                InputSeries(
                    f'{CACHE_MISSES}{{cache_name="assistant_cache", key_pattern="user"}}',
                    "0+90x30",
                ),
            ),
            "20m",
            {"cache_name": "assistant_cache"},
        ),
        quiet=AlertCase(
            "nine hits in ten lookups",
            (
                InputSeries(
                    f'{CACHE_HITS}{{cache_name="assistant_cache", key_pattern="user"}}',
                    "0+90x30",
                ),
                InputSeries(
                    f'{CACHE_MISSES}{{cache_name="assistant_cache", key_pattern="user"}}',
                    "0+10x30",
                ),
            ),
            "20m",
        ),
    ),
    Alert(
        name="CronJobRunFailures",
        title="Cron job runs failing",
        value=(f'sum by (cron_job) (increase({CRON_RUNS}{{outcome=~"{CRON_FAILURE_OUTCOMES}"}}[15m]))'),
        op=">",
        threshold=0,
        for_="0m",
        severity="warning",
        summary="Cron job {{ $labels.cron_job }} failed in the last 15 minutes",
        description=(
            "Runs that raised or hit their timeout. Runs skipped because another replica"
            " holds the lease are not failures."
        ),
        firing=AlertCase(
            "one run raised",
            (
                InputSeries(f'{CRON_RUNS}{{cron_job="send_reminders", outcome="success"}}', "0+1x10"),
                InputSeries(f'{CRON_RUNS}{{cron_job="send_reminders", outcome="error"}}', "0 0 1x8"),
            ),
            "4m",
            {"cron_job": "send_reminders"},
        ),
        quiet=AlertCase(
            "successes and runs skipped elsewhere",
            (
                InputSeries(f'{CRON_RUNS}{{cron_job="send_reminders", outcome="success"}}', "0+1x10"),
                InputSeries(
                    f'{CRON_RUNS}{{cron_job="send_reminders", outcome="skipped_elsewhere"}}', "0+1x10"
                ),
                InputSeries(f'{CRON_RUNS}{{cron_job="send_reminders", outcome="error"}}', "0x10"),
            ),
            "4m",
        ),
    ),
    Alert(
        name="CronEventLoopLag",
        title="Event loop lagging",
        value=LOOP_LAG_P99,
        op=">",
        threshold=0.5,
        for_="5m",
        severity="warning",
        summary="Event loop of {{ $labels.instance }} lags over 0.5 s (p99)",
        description=(
            "Something blocks the scheduler's event loop: a sync call in an async job, or"
            " CPU-bound work. Jobs start late and timeouts fire late."
        ),
        firing=AlertCase(
            "every lag sample above one second",
            _lag_buckets("0x20"),
            "15m",
            {"job": "cron_service", "instance": "cron:8001"},
        ),
        quiet=AlertCase("every lag sample under 0.1 s", _lag_buckets("0+10x20"), "15m"),
    ),
)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    kind: Literal["timeseries", "state-timeline", "table"]
    unit: str
    description: str
    queries: tuple[Query, ...]
    #: Value -> text of the gauge (the breaker state).
    mappings: dict[int, str] = field(default_factory=dict)
    stacked: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


_PAIR_LEGEND = "{{source_service}} → {{target_service}}"

DASHBOARD_TITLE = "Service Communication"
DASHBOARD_UID = "commclient-service-communication"

ROWS = (
    Row(
        "Requests",
        (
            Panel(
                "Request rate by service → target",
                "timeseries",
                "reqps",
                "Attempts per second, every outcome, per calling service and target.",
                (
                    Query(
                        f"sum by ({PAIR}) (rate({REQUESTS}{{{PAIR_FILTER}}}[$__rate_interval]))",
                        _PAIR_LEGEND,
                    ),
                ),
            ),
            Panel(
                "p95 duration",
                "timeseries",
                "s",
                "95th percentile of one attempt's duration over 5 minutes (recorded).",
                (Query(f"{P95_DURATION}{{{PAIR_FILTER}}}", _PAIR_LEGEND),),
            ),
            Panel(
                "Error rate",
                "timeseries",
                "percentunit",
                f"Share of attempts with status {ERROR_STATUSES} over 5 minutes (recorded).",
                (Query(f"{ERROR_RATIO}{{{PAIR_FILTER}}}", _PAIR_LEGEND),),
            ),
            Panel(
                "Top endpoints",
                "table",
                "reqps",
                "The ten busiest endpoints by attempts per second.",
                (
                    Query(
                        "topk(10, sum by (source_service, target_service, method, route)"
                        f" (rate({REQUESTS}{{{PAIR_FILTER}}}[$__rate_interval])))"
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Resilience",
        (
            Panel(
                "Retry rate",
                "timeseries",
                "ops",
                "Retries per second by the failure that caused them.",
                (
                    Query(
                        f"sum by ({PAIR}, error_type)"
                        f" (rate({RETRIES}{{{PAIR_FILTER}}}[$__rate_interval]))",
                        "{{source_service}} → {{target_service}} {{error_type}}",
                    ),
                ),
            ),
            Panel(
                "Circuit breaker state",
                "state-timeline",
                "none",
                "CLOSED: calls flow. OPEN: calls fail fast. HALF-OPEN: one probe is let through.",
                (Query(f"max by ({PAIR}) ({BREAKER_STATE}{{{PAIR_FILTER}}})", _PAIR_LEGEND),),
                mappings=BREAKER_STATES,
            ),
            Panel(
                "Calls refused by an open breaker",
                "timeseries",
                "reqps",
                "Calls that failed fast (status circuit_open) without reaching the target.",
                (
                    Query(
                        f"sum by ({PAIR}) (rate({REQUESTS}"
                        f'{{{PAIR_FILTER}, status="circuit_open"}}[$__rate_interval]))',
                        _PAIR_LEGEND,
                    ),
                ),
            ),
            Panel(
                "Retry budget",
                "timeseries",
                "short",
                "Retry tokens left per target (lowest process); at zero, failures are not retried.",
                (
                    Query(
                        f"min by (target_service)"
                        f' ({RETRY_BUDGET}{{target_service=~"$target_service"}})',
                        "{{target_service}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Cache",
        (
            Panel(
                "Cache hit rate",
                "timeseries",
                "percentunit",
                "Hits as a share of lookups over 5 minutes, per cache (recorded).",
                (Query(CACHE_HIT_RATIO, "{{cache_name}}"),),
            ),
        ),
    ),
    Row(
        "Cron jobs",
        (
            Panel(
                "Cron runs by outcome",
                "timeseries",
                "short",
                "Runs per interval: success, error, timeout, cancelled, skipped_elsewhere"
                " (another replica holds the lease), skipped_no_lease (the lease store failed).",
                (
                    Query(
                        f"sum by (cron_job, outcome) (increase({CRON_RUNS}[$__rate_interval]))",
                        "{{cron_job}} {{outcome}}",
                    ),
                ),
                stacked=True,
            ),
            Panel(
                "Cron duration p95",
                "timeseries",
                "s",
                "95th percentile of a run's duration per job.",
                (
                    Query(
                        "histogram_quantile(0.95, sum by (le, cron_job)"
                        f" (rate({CRON_DURATION}_bucket[$__rate_interval])))",
                        "{{cron_job}}",
                    ),
                ),
            ),
            Panel(
                "Missed runs",
                "timeseries",
                "short",
                "Runs the scheduler skipped because they were past their misfire grace time.",
                (
                    Query(
                        f"sum by (cron_job) (increase({CRON_MISSED}[$__rate_interval]))",
                        "{{cron_job}}",
                    ),
                ),
            ),
            Panel(
                "Event-loop lag p99",
                "timeseries",
                "s",
                "How late the scheduler's event loop wakes up; high values delay every job.",
                (
                    Query(
                        "histogram_quantile(0.99, sum by (le, job, instance)"
                        f" (rate({LOOP_LAG}_bucket[$__rate_interval])))",
                        "{{instance}}",
                    ),
                ),
            ),
            Panel(
                "Run records pending and dropped",
                "timeseries",
                "short",
                "Run records waiting to reach the REST service, and those given up on.",
                (
                    Query(
                        f"sum by (job, instance) ({RUN_RECORDS_PENDING})", "pending {{instance}}"
                    ),
                    Query(
                        "sum by (job, instance)"
                        f" (increase({RUN_RECORDS_DROPPED}[$__rate_interval]))",
                        "dropped {{instance}}",
                    ),
                ),
            ),
        ),
    ),
)

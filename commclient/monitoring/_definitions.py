"""The one definition of every query: recording rules, alerts and dashboard panels.

Shaped like a Prometheus monitoring mixin: the dashboard, the Grafana alert rules, the
Prometheus rules and the runbooks are all rendered from the objects below (``python -m
commclient.monitoring generate``), so a metric name or a threshold is written once. What a
user may change at export (the SLO, the breaker window, where the runbooks live) appears in
the rendered files as one exact piece of text, which ``export`` replaces (:data:`SETTINGS`).

Heavy expressions (the p95 of a service pair, the error and retry ratios, the cache hit
ratio) are recording rules; the dashboard and both kinds of alert read the recorded series,
so Prometheus must load ``commclient-rules.yml`` for either to work
(``CommClientRecordingRulesMissing`` says when it does not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from commclient._metrics import PAIR_LABELS, REQUEST_LABELS
from cron_migration._metrics import JOB_LABEL

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

#: ``status`` values of a failed call: 5xx, 429, transport errors, calls refused by an
#: open breaker, calls that found every pooled connection busy (``pool_timeout``: the
#: client's saturation, not the target's, but the caller got no answer) and bodies that
#: are not JSON. Other 4xx, ``deadline`` (the caller's own deadline left no time for an
#: attempt) and ``unsendable`` (the caller's malformed request) are not the target's.
ERROR_STATUSES = "5..|429|timeout|connect_error|pool_timeout|circuit_open|decode_error"
#: ``outcome`` values of a cron run that failed.
CRON_FAILURE_OUTCOMES = "error|timeout"

SOURCE, TARGET = PAIR_LABELS
PAIR = ", ".join(PAIR_LABELS)
ROUTE = REQUEST_LABELS[-1]

# Recorded series: level:metric:operation (the Prometheus naming convention).
REQUEST_RATE = "service_target:http_client_requests:rate5m"  # request_rate("5m")
ERROR_RATE = "service_target:http_client_request_errors:rate5m"
ERROR_RATIO = "service_target:http_client_request_error_ratio:rate5m"
RETRY_RATE = "service_target:http_client_retries:rate5m"
RETRY_RATIO = "service_target:http_client_retry_ratio:rate5m"
P95_DURATION = "service_target:http_client_request_duration_seconds:p95_5m"
CACHE_HIT_RATE = "cache_name:redis_cache_hits:rate5m"
CACHE_MISS_RATE = "cache_name:redis_cache_misses:rate5m"
CACHE_LOOKUP_RATE = "cache_name:redis_cache_lookups:rate5m"
CACHE_HIT_RATIO = "cache_name:redis_cache_hit_ratio:rate5m"
LOOP_LAG_P99 = "instance:cron_event_loop_lag_seconds:p99_5m"
#: 1 for each target (job, instance) that has exported client or cron metrics, for as long
#: as Prometheus still knows the target (its ``up`` exists), however long it has been down.
COMMCLIENT_TARGET = "job_instance:commclient_target:present"

#: Windows of the error ratio that the burn-rate alerts compare (5m is ERROR_RATIO).
BURN_WINDOWS = ("30m", "1h", "2h", "6h", "1d", "3d")


def request_rate(window: str) -> str:
    """The recorded attempts per second of a pair over ``window``."""
    return f"service_target:http_client_requests:rate{window}"


def error_ratio(window: str) -> str:
    """The recorded error ratio of a pair over ``window``."""
    return (
        ERROR_RATIO
        if window == "5m"
        else f"service_target:http_client_request_error_ratio:rate{window}"
    )


#: Dashboard variables narrowing the client panels to some pairs.
PAIR_FILTER = f'{SOURCE}=~"${SOURCE}", {TARGET}=~"${TARGET}"'
#: The variables and what the dashboard puts in place of each when "All" is selected.
DASHBOARD_VARIABLES = {SOURCE: ".*", TARGET: ".*"}

DEFAULT_DATASOURCE_UID = "prometheus"


# Export settings: the default of each, and the exact text that carries it in the files.
#: The share of attempts to a pair that must succeed (over 30 days) for the burn-rate alerts.
DEFAULT_SLO = 0.995
#: A pair whose breaker was not closed once over this window is in an outage. Not "open
#: for a minute": against a target that hangs, each half-open probe holds the state for a
#: read timeout, and the state cycles open, half-open, open without ever closing.
DEFAULT_BREAKER_WINDOW = "2m"
#: Where the runbooks are: the file ``export`` writes next to the rules, by default.
DEFAULT_RUNBOOK_BASE = "RUNBOOKS.md"


def error_budget(slo: float) -> str:
    """The error budget of ``slo`` as PromQL, e.g. ``(1 - 0.995)``."""
    return f"(1 - {slo:g})"


def breaker_not_closed(window: str) -> str:
    """Per pair: the lowest state over ``window`` of the worst replica; 0 once closed."""
    return f"max by ({PAIR}) (min_over_time({BREAKER_STATE}[{window}]))"


def runbook_url(base: str, alert_name: str) -> str:
    return f"{base}#{alert_name.lower()}"


@dataclass(frozen=True)
class Setting:
    """One export setting: its default and how its value is written into the files."""

    name: str
    default: Any
    render: Callable[[Any], str]


SETTINGS = (
    Setting("slo", DEFAULT_SLO, error_budget),
    Setting("breaker_window", DEFAULT_BREAKER_WINDOW, breaker_not_closed),
    Setting("runbook_base", DEFAULT_RUNBOOK_BASE, lambda base: f"{base}#"),
)

ERROR_BUDGET = error_budget(DEFAULT_SLO)

#: Series the library and cron_migration export, as the queries select them: an export
#: ``selector`` (e.g. ``namespace="prod"``) narrows each of them.
RAW_SERIES = (
    REQUESTS,
    f"{DURATION}_bucket",
    RETRIES,
    BREAKER_STATE,
    RETRY_BUDGET,
    CACHE_HITS,
    CACHE_MISSES,
    CRON_RUNS,
    f"{CRON_DURATION}_bucket",
    CRON_MISSED,
    f"{LOOP_LAG}_bucket",
    RUN_RECORDS_PENDING,
    RUN_RECORDS_DROPPED,
)
#: An aggregation (``by (...)``, ``on (...)``) that keeps one of these labels keeps what it
#: is about apart; an export ``group_by`` (e.g. ``cluster, namespace``) is added to it, so
#: that the same pair in two namespaces stays two pairs in rules, alerts and panels.
GROUPED_LABELS = frozenset({SOURCE, TARGET, "cache_name", JOB_LABEL, "instance"})

#: Attempts (or cache lookups) a pair must make in the window of its ratio (5 minutes, or
#: the long window of a burn rate) before the ratio may alert: one failed call among three
#: is 33 %, and says nothing.
MIN_EVENTS = 20
_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def _at_least(rate: str, on: str, window: str = "5m") -> str:
    """``and`` the series whose ``rate`` over ``window`` made at least MIN_EVENTS events."""
    seconds = int(window[:-1]) * _SECONDS[window[-1]]
    return f"and on ({on}) {rate} * {seconds} >= {MIN_EVENTS}"


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str


def _ratio_over(window: str) -> str:
    errors = f'sum by ({PAIR}) (rate({REQUESTS}{{status=~"{ERROR_STATUSES}"}}[{window}]))'
    total = request_rate(window)
    return f"({errors} or {total} * 0) / {total}"


RECORDING_RULES = (
    RecordingRule(REQUEST_RATE, f"sum by ({PAIR}) (rate({REQUESTS}[5m]))"),
    RecordingRule(
        ERROR_RATE, f'sum by ({PAIR}) (rate({REQUESTS}{{status=~"{ERROR_STATUSES}"}}[5m]))'
    ),
    # A pair without a single error has no error series: count it as zero errors, so that
    # its ratio is 0 and not absent.
    RecordingRule(ERROR_RATIO, f"({ERROR_RATE} or {REQUEST_RATE} * 0) / {REQUEST_RATE}"),
    *(
        rule
        for window in BURN_WINDOWS
        for rule in (
            RecordingRule(request_rate(window), f"sum by ({PAIR}) (rate({REQUESTS}[{window}]))"),
            RecordingRule(error_ratio(window), _ratio_over(window)),
        )
    ),
    RecordingRule(RETRY_RATE, f"sum by ({PAIR}) (rate({RETRIES}[5m]))"),
    RecordingRule(RETRY_RATIO, f"({RETRY_RATE} or {REQUEST_RATE} * 0) / {REQUEST_RATE}"),
    RecordingRule(
        P95_DURATION,
        f"histogram_quantile(0.95, sum by (le, {PAIR}) (rate({DURATION}_bucket[5m])))",
    ),
    RecordingRule(CACHE_HIT_RATE, f"sum by (cache_name) (rate({CACHE_HITS}[5m]))"),
    RecordingRule(CACHE_MISS_RATE, f"sum by (cache_name) (rate({CACHE_MISSES}[5m]))"),
    # A cache that only misses has no hit series, and that is the worst case: fill in
    # the missing side with zero.
    RecordingRule(
        CACHE_LOOKUP_RATE,
        f"({CACHE_HIT_RATE} or {CACHE_MISS_RATE} * 0)"
        f" + ({CACHE_MISS_RATE} or {CACHE_HIT_RATE} * 0)",
    ),
    RecordingRule(
        CACHE_HIT_RATIO, f"({CACHE_HIT_RATE} or {CACHE_MISS_RATE} * 0) / {CACHE_LOOKUP_RATE}"
    ),
    RecordingRule(
        LOOP_LAG_P99,
        f"histogram_quantile(0.99, sum by (le, job, instance) (rate({LOOP_LAG}_bucket[5m])))",
    ),
    # A target that exported these metrics recently, or that this rule remembered at its
    # last evaluations and that is still a scrape target: a target down for longer than the
    # look-back stays one (a look-back alone would resolve the alert in the outage).
    RecordingRule(
        COMMCLIENT_TARGET,
        "group by (job, instance)"
        f" (present_over_time({REQUESTS}[1h]) or present_over_time({CRON_RUNS}[1h]))"
        f" or group by (job, instance) (last_over_time({COMMCLIENT_TARGET}[10m]))"
        " and on (job, instance) up",
    ),
)

#: Recorded series that exist whenever client metrics do and that the alerts read: one of
#: them missing (an older or hand-edited rules file) silences the alerts that read it.
CLIENT_RECORDED = (
    REQUEST_RATE,
    ERROR_RATIO,
    RETRY_RATIO,
    *(series for window in BURN_WINDOWS for series in (request_rate(window), error_ratio(window))),
    COMMCLIENT_TARGET,
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

    The same name in both (Grafana's rule title is its ``alertname``), so that routes,
    silences and inhibitions match either. ``summary`` and ``description`` may use
    ``{{ $labels.NAME }}``, which both expand. ``no_data`` is Grafana's state when the
    query returns nothing; ``runbook`` is the runbook's text, in Markdown.
    """

    name: str
    value: str
    op: Literal[">", "<"]
    threshold: float
    for_: str
    severity: Literal["critical", "warning"]
    summary: str
    description: str
    firing: AlertCase
    quiet: AlertCase
    no_data: Literal["OK", "NoData", "Alerting"]
    runbook: str
    #: Further promtool cases (recovery, edge cases).
    more: tuple[AlertCase, ...] = ()
    #: The firing case holds only when the recording rules are not loaded: the shipped
    #: promtool tests (which load them) leave it out, a test of the project runs it.
    recording_rules_absent: bool = False

    @property
    def annotations(self) -> dict[str, str]:
        return {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": runbook_url(DEFAULT_RUNBOOK_BASE, self.name),
        }

    @property
    def expr(self) -> str:
        # `and`, `or` and `unless` bind more loosely than a comparison.
        value = (
            f"({self.value})"
            if any(f" {op} " in self.value for op in ("and", "or", "unless"))
            else self.value
        )
        return f"{value} {self.op} {self.threshold:g}"


def _expand(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace(f"{{{{ $labels.{name} }}}}", value)
    return template


def promtool_case(alert: Alert, case: AlertCase) -> dict[str, Any]:
    """``case`` as one test of a promtool test file."""
    expected = []
    if case.labels is not None:
        expected.append(
            {
                "exp_labels": {**case.labels, "severity": alert.severity},
                "exp_annotations": {
                    name: _expand(text, case.labels) for name, text in alert.annotations.items()
                },
            }
        )
    return {
        "name": f"{alert.name}: {case.name}",
        "interval": case.interval,
        "input_series": [{"series": s.series, "values": s.values} for s in case.input_series],
        "alert_rule_test": [
            {"eval_time": case.eval_time, "alertname": alert.name, "exp_alerts": expected}
        ],
    }


def _requests(pair: str, status: str, values: str) -> InputSeries:
    return InputSeries(
        f'{REQUESTS}{{{pair}, method="GET", {ROUTE}="/api/users/{{id}}", status="{status}"}}',
        values,
    )


_PAIR_LABELS = f'{SOURCE}="cron_service", {TARGET}="rest_service"'
_PAIR_DICT = {SOURCE: "cron_service", TARGET: "rest_service"}


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


def _lag_buckets(fast: str) -> tuple[InputSeries, ...]:
    """Ten loop-lag samples a minute, ``fast`` of them under 0.1 s and the rest above 1 s."""
    labels = 'job="cron_service", instance="cron:8001"'
    return (
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="0.1"}}', fast),
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="0.5"}}', fast),
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="1"}}', fast),
        InputSeries(f'{LOOP_LAG}_bucket{{{labels}, le="+Inf"}}', "0+10x20"),
    )


def _burn(long: str, short: str, factor: float) -> str:
    """Both windows burn ``factor`` times the budget, with MIN_EVENTS in the long one."""
    return (
        f"{error_ratio(long)} > ({factor:g} * {ERROR_BUDGET})"
        f" {_at_least(request_rate(long), PAIR, long)}"
        f" and {error_ratio(short)} > ({factor:g} * {ERROR_BUDGET})"
    )


def _error_share(
    errors_per_minute: str, minutes: int, successes_per_minute: int = 100
) -> tuple[InputSeries, ...]:
    return (
        _requests(_PAIR_LABELS, "success", f"0+{successes_per_minute}x{minutes}"),
        _requests(_PAIR_LABELS, "503", f"0+{errors_per_minute}x{minutes}"),
    )


def _poller(calls: int, failed_at: int, until: int) -> tuple[InputSeries, ...]:
    """A pair under the traffic floor: one call every 5 minutes (``calls`` of them, one a
    minute samples), of which the one at minute ``failed_at`` gets a 503."""
    answered = " ".join(f"{n}x4" for n in range(calls))
    return (
        _requests(_PAIR_LABELS, "success", f"{answered} {calls - 1}x{until - 5 * calls}"),
        _requests(_PAIR_LABELS, "503", f"0x{failed_at - 1} 1x{until - failed_at}"),
    )


_TARGET_LABELS = 'job="cron_service", instance="10.0.0.7:8001"'

_BREAKER_RUNBOOK = """\
**Meaning.** Calls from the source service to the target fail fast with
`ServiceUnavailableError`: the breaker opened after `circuit_breaker_fail_max` failed calls
in a row, and every probe since (one call per `circuit_breaker_reset_timeout`) failed too.

**Check.** The target's own dashboards and logs; the *Error rate* and *Retry rate* panels of
the pair (which status, which route); `kubectl get pods` of the target; network policy and
DNS between the two.

**Act.** Fix or roll back the target. The breaker closes by itself after the first probe
that succeeds. Forcing it closed (`commclient.testing.force_closed`) only sends traffic to a
target that cannot take it. This alert inhibits the pair's error-rate and burn-rate alerts.
"""

ALERTS = (
    Alert(
        name="CommClientCircuitBreakerOpen",
        value=breaker_not_closed(DEFAULT_BREAKER_WINDOW),
        op=">",
        threshold=0,
        for_="1m",
        severity="critical",
        summary=(
            "Circuit breaker {{ $labels.source_service }} -> {{ $labels.target_service }} is open"
        ),
        description=(
            "The breaker of {{ $labels.source_service }} for {{ $labels.target_service }} has"
            " not been closed once over the alert's window (open, or half-open probes that"
            " fail): calls fail fast with ServiceUnavailableError."
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
                InputSeries(f"{BREAKER_STATE}{{{_PAIR_LABELS}}}", _breaker_cycling(60, 150, 900)),
                InputSeries(
                    f'{BREAKER_STATE}{{{SOURCE}="cron_service", {TARGET}="other"}}', "0x10 1 0x50"
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
        # The gauge exists in every process that built a client: no data means the scrape
        # or the exposition broke.
        no_data="NoData",
        runbook=_BREAKER_RUNBOOK,
    ),
    Alert(
        name="CommClientErrorBudgetBurnFast",
        value=f"{_burn('1h', '5m', 14.4)} or {_burn('6h', '30m', 6)}",
        op=">",
        threshold=0,
        for_="2m",
        severity="critical",
        summary=(
            "{{ $labels.source_service }} -> {{ $labels.target_service }} burns its error"
            " budget fast"
        ),
        description=(
            "Calls {{ $labels.source_service }} -> {{ $labels.target_service }} fail 14.4 times"
            " faster than the SLO allows over 1 h and 5 min (2 % of a 30-day budget an hour),"
            " or 6 times faster over 6 h and 30 min (with at least"
            f" {MIN_EVENTS} attempts in the long window)."
        ),
        firing=AlertCase(
            "one attempt in ten fails for an hour",
            _error_share("11", 70),
            "65m",
            _PAIR_DICT,
        ),
        quiet=AlertCase(
            "2 % of attempts fail: a slow burn",
            _error_share("2", 70),
            "65m",
        ),
        more=(
            AlertCase(
                "a 4-minute spike of 50 % after six hours of success",
                (
                    _requests(_PAIR_LABELS, "success", "0+100x400"),
                    _requests(_PAIR_LABELS, "503", "0x360 0+100x4 400x35"),
                ),
                "6h5m",
            ),
            AlertCase(
                "under the traffic floor: a call every 5 minutes, the thirteenth gets a 503",
                _poller(13, 62, 80),
                "66m",
            ),
        ),
        no_data="OK",
        runbook="""\
**Meaning.** At this rate the pair's error budget (`1 - SLO` of its attempts, over 30 days)
is gone within about two days. Multi-window: the long window (1 h, 6 h) shows the burn
lasts, the short one (5 min, 30 min) that it still goes on, so the alert resolves quickly
after a fix.

**Check.** The *Error rate* and *Retry rate* panels (which status: 5xx from the target,
`timeout`, `connect_error`, `pool_timeout` on the caller's side); the target's deploys and
dependencies. When the breaker is open too, `CommClientCircuitBreakerOpen` is the one to
work on.

**Act.** Roll back or fix the target; if the caller is saturated (`pool_timeout`), raise
`max_connections` or reduce concurrency.
""",
    ),
    Alert(
        name="CommClientErrorBudgetBurnSlow",
        value=f"{_burn('1d', '2h', 3)} or {_burn('3d', '6h', 1)}",
        op=">",
        threshold=0,
        for_="15m",
        severity="warning",
        summary=(
            "{{ $labels.source_service }} -> {{ $labels.target_service }} burns its error budget"
        ),
        description=(
            "Calls {{ $labels.source_service }} -> {{ $labels.target_service }} fail 3 times"
            " faster than the SLO allows over 1 day and 2 h, or faster than it allows over"
            f" 3 days and 6 h (with at least {MIN_EVENTS} attempts in the long window): the"
            " budget will not last the month."
        ),
        firing=AlertCase(
            "2 % of attempts fail for three hours", _error_share("2", 200), "3h", _PAIR_DICT
        ),
        quiet=AlertCase("0.3 % of attempts fail", _error_share("0.3", 200), "3h"),
        more=(
            AlertCase(
                "under the traffic floor: a new pair's tenth call, one every 5 minutes, fails",
                _poller(10, 47, 100),
                "1h20m",
            ),
        ),
        no_data="OK",
        runbook="""\
**Meaning.** A steady share of the pair's calls fail, more than the SLO allows: not an
outage, but the month's error budget will run out.

**Check.** *Top endpoints* and *Error rate* for the routes and statuses; whether one route
or one status (a `429` from rate limiting, a `504` from a slow dependency) makes most of it.

**Act.** File it with the owners of the target (or of the caller, for `pool_timeout` and
`decode_error`); no page.
""",
    ),
    Alert(
        name="CommClientHighErrorRate",
        value=f"{ERROR_RATIO} {_at_least(REQUEST_RATE, PAIR)}",
        op=">",
        threshold=0.05,
        for_="5m",
        severity="warning",
        summary=(
            "Over 5% of calls {{ $labels.source_service }} -> {{ $labels.target_service }} fail"
        ),
        description=(
            "Attempts ending in 5xx, 429, a timeout, a connection error, a full connection"
            " pool, an open breaker or an undecodable body, as a share of all attempts over"
            f" 5 minutes, for pairs with at least {MIN_EVENTS} attempts in 5 minutes."
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
            "404s are the caller's mistakes, deadlines the caller's own; 1% of 503s is below"
            " the threshold",
            (
                _requests(_PAIR_LABELS, "success", "0+100x20"),
                _requests(_PAIR_LABELS, "404", "0+50x20"),
                _requests(_PAIR_LABELS, "deadline", "0+50x20"),
                _requests(_PAIR_LABELS, "unsendable", "0+50x20"),
                _requests(_PAIR_LABELS, "503", "0+1x20"),
            ),
            "15m",
        ),
        more=(
            AlertCase(
                "under the traffic floor: one call in three fails, three calls in 5 minutes",
                (
                    _requests(_PAIR_LABELS, "success", "0+0.4x20"),
                    _requests(_PAIR_LABELS, "503", "0+0.2x20"),
                ),
                "15m",
            ),
        ),
        no_data="OK",
        runbook="""\
**Meaning.** Over 5 % of the pair's attempts failed in the last 5 minutes (with enough
traffic to tell). Retries may still hide it from the callers.

**Check.** *Error rate* and *Retry rate* by status; *Top endpoints*; the target's logs at
the same time. Inhibited by `CommClientCircuitBreakerOpen` for the same pair.

**Act.** As for the burn-rate alerts; this warning comes first, before the budget burns.
""",
    ),
    Alert(
        name="CommClientHighRetryRate",
        value=f"{RETRY_RATIO} {_at_least(REQUEST_RATE, PAIR)}",
        op=">",
        threshold=0.1,
        for_="5m",
        severity="warning",
        summary=(
            "Over 10% of calls {{ $labels.source_service }} -> {{ $labels.target_service }} retry"
        ),
        description=(
            "Retries per attempt over 5 minutes. The retry budget caps them; a high ratio"
            " means the target is degrading before the breaker opens."
        ),
        firing=AlertCase(
            "one retry per two attempts",
            (
                _requests(_PAIR_LABELS, "success", "0+60x20"),
                InputSeries(
                    f'{RETRIES}{{{_PAIR_LABELS}, method="GET", {ROUTE}="/api/users/{{id}}",'
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
                    f'{RETRIES}{{{_PAIR_LABELS}, method="GET", {ROUTE}="/api/users/{{id}}",'
                    f' error_type="503"}}',
                    "0+1x20",
                ),
            ),
            "15m",
        ),
        no_data="OK",
        runbook="""\
**Meaning.** Many attempts are repeats: the target answers slowly or with retryable
errors, and the callers pay in latency. The retry budget keeps the extra load bounded.

**Check.** *Retry rate* by `error_type` and *Retry budget* (at zero, failures are no longer
retried); the target's latency (*p95 duration*).

**Act.** Find what makes the target slow or flaky; lowering `max_retries` only hides it.
""",
    ),
    Alert(
        name="CommClientLowCacheHitRate",
        value=f"{CACHE_HIT_RATIO} {_at_least(CACHE_LOOKUP_RATE, 'cache_name')}",
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
        more=(
            AlertCase(
                "under the traffic floor: five lookups in 5 minutes, all misses",
                (
                    InputSeries(
                        f'{CACHE_MISSES}{{cache_name="assistant_cache", key_pattern="user"}}',
                        "0+1x30",
                    ),
                ),
                "20m",
            ),
        ),
        no_data="OK",
        runbook="""\
**Meaning.** Most lookups of the cache miss, so the loaders (and the services behind
them) take the load the cache should absorb.

**Check.** `redis_cache_errors_total` (Redis unreachable: every lookup is a miss); Redis
`maxmemory` evictions; recent TTL or key changes; an invalidation storm
(`redis_cache_invalidations_total`).

**Act.** Restore Redis, or size it for the working set; lengthen TTLs where staleness is
acceptable.
""",
    ),
    Alert(
        name="CommClientTargetDown",
        value=f"up and on (job, instance) {COMMCLIENT_TARGET}",
        op="<",
        threshold=1,
        for_="5m",
        severity="critical",
        summary="{{ $labels.job }} at {{ $labels.instance }} cannot be scraped",
        description=(
            "A target that exported commclient or cron_migration metrics fails its scrapes:"
            " none of its other alerts can fire while it does."
        ),
        firing=AlertCase(
            "a service with client metrics stops answering its scrapes",
            (
                InputSeries(f"up{{{_TARGET_LABELS}}}", "1x5 0x20"),
                InputSeries(
                    f'{REQUESTS}{{{_TARGET_LABELS}, {_PAIR_LABELS}, method="GET",'
                    f' {ROUTE}="/x", status="success"}}',
                    "0+10x5",
                ),
            ),
            "15m",
            {"job": "cron_service", "instance": "10.0.0.7:8001"},
        ),
        quiet=AlertCase(
            "a target without commclient metrics is down; a service with them is up",
            (
                InputSeries('up{job="node", instance="10.0.0.9:9100"}', "0x20"),
                InputSeries(f"up{{{_TARGET_LABELS}}}", "1x20"),
                InputSeries(
                    f'{CRON_RUNS}{{{_TARGET_LABELS}, {JOB_LABEL}="send_reminders",'
                    ' outcome="success"}',
                    "0+1x20",
                ),
            ),
            "15m",
        ),
        more=(
            AlertCase(
                "still firing two hours into the outage, long after its last metrics",
                (
                    InputSeries(f"up{{{_TARGET_LABELS}}}", "1x30 0x180"),
                    InputSeries(
                        f'{REQUESTS}{{{_TARGET_LABELS}, {_PAIR_LABELS}, method="GET",'
                        f' {ROUTE}="/x", status="success"}}',
                        "0+10x30",
                    ),
                ),
                "2h30m",
                {"job": "cron_service", "instance": "10.0.0.7:8001"},
            ),
        ),
        # `up` exists for every target Prometheus knows: no data means Prometheus lost them.
        no_data="NoData",
        runbook="""\
**Meaning.** Prometheus cannot scrape a service that uses commclient: its other alerts
(breaker, errors, cron failures) are blind while this lasts.

**Check.** The target's page in Prometheus (`/targets`: the scrape error); whether the pod
runs; whether `/metrics` is served on the port the ServiceMonitor names; in multiprocess
mode, whether `PROMETHEUS_MULTIPROC_DIR` is writable.

**Act.** Restore the service or its metrics endpoint.
""",
    ),
    Alert(
        name="CommClientRecordingRulesMissing",
        value=f"count({REQUESTS}) unless on () ("
        + " and on () ".join(f"count({series})" for series in CLIENT_RECORDED)
        + ")",
        op=">",
        threshold=0,
        for_="10m",
        severity="warning",
        summary="commclient's recording rules are not loaded, or not all of them",
        description=(
            "Client metrics are scraped but some of the recorded series the alerts read"
            " (service_target:*, job_instance:commclient_target:present) are not recorded:"
            " the dashboard and the error, retry, burn-rate and target-down alerts read them"
            " and stay silent."
        ),
        recording_rules_absent=True,
        firing=AlertCase(
            "raw metrics, no recorded series",
            (_requests(_PAIR_LABELS, "success", "0+60x20"),),
            "15m",
            {},
        ),
        quiet=AlertCase(
            "with the recording rules loaded",
            (_requests(_PAIR_LABELS, "success", "0+60x20"),),
            "15m",
        ),
        no_data="OK",
        runbook="""\
**Meaning.** `commclient-rules.yml` is not in Prometheus' `rule_files` (or fails to load,
or is an older or edited copy that lacks some rules), so recorded series the dashboard and
most alerts read do not exist. Only Grafana can
raise this one: Prometheus loads it from the same file.

**Check.** Prometheus' `/rules` page and its log for rule-file errors; the `rule_files`
setting, or for prometheus-operator the `PrometheusRule` object and its labels matching the
Prometheus' `ruleSelector`.

**Act.** Load the exported `prometheus/commclient-rules.yml`.
""",
    ),
    Alert(
        name="CronJobRunFailures",
        value=(
            f"sum by ({JOB_LABEL}) (increase({CRON_RUNS}"
            f'{{outcome=~"{CRON_FAILURE_OUTCOMES}"}}[15m]))'
        ),
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
                InputSeries(
                    f'{CRON_RUNS}{{{JOB_LABEL}="send_reminders", outcome="success"}}', "0+1x10"
                ),
                InputSeries(
                    f'{CRON_RUNS}{{{JOB_LABEL}="send_reminders", outcome="error"}}', "0 0 1x8"
                ),
            ),
            "4m",
            {JOB_LABEL: "send_reminders"},
        ),
        quiet=AlertCase(
            "successes and runs skipped elsewhere",
            (
                InputSeries(
                    f'{CRON_RUNS}{{{JOB_LABEL}="send_reminders", outcome="success"}}', "0+1x10"
                ),
                InputSeries(
                    f'{CRON_RUNS}{{{JOB_LABEL}="send_reminders", outcome="skipped_elsewhere"}}',
                    "0+1x10",
                ),
                InputSeries(
                    f'{CRON_RUNS}{{{JOB_LABEL}="send_reminders", outcome="error"}}', "0x10"
                ),
            ),
            "4m",
        ),
        no_data="OK",
        runbook="""\
**Meaning.** A cron job raised or overran its `timeout` at least once in 15 minutes.

**Check.** The service's logs for the job (each run logs its correlation id); the run
records in the REST service; *Cron runs by outcome* for how often.

**Act.** Fix the job or what it calls; a `timeout` outcome may need a longer `timeout=` in
`@migrated_job`.
""",
    ),
    Alert(
        name="CronEventLoopLag",
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
        no_data="OK",
        runbook="""\
**Meaning.** The scheduler's event loop wakes up over half a second late: something
blocks it.

**Check.** `python -m cron_migration audit` for blocking calls inside `async def` (`CM003`);
CPU use of the process.

**Act.** Move blocking work to `compat.run_blocking` or a sync job (run in threads).
""",
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
    #: Stacked bars, one per ``$__interval``: the queries give counts per interval
    #: (:func:`count_per_bar`), so the bars add up to the true count.
    stacked: bool = False


def count_per_bar(by: str, series: str) -> str:
    """Events of ``series`` per bar of one ``$__interval``, summed ``by`` labels.

    Not ``increase(...[$__interval])``: at the dashboard's default range Grafana's
    ``$__interval`` falls to the scrape interval, and a window of one scrape holds one
    sample, so every bar is empty. Not ``increase(...[$__rate_interval])`` either: a window
    of four scrapes at a step of one counts each event four times. The rate over
    ``$__rate_interval`` times the step counts each event once, in total, at any step.
    """
    return f"sum by ({by}) (rate({series}[$__rate_interval])) * $__interval_ms / 1000"


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
                        count_per_bar(f"{JOB_LABEL}, outcome", CRON_RUNS),
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
                        count_per_bar(JOB_LABEL, CRON_MISSED),
                        "{{cron_job}}",
                    ),
                ),
                stacked=True,
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
                        count_per_bar("job, instance", RUN_RECORDS_DROPPED),
                        "dropped {{instance}}",
                    ),
                ),
            ),
        ),
    ),
)

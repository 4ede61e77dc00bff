"""Render the definitions into the files shipped as package data (development only).

The dashboard and the Grafana alert rules are built with grafana-foundation-sdk (Grafana's
typed builders); the Prometheus rules and their promtool tests are plain YAML. Needs the
``grafana-foundation-sdk`` and ``PyYAML`` packages, which users of the shipped files do not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from grafana_foundation_sdk.builders import alerting, prometheus, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import expr as expressions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as alerting_models
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from . import _definitions as d
from ._files import (
    ALERTS_FILE,
    DASHBOARD_FILE,
    GRAFANA_ALERT_FOLDER,
    PROMETHEUS_RULES_FILE,
    PROMETHEUS_TESTS_FILE,
    RULE_GROUP,
    RUNBOOKS_FILE,
)

_PANEL_DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
_STATE_COLOURS = {"CLOSED": "green", "OPEN": "red", "HALF-OPEN": "yellow"}
_GRAFANA_EVALUATORS: dict[str, Literal["gt", "lt"]] = {">": "gt", "<": "lt"}
# mypy checks the package for Python 3.10, which has no enum.StrEnum, the base of the SDK's
# enums: the member is passed as what it is at run time.
_STACK_NORMAL: Any = common_models.StackingMode.NORMAL
#: Fields of the Grafana API's rule model that a provisioning file takes from its group.
_GROUP_FIELDS = ("folderUID", "orgID", "ruleGroup")
#: ``{{ $labels.NAME }}`` in an annotation, shown as ``<NAME>`` in the runbooks.
_LABEL_TEMPLATE = re.compile(r"{{ [$]labels[.](\w+) }}")


def _to_plain(built: object) -> Any:
    """A built SDK object as plain JSON data."""
    return json.loads(json.dumps(built, cls=JSONEncoder))


def _panel(panel: d.Panel, panel_id: int) -> Any:
    builder: Any
    if panel.kind == "timeseries":
        builder = timeseries.Panel().fill_opacity(10)
        if panel.stacked:
            builder = (
                builder.draw_style(common_models.GraphDrawStyle.BARS)
                .fill_opacity(80)
                .stacking(common_builders.StackingConfig().mode(_STACK_NORMAL))
            )
    elif panel.kind == "state-timeline":
        builder = statetimeline.Panel().mappings(
            [
                dashboard_models.ValueMap(
                    options={
                        str(value): dashboard_models.ValueMappingResult(
                            text=text, color=_STATE_COLOURS[text], index=value
                        )
                        for value, text in panel.mappings.items()
                    }
                )
            ]
        )
    else:
        builder = table.Panel()
    builder = (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit)
        .datasource(_PANEL_DATASOURCE)
        .height(8)
        .span(12)
    )
    for ref, query in zip("ABCDEFGH", panel.queries, strict=False):
        target = prometheus.Dataquery().expr(query.expr).ref_id(ref)
        if panel.kind == "table":
            target = target.instant().format(prometheus_models.PromQueryFormat.TABLE)
        else:
            target = target.range().legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def _pair_variable(name: str, label: str, query: str) -> Any:
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(_PANEL_DATASOURCE)
        .query(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(d.DASHBOARD_VARIABLES[name])
    )


def build_dashboard() -> Any:
    """The Service Communication dashboard as Grafana's JSON model."""
    builder = (
        dashboard_builders.Dashboard(d.DASHBOARD_TITLE)
        .uid(d.DASHBOARD_UID)
        .description(
            "Calls between services made with commclient: traffic, latency, errors, retries,"
            " circuit breakers, caches, and the cron jobs of cron_migration."
        )
        .tags(["commclient"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dashboard_builders.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
        )
        .with_variable(
            _pair_variable(
                "source_service", "Service", f"label_values({d.REQUESTS}, source_service)"
            )
        )
        .with_variable(
            _pair_variable(
                "target_service",
                "Target",
                f'label_values({d.REQUESTS}{{source_service=~"$source_service"}}, target_service)',
            )
        )
    )
    panel_id = 0
    for row in d.ROWS:
        panel_id += 1
        builder = builder.with_row(dashboard_builders.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            builder = builder.with_panel(_panel(panel, panel_id))
    return _to_plain(builder.build())


def _grafana_rule(alert: d.Alert) -> Any:
    query = prometheus.Dataquery().expr(alert.value).instant().ref_id("A")
    reduce = (
        expressions.TypeReduce()
        .expression("A")
        .reducer("last")
        .settings(expressions.ExprTypeReduceSettings().mode("dropNN"))
        .ref_id("B")
    )
    threshold = (
        expressions.TypeThreshold()
        .expression("B")
        .conditions(
            [
                expressions.ExprTypeThresholdConditions().evaluator(
                    expressions.ExprTypeThresholdConditionsEvaluator()
                    .type(_GRAFANA_EVALUATORS[alert.op])
                    .params([alert.threshold])
                )
            ]
        )
        .ref_id("C")
    )
    rule = (
        alerting.Rule(alert.name)
        .uid(alert.name.lower())
        .condition("C")
        .with_query(
            alerting.Query("A")
            .datasource_uid(d.DEFAULT_DATASOURCE_UID)
            .relative_time_range(alerting_models.RelativeTimeRange(from_val=600, to=0))
            .model(query)
        )
        .with_query(alerting.Query("B").datasource_uid("__expr__").model(reduce))
        .with_query(alerting.Query("C").datasource_uid("__expr__").model(threshold))
        .for_val(alert.for_)
        .labels({"severity": alert.severity})
        .annotations(alert.annotations)
        .no_data_state(alert.no_data)
        .exec_err_state("Error")
        .is_paused(False)
    )
    plain = _to_plain(rule.build())
    for name in _GROUP_FIELDS:
        plain.pop(name, None)
    return plain


def build_grafana_alerts() -> Any:
    """Grafana's alerting file provisioning: one rule group of reduce/threshold rules."""
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": RULE_GROUP,
                "folder": GRAFANA_ALERT_FOLDER,
                "interval": "1m",
                "rules": [_grafana_rule(alert) for alert in d.ALERTS],
            }
        ],
    }


def build_prometheus_rules() -> Any:
    """Recording rules first (the alerts read them), then the alerting rules."""
    return {
        "groups": [
            {
                # No interval of its own: the alerts read these series, so they are
                # evaluated as often as the alerts are (the global evaluation_interval).
                "name": f"{RULE_GROUP}.rules",
                "rules": [{"record": r.record, "expr": r.expr} for r in d.RECORDING_RULES],
            },
            {
                "name": f"{RULE_GROUP}.alerts",
                "rules": [
                    {
                        "alert": alert.name,
                        "expr": alert.expr,
                        "for": alert.for_,
                        "labels": {"severity": alert.severity},
                        "annotations": alert.annotations,
                    }
                    for alert in d.ALERTS
                ],
            },
        ]
    }


def build_prometheus_tests() -> Any:
    """promtool unit tests: each alert at least once firing and once quiet.

    Not the firing case of an alert that needs the recording rules absent: these tests load
    them; a test of the project loads the alerts alone for that case.
    """
    return {
        "rule_files": [PROMETHEUS_RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [
            d.promtool_case(alert, case)
            for alert in d.ALERTS
            for case in (alert.firing, alert.quiet, *alert.more)
            if not (alert.recording_rules_absent and case is alert.firing)
        ],
    }


def _yaml(document: Any) -> str:
    # No folded lines: export replaces settings as exact text (see _definitions.SETTINGS).
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1_000_000)


def build_runbooks() -> str:
    """RUNBOOKS.md: one section per alert, the target of its ``runbook_url``."""
    parts = [
        "# Runbooks of the commclient alerts\n",
        "Generated by `python -m commclient.monitoring generate`; written by `python -m"
        " commclient.monitoring export` next to the rules. Each alert's `runbook_url` points"
        " at its section.\n",
    ]
    for alert in d.ALERTS:
        summary = _LABEL_TEMPLATE.sub(r"<\1>", alert.summary)
        parts.append(
            f"## {alert.name}\n\n"
            f"Severity `{alert.severity}`, for `{alert.for_}`. {summary}.\n\n"
            f"```promql\n{alert.expr}\n```\n\n{alert.runbook}"
        )
    return "\n".join(parts)


def rendered() -> dict[str, str]:
    """File name -> content of every generated file."""
    header = "# Generated by `python -m commclient.monitoring generate`; do not edit.\n"
    return {
        DASHBOARD_FILE: json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n",
        ALERTS_FILE: header + _yaml(build_grafana_alerts()),
        PROMETHEUS_RULES_FILE: header + _yaml(build_prometheus_rules()),
        PROMETHEUS_TESTS_FILE: header + _yaml(build_prometheus_tests()),
        RUNBOOKS_FILE: build_runbooks(),
    }


def write(directory: Path) -> Iterable[Path]:
    """Write every generated file into ``directory``; yield the paths written."""
    for name, content in rendered().items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        yield path

"""Every PromQL expression the shipped monitoring files contain, ready to evaluate.

Read from the shipped files (not from the definitions they are generated from), so that
the tests check what users get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from commclient.monitoring import shipped
from commclient.monitoring._definitions import DASHBOARD_VARIABLES
from commclient.monitoring._files import ALERTS_FILE, DASHBOARD_FILE, PROMETHEUS_RULES_FILE


def _milliseconds(duration: str) -> int:
    """A Prometheus duration of one unit (``5s``, ``1m``) in milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
    unit = "ms" if duration.endswith("ms") else duration[-1]
    return int(duration[: -len(unit)]) * units[unit]


@dataclass(frozen=True)
class Expression:
    """One expression and where it comes from (``source`` names the panel or rule)."""

    kind: str  # panel | grafana_alert | recording_rule | alerting_rule
    source: str
    expr: str
    legend: str = ""

    def concrete(self, rate_interval: str = "1m", interval: str | None = None) -> str:
        """The expression as Grafana would send it with every variable at "All".

        ``interval`` is Grafana's ``$__interval`` (the step); ``$__rate_interval`` is at
        least four scrape intervals.
        """
        interval = rate_interval if interval is None else interval
        expr = self.expr.replace("$__rate_interval", rate_interval)
        expr = expr.replace("$__interval_ms", str(_milliseconds(interval)))
        expr = expr.replace("$__interval", interval)
        for name, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(f"${name}", value)
        return expr


def dashboard() -> Any:
    return json.loads(shipped(DASHBOARD_FILE))


def grafana_alerts() -> Any:
    return yaml.safe_load(shipped(ALERTS_FILE))


def prometheus_rules() -> Any:
    return yaml.safe_load(shipped(PROMETHEUS_RULES_FILE))


def panels() -> list[Any]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def panel_expressions() -> list[Expression]:
    return [
        Expression(
            "panel",
            f"{panel['title']} {target['refId']}",
            target["expr"],
            target.get("legendFormat", ""),
        )
        for panel in panels()
        for target in panel["targets"]
    ]


def grafana_alert_expressions() -> list[Expression]:
    return [
        Expression("grafana_alert", rule["title"], query["model"]["expr"])
        for group in grafana_alerts()["groups"]
        for rule in group["rules"]
        for query in rule["data"]
        if query["datasourceUid"] != "__expr__"
    ]


def rule_expressions() -> list[Expression]:
    found = []
    for group in prometheus_rules()["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                found.append(Expression("recording_rule", rule["record"], rule["expr"]))
            else:
                found.append(Expression("alerting_rule", rule["alert"], rule["expr"]))
    return found


def all_expressions() -> list[Expression]:
    return [*panel_expressions(), *grafana_alert_expressions(), *rule_expressions()]

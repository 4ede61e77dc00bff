"""The shipped files and the Grafana provisioning tree that ``export`` writes from them."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from . import _definitions as d

DASHBOARD_FILE = "service-communication.json"
ALERTS_FILE = "commclient-alerts.yaml"
PROMETHEUS_RULES_FILE = "commclient-rules.yml"
PROMETHEUS_TESTS_FILE = "commclient-rules.test.yml"
RUNBOOKS_FILE = "RUNBOOKS.md"
SHIPPED_FILES = (
    DASHBOARD_FILE,
    ALERTS_FILE,
    PROMETHEUS_RULES_FILE,
    PROMETHEUS_TESTS_FILE,
    RUNBOOKS_FILE,
)

RULE_GROUP = "commclient"
GRAFANA_ALERT_FOLDER = "commclient"
DASHBOARD_PROVIDER_FILE = "commclient.yaml"

# Grafana's rule for a uid: at most 40 letters, digits, '-' or '_'.
_UID = re.compile(r"[A-Za-z0-9_-]{1,40}")
# The generator writes exactly this line for every Prometheus query of an alert rule.
_DATASOURCE_LINE = re.compile(r"^(\s*(?:- )?)datasourceUid: prometheus$", re.MULTILINE)


def shipped(name: str) -> str:
    """The content of one shipped file."""
    if name not in SHIPPED_FILES:
        raise ValueError(f"no shipped monitoring file {name!r}; there are {SHIPPED_FILES}")
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _provider(dashboards_path: str) -> str:
    # JSON strings are valid YAML double-quoted scalars, so any path is quoted correctly.
    return (
        "apiVersion: 1\n"
        "providers:\n"
        f"  - name: {RULE_GROUP}\n"
        f"    folder: {GRAFANA_ALERT_FOLDER}\n"
        "    type: file\n"
        "    disableDeletion: false\n"
        "    allowUiUpdates: false\n"
        "    updateIntervalSeconds: 30\n"
        "    options:\n"
        f"      path: {json.dumps(dashboards_path)}\n"
    )


# A Prometheus duration such as 90s, 2m or 1h30m.
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
# A runbook base URL is written into YAML as a plain scalar: no spaces, quotes or '#', and
# a first character that YAML reads as text.
_RUNBOOK_BASE = re.compile(r"[A-Za-z0-9./_-][^\s'\"#]*")


def _settings(slo: Any, breaker_window: Any, runbook_base: Any) -> dict[str, Any]:
    """The export settings, checked; each names the argument that is wrong."""
    if isinstance(slo, bool) or not isinstance(slo, (int, float)) or not 0 < slo < 1:
        raise ValueError(f"slo must be a number between 0 and 1 (e.g. 0.999), got {slo!r}")
    if not isinstance(breaker_window, str) or not _DURATION.fullmatch(breaker_window):
        raise ValueError(
            f"breaker_window must be a Prometheus duration such as 2m, got {breaker_window!r}"
        )
    if not isinstance(runbook_base, str) or not _RUNBOOK_BASE.fullmatch(runbook_base):
        raise ValueError(
            f"runbook_base must be a URL without spaces, quotes or '#', got {runbook_base!r}"
        )
    return {"slo": float(slo), "breaker_window": breaker_window, "runbook_base": runbook_base}


def configured(text: str, settings: dict[str, Any]) -> str:
    """``text`` (a shipped file) with every setting's default replaced by its value."""
    for setting in d.SETTINGS:
        default = setting.render(setting.default)
        if default not in text:
            continue
        text = text.replace(default, setting.render(settings[setting.name]))
    return text


# One label matcher of a selector; the values are plain: no quotes or backslashes inside.
_MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=|!=|=~|!~)\s*"[^"\\]*"\s*'
_SELECTOR = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A raw series as a query names it: followed by its matchers, a range, or the end of an
# argument. Longest names first, so that no name matches inside a longer one.
_RAW_SERIES = re.compile(
    r"\b("
    + "|".join(re.escape(name) for name in sorted(d.RAW_SERIES, key=len, reverse=True))
    + r")(\{|(?=[\[\s),]|$))"
)
_AGGREGATION = re.compile(r"\b(by|on) \(([^()]*)\)")


def _scope(selector: Any, group_by: Any) -> dict[str, Any]:
    """The selector and grouping settings, checked."""
    if not isinstance(selector, str) or (selector and not _SELECTOR.fullmatch(selector)):
        raise ValueError(
            'selector must be label matchers such as namespace="prod", cluster=~"eu-.*"'
            f" (values without quotes or backslashes), got {selector!r}"
        )
    if not isinstance(group_by, (tuple, list)) or not all(
        isinstance(name, str) and _LABEL_NAME.fullmatch(name) for name in group_by
    ):
        raise ValueError(
            f"group_by must be label names such as ('cluster', 'namespace'), got {group_by!r}"
        )
    return {"selector": selector.strip(), "group_by": tuple(group_by)}


def scoped(text: str, selector: str, group_by: tuple[str, ...], *, json_string: bool) -> str:
    """``text`` with ``selector`` added to every raw series and ``group_by`` to every
    aggregation of a pair, a cache, a cron job or an instance.

    ``json_string``: the queries are inside JSON strings (the dashboard), so the quotes of
    the selector are escaped.
    """
    if selector:
        matchers = json.dumps(selector)[1:-1] if json_string else selector

        def narrow(match: re.Match[str]) -> str:
            name, brace = match.group(1), match.group(2)
            return f"{name}{{{matchers}, " if brace else f"{name}{{{matchers}}}"

        text = _RAW_SERIES.sub(narrow, text)
    if group_by:

        def group(match: re.Match[str]) -> str:
            labels = [label.strip() for label in match.group(2).split(",") if label.strip()]
            if not d.GROUPED_LABELS & set(labels):
                return match.group(0)
            extra = [label for label in group_by if label not in labels]
            return f"{match.group(1)} ({', '.join([*extra, *labels])})"

        text = _AGGREGATION.sub(group, text)
    return text


def export(
    directory: str | Path,
    *,
    datasource_uid: str = "prometheus",
    dashboards_path: str | None = None,
    slo: float = d.DEFAULT_SLO,
    breaker_window: str = d.DEFAULT_BREAKER_WINDOW,
    runbook_base: str = d.DEFAULT_RUNBOOK_BASE,
    selector: str = "",
    group_by: tuple[str, ...] = (),
) -> list[Path]:
    """Write the Grafana provisioning tree, the Prometheus rules and the runbooks.

    ``datasource_uid`` is the uid of the Prometheus data source the alert rules query.
    ``dashboards_path`` is where Grafana will find the ``grafana/dashboards`` folder
    (e.g. its path inside a container); by default the folder's absolute path here.
    ``slo`` is the share of attempts that must succeed, which the burn-rate alerts defend;
    ``breaker_window`` how long a breaker must stay not closed before its alert;
    ``runbook_base`` the URL of ``RUNBOOKS.md`` as your people read it (each alert's
    ``runbook_url`` is it plus ``#alertname``). ``selector`` (label matchers such as
    ``namespace="prod"``) narrows every series the queries read, and ``group_by`` (such as
    ``("cluster", "namespace")``) keeps those labels apart in every aggregation, in the
    dashboard, the recording rules and both kinds of alert alike. With other settings than
    the defaults the promtool tests (written for the defaults) are not written. Existing
    files of the same names are replaced. Returns the files written.
    """
    if not isinstance(datasource_uid, str) or not _UID.fullmatch(datasource_uid):
        raise ValueError(
            f"datasource_uid must be 1 to 40 letters, digits, '-' or '_', got {datasource_uid!r}"
        )
    settings = _settings(slo, breaker_window, runbook_base)
    scope = _scope(selector, group_by)
    defaults = (
        not selector
        and not group_by
        and settings == {setting.name: setting.default for setting in d.SETTINGS}
    )
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"export target {str(root)!r} exists and is not a directory")
    dashboards = root / "grafana" / "dashboards"
    if dashboards_path is None:
        dashboards_path = str(dashboards.resolve())
    elif not dashboards_path:
        raise ValueError("dashboards_path must not be empty")
    alerts = _DATASOURCE_LINE.sub(rf"\1datasourceUid: {datasource_uid}", shipped(ALERTS_FILE))

    def render(text: str, *, json_string: bool = False) -> str:
        return scoped(configured(text, settings), **scope, json_string=json_string)

    files = {
        dashboards / DASHBOARD_FILE: render(shipped(DASHBOARD_FILE), json_string=True),
        root / "grafana" / "provisioning" / "dashboards" / DASHBOARD_PROVIDER_FILE: _provider(
            dashboards_path
        ),
        root / "grafana" / "provisioning" / "alerting" / ALERTS_FILE: render(alerts),
        root / "prometheus" / PROMETHEUS_RULES_FILE: render(shipped(PROMETHEUS_RULES_FILE)),
        root / RUNBOOKS_FILE: render(shipped(RUNBOOKS_FILE)),
    }
    if defaults:
        files[root / "prometheus" / PROMETHEUS_TESTS_FILE] = shipped(PROMETHEUS_TESTS_FILE)
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return list(files)

"""The shipped files and the Grafana provisioning tree that ``export`` writes from them."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

DASHBOARD_FILE = "service-communication.json"
ALERTS_FILE = "commclient-alerts.yaml"
PROMETHEUS_RULES_FILE = "commclient-rules.yml"
PROMETHEUS_TESTS_FILE = "commclient-rules.test.yml"
SHIPPED_FILES = (DASHBOARD_FILE, ALERTS_FILE, PROMETHEUS_RULES_FILE, PROMETHEUS_TESTS_FILE)

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


def export(
    directory: str | Path,
    *,
    datasource_uid: str = "prometheus",
    dashboards_path: str | None = None,
) -> list[Path]:
    """Write the Grafana provisioning tree and the Prometheus rules under ``directory``.

    ``datasource_uid`` is the uid of the Prometheus data source the alert rules query.
    ``dashboards_path`` is where Grafana will find the ``grafana/dashboards`` folder
    (e.g. its path inside a container); by default the folder's absolute path here.
    Existing files of the same names are replaced. Returns the files written.
    """
    if not isinstance(datasource_uid, str) or not _UID.fullmatch(datasource_uid):
        raise ValueError(
            f"datasource_uid must be 1 to 40 letters, digits, '-' or '_', got {datasource_uid!r}"
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
    files = {
        dashboards / DASHBOARD_FILE: shipped(DASHBOARD_FILE),
        root / "grafana" / "provisioning" / "dashboards" / DASHBOARD_PROVIDER_FILE: _provider(
            dashboards_path
        ),
        root / "grafana" / "provisioning" / "alerting" / ALERTS_FILE: alerts,
        root / "prometheus" / PROMETHEUS_RULES_FILE: shipped(PROMETHEUS_RULES_FILE),
        root / "prometheus" / PROMETHEUS_TESTS_FILE: shipped(PROMETHEUS_TESTS_FILE),
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return list(files)

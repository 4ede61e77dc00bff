"""The shipped dashboard, alert rules and Prometheus rules: up to date, well formed, and
checked by promtool; the export command writes a Grafana provisioning tree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from commclient._policy import FailureKind
from commclient.monitoring import export, shipped
from commclient.monitoring._definitions import (
    ALERTS,
    BREAKER_STATES,
    DASHBOARD_UID,
    ERROR_STATUSES,
    promtool_case,
)
from commclient.monitoring._files import (
    PROMETHEUS_RULES_FILE,
    PROMETHEUS_TESTS_FILE,
    SHIPPED_FILES,
)
from tests.monitoring_queries import (
    dashboard,
    grafana_alerts,
    panel_expressions,
    panels,
    prometheus_rules,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "commclient" / "monitoring"


def test_shipped_files_are_generated_from_the_definitions() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk, the generator's builders, needs Python 3.11+")
    from commclient.monitoring import _generate as generate

    stale = [name for name, text in generate.rendered().items() if shipped(name) != text]
    assert stale == [], (
        f"{stale} differ from the definitions: run `python -m commclient.monitoring generate`"
    )


def test_every_status_of_a_failed_call_counts_in_the_error_ratio() -> None:
    """A status the client records for a call that got no answer (pool_timeout among them)
    is an error in the recorded error ratio and its alert; success and other 4xx are not."""
    failed = {kind.status_label for kind in FailureKind if kind.blames_target}
    failed |= {"pool_timeout", "circuit_open", "decode_error", "429", "500", "503", "599"}
    # Prometheus anchors a label regex at both ends.
    pattern = re.compile(f"(?:{ERROR_STATUSES})")
    assert sorted(s for s in failed if not pattern.fullmatch(s)) == []
    # The caller's mistakes and its own deadline are not the target's errors.
    callers = {FailureKind.DEADLINE.status_label, FailureKind.UNSENDABLE.status_label}
    assert callers == {"deadline", "unsendable"}
    not_failed = {"success", "200", "404", "409", *callers}
    assert [s for s in sorted(not_failed) if pattern.fullmatch(s)] == []


def test_every_shipped_file_is_in_the_source_tree() -> None:
    assert sorted(
        p.name for p in PACKAGE_DIR.iterdir() if p.suffix in {".json", ".yml", ".yaml", ".md"}
    ) == (sorted(SHIPPED_FILES))


class TestDashboard:
    def test_stable_uid_and_datasource_variable(self) -> None:
        board = dashboard()
        assert board["uid"] == DASHBOARD_UID == "commclient-service-communication"
        assert board["title"] == "Service Communication"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in panels():
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel[
                "title"
            ]

    def test_every_panel_has_a_unit(self) -> None:
        missing = [p["title"] for p in panels() if not p["fieldConfig"]["defaults"].get("unit")]
        assert missing == []

    def test_panels_fit_the_grid_without_overlapping(self) -> None:
        taken: set[tuple[int, int]] = set()
        for panel in dashboard()["panels"]:
            grid = panel["gridPos"]
            assert grid["w"] > 0
            assert grid["h"] > 0
            assert grid["x"] >= 0
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            cells = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & taken, f"{panel['title']} overlaps another panel"
            taken |= cells

    def test_panel_ids_are_unique(self) -> None:
        ids = [panel["id"] for panel in dashboard()["panels"]]
        assert len(ids) == len(set(ids))
        assert 0 not in ids

    def test_rates_use_the_rate_interval_and_counts_the_interval(self) -> None:
        # Rates over raw series follow Grafana's $__rate_interval, so that no scrape
        # interval leaves a panel empty; counts per bar are that rate times the step
        # ($__interval_ms), so the bars add up to the true count: increase() over
        # $__interval is empty when the step is one scrape (one sample per window), and
        # over $__rate_interval counts every event four times.
        for expression in panel_expressions():
            for function, window in re.findall(r"(\w+)\([^\[\]()]*\[([^\]]+)\]", expression.expr):
                assert function != "increase", expression
                assert window == "$__rate_interval", expression
        for panel in panels():
            if panel["fieldConfig"]["defaults"].get("custom", {}).get("drawStyle") == "bars":
                for target in panel["targets"]:
                    assert target["expr"].endswith(" * $__interval_ms / 1000"), target

    def test_breaker_state_mappings(self) -> None:
        (panel,) = [p for p in panels() if p["title"] == "Circuit breaker state"]
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        assert mapping["type"] == "value"
        texts = {int(value): option["text"] for value, option in mapping["options"].items()}
        assert texts == {0: "CLOSED", 1: "HALF-OPEN", 2: "OPEN"} == BREAKER_STATES

    def test_breaker_values_are_the_ones_the_library_sets(self) -> None:
        import pybreaker

        from commclient._breaker import STATE_VALUES

        assert {
            STATE_VALUES[pybreaker.STATE_CLOSED]: "CLOSED",
            STATE_VALUES[pybreaker.STATE_OPEN]: "OPEN",
            STATE_VALUES[pybreaker.STATE_HALF_OPEN]: "HALF-OPEN",
        } == BREAKER_STATES

    def test_the_panels_of_the_plan(self) -> None:
        titles = {panel["title"] for panel in panels()}
        assert {
            "Request rate by service → target",
            "p95 duration",
            "Error rate",
            "Retry rate",
            "Circuit breaker state",
            "Cache hit rate",
            "Top endpoints",
            "Cron runs by outcome",
            "Cron duration p95",
            "Missed runs",
            "Event-loop lag p99",
            "Retry budget",
        } <= titles


def _by_ref(rule: Any) -> dict[str, Any]:
    return {query["refId"]: query for query in rule["data"]}


class TestGrafanaAlerts:
    def test_one_name_per_alert_in_grafana_and_prometheus(self) -> None:
        # Grafana's rule title is its alertname label: routes, silences and inhibitions
        # written for either match both.
        (group,) = grafana_alerts()["groups"]
        titles = [rule["title"] for rule in group["rules"]]
        prometheus = [
            rule["alert"]
            for group in prometheus_rules()["groups"]
            for rule in group["rules"]
            if "alert" in rule
        ]
        assert titles == prometheus == [alert.name for alert in ALERTS]
        assert "CommClientCircuitBreakerOpen" in titles
        uids = [rule["uid"] for rule in group["rules"]]
        assert len(set(uids)) == len(uids)
        assert all(len(uid) <= 40 for uid in uids)

    def test_rules_have_what_file_provisioning_requires(self) -> None:
        document = grafana_alerts()
        assert document["apiVersion"] == 1
        (group,) = document["groups"]
        assert {"orgId", "name", "folder", "interval", "rules"} <= set(group)
        for rule in group["rules"]:
            assert {"uid", "title", "condition", "data", "for"} <= set(rule), rule["title"]
            assert rule["noDataState"] in {"OK", "NoData", "Alerting"}
            assert rule["execErrState"] in {"OK", "Error", "Alerting"}
            for query in rule["data"]:
                if query["datasourceUid"] != "__expr__":
                    assert query["relativeTimeRange"]["from"] > query["relativeTimeRange"]["to"]
            # Fields of Grafana's HTTP API that a provisioning file takes from the group.
            assert not {"folderUID", "ruleGroup", "orgID"} & set(rule)

    def test_condition_names_a_threshold_over_existing_refs(self) -> None:
        for rule in grafana_alerts()["groups"][0]["rules"]:
            refs = _by_ref(rule)
            assert rule["condition"] in refs, rule["title"]
            condition = refs[rule["condition"]]["model"]
            assert condition["type"] == "threshold"
            for query in refs.values():
                model = query["model"]
                assert model["refId"] == query["refId"]
                if query["datasourceUid"] == "__expr__":
                    assert model["expression"] in refs, (rule["title"], model)
                    assert model["expression"] != query["refId"]
                else:
                    assert query["datasourceUid"] == "prometheus"
                    assert model["expr"]

    def test_same_alerts_as_prometheus(self) -> None:
        prometheus = {
            rule["alert"]: rule
            for group in prometheus_rules()["groups"]
            for rule in group["rules"]
            if "alert" in rule
        }
        grafana = grafana_alerts()["groups"][0]["rules"]
        assert len(grafana) == len(prometheus) == len(ALERTS)
        for alert, rule in zip(ALERTS, grafana, strict=True):
            refs = _by_ref(rule)
            (evaluator,) = [c["evaluator"] for c in refs["C"]["model"]["conditions"]]
            op = {"gt": ">", "lt": "<"}[evaluator["type"]]
            (threshold,) = evaluator["params"]
            expected = prometheus[alert.name]
            value = refs["A"]["model"]["expr"]
            assert expected["expr"] in (
                f"{value} {op} {threshold:g}",
                f"({value}) {op} {threshold:g}",
            )
            assert rule["noDataState"] == alert.no_data
            assert rule["for"] == expected["for"]
            assert rule["labels"] == expected["labels"]
            assert rule["annotations"] == expected["annotations"]


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


@pytest.mark.prometheus
class TestPromtool:
    def test_check_rules(self, tmp_path: Path) -> None:
        (tmp_path / PROMETHEUS_RULES_FILE).write_text(shipped(PROMETHEUS_RULES_FILE))
        result = _promtool("check", "rules", PROMETHEUS_RULES_FILE, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_rule_tests_pass(self, tmp_path: Path) -> None:
        export(tmp_path)
        result = _promtool("test", "rules", PROMETHEUS_TESTS_FILE, cwd=tmp_path / "prometheus")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_rule_tests_fail_when_an_expectation_is_wrong(self, tmp_path: Path) -> None:
        # The tests can fail: swap firing and quiet expectations and every case fails.
        export(tmp_path)
        tests = yaml.safe_load(shipped(PROMETHEUS_TESTS_FILE))
        for case in tests["tests"]:
            for check in case["alert_rule_test"]:
                check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {}}]
        (tmp_path / "prometheus" / "swapped.test.yml").write_text(yaml.safe_dump(tests))
        result = _promtool("test", "rules", "swapped.test.yml", cwd=tmp_path / "prometheus")
        assert result.returncode != 0
        failed = set(re.findall(r"alertname: (\w+), time", result.stdout + result.stderr))
        assert failed == {alert.name for alert in ALERTS}

    def test_rules_follow_the_global_evaluation_interval(self) -> None:
        # A recording group evaluated less often than the alerts would feed them stale values.
        groups = prometheus_rules()["groups"]
        assert [group.get("interval") for group in groups] == [None] * len(groups)

    def test_every_alert_has_a_firing_and_a_quiet_case(self) -> None:
        tests = yaml.safe_load(shipped(PROMETHEUS_TESTS_FILE))
        firing: set[str] = set()
        quiet: set[str] = set()
        for case in tests["tests"]:
            for check in case["alert_rule_test"]:
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
        names = {
            rule["alert"]
            for group in prometheus_rules()["groups"]
            for rule in group["rules"]
            if "alert" in rule
        }
        rules_absent = {alert.name for alert in ALERTS if alert.recording_rules_absent}
        assert rules_absent == {"CommClientRecordingRulesMissing"}
        assert quiet == names
        assert firing == names - rules_absent

    def test_rules_missing_alert_fires_without_the_recording_rules(self, tmp_path: Path) -> None:
        """Grafana (or a Prometheus) given the alerts but not the recording rules: the
        alert that says so fires; with the recording rules (the shipped test) it does not."""
        rules = prometheus_rules()
        rules["groups"] = [g for g in rules["groups"] if g["name"].endswith(".alerts")]
        (tmp_path / "alerts-only.yml").write_text(yaml.safe_dump(rules))
        cases = [
            promtool_case(alert, alert.firing) for alert in ALERTS if alert.recording_rules_absent
        ]
        tests = {"rule_files": ["alerts-only.yml"], "evaluation_interval": "1m", "tests": cases}
        (tmp_path / "alerts-only.test.yml").write_text(yaml.safe_dump(tests))
        result = _promtool("test", "rules", "alerts-only.test.yml", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def _client_series_the_alerts_read() -> list[str]:
    """Recorded series that exist whenever client metrics do and that an alert reads."""
    rules = prometheus_rules()["groups"]
    recorded = [rule["record"] for group in rules for rule in group["rules"] if "record" in rule]
    alerts = " ".join(rule["expr"] for group in rules for rule in group["rules"] if "alert" in rule)
    return [
        name
        for name in recorded
        if name.startswith(("service_target:", "job_instance:"))
        and re.search(rf"{re.escape(name)}\b(?!:)", alerts)
        and "_errors:" not in name  # absent while a pair has no error; ratios fill it in
    ]


@pytest.mark.prometheus
@pytest.mark.parametrize("missing", _client_series_the_alerts_read())
def test_rules_missing_alert_fires_when_one_recording_rule_is_missing(
    tmp_path: Path, missing: str
) -> None:
    """A rules file one recording rule short (an older copy, a hand-edited PrometheusRule):
    the alerts that read it stay silent, so the alert that says rules are missing fires."""
    rules = prometheus_rules()
    for group in rules["groups"]:
        group["rules"] = [rule for rule in group["rules"] if rule.get("record") != missing]
    (tmp_path / "short.yml").write_text(yaml.safe_dump(rules))
    cases = [promtool_case(alert, alert.firing) for alert in ALERTS if alert.recording_rules_absent]
    tests = {"rule_files": ["short.yml"], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "short.test.yml").write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", "short.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


class TestExport:
    def test_writes_a_grafana_provisioning_tree(self, tmp_path: Path) -> None:
        written = export(tmp_path / "out")
        relative = sorted(str(path.relative_to(tmp_path / "out")) for path in written)
        assert relative == [
            "RUNBOOKS.md",
            "grafana/dashboards/service-communication.json",
            "grafana/provisioning/alerting/commclient-alerts.yaml",
            "grafana/provisioning/dashboards/commclient.yaml",
            "prometheus/commclient-rules.test.yml",
            "prometheus/commclient-rules.yml",
        ]
        provider = yaml.safe_load(
            (tmp_path / "out/grafana/provisioning/dashboards/commclient.yaml").read_text()
        )
        (entry,) = provider["providers"]
        assert entry["type"] == "file"
        assert Path(entry["options"]["path"]) == (tmp_path / "out/grafana/dashboards").resolve()
        for path in written:
            assert path.read_text() != ""

    def test_datasource_uid_and_dashboards_path(self, tmp_path: Path) -> None:
        export(tmp_path, datasource_uid="prom-main_1", dashboards_path="/var/lib/grafana/d: x")
        alerts = yaml.safe_load(
            (tmp_path / "grafana/provisioning/alerting/commclient-alerts.yaml").read_text()
        )
        uids = {
            query["datasourceUid"]
            for rule in alerts["groups"][0]["rules"]
            for query in rule["data"]
        }
        assert uids == {"prom-main_1", "__expr__"}
        provider = yaml.safe_load(
            (tmp_path / "grafana/provisioning/dashboards/commclient.yaml").read_text()
        )
        assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/d: x"

    @pytest.mark.parametrize("uid", ["", "has space", "x" * 41, "a/b", None])
    def test_bad_datasource_uid_is_refused(self, tmp_path: Path, uid: Any) -> None:
        with pytest.raises(ValueError, match="datasource_uid"):
            export(tmp_path, datasource_uid=uid)
        assert list(tmp_path.iterdir()) == []

    def test_empty_dashboards_path_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="dashboards_path must not be empty"):
            export(tmp_path, dashboards_path="")

    def test_target_that_is_a_file_is_refused(self, tmp_path: Path) -> None:
        target = tmp_path / "file"
        target.write_text("")
        with pytest.raises(NotADirectoryError, match="not a directory"):
            export(target)

    def test_unknown_shipped_name(self) -> None:
        with pytest.raises(ValueError, match=r"no shipped monitoring file 'dash\.json'"):
            shipped("dash.json")

    def test_command(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "commclient.monitoring",
                "export",
                str(tmp_path / "tree"),
                "--datasource-uid",
                "mimir",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        printed = result.stdout.split()
        assert len(printed) == 6
        assert all(Path(line).is_file() for line in printed)
        assert (
            "datasourceUid: mimir"
            in (tmp_path / "tree/grafana/provisioning/alerting/commclient-alerts.yaml").read_text()
        )

    def test_command_reports_a_bad_uid(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "commclient.monitoring",
                "export",
                str(tmp_path),
                "--datasource-uid",
                "no spaces",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 2
        assert "datasource_uid must be" in result.stderr


def test_generate_without_the_generator_packages_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from commclient.monitoring.__main__ import main

    monkeypatch.delitem(sys.modules, "commclient.monitoring._generate", raising=False)
    # As if it were not installed: the package and every submodule already imported.
    for name in [n for n in sys.modules if n.partition(".")[0] == "grafana_foundation_sdk"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "grafana_foundation_sdk", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "generate needs the development packages grafana-foundation-sdk" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_generate_writes_the_shipped_files(tmp_path: Path) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk, the generator's builders, needs Python 3.11+")
    from commclient.monitoring.__main__ import main

    assert main(["generate", "--output", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SHIPPED_FILES)
    for name in SHIPPED_FILES:
        assert (tmp_path / name).read_text() == shipped(name)


class TestExportSettings:
    def test_every_setting_is_in_the_files_it_configures(self) -> None:
        from commclient.monitoring._definitions import SETTINGS
        from commclient.monitoring._files import ALERTS_FILE, RUNBOOKS_FILE

        for setting in SETTINGS:
            default = setting.render(setting.default)
            for name in (PROMETHEUS_RULES_FILE, ALERTS_FILE, RUNBOOKS_FILE):
                if (setting.name, name) != ("runbook_base", RUNBOOKS_FILE):
                    assert default in shipped(name), (setting.name, name)

    @pytest.mark.prometheus
    def test_settings_reach_rules_alerts_runbooks_and_dashboard(self, tmp_path: Path) -> None:
        written = export(
            tmp_path,
            slo=0.999,
            breaker_window="5m",
            runbook_base="https://wiki.example.com/commclient/RUNBOOKS.md",
            selector='namespace="prod", cluster=~"eu-.*"',
            group_by=("cluster", "namespace"),
        )
        names = {path.name for path in written}
        # The shipped promtool tests hold for the defaults only.
        assert PROMETHEUS_TESTS_FILE not in names
        rules = (tmp_path / "prometheus" / PROMETHEUS_RULES_FILE).read_text()
        result = _promtool("check", "rules", PROMETHEUS_RULES_FILE, cwd=tmp_path / "prometheus")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "(1 - 0.999)" in rules
        assert "(1 - 0.995)" not in rules
        assert 'http_client_circuit_breaker_state{namespace="prod", cluster=~"eu-.*"}[5m]' in (
            rules
        )
        assert "sum by (cluster, namespace, source_service, target_service)" in rules
        assert "runbook_url: https://wiki.example.com/commclient/RUNBOOKS.md#commclient" in rules
        alerts = yaml.safe_load(
            (tmp_path / "grafana/provisioning/alerting/commclient-alerts.yaml").read_text()
        )
        grafana_exprs = [
            query["model"]["expr"]
            for rule in alerts["groups"][0]["rules"]
            for query in rule["data"]
            if query["datasourceUid"] != "__expr__"
        ]
        assert any("(1 - 0.999)" in expr for expr in grafana_exprs)
        board = json.loads((tmp_path / "grafana/dashboards/service-communication.json").read_text())
        exprs = [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]
        assert any(
            'http_client_requests_total{namespace="prod", cluster=~"eu-.*", source_service=~'
            in expr
            for expr in exprs
        ), exprs
        assert all("cluster, namespace" in e for e in exprs if "sum by (" in e), exprs

    @pytest.mark.parametrize(
        ("setting", "value", "message"),
        [
            ("slo", 1.0, "slo must be a number between 0 and 1"),
            ("slo", "99.9", "slo must be a number between 0 and 1"),
            ("breaker_window", "2 minutes", "breaker_window must be a Prometheus duration"),
            ("runbook_base", "has space", "runbook_base must be a URL"),
            ("selector", "namespace=prod", "selector must be label matchers"),
            ("selector", 'a="x\\"y"', "selector must be label matchers"),
            ("group_by", "namespace", "group_by must be label names"),
            ("group_by", ("bad-name",), "group_by must be label names"),
        ],
    )
    def test_bad_settings_are_refused(
        self, tmp_path: Path, setting: str, value: Any, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            export(tmp_path, **{setting: value})
        assert list(tmp_path.iterdir()) == []


def test_the_readme_documents_every_alert_and_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    from commclient.monitoring._definitions import SETTINGS

    assert [alert.name for alert in ALERTS if f"| `{alert.name}` |" not in readme] == []
    options = [f"--{setting.name.replace('_', '-')}" for setting in SETTINGS]
    assert [o for o in [*options, "--selector", "--group-by"] if f"`{o}`" not in readme] == []

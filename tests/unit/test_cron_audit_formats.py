"""audit --format json|sarif against their schemas, inline ignores, baselines, encodings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cron_migration._audit import RULES, audit_paths, audit_source
from cron_migration._cli import main

jsonschema = pytest.importorskip("jsonschema")

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "cron_migration"
CORPUS = Path(__file__).parent / "audit_corpus"
# Not the official OASIS file (not available offline here): the parts of SARIF 2.1.0 the
# audit writes, with the specification's required properties and value constraints.
SARIF_SCHEMA = Path(__file__).parent / "sarif-2.1.0-minimal.schema.json"

LEGACY = """\
import requests

def fetch():
    return requests.get("http://x")
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["audit", *args])
    return status, capsys.readouterr().out


def test_json_output_follows_its_schema(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, str(CORPUS), "--format", "json", "--check")
    assert status == 1
    document = json.loads(out)
    schema = json.loads((PACKAGE_DIR / "audit.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    assert document["count"] == len(document["findings"]) == len(audit_paths([CORPUS]))
    assert {finding["code"] for finding in document["findings"]} >= {"CM001", "CM004"}


def test_sarif_output_is_a_sarif_2_1_0_log(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, str(CORPUS), "--format", "sarif")
    assert status == 0
    log = json.loads(out)
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(
        log,
        schema,
        cls=jsonschema.Draft7Validator,
        format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
    )
    (sarif_run,) = log["runs"]
    rules = sarif_run["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == list(RULES)
    results = sarif_run["results"]
    assert len(results) == len(audit_paths([CORPUS]))
    for result in results:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1
        assert region["startColumn"] >= 1
    fingerprints = [result["partialFingerprints"]["cronMigrationAudit/v1"] for result in results]
    assert len(set(fingerprints)) == len(fingerprints)


def test_the_vendored_sarif_schema_rejects_what_sarif_forbids() -> None:
    schema = json.loads(SARIF_SCHEMA.read_text())
    bad_region = {
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "x"}},
                "results": [
                    {
                        "message": {"text": "m"},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": {"uri": "a.py"},
                                    "region": {"startLine": 0},
                                }
                            }
                        ],
                    }
                ],
            }
        ],
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_region, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": "2.0.0", "runs": []}, schema)


def test_an_inline_comment_ignores_the_codes_it_names(tmp_path: Path) -> None:
    source = tmp_path / "jobs.py"
    source.write_text(
        "import requests, time\n\n"
        "async def job():\n"
        "    requests.get('x')  # cron-migration: ignore[CM001]\n"
        "    requests.get('y')  # cron-migration: ignore[CM001, CM003]\n"
        "    time.sleep(1)  # cron-migration: ignore\n"
        "    requests.get('z')  # cron-migration: ignore[CM002]\n"
    )
    found = [(f.line, f.code) for f in audit_paths([source])]
    assert found == [(4, "CM003"), (7, "CM001"), (7, "CM003")]


def test_a_misspelt_ignore_comment_never_ignores_more_than_it_names(tmp_path: Path) -> None:
    source = tmp_path / "jobs.py"
    source.write_text(
        "import requests\n\n"
        "async def job():\n"
        "    requests.get('x')  # cron-migration: ignore[cm001]\n"
        "    requests.get('y')  # cron-migration: ignore[CM-001]\n"
    )
    found = [(f.line, f.code) for f in audit_paths([source])]
    assert found == [(4, "CM003"), (5, "CM001"), (5, "CM003")]


def test_a_baseline_reports_only_new_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "legacy.py"
    source.write_text(LEGACY)
    baseline = tmp_path / "baseline.json"
    status, out = run(capsys, str(source), "--write-baseline", str(baseline))
    assert status == 0
    assert "1 finding(s) written" in out
    # Lines added above move the old finding: it stays accepted.
    source.write_text("import os\n\n" + LEGACY + "\ndef more():\n    return requests.post('y')\n")
    status, out = run(capsys, str(source), "--baseline", str(baseline), "--check")
    assert status == 1
    assert "requests.post" in out
    assert "requests.get" not in out
    assert "1 call site(s) to migrate" in out
    baseline.write_text("not json")
    status, _ = run(capsys, str(source), "--baseline", str(baseline))
    assert status == 2


def test_a_baseline_keeps_helper_calls_when_the_helper_module_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CM003/CM004 message names the helper's raw call; editing that module is no change."""
    package = tmp_path / "svc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    client = package / "rest_client.py"
    client.write_text(LEGACY)
    (package / "jobs.py").write_text(
        "from .rest_client import fetch\n\n\nasync def job():\n    return fetch()\n"
    )
    baseline = tmp_path / "baseline.json"
    status, out = run(capsys, str(package), "--write-baseline", str(baseline))
    assert "3 finding(s) written" in out
    client.write_text('"""The old client."""\n\n' + LEGACY)
    status, out = run(capsys, str(package), "--baseline", str(baseline), "--check")
    assert (status, out) == (0, "0 call site(s) to migrate\n")


def test_a_pep_263_coding_line_is_honoured(tmp_path: Path) -> None:
    source = tmp_path / "latin.py"
    source.write_bytes(
        b"# -*- coding: latin-1 -*-\nimport requests\n\ndef f():\n"
        b"    return requests.get('caf\xe9')\n"
    )
    (finding,) = audit_paths([source])
    assert (finding.line, finding.code) == (5, "CM001")
    wrong = tmp_path / "wrong.py"
    wrong.write_bytes(b"# caf\xe9\n")
    (unreadable,) = audit_paths([wrong])
    assert unreadable.code == "CM000"


def test_a_file_with_a_null_byte_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    """Python 3.10's parser raises ValueError for it (3.11+: SyntaxError)."""
    broken = tmp_path / "broken.py"
    broken.write_bytes(b"x = 1\x00\n")
    (tmp_path / "legacy.py").write_text(LEGACY)
    found = [(Path(f.path).name, f.code) for f in audit_paths([tmp_path])]
    assert found == [("broken.py", "CM000"), ("legacy.py", "CM001")]
    assert [f.code for f in audit_source("x = 1\x00\n", "broken.py")] == ["CM000"]

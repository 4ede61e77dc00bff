"""Run the reliability scenarios and write their table into RELIABILITY.md.

    python -m tests.reliability.report            # CI sizes (a few minutes)
    python -m tests.reliability.report --full     # the issue's full counts and durations

Run it with the interpreter of the ``reliability`` tox environment
(``.tox/reliability/bin/python``), which has every extra and test dependency installed.
Extra arguments after ``--`` go to pytest (``-- -k scenario_1``). The table is rewritten
between its markers; the rest of the file is left as it is. Exits with pytest's status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "RELIABILITY.md"
BEGIN = "<!-- table:begin (python -m tests.reliability.report) -->"
END = "<!-- table:end -->"
COLUMNS = ("#", "scenario", "load", "faults injected", "outcome", "anything lost", "test")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full counts and durations")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "results.jsonl"
        env = {**os.environ, "RELIABILITY_RESULTS": str(results)}
        env["RELIABILITY_FULL"] = "1" if args.full else "0"
        started = time.monotonic()
        status = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/reliability",
                *args.pytest_args,
            ],
            cwd=ROOT,
            env=env,
        )
        seconds = time.monotonic() - started
        rows = (
            [json.loads(line) for line in results.read_text().splitlines()]
            if (results.exists())
            else []
        )
    write_table(rows, full=args.full, seconds=seconds, status=status)
    print(f"{DOCUMENT.name}: {len(rows)} rows, pytest exit status {status}")
    return status


def render(rows: list[dict[str, Any]], *, full: bool, seconds: float, status: int) -> str:
    rows = sorted(rows, key=lambda r: (_order(r["scenario"]), r["test"]))
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    lines = [
        BEGIN,
        "",
        f"Run: {'full' if full else 'CI'} sizes, {when} UTC, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"{seconds:.0f} s, pytest exit status {status}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for entry in rows:
        cells = (
            entry["scenario"],
            entry["title"],
            entry["load"],
            entry["faults"],
            entry["outcome"],
            entry["lost"],
            f"{entry['result']}: `{entry['test'].rpartition('/')[2]}`",
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", END]
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], *, full: bool, seconds: float, status: int) -> None:
    table = render(rows, full=full, seconds=seconds, status=status)
    text = DOCUMENT.read_text() if DOCUMENT.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCUMENT.write_text(head + table + tail)


def _order(scenario: str) -> tuple[int, str]:
    number = scenario.split(".")[0]
    return (int(number), scenario) if number.isdigit() else (1_000, scenario)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    sys.exit(main())

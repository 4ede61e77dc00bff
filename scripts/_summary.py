"""Summarise a tox --result-json file: one line per environment, then the test totals.

Usage: python scripts/_summary.py RESULT_JSON TOX_EXIT_CODE ELAPSED_SECONDS
Exits 1 when tox or an environment failed; with the CI variable set, also when an environment
was skipped or pytest ran without a single test passing. The test totals are the last line.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from typing import Any

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# pytest's closing line, e.g. "==== 3 failed, 13 passed, 3 skipped in 0.20s ====".
PYTEST_CLOSING = re.compile(r"(?:\d+ \w+|no tests ran)(?:, \d+ \w+)* in [\d.]+s")
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")


def pytest_counts(output: str) -> Counter[str] | None:
    """Counts from the last pytest closing line in ``output``, or None if pytest did not close."""
    lines = ANSI_ESCAPE.sub("", output).splitlines()
    closing = [line for line in lines if PYTEST_CLOSING.search(line)]
    if not closing:
        return None
    counts: Counter[str] = Counter()
    for number, outcome in PYTEST_COUNT.findall(closing[-1]):
        counts["error" if outcome.startswith("error") else outcome] += int(number)
    return counts


def describe(counts: Counter[str]) -> str:
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
    return ", ".join(f"{counts[kind]} {kind}" for kind in order if counts[kind]) or "no tests ran"


def command_name(argv: list[str]) -> str:
    """``ruff check`` for ``/.../bin/ruff check src``: the program and its subcommand, if any."""
    words = [argv[0].rsplit("/", 1)[-1]]
    if len(argv) > 1 and argv[1].isalpha():
        words.append(argv[1])
    return " ".join(words)


def setup_failure(env: dict[str, Any], exit_code: object) -> str:
    venv_failed = any(
        step.get("run_id") == "venv" and step.get("retcode") for step in env.get("setup", [])
    )
    if venv_failed:
        return "could not create the venv: is the interpreter installed?"
    return f"setup failed (exit {exit_code})"


def display_order(item: tuple[str, Any]) -> tuple[bool, str, bool]:
    """The matrix first, by version, sync before async; then lint, type, integration in order."""
    name = item[0]
    version, _, factor = name.partition("-")
    is_matrix = version.startswith("py")
    return (not is_matrix, version if is_matrix else "", factor != "sync")


def summarise(result: dict[str, Any], *, tox_exit_code: int, elapsed: int, in_ci: bool) -> int:
    totals: Counter[str] = Counter()
    failed: list[str] = []
    skipped: list[str] = []
    print("\n==> summary")
    for name, env in sorted(result.get("testenvs", {}).items(), key=display_order):
        outcome = env.get("result")
        if name.startswith(".") or outcome is None:
            continue  # packaging helpers, or environments that were not selected
        details = []
        for command in env.get("test", []):
            counts = pytest_counts(command.get("output", ""))
            if counts is not None:
                totals.update(counts)
                details.append(describe(counts))
            elif command.get("retcode"):
                details.append(f"{command_name(command['command'])} exited {command['retcode']}")
        if outcome.get("skipped"):
            status = "SKIPPED"
            details = ["interpreter not found"]
            skipped.append(name)
        elif outcome.get("success"):
            status = "ok"
        else:
            status = "FAILED"
            failed.append(name)
            if not details:
                details = [setup_failure(env, outcome.get("exit_code"))]
        duration = f"{outcome.get('duration', 0):6.1f}s"
        print(f"  {name:<14} {status:<8} {duration}  {'; '.join(details)}")

    if skipped:
        verdict = "a failure in CI" if in_ci else "not run here"
        print(f"skipped (interpreter not found, {verdict}): {' '.join(skipped)}")
    if failed:
        print(f"failed: {' '.join(failed)}")
    ran_pytest = bool(totals) or any(
        pytest_counts(command.get("output", "")) is not None
        for env in result.get("testenvs", {}).values()
        for command in env.get("test", [])
    )
    no_test_passed = in_ci and ran_pytest and totals["passed"] == 0
    if no_test_passed:
        print("no test passed: CI needs tests that really run")
    ok = tox_exit_code == 0 and not failed and not (skipped and in_ci) and not no_test_passed
    print(f"time: {elapsed // 60}m{elapsed % 60:02d}s, result: {'OK' if ok else 'FAILED'}")
    failures = totals["failed"] + totals["error"]
    line = f"tests: {totals['passed']} passed, {failures} failed"
    if totals["skipped"]:
        line += f", {totals['skipped']} skipped"
    print(line)
    return 0 if ok else 1


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as handle:
        result = json.load(handle)
    return summarise(
        result,
        tox_exit_code=int(sys.argv[2]),
        elapsed=int(sys.argv[3]),
        in_ci=bool(os.environ.get("CI")),
    )


if __name__ == "__main__":
    sys.exit(main())

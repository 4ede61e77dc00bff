"""Run the benchmarks and print one table: ``python -m benchmarks [--quick] [--only NAME]``.

Every module ``benchmarks/bench_*.py`` exposes ``run(quick: bool) -> list[Row]``; each row is a
candidate measured side by side with its baseline in the same run, so the ratio is what counts,
not the absolute figures of this machine. A module whose optional dependency is missing is
reported and skipped. The exit code is 0 unless a module crashes, or ``--strict`` is given and a
row misses its limit or a module could not run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks._table import Row

PREFIX = "bench_"
OWN_PACKAGES = {"benchmarks", "commclient", "compat", "cron_migration", "examples"}
# The benchmarks run from a clone (they are not in the wheel): the editable install.
BENCH_EXTRA_HINT = "pip install -e '.[bench]' (from the root of the clone)"


@dataclass
class Outcome:
    """What running one benchmark module produced."""

    name: str
    rows: list[Row] = field(default_factory=list)
    skipped: str | None = None  # why it could not run: an optional dependency is missing
    error: str | None = None  # a traceback: the module or its run() is broken
    seconds: float = 0.0


def discover() -> list[str]:
    """Names of the benchmark modules, without the ``bench_`` prefix, sorted."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    return sorted(
        info.name.removeprefix(PREFIX)
        for info in pkgutil.iter_modules([package_dir])
        if info.name.startswith(PREFIX)
    )


def missing_optional_dependency(exc: ModuleNotFoundError) -> str | None:
    """The third-party package whose absence raised ``exc``, or None if it is one of ours."""
    root = (exc.name or "").partition(".")[0]
    return None if not root or root in OWN_PACKAGES else root


def run_module(name: str, quick: bool) -> Outcome:
    outcome = Outcome(name)
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.{PREFIX}{name}")
        run: Callable[[bool], list[Row]] = module.run
        outcome.rows = list(run(quick))
    except ModuleNotFoundError as exc:
        dependency = missing_optional_dependency(exc)
        if dependency is None:
            outcome.error = traceback.format_exc()
        else:
            outcome.skipped = f"needs {dependency}: {BENCH_EXTRA_HINT}"
    except Exception:
        outcome.error = traceback.format_exc()
    outcome.seconds = time.perf_counter() - started
    return outcome


def format_number(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_limit(row: Row) -> str:
    kind = row.limit_kind
    if kind == "none":
        return "-"
    bound = ">=" if kind.startswith("min_") else "<="
    if kind in ("ratio", "min_ratio"):
        return f"{bound} {row.limit:.2f}x"
    if kind == "difference":
        return f"{bound} +{row.limit:g} {row.unit}"
    return f"{bound} {row.limit:g} {row.unit}"


def format_value(value: float, unit: str, spread: float) -> str:
    text = f"{format_number(value)} {unit}"
    return f"{text} ±{spread * 100:.0f}%" if spread else text


HEADER = ["group", "candidate", "baseline", "candidate value", "baseline value"]
HEADER += ["ratio", "limit", "met"]


def table_cells(row: Row) -> list[str]:
    return [
        row.group,
        row.candidate,
        row.baseline,
        format_value(row.candidate_value, row.unit, row.candidate_spread),
        format_value(row.baseline_value, row.unit, row.baseline_spread),
        f"{format_number(row.ratio)}x" if row.baseline_value else "-",
        format_limit(row),
        "yes" if row.met else "NO",
    ]


def render_text(rows: Sequence[Row]) -> str:
    lines = [HEADER, *(table_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADER))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    ]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in text)


def render_markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(quick: bool) -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{'quick' if quick else 'full'} run"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmarks side by side and print a table of ratios.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark module (bench_NAME.py); may be repeated",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a row misses its limit or a module could not run",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the table in Markdown (for BENCHMARKS.md)"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    selected = available
    if args.only:
        wanted = [name.removeprefix(PREFIX).removesuffix(".py") for name in args.only]
        unknown = [name for name in wanted if name not in available]
        if unknown:
            print(f"unknown benchmark: {', '.join(unknown)}", file=sys.stderr)
            print(f"available: {', '.join(available) or '(none)'}", file=sys.stderr)
            return 2
        selected = [name for name in available if name in wanted]
    if not selected:
        print("no benchmark modules (benchmarks/bench_*.py) found", file=sys.stderr)
        return 1 if args.strict else 0

    outcomes = []
    for name in selected:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        outcomes.append(run_module(name, args.quick))

    rows = [row for outcome in outcomes for row in outcome.rows]
    print(machine_line(args.quick))
    print()
    if rows:
        print(render_markdown(rows) if args.markdown else render_text(rows))
    else:
        print("(no rows)")
    print()
    for outcome in outcomes:
        if outcome.error is not None:
            print(f"{outcome.name}: ERROR after {outcome.seconds:.1f}s\n{outcome.error}")
        elif outcome.skipped is not None:
            print(f"{outcome.name}: skipped, {outcome.skipped}")
        else:
            print(f"{outcome.name}: {len(outcome.rows)} rows in {outcome.seconds:.1f}s")

    missed = [row for row in rows if not row.met]
    if missed:
        print(f"{len(missed)} of {len(rows)} rows miss their limit")
    if any(outcome.error is not None for outcome in outcomes):
        return 1
    could_not_run = any(outcome.skipped is not None for outcome in outcomes)
    return 1 if args.strict and (missed or could_not_run) else 0


if __name__ == "__main__":
    sys.exit(main())

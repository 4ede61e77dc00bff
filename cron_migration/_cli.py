"""``python -m cron_migration``: ``plan module:attribute [--check]`` and ``audit PATH``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._audit import apply_baseline, audit_paths, to_json, to_sarif, write_baseline
from ._extras import import_needing_scheduler
from ._shadowing import ShadowedPackageError, check_not_shadowed


class UsageError(Exception):
    """Bad input on the command line: exit status 2 with the message."""


def load_scheduler(spec: str) -> Any:
    """The scheduler ``module:attribute`` names (or a function returning one)."""
    try:
        check_not_shadowed()
    except ShadowedPackageError as exc:
        raise UsageError(str(exc)) from exc
    try:
        BaseScheduler = import_needing_scheduler(
            "apscheduler.schedulers.base", "cron_migration"
        ).BaseScheduler
    except ImportError as exc:
        raise UsageError(str(exc)) from exc

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"expected module:attribute (e.g. myservice.cron:scheduler), got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` has it
    # Whatever importing or building fails with is an error of the command (status 2),
    # never an answer to --check (1) nor, for a SystemExit(0), a pass.
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except (Exception, SystemExit) as exc:
        raise UsageError(f"importing {module_name!r} failed: {exc!r}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from exc
    if not isinstance(target, BaseScheduler) and callable(target):
        try:
            target = target()
        except (Exception, SystemExit) as exc:
            raise UsageError(f"{spec}() failed: {exc!r}") from exc
    if not isinstance(target, BaseScheduler):
        raise UsageError(
            f"{spec} is {type(target).__name__}, not an APScheduler 3 scheduler "
            "(or a function returning one)"
        )
    return target


def plan(spec: str, check: bool, async_jobs: str | None) -> int:
    scheduler = load_scheduler(spec)
    from ._migrate import migrate_scheduler

    switch = None if async_jobs is None else [j.strip() for j in async_jobs.split(",") if j.strip()]
    try:
        _, report = migrate_scheduler(scheduler, async_jobs=switch, lag_monitor=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    print(report.render())
    return 1 if check and not report.ok else 0


def audit(
    paths: Sequence[str],
    check: bool,
    output_format: str = "text",
    baseline: str | None = None,
    write_baseline_to: str | None = None,
) -> int:
    try:
        findings = audit_paths([Path(p) for p in paths])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if write_baseline_to is not None:
        write_baseline(findings, Path(write_baseline_to))
        print(f"{len(findings)} finding(s) written to the baseline {write_baseline_to}")
        return 0
    if baseline is not None:
        try:
            findings = apply_baseline(findings, Path(baseline))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if output_format == "json":
        print(json.dumps(to_json(findings), indent=2))
    elif output_format == "sarif":
        print(json.dumps(to_sarif(findings), indent=2))
    else:
        for finding in findings:
            print(finding.render())
        print(f"{len(findings)} call site(s) to migrate")
    return 1 if check and findings else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cron_migration",
        description="Plan and check the move of cron jobs to AsyncIOScheduler.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser(
        "plan", help="what migrate_scheduler() changes for each job of a legacy scheduler"
    )
    plan_parser.add_argument("scheduler", help="module:attribute of the scheduler")
    plan_parser.add_argument(
        "--check", action="store_true", help="exit 1 when something cannot move as is"
    )
    plan_parser.add_argument(
        "--async-jobs",
        metavar="IDS",
        help="comma-separated ids on the async path (default: $CRON_MIGRATION_ASYNC_JOBS)",
    )
    audit_parser = commands.add_parser("audit", help="call sites still to migrate (CM001-CM004)")
    audit_parser.add_argument("paths", nargs="+", metavar="PATH")
    audit_parser.add_argument("--check", action="store_true", help="exit 1 when any is found")
    audit_parser.add_argument(
        "--format",
        choices=("text", "json", "sarif"),
        default="text",
        help="text (default), json, or sarif (SARIF 2.1.0, for code scanning)",
    )
    baseline = audit_parser.add_mutually_exclusive_group()
    baseline.add_argument(
        "--baseline", metavar="FILE", help="report only the findings this baseline does not list"
    )
    baseline.add_argument(
        "--write-baseline",
        metavar="FILE",
        help="record every current finding as accepted in FILE, then exit 0",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            return plan(args.scheduler, args.check, args.async_jobs)
        return audit(args.paths, args.check, args.format, args.baseline, args.write_baseline)
    except UsageError as exc:
        print(f"python -m cron_migration {args.command}: {exc}", file=sys.stderr)
        return 2

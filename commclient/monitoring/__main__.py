"""``python -m commclient.monitoring export DIR`` (and ``generate``, for development)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._definitions import DEFAULT_BREAKER_WINDOW, DEFAULT_RUNBOOK_BASE, DEFAULT_SLO
from ._files import export


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m commclient.monitoring",
        description="Grafana and Prometheus files for services that use commclient.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser(
        "export",
        help="write a Grafana provisioning tree and the Prometheus rules into DIR",
    )
    exporting.add_argument("directory", metavar="DIR")
    exporting.add_argument(
        "--datasource-uid",
        default="prometheus",
        help="uid of the Prometheus data source the Grafana alert rules query"
        " (default: %(default)s)",
    )
    exporting.add_argument(
        "--dashboards-path",
        default=None,
        help="where Grafana reads DIR/grafana/dashboards, e.g. its path in a container"
        " (default: its absolute path here)",
    )
    exporting.add_argument(
        "--slo",
        type=float,
        default=DEFAULT_SLO,
        help="share of a pair's attempts that must succeed; the error-budget burn-rate"
        " alerts defend it (default: %(default)s)",
    )
    exporting.add_argument(
        "--breaker-window",
        default=DEFAULT_BREAKER_WINDOW,
        help="how long a pair's breaker must stay not closed before it alerts"
        " (default: %(default)s)",
    )
    exporting.add_argument(
        "--runbook-base",
        default=DEFAULT_RUNBOOK_BASE,
        help="URL where your people read RUNBOOKS.md; each alert's runbook_url is it plus"
        " #alertname (default: %(default)s, the file written next to the rules)",
    )
    exporting.add_argument(
        "--selector",
        default="",
        help='label matchers every query adds to the series it reads, e.g. namespace="prod"',
    )
    exporting.add_argument(
        "--group-by",
        default="",
        help="labels every aggregation keeps apart, e.g. cluster,namespace",
    )
    generating = commands.add_parser(
        "generate",
        help="regenerate the shipped files from the definitions (needs grafana-foundation-sdk)",
    )
    generating.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parent, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.command == "export":
        try:
            written = export(
                args.directory,
                datasource_uid=args.datasource_uid,
                dashboards_path=args.dashboards_path,
                slo=args.slo,
                breaker_window=args.breaker_window,
                runbook_base=args.runbook_base,
                selector=args.selector,
                group_by=tuple(name.strip() for name in args.group_by.split(",") if name.strip()),
            )
        except (ValueError, OSError) as error:
            parser.error(str(error))
    else:
        try:
            from ._generate import write
        except ImportError as error:
            parser.error(
                f"generate needs the development packages grafana-foundation-sdk (Python 3.11+)"
                f" and PyYAML ({error}); the shipped files need neither"
            )
        written = list(write(args.output))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

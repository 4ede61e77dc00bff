"""``python -m commclient.monitoring export DIR`` (and ``generate``, for development)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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

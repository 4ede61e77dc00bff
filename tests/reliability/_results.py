"""Sizes of the scenarios and the rows they report for RELIABILITY.md.

``RELIABILITY_FULL=1`` runs the full counts and durations of the issue; without it (CI)
every scenario runs a shortened version of itself. With ``RELIABILITY_RESULTS=PATH`` each
scenario appends its row, as one JSON line, to PATH; ``python -m tests.reliability.report``
sets both and writes the table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TypeVar

T = TypeVar("T")

FULL = os.environ.get("RELIABILITY_FULL", "").lower() not in ("", "0", "false", "no")
RESULTS_ENV = "RELIABILITY_RESULTS"


def sized(ci: T, full: T) -> T:
    """``full`` under ``RELIABILITY_FULL=1``, else the CI size ``ci``."""
    return full if FULL else ci


@dataclass
class Row:
    """One scenario's line in the table; a test fills it in while it runs."""

    scenario: str
    title: str = ""
    load: str = ""
    faults: str = ""
    outcome: str = ""
    lost: str = ""
    figures: dict[str, object] = field(default_factory=dict)
    test: str = ""
    result: str = ""

    def write(self) -> None:
        path = os.environ.get(RESULTS_ENV)
        if not path:
            return
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({**asdict(self), "full": FULL}, default=str) + "\n")

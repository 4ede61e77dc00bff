"""One row of the benchmark table: a candidate measured side by side with its baseline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """A measurement; ``ratio`` is candidate / baseline, ``limit`` the target ratio or value."""

    group: str
    candidate: str
    baseline: str
    candidate_value: float
    baseline_value: float
    unit: str
    limit: float
    limit_kind: str = "ratio"  # "ratio": candidate/baseline <= limit; "value": candidate <= limit

    @property
    def ratio(self) -> float:
        return self.candidate_value / self.baseline_value if self.baseline_value else float("inf")

    @property
    def met(self) -> bool:
        measured = self.ratio if self.limit_kind == "ratio" else self.candidate_value
        return measured <= self.limit

"""One row of the benchmark table: a candidate measured side by side with its baseline."""

from __future__ import annotations

from dataclasses import dataclass

#: How a row's limit reads: ``ratio``/``value`` are upper bounds on candidate / baseline or
#: on the candidate's value, ``min_ratio``/``min_value`` lower bounds (a throughput), and
#: ``none`` a row shown for comparison only (a peer library, the bare transport's figures).
LIMIT_KINDS = ("ratio", "value", "difference", "min_ratio", "min_value", "none")


@dataclass(frozen=True)
class Row:
    """A measurement; ``ratio`` is candidate / baseline, ``limit`` the target ratio or value.

    ``candidate_spread`` and ``baseline_spread`` are the half-range of the rounds around
    their median, as a fraction of it (0: one round, or not measured in rounds).
    """

    group: str
    candidate: str
    baseline: str
    candidate_value: float
    baseline_value: float
    unit: str
    limit: float
    limit_kind: str = "ratio"
    candidate_spread: float = 0.0
    baseline_spread: float = 0.0

    def __post_init__(self) -> None:
        if self.limit_kind not in LIMIT_KINDS:
            raise ValueError(f"limit_kind must be one of {LIMIT_KINDS}, got {self.limit_kind!r}")

    @property
    def ratio(self) -> float:
        return self.candidate_value / self.baseline_value if self.baseline_value else float("inf")

    @property
    def met(self) -> bool:
        kind = self.limit_kind
        if kind == "none":
            return True
        if kind == "difference":
            return self.candidate_value - self.baseline_value <= self.limit
        measured = self.ratio if kind in ("ratio", "min_ratio") else self.candidate_value
        return measured >= self.limit if kind.startswith("min_") else measured <= self.limit


def spread(values: list[float]) -> float:
    """Half the range of ``values`` as a fraction of their median (0 for a single value)."""
    import statistics

    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return (max(values) - min(values)) / 2 / middle if middle else 0.0

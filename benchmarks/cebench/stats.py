"""Repetitions and their medians."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Repeated:
    """One figure measured several times; ``median`` is what the tables show."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> Repeated:
        if not values:
            raise ValueError("no repetitions")
        return cls(tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def n(self) -> int:
        return len(self.values)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]

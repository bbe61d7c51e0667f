"""Exact stream totals: Decimal sums, histogram bucket counts, and per-chunk checksums.

Everything here is exact arithmetic on what PostgreSQL summed (numeric sums
arrive as ``Decimal``); floats appear only when /metrics is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from credit_exporter.metric_state import LabelValues


@dataclass
class HistogramValue:
    """Cumulative bucket counts (``le`` order, +Inf excluded), count and exact sum."""

    buckets: list[int]
    count: int = 0
    total: Decimal = Decimal(0)

    def add(self, other: HistogramValue) -> HistogramValue:
        return HistogramValue(
            [a + b for a, b in zip(self.buckets, other.buckets, strict=True)],
            self.count + other.count,
            self.total + other.total,
        )

    def negated(self) -> HistogramValue:
        return HistogramValue([-b for b in self.buckets], -self.count, -self.total)


Value = Decimal | HistogramValue
Aggregates = dict[str, dict[LabelValues, Value]]


def add_value(series: dict[LabelValues, Value], labels: LabelValues, value: Value) -> None:
    """``series[labels] += value`` (a new series starts at ``value``)."""
    present = series.get(labels)
    if present is None:
        series[labels] = value
    elif isinstance(present, HistogramValue):
        assert isinstance(value, HistogramValue)
        series[labels] = present.add(value)
    else:
        assert isinstance(value, Decimal)
        series[labels] = present + value


def add_aggregates(target: Aggregates, source: Aggregates) -> None:
    """``target += source``, metric by metric and series by series."""
    for metric, series in source.items():
        into = target.setdefault(metric, {})
        for labels, value in series.items():
            add_value(into, labels, value)


def negated(value: Value) -> Value:
    return value.negated() if isinstance(value, HistogramValue) else -value


def magnitude(value: Value) -> Decimal:
    """A value's size as one number: the sum for a counter, the count for a histogram."""
    return Decimal(value.count) if isinstance(value, HistogramValue) else value


def is_zero(value: Value) -> bool:
    if isinstance(value, HistogramValue):
        return value.count == 0 and value.total == 0 and not any(value.buckets)
    return value == 0


def difference(new: Aggregates, old: Aggregates) -> Aggregates:
    """``new - old`` per series, leaving out series that did not change (a series new in
    ``new`` is kept even at zero: it must start to exist)."""
    result: Aggregates = {}
    for metric in new.keys() | old.keys():
        changes: dict[LabelValues, Value] = {}
        before = old.get(metric, {})
        after = new.get(metric, {})
        for labels in after.keys() | before.keys():
            delta: Value | None = after.get(labels)
            if labels in before:
                minus = negated(before[labels])
                delta = minus if delta is None else _plus(delta, minus)
            assert delta is not None
            if not is_zero(delta) or labels not in before:
                changes[labels] = delta
        if changes:
            result[metric] = changes
    return result


def _plus(a: Value, b: Value) -> Value:
    if isinstance(a, HistogramValue):
        assert isinstance(b, HistogramValue)
        return a.add(b)
    assert isinstance(b, Decimal)
    return a + b


# --- checksums: per time chunk, the stream's row count, sums and label fingerprint ------------

Checksum = tuple[Any, ...]  # one cell per StreamPlan.checksum_columns


def _number(cell: Any) -> Any:
    return 0 if cell is None else cell  # sum() over no non-NULL value is NULL


def add_checksums(a: Checksum | None, b: Checksum | None) -> Checksum | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(_number(x) + _number(y) for x, y in zip(a, b, strict=True))


def subtract_checksums(a: Checksum | None, b: Checksum | None) -> Checksum | None:
    if b is None:
        return a
    minus = tuple(-_number(y) for y in b)
    return minus if a is None else add_checksums(a, minus)


def same_checksum(a: Checksum | None, b: Checksum | None) -> bool:
    """Whether two checksums agree (a missing one is all zeros; NaN sums agree with NaN)."""
    width = len(a if a is not None else b or ())
    left = a if a is not None else (0,) * width
    right = b if b is not None else (0,) * width
    return all(_same_cell(x, y) for x, y in zip(left, right, strict=True))


def _same_cell(x: Any, y: Any) -> bool:
    x, y = _number(x), _number(y)
    if isinstance(x, Decimal) and isinstance(y, Decimal) and x.is_nan() and y.is_nan():
        return True
    return bool(x == y)

"""The full aggregates a generic SQL exporter runs every interval for the stream's totals.

query-exporter and sql_exporter turn one query's rows into one set of series,
so the same totals need one ``GROUP BY`` per distinct label set, each over the
whole table. The queries are derived from the stream's own config (its SQL
and metric mappings), so they return exactly what the stream exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from credit_exporter import catalog
from credit_exporter.config import MetricMapping, StreamConfig


@dataclass(frozen=True)
class BaselineQuery:
    """One full-aggregate query; ``metrics`` maps each value column to its labels."""

    name: str
    sql: str
    metrics: dict[str, tuple[str, ...]]
    types: dict[str, str]  # value column -> query-exporter metric type


def _label_pairs(mapping: MetricMapping) -> tuple[tuple[str, str], ...]:
    """(label, column) of every label a column fills (not the label of ``values``)."""
    metric = catalog.get(mapping.metric)
    return tuple(
        (label, mapping.labels[label]) for label in metric.labels if label != mapping.value_label
    )


def _source(config: StreamConfig) -> str:
    return "(\n" + config.sql.strip().rstrip(";") + "\n) AS events"


def _select_labels(pairs: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"{column} AS {label}" for label, column in pairs]


def _counter_query(
    name: str, config: StreamConfig, pairs: tuple[tuple[str, str], ...], group: list[MetricMapping]
) -> BaselineQuery:
    values = [
        f"sum({m.value}) AS {m.metric}" if m.value else f"count(*) AS {m.metric}" for m in group
    ]
    ordinals = ", ".join(str(i + 1) for i in range(len(pairs)))
    sql = (
        f"SELECT {', '.join(_select_labels(pairs) + values)}\n"
        f"FROM {_source(config)}\nGROUP BY {ordinals}"
    )
    labels = tuple(label for label, _ in pairs)
    return BaselineQuery(
        name,
        sql,
        {m.metric: labels for m in group},
        {m.metric: "counter" for m in group},
    )


def _histogram_query(
    name: str, config: StreamConfig, pairs: tuple[tuple[str, str], ...], mapping: MetricMapping
) -> BaselineQuery:
    """Bucket counts in one scan, unpivoted to one row per ``le``."""
    metric = catalog.get(mapping.metric)
    observed = mapping.value
    buckets = [
        f"count(*) FILTER (WHERE {observed} <= {Decimal(repr(bound))}) AS b{i}"
        for i, bound in enumerate(metric.buckets)
    ]
    rows = [f"('{bound:g}', agg.b{i})" for i, bound in enumerate(metric.buckets)]
    rows.append("('+Inf', agg.n)")
    labels = tuple(label for label, _ in pairs)
    ordinals = ", ".join(str(i + 1) for i in range(len(pairs)))
    inner = (
        f"SELECT {', '.join(_select_labels(pairs) + buckets)}, "
        f"count({observed}) AS n, coalesce(sum({observed}), 0) AS total\n"
        f"FROM {_source(config)}\nGROUP BY {ordinals}"
    )
    base = metric.name
    sql = (
        f"SELECT {', '.join(f'agg.{label}' for label in labels)}, b.le, "
        f"b.n AS {base}_bucket, agg.n AS {base}_count, agg.total AS {base}_sum\n"
        f"FROM (\n{inner}\n) AS agg\n"
        f"CROSS JOIN LATERAL (VALUES {', '.join(rows)}) AS b(le, n)"
    )
    metrics = {f"{base}_bucket": (*labels, "le"), f"{base}_count": labels, f"{base}_sum": labels}
    return BaselineQuery(name, sql, metrics, dict.fromkeys(metrics, "gauge"))


def _values_query(
    name: str, config: StreamConfig, pairs: tuple[tuple[str, str], ...], mapping: MetricMapping
) -> BaselineQuery:
    """A metric whose label values are value columns (tokens by type): one sum per column
    in one scan, unpivoted to one row per label value."""
    assert mapping.value_label is not None
    columns = mapping.value_columns
    sums = [f"sum({column}) AS v{i}" for i, column in enumerate(columns.values())]
    rows = [f"('{text}', agg.v{i})" for i, text in enumerate(columns)]
    labels = tuple(label for label, _ in pairs)
    ordinals = ", ".join(str(i + 1) for i in range(len(pairs)))
    inner = (
        f"SELECT {', '.join(_select_labels(pairs) + sums)}\n"
        f"FROM {_source(config)}\nGROUP BY {ordinals}"
    )
    sql = (
        f"SELECT {', '.join(f'agg.{label}' for label in labels)}, v.{mapping.value_label}, "
        f"v.total AS {mapping.metric}\n"
        f"FROM (\n{inner}\n) AS agg\n"
        f"CROSS JOIN LATERAL (VALUES {', '.join(rows)}) AS v({mapping.value_label}, total)"
    )
    return BaselineQuery(
        name,
        sql,
        {mapping.metric: (*labels, mapping.value_label)},
        {mapping.metric: "counter"},
    )


def baseline_queries(config: StreamConfig) -> list[BaselineQuery]:
    """One query per distinct label set of the stream's metrics (histograms and metrics
    with ``values`` apart)."""
    counters: dict[tuple[tuple[str, str], ...], list[MetricMapping]] = {}
    queries: list[BaselineQuery] = []
    for mapping in config.metrics:
        pairs = _label_pairs(mapping)
        if catalog.get(mapping.metric).type is catalog.MetricType.HISTOGRAM:
            queries.append(_histogram_query(f"q{len(queries)}", config, pairs, mapping))
        elif mapping.values is not None:
            queries.append(_values_query(f"q{len(queries)}", config, pairs, mapping))
        else:
            counters.setdefault(pairs, []).append(mapping)
    for pairs, group in counters.items():
        queries.append(_counter_query(f"q{len(queries)}", config, pairs, group))
    return queries

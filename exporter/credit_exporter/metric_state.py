"""Metric state in memory: the series every source last published.

Sources publish whole snapshots (``replace``); nothing is mutated in place, so
the renderer can read a consistent view from another thread while a poll
publishes the next one.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from credit_exporter import catalog
from credit_exporter.textformat import LabelText, simple_family

LabelValues = tuple[str, ...]
Series = Mapping[LabelValues, float]


class MetricState:
    """Series per catalogue metric, grouped by the source that published them."""

    def __init__(self) -> None:
        # source name -> metric name -> label values -> value
        self._by_source: dict[str, Mapping[str, Series]] = {}

    def replace(self, source: str, snapshot: Mapping[str, Series]) -> None:
        """Replace everything ``source`` published before with ``snapshot``."""
        frozen = {name: MappingProxyType(dict(series)) for name, series in snapshot.items()}
        self._by_source = {**self._by_source, source: MappingProxyType(frozen)}

    def forget(self, source: str) -> None:
        """Drop a source entirely (its query was removed from the config)."""
        self._by_source = {k: v for k, v in self._by_source.items() if k != source}

    def snapshots(self) -> Mapping[str, Mapping[str, Series]]:
        """Every source's current snapshot (a consistent view: replaced, never mutated)."""
        return self._by_source

    def series(self, metric: str) -> dict[LabelValues, float]:
        merged: dict[LabelValues, float] = {}
        for snapshot in self._by_source.values():
            merged.update(snapshot.get(metric, {}))
        return merged

    def metrics(self) -> list[str]:
        names = {name for snapshot in self._by_source.values() for name in snapshot}
        return sorted(names)


class StateRenderer:
    """Writes the state gauges of ``MetricState`` in catalogue order.

    A source's snapshot is immutable, so its text is rendered once, when it is
    first seen, and reused by every render until the source publishes again.
    """

    def __init__(self, state: MetricState) -> None:
        self._state = state
        self._labels = {m.name: LabelText(m.labels) for m in catalog.METRICS}
        # (source, metric) -> (the snapshot's series, their encoded text)
        self._chunks: dict[tuple[str, str], tuple[Series, list[bytes]]] = {}

    def render(self) -> tuple[list[bytes], dict[str, int]]:
        """The encoded text of every published gauge family, and its series count."""
        feeds: dict[str, list[tuple[str, Series]]] = {}
        for source, snapshot in self._state.snapshots().items():
            for metric, series in snapshot.items():
                feeds.setdefault(metric, []).append((source, series))
        parts: list[bytes] = []
        counts: dict[str, int] = {}
        chunks: dict[tuple[str, str], tuple[Series, list[bytes]]] = {}
        for metric in catalog.METRICS:
            fed = feeds.get(metric.name)
            if not fed:
                continue
            if len(fed) == 1:  # the config allows one feeding query per metric
                key, series = (fed[0][0], metric.name), fed[0][1]
                cached = self._chunks.get(key)
                if cached is None or cached[0] is not series:
                    self._chunks.pop(key, None)  # the old text goes before the new is built
                    cached = (series, simple_family(metric, series, self._labels[metric.name]))
                chunks[key] = cached
                text = cached[1]
            else:
                series = self._state.series(metric.name)
                text = simple_family(metric, series, self._labels[metric.name])
            parts += text
            counts[metric.name] = len(series)
        self._chunks = chunks
        return parts, counts

"""Metric state in memory: the series every source last published.

Sources publish whole snapshots (``replace``); nothing is mutated in place, so
the renderer can read a consistent view from another thread while a poll
publishes the next one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from credit_exporter import catalog

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

    def series(self, metric: str) -> dict[LabelValues, float]:
        merged: dict[LabelValues, float] = {}
        for snapshot in self._by_source.values():
            merged.update(snapshot.get(metric, {}))
        return merged

    def metrics(self) -> list[str]:
        names = {name for snapshot in self._by_source.values() for name in snapshot}
        return sorted(names)


class StateCollector(Collector):
    """Exposes the state gauges of ``MetricState`` in catalogue order."""

    def __init__(self, state: MetricState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        present = set(self._state.metrics())
        for metric in catalog.METRICS:
            if metric.name not in present:
                continue
            # _info metrics are gauges fixed at 1 in the classic text format
            family = GaugeMetricFamily(metric.name, metric.help, labels=list(metric.labels))
            for labels, value in sorted(self._state.series(metric.name).items()):
                family.add_metric(list(labels), value)
            yield family

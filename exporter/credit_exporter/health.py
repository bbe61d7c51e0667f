"""The exporter's own health: per-query status and the self-metrics of the catalogue."""

from __future__ import annotations

import contextlib
import platform
import time
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from credit_exporter import __version__, catalog

# *_created samples are not in the catalogue and only confuse alert rules
disable_created_metrics()

ERROR_REASONS = ("timeout", "connection", "sql", "validation")
# Created at 0 with their query, so increase() sees the first drop.
DROPPED_ROW_REASONS = (
    "null_label", "null_value", "not_a_number", "not_finite", "duplicate_series",
    "label_value_too_long", "invalid_utf8", "out_of_range", "unsupported_type", "null_time",
)  # fmt: skip


# A source is stalled when no poll of it has completed (success or failure) for
# STALL_INTERVALS of its intervals plus its timeout (a stream's first poll: its
# startup_timeout). Every run is bounded by its timeout, so this only happens
# when its task no longer runs: a wedged reload, a task that ignored its
# cancellation, a bug.
STALL_INTERVALS = 3

RECONCILE_RESULTS = ("same", "different")
RECONCILE_REASONS = ("late", "deleted")
# why a stream started over from the whole table (credit_exporter_stream_recomputes_total)
RECOMPUTE_REASONS = ("database_replaced", "key_went_back")
# what became of a stream's checkpoint at start-up, and of each write of it
CHECKPOINT_LOAD_RESULTS = ("loaded", "missing", "corrupt", "mismatch", "verify_failed")
CHECKPOINT_WRITE_RESULTS = ("ok", "failed")


def _declared(name: str, kind: catalog.MetricType) -> catalog.Metric:
    """The catalogue's entry for a self-metric, which must be of ``kind``."""
    entry = catalog.get(name)
    if entry.type is not kind:
        raise TypeError(f"{name} is a {entry.type} in the catalogue, not a {kind}")
    return entry


# Each self-metric takes its name, help and labels (and buckets) from the catalogue.
def _gauge(name: str, registry: CollectorRegistry) -> Gauge:
    entry = _declared(name, catalog.MetricType.GAUGE)
    return Gauge(entry.name, entry.help, entry.labels, registry=registry)


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    entry = _declared(name, catalog.MetricType.COUNTER)
    return Counter(entry.name, entry.help, entry.labels, registry=registry)


def _histogram(name: str, registry: CollectorRegistry) -> Histogram:
    entry = _declared(name, catalog.MetricType.HISTOGRAM)
    return Histogram(entry.name, entry.help, entry.labels, buckets=entry.buckets, registry=registry)


def _info(name: str, registry: CollectorRegistry) -> Info:
    """An info metric; its catalogue labels are the keys given to ``info()``."""
    entry = _declared(name, catalog.MetricType.INFO)
    return Info(entry.name.removesuffix("_info"), entry.help, registry=registry)


@dataclass
class QueryStatus:
    """What the landing page and readiness know about one query."""

    name: str
    interval: float
    up: bool = False
    ever_succeeded: bool = False
    last_success: float | None = None
    last_error: str | None = None
    last_error_reason: str | None = None
    last_duration: float | None = None
    rows: int | None = None
    # the watchdog's view (monotonic seconds), reset by watch() when a task starts
    timeout: float = 0.0
    first_timeout: float = 0.0
    last_poll: float = field(default_factory=time.monotonic)
    polled: bool = False
    stalled: bool = False

    def stall_after(self) -> float:
        """Seconds without a completed poll after which the source is stalled."""
        timeout = self.timeout if self.polled else max(self.timeout, self.first_timeout)
        return STALL_INTERVALS * self.interval + timeout


class Health:
    """Self-metrics registered in the exporter's registry, plus per-query status."""

    def __init__(self, registry: CollectorRegistry, revision: str = "unknown") -> None:
        self.queries: dict[str, QueryStatus] = {}
        self.build = _info("credit_build_info", registry)
        self.build.info(
            {"version": __version__, "revision": revision,
             "python_version": platform.python_version()}
        )  # fmt: skip
        self.up = _gauge("credit_exporter_query_up", registry)
        self.last_success = _gauge("credit_exporter_query_last_success_timestamp_seconds", registry)
        self.duration = _histogram("credit_exporter_query_duration_seconds", registry)
        self.rows = _gauge("credit_exporter_query_rows", registry)
        self.errors = _counter("credit_exporter_query_errors_total", registry)
        self.dropped_rows = _counter("credit_exporter_dropped_rows_total", registry)
        self.dropped_series = _counter("credit_exporter_dropped_series_total", registry)
        self.exposition_bytes = _gauge("credit_exporter_exposition_bytes", registry)
        self.exposition_series = _gauge("credit_exporter_exposition_series", registry)
        self.counter_excess = _gauge("credit_exporter_counter_excess", registry)
        self.reconcile_chunks = _counter("credit_exporter_reconcile_chunks_total", registry)
        self.reconcile_rows = _counter("credit_exporter_reconcile_rows_total", registry)
        self.reconcile_difference = _counter("credit_exporter_reconcile_difference_total", registry)
        self.recomputes = _counter("credit_exporter_stream_recomputes_total", registry)
        self.reconcile_seconds = _counter(
            "credit_exporter_reconcile_database_seconds_total", registry
        )
        self.reconcile_last_success = _gauge(
            "credit_exporter_reconcile_last_success_timestamp_seconds", registry
        )
        self.checkpoint_loads = _counter("credit_exporter_checkpoint_loads_total", registry)
        self.checkpoint_writes = _counter("credit_exporter_checkpoint_writes_total", registry)
        self.checkpoint_last_write = _gauge(
            "credit_exporter_checkpoint_last_write_timestamp_seconds", registry
        )
        self.stalled = _gauge("credit_exporter_query_stalled", registry)
        self.reload_ok = _gauge("credit_exporter_config_last_reload_successful", registry)
        self.reload_time = _gauge(
            "credit_exporter_config_last_reload_success_timestamp_seconds", registry
        )

    def register_query(self, name: str, interval: float) -> None:
        """Create the query's series up front so a never-succeeding query shows up=0."""
        self.queries[name] = QueryStatus(name=name, interval=interval)
        self.up.labels(name).set(0)
        self.stalled.labels(name).set(0)
        self.duration.labels(name)
        for reason in ERROR_REASONS:
            self.errors.labels(name, reason)
        for reason in DROPPED_ROW_REASONS:
            self.dropped_rows.labels(name, reason)

    def register_metric(self, metric: str, reasons: tuple[str, ...]) -> None:
        """Create a metric's dropped-series counters at 0 (see DROPPED_ROW_REASONS)."""
        for reason in reasons:
            self.dropped_series.labels(metric, reason)

    def forget_stream(self, name: str, metrics: list[str]) -> None:
        """Remove a stream's reconcile series and its metrics' excess (a reload dropped it)."""
        self.forget_query(name)
        for metric, removed in ((self.reconcile_chunks, RECONCILE_RESULTS),
                                (self.reconcile_rows, RECONCILE_REASONS)):  # fmt: skip
            for label in removed:
                with contextlib.suppress(KeyError):
                    metric.remove(name, label)
        with contextlib.suppress(KeyError):
            self.reconcile_seconds.remove(name)
        with contextlib.suppress(KeyError):
            self.checkpoint_last_write.remove(name)
        for metric, results in ((self.checkpoint_loads, CHECKPOINT_LOAD_RESULTS),
                                (self.checkpoint_writes, CHECKPOINT_WRITE_RESULTS)):  # fmt: skip
            for label in results:
                with contextlib.suppress(KeyError):
                    metric.remove(name, label)
        for reason in RECOMPUTE_REASONS:
            with contextlib.suppress(KeyError):
                self.recomputes.remove(name, reason)
        for metric_name in metrics:
            with contextlib.suppress(KeyError):
                self.counter_excess.remove(metric_name)
            for direction in ("up", "down"):
                with contextlib.suppress(KeyError):
                    self.reconcile_difference.remove(name, metric_name, direction)

    def register_stream(self, name: str, metrics: list[str]) -> None:
        """Create a stream's reconcile series at 0, so increase() sees the first finding."""
        for result in RECONCILE_RESULTS:
            self.reconcile_chunks.labels(name, result)
        for reason in RECONCILE_REASONS:
            self.reconcile_rows.labels(name, reason)
        self.reconcile_seconds.labels(name)
        for reason in RECOMPUTE_REASONS:
            self.recomputes.labels(name, reason)
        for metric in metrics:
            self.counter_excess.labels(metric).set(0)
            for direction in ("up", "down"):
                self.reconcile_difference.labels(name, metric, direction)

    def forget_query(self, name: str) -> None:
        self.queries.pop(name, None)
        for metric in (self.up, self.stalled, self.last_success, self.duration, self.rows):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        for reason in ERROR_REASONS:
            with contextlib.suppress(KeyError):
                self.errors.remove(name, reason)
        with contextlib.suppress(KeyError):
            self.reconcile_last_success.remove(name)

    def watch(self, name: str, timeout: float, first_timeout: float = 0.0) -> None:
        """A task for the source has (re)started: its stall clock starts now."""
        status = self.queries[name]
        status.timeout, status.first_timeout = timeout, first_timeout
        status.last_poll, status.polled = time.monotonic(), False

    def expect_long_poll(self, name: str) -> None:
        """The source's next poll may take as long as its first (a stream reading a
        backlog with its start-up timeout): not stalled before that."""
        if (status := self.queries.get(name)) is not None:
            status.polled = False

    def _polled(self, status: QueryStatus) -> None:
        status.last_poll, status.polled = time.monotonic(), True
        if status.stalled:
            status.stalled = False
            self.stalled.labels(status.name).set(0)

    def check_stalls(self) -> tuple[list[QueryStatus], list[QueryStatus]]:
        """Mark sources stalled or not; returns those that just stalled and just recovered.

        A stalled source shows ``credit_exporter_query_stalled`` 1 and
        ``credit_exporter_query_up`` 0, and readiness fails, until a poll of it
        completes again.
        """
        now = time.monotonic()
        stalled, recovered = [], []
        for status in self.queries.values():
            late = now - status.last_poll > status.stall_after()
            if late and not status.stalled:
                status.stalled, status.up = True, False
                self.stalled.labels(status.name).set(1)
                self.up.labels(status.name).set(0)
                stalled.append(status)
            elif not late and status.stalled:  # a reload restarted it
                status.stalled = False
                self.stalled.labels(status.name).set(0)
                recovered.append(status)
        return stalled, recovered

    def succeeded(self, name: str, duration: float, rows: int) -> None:
        status = self.queries[name]
        self._polled(status)
        status.up, status.ever_succeeded = True, True
        status.last_success, status.last_duration, status.rows = time.time(), duration, rows
        status.last_error = status.last_error_reason = None
        self.up.labels(name).set(1)
        self.last_success.labels(name).set(status.last_success)
        self.duration.labels(name).observe(duration)
        self.rows.labels(name).set(rows)

    def failed(self, name: str, duration: float, reason: str, message: str) -> None:
        status = self.queries[name]
        self._polled(status)
        status.up, status.last_duration = False, duration
        status.last_error, status.last_error_reason = message, reason
        self.up.labels(name).set(0)
        self.duration.labels(name).observe(duration)
        self.errors.labels(name, reason).inc()

    def config_loaded(self, ok: bool) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(time.time())

    @property
    def ready(self) -> bool:
        return all(s.ever_succeeded and not s.stalled for s in self.queries.values())

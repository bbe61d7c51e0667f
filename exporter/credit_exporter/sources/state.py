"""State queries: each poll turns the query's rows into a gauge snapshot that
replaces the query's previous series set (a row that disappears, disappears).

A failing run leaves the last good snapshot in place and marks the query
down (``credit_exporter_query_up`` 0, last-success time frozen), so dashboards
keep their values and alerts on staleness can tell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from credit_exporter import catalog
from credit_exporter.config import MetricMapping, QueryConfig
from credit_exporter.db import Database, QueryError, Result, classify
from credit_exporter.health import Health
from credit_exporter.limits import DEFAULT_POLICY, LabelPolicy, Refused, to_number
from credit_exporter.metric_state import LabelValues, MetricState

log = logging.getLogger(__name__)


@dataclass
class Conversion:
    """A query result turned into series, with what had to be skipped and why.

    ``dropped`` counts rows by dropped_rows reason; ``over_limit`` counts, per
    metric, the rows whose series was refused by the metric's series cap.
    """

    snapshot: dict[str, dict[LabelValues, float]]
    dropped: Counter[str] = field(default_factory=Counter)
    over_limit: Counter[str] = field(default_factory=Counter)


def to_label(value: object) -> str:
    """A cell as a label value under the default policy (``Refused`` if it cannot be one)."""
    return DEFAULT_POLICY.label("", value)


class _CappedSeries:
    """The series of one metric, never more than ``2 * cap`` in memory while rows stream.

    The survivors are the ``cap`` series with the smallest label values (a
    sort order every replica shares): when the dict reaches twice the cap it is
    trimmed to the smallest ``cap``, and anything above the largest survivor
    is refused on sight from then on.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.series: dict[LabelValues, float] = {}
        self.cutoff: LabelValues | None = None
        self.refused = 0

    def add(self, labels: LabelValues, value: float) -> bool:
        """Keep the series; False if it is a duplicate of one already kept."""
        if self.cutoff is not None and labels > self.cutoff:
            self.refused += 1
            return True
        if labels in self.series:
            return False
        self.series[labels] = value
        if len(self.series) >= 2 * self.cap:
            self.trim()
        return True

    def trim(self) -> None:
        if len(self.series) <= self.cap:
            return
        ordered = sorted(self.series)
        for labels in ordered[self.cap :]:
            del self.series[labels]
        self.refused += len(ordered) - self.cap
        self.cutoff = ordered[self.cap - 1]


@dataclass
class _GaugePlan:
    """How one mapping reads a row: its label cells, and its value cells, each with the
    text of the ``values`` label it stands for (None without ``values``)."""

    metric: str
    policy: LabelPolicy
    label_cells: tuple[tuple[str, int | None], ...]  # None: the label of ``values``
    value_cells: tuple[tuple[str | None, int | None], ...]  # column None: an _info metric's 1
    series: _CappedSeries

    def labels(self, row: tuple[object, ...], text: str | None) -> LabelValues:
        return tuple(
            self.policy.label(label, text if i is None else row[i]) for label, i in self.label_cells
        )


class Converter:
    """Turns a state query's rows into capped series, one chunk of rows at a time."""

    def __init__(self, columns: tuple[str, ...], mappings: list[MetricMapping]) -> None:
        index = {name: i for i, name in enumerate(columns)}
        for mapping in mappings:
            if missing := [column for column in mapping.read_columns if column not in index]:
                raise QueryError(
                    "validation",
                    f"{mapping.metric}: result has no column {', '.join(missing)} "
                    f"(columns: {', '.join(columns)})",
                )
        self.dropped: Counter[str] = Counter()
        self._plans: list[_GaugePlan] = []
        for mapping in mappings:
            metric = catalog.get(mapping.metric)
            label_cells = tuple(
                (label, None if label == mapping.value_label else index[mapping.labels[label]])
                for label in metric.labels
            )
            value_cells: tuple[tuple[str | None, int | None], ...] = (
                (None, index[mapping.value] if mapping.value else None),
            )
            if mapping.values is not None:
                value_cells = tuple(
                    (text, index[column]) for text, column in mapping.value_columns.items()
                )
            series = _CappedSeries(mapping.policy.max_series)
            self._plans.append(
                _GaugePlan(mapping.metric, mapping.policy, label_cells, value_cells, series)
            )

    def feed(self, rows: list[tuple[object, ...]]) -> None:
        for plan in self._plans:
            for row in rows:
                for text, column in plan.value_cells:
                    try:
                        labels = plan.labels(row, text)
                        value = 1.0 if column is None else to_number(row[column])
                    except Refused as refused:
                        self.dropped[refused.reason] += 1
                        continue
                    if not plan.series.add(labels, value):
                        self.dropped["duplicate_series"] += 1

    def finish(self) -> Conversion:
        conversion = Conversion(snapshot={}, dropped=self.dropped)
        for plan in self._plans:
            plan.series.trim()
            conversion.snapshot[plan.metric] = plan.series.series
            if plan.series.refused:
                conversion.over_limit[plan.metric] = plan.series.refused
        return conversion


def convert(result: Result, mappings: list[MetricMapping]) -> Conversion:
    """Map rows onto series; raise QueryError(validation) if a named column is missing."""
    converter = Converter(result.columns, mappings)
    converter.feed(result.rows)
    return converter.finish()


class StateQuery:
    """One configured state query, polled on its own schedule."""

    def __init__(
        self,
        name: str,
        config: QueryConfig,
        database: Database,
        state: MetricState,
        health: Health,
    ) -> None:
        self.name = name
        self.config = config
        self.database = database
        self.state = state
        self.health = health
        for mapping in config.metrics:
            health.register_metric(mapping.metric, ("series_limit",))

    async def run_once(self) -> bool:
        """Run the query once and publish its snapshot; True on success."""
        started = time.monotonic()
        converter: Converter | None = None

        async def consume(columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
            nonlocal converter
            if converter is None:
                converter = Converter(columns, self.config.metrics)
            # off the event loop: 100k rows take ~0.4 s, and scrapes must not wait
            await asyncio.to_thread(converter.feed, rows)

        try:
            rows = await self.database.fetch_chunks(self.config.sql, self.config.timeout, consume)
            assert converter is not None
            conversion = converter.finish()
        except Exception as exc:
            report_failure(self.health, "query", self.name, started, exc)
            return False
        for reason, count in conversion.dropped.items():
            self.health.dropped_rows.labels(self.name, reason).inc(count)
        for metric, count in conversion.over_limit.items():
            self.health.dropped_series.labels(metric, "series_limit").inc(count)
        self.state.replace(self.name, conversion.snapshot)
        self.health.succeeded(self.name, time.monotonic() - started, rows)
        log.debug(
            "query %s: %d rows in %.3fs, %d series",
            self.name, rows, time.monotonic() - started,
            sum(len(series) for series in conversion.snapshot.values()),
        )  # fmt: skip
        return True

    async def run_forever(self, on_poll: asyncio.Event) -> None:
        await poll_forever(
            self.run_once, self.config.interval, on_poll,
            lambda: last_failure(self.health, self.name),
        )  # fmt: skip


def last_failure(health: Health, name: str) -> str | None:
    """Why the source's last run failed (None after a success)."""
    status = health.queries.get(name)
    return None if status is None else status.last_error_reason


def report_failure(health: Health, kind: str, name: str, started: float, exc: Exception) -> None:
    """Record a failed run. Anything but a QueryError is a bug: log its traceback,
    but count it like any failure so the source keeps polling (an exception out
    of run_once would end the polling task silently)."""
    error = classify(exc)
    health.failed(name, time.monotonic() - started, error.reason, str(error))
    if isinstance(exc, QueryError):
        log.warning("%s %s failed (%s): %s", kind, name, error.reason, error)
    else:
        log.error("%s %s failed unexpectedly: %s", kind, name, error, exc_info=exc)


# A run that failed to connect is retried after 1 s, 2 s, 4 s ... up to this (or the
# interval if shorter): a 5-minute query is back within seconds of its database, not at
# its next tick, and a refused connection costs the database nothing.
RETRY_CAP_SECONDS = 5.0


def retry_delay(failures: int, interval: float, reason: str | None) -> float:
    """Seconds before the next attempt after ``failures`` failed runs in a row, the last
    for ``reason``. Any other failure (a timeout, an SQL error) ran on the database, so
    its retries back off up to the interval instead: a query that times out because the
    database is loaded must not run every five seconds."""
    cap = RETRY_CAP_SECONDS if reason == "connection" else interval
    return min(interval, cap, 2.0 ** (failures - 1))


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task has been asked to stop.

    On Python 3.11, ``asyncio.wait_for`` returns the inner result instead of
    raising when a cancel() arrives in the same loop iteration as the inner
    future completes (fixed in 3.12 by its rewrite on ``asyncio.timeout``).
    psycopg_pool waits through ``wait_for`` (pool.open, getconn), so a reload's
    cancel() can be swallowed there and the task would poll on, unstoppable.
    ``Task.cancelling()`` still counts the request: honour it between runs.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def poll_forever(
    run_once: Callable[[], Awaitable[bool]],
    interval: float,
    on_poll: asyncio.Event,
    failure_reason: Callable[[], str | None] = lambda: None,
) -> None:
    """Run at a fixed cadence (not drifting with run time) until cancelled.

    A failed run is retried on a backoff of its own (``retry_delay``) instead
    of waiting for the next tick; the first success returns to the cadence.
    """
    next_run = time.monotonic()
    failures = 0
    while True:
        stop_if_cancelled()
        ok = await run_once()
        stop_if_cancelled()
        on_poll.set()
        failures = 0 if ok else failures + 1
        now = time.monotonic()
        if failures:
            next_run = now + retry_delay(failures, interval, failure_reason())
        else:
            next_run += interval
            if next_run < now:  # a run overran its interval (or retries ran): skip the ticks
                next_run = now + interval - (now - next_run) % interval
        await asyncio.sleep(next_run - now)

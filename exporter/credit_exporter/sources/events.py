"""Usage event streams -> exact, absolute, incremental counters and histograms.

The design (docs/event-engine.md): rows are split by the stream's ordering
column (its insertion key, else its time) at a *horizon*. Rows at or below it
are *settled* and summed once into a base kept in memory; rows above it are
*live* and re-aggregated on every poll. Exported value = base + live. A poll
reads only the rows above the previous horizon, whatever the table's size.

A candidate horizon (the highest key visible) is released once every
transaction that was open right after it was read has ended, checked before
the aggregate's REPEATABLE READ snapshot is taken; a role that cannot see
other sessions falls back to waiting ``settle``.

Sums are exact: PostgreSQL sums numerics exactly, the base accumulates in
``Decimal``, and floats appear only when /metrics is rendered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from psycopg import sql

from credit_exporter import catalog
from credit_exporter.config import MetricMapping, StreamConfig
from credit_exporter.db import Database
from credit_exporter.health import Health
from credit_exporter.metric_state import LabelValues
from credit_exporter.sources.state import poll_forever, report_failure, to_label
from credit_exporter.textformat import LabelText, header, histogram_lines, simple_family

log = logging.getLogger(__name__)

# The oldest open transaction may hold the horizon back by at most this much:
# a session left "idle in transaction" for hours must not make every poll
# re-read hours of events. Past it, only ``settle`` protects late commits.
MAX_GUARD_HOLD_SECONDS = 3600.0


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


Value = Decimal | HistogramValue
Aggregates = dict[str, dict[LabelValues, Value]]


def _add(target: Aggregates, source: Aggregates) -> None:
    for metric, series in source.items():
        into = target.setdefault(metric, {})
        for labels, value in series.items():
            present = into.get(labels)
            if present is None:
                into[labels] = value
            elif isinstance(present, HistogramValue):
                assert isinstance(value, HistogramValue)
                into[labels] = present.add(value)
            else:
                assert isinstance(value, Decimal)
                into[labels] = present + value


@dataclass(frozen=True)
class _MetricPlan:
    mapping: MetricMapping
    metric: catalog.Metric
    label_columns: tuple[str, ...]  # in the catalogue's label order
    grouping_mask: int
    aggregate_columns: tuple[str, ...]  # result columns this metric reads


@dataclass
class StreamPlan:
    """The SQL of one stream: one scan, one GROUPING SETS aggregate for every metric."""

    config: StreamConfig
    columns: list[str] = field(init=False)  # union of label columns, GROUPING() order
    metrics: list[_MetricPlan] = field(init=False)
    aggregates: list[tuple[str, sql.Composable]] = field(init=False)

    def __post_init__(self) -> None:
        columns: list[str] = []
        for mapping in self.config.metrics:
            for column in mapping.labels.values():
                if column not in columns:
                    columns.append(column)
        self.columns = columns
        self.aggregates = [("__rows", sql.SQL("count(*)"))]
        self.metrics = []
        summed: dict[str, str] = {}
        for index, mapping in enumerate(self.config.metrics):
            metric = catalog.get(mapping.metric)
            label_columns = tuple(mapping.labels[label] for label in metric.labels)
            mask = sum(
                1 << (len(columns) - 1 - i) for i, c in enumerate(columns) if c not in label_columns
            )
            if metric.type is catalog.MetricType.HISTOGRAM:
                assert mapping.value is not None
                observed = sql.Identifier(mapping.value)
                names = []
                for b, bound in enumerate(metric.buckets):
                    name = f"__h{index}_b{b}"
                    self.aggregates.append(
                        (name, sql.SQL("count(*) FILTER (WHERE {} <= {})").format(
                            observed, sql.Literal(Decimal(repr(bound))))),
                    )  # fmt: skip
                    names.append(name)
                self.aggregates.append((f"__h{index}_count", sql.SQL("count({})").format(observed)))
                self.aggregates.append((f"__h{index}_sum", sql.SQL("sum({})").format(observed)))
                names += [f"__h{index}_count", f"__h{index}_sum"]
                aggregate_columns = tuple(names)
            elif mapping.value is None:
                aggregate_columns = ("__rows",)
            else:
                if mapping.value not in summed:
                    summed[mapping.value] = f"__s{len(summed)}"
                    self.aggregates.append(
                        (summed[mapping.value],
                         sql.SQL("sum({})").format(sql.Identifier(mapping.value))),
                    )  # fmt: skip
                aggregate_columns = (summed[mapping.value],)
            self.metrics.append(
                _MetricPlan(mapping, metric, label_columns, mask, aggregate_columns)
            )

    @property
    def source(self) -> sql.Composable:
        """The stream's own SQL, as the subquery every statement wraps."""
        return sql.SQL(self.config.sql.strip().rstrip(";"))  # type: ignore[arg-type]

    @property
    def order_column(self) -> str:
        """The column rows are ordered by: the insertion key, else the time."""
        return self.config.key or self.config.time

    def top_statement(self) -> sql.Composed:
        """The highest ordering value visible now (an index scan backwards, one row)."""
        order = sql.Identifier(self.order_column)
        return sql.SQL(
            "SELECT events.{order} FROM (\n{source}\n) AS events"
            " WHERE events.{order} IS NOT NULL ORDER BY events.{order} DESC LIMIT 1"
        ).format(order=order, source=self.source)

    def shape_statement(self) -> sql.Composed:
        """No rows, only the stream's columns (check-config --connect)."""
        return sql.SQL("SELECT * FROM (\n{source}\n) AS events LIMIT 0").format(source=self.source)

    def statement(self, bounded: bool) -> sql.Composed:
        """The aggregate; ``bounded`` adds ``order > %(since)s`` (every poll but the first)."""
        time_column = sql.Identifier(self.order_column)
        lower = sql.SQL("WHERE {} > %(since)s").format(time_column) if bounded else sql.SQL("")
        label_columns = [sql.Identifier(c) for c in self.columns]
        sets = sql.SQL(", ").join(
            sql.SQL("({})").format(
                sql.SQL(", ").join(
                    [sql.Identifier("__settled"), *[sql.Identifier(c) for c in plan.label_columns]]
                )
            )
            for plan in self._distinct_sets()
        )
        grouping = (
            sql.SQL("GROUPING({})").format(sql.SQL(", ").join(label_columns))
            if label_columns
            else sql.SQL("0")
        )
        select_list = sql.SQL(", ").join(
            [
                sql.Identifier("__settled"),
                sql.SQL("{} AS __grouping").format(grouping),
                *label_columns,
                *[sql.SQL("{} AS {}").format(expr, sql.Identifier(name))
                  for name, expr in self.aggregates],
            ]
        )  # fmt: skip
        return sql.SQL(
            "SELECT {select_list} FROM ("
            "SELECT events.*, ({time} <= %(horizon)s) AS __settled "
            "FROM (\n{source}\n) AS events {lower}"
            ") AS stream GROUP BY GROUPING SETS ({sets})"
        ).format(
            select_list=select_list,
            time=sql.SQL("events.") + time_column,
            source=self.source,
            lower=lower,
            sets=sets,
        )

    def _distinct_sets(self) -> list[_MetricPlan]:
        seen: dict[int, _MetricPlan] = {}
        for plan in self.metrics:
            seen.setdefault(plan.grouping_mask, plan)
        return list(seen.values())

    def split(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> tuple[
        Aggregates, Aggregates, int
    ]:  # fmt: skip
        """Result rows -> (settled, live) aggregates per metric, and null-label rows skipped."""
        index = {name: i for i, name in enumerate(columns)}
        settled: Aggregates = {p.metric.name: {} for p in self.metrics}
        live: Aggregates = {p.metric.name: {} for p in self.metrics}
        by_mask: dict[int, list[_MetricPlan]] = {}
        for plan in self.metrics:
            by_mask.setdefault(plan.grouping_mask, []).append(plan)
        skipped = 0
        for row in rows:
            target = settled if row[index["__settled"]] else live
            for plan in by_mask.get(row[index["__grouping"]], []):
                try:
                    labels = tuple(to_label(row[index[c]]) for c in plan.label_columns)
                except ValueError:
                    skipped += int(row[index["__rows"]])
                    continue
                target[plan.metric.name][labels] = self._value(plan, row, index)
        return settled, live, skipped

    @staticmethod
    def _value(plan: _MetricPlan, row: tuple[Any, ...], index: dict[str, int]) -> Value:
        cells = [row[index[c]] for c in plan.aggregate_columns]
        if plan.metric.type is catalog.MetricType.HISTOGRAM:
            *buckets, count, total = cells
            return HistogramValue([int(b) for b in buckets], int(count), Decimal(total or 0))
        return Decimal(cells[0] or 0)


ACTIVITY_SQL = """
SELECT now(),
       (SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
          FROM pg_roles WHERE rolname = current_user),
       coalesce(
         (SELECT array_agg(pid::text || '@' || extract(epoch FROM xact_start)::text)
            FROM pg_stat_activity
           WHERE datname = current_database()
             AND pid <> pg_backend_pid()
             AND backend_type = 'client backend'
             AND xact_start IS NOT NULL
             AND application_name IS DISTINCT FROM current_setting('application_name')),
         '{}')
"""


@dataclass(frozen=True)
class Candidate:
    """A horizon that becomes safe once every transaction open after it was read has ended."""

    value: Any  # the highest ordering value visible when read
    open_transactions: frozenset[str]  # "pid@xact_start" read right after it
    seen: float  # time.monotonic() when read


class EventStream:
    """One configured stream: base + live aggregates, advanced on every poll."""

    def __init__(self, name: str, config: StreamConfig, database: Database, health: Health) -> None:
        self.name = name
        self.config = config
        self.database = database
        self.health = health
        self.plan = StreamPlan(config)
        self.horizon: Any = None  # rows with order value <= horizon are in the base
        self.candidates: list[Candidate] = []
        self.base: Aggregates = {p.metric.name: {} for p in self.plan.metrics}
        self.live: Aggregates = {p.metric.name: {} for p in self.plan.metrics}
        # what /metrics shows: base + live, never below what it showed before
        self.exported: Aggregates = {p.metric.name: {} for p in self.plan.metrics}

    async def _advance_horizon(self, timeout: float) -> Any:
        """Read a new candidate, release the safe ones, return the new horizon.

        Order matters: the top value is read first, the open transactions
        after it (in a later transaction), so any transaction that could still
        commit a row at or below the top value is in that set. A candidate is
        released when none of its transactions is open any more (read before
        the aggregate's snapshot is taken), or, when this role cannot see other
        sessions, once ``settle`` has passed.
        """
        async with self.database.read_only(timeout) as conn:
            cur = await conn.execute(self.plan.top_statement())
            top = await cur.fetchone()
        async with self.database.read_only(timeout) as conn:
            cur = await conn.execute(ACTIVITY_SQL)
            row = await cur.fetchone()
        assert row is not None
        db_now, can_see_all, open_list = row
        open_now = frozenset(open_list)
        now = time.monotonic()
        if top is not None and (self.horizon is None or top[0] > self.horizon):
            self.candidates.append(Candidate(top[0], open_now, now))
        max_hold = max(self.config.settle, MAX_GUARD_HOLD_SECONDS)
        released: list[Candidate] = []
        for candidate in self.candidates:
            age = now - candidate.seen
            if can_see_all and not (candidate.open_transactions & open_now):
                released.append(candidate)
            elif age >= (max_hold if can_see_all else self.config.settle):
                if can_see_all:
                    log.warning(
                        "stream %s: a transaction has been open for over %.0fs; rows it commits"
                        " below the horizon will not be counted", self.name, max_hold,
                    )  # fmt: skip
                released.append(candidate)
        horizon = self.horizon
        if released:
            value = max(c.value for c in released)
            if self.config.key is None:
                # ordered by time: also leave room for timestamps taken before BEGIN
                cap = db_now - timedelta(seconds=self.config.settle)
                value = min(value, cap)
            if horizon is None or value > horizon:
                horizon = value
        self.candidates = [
            c
            for c in self.candidates
            if c not in released and (horizon is None or c.value > horizon)
        ]
        return horizon

    async def poll(self) -> tuple[Any, Aggregates, Aggregates, int]:
        """One poll: (new horizon, settled, live, rows skipped for a null label)."""
        first = self.horizon is None
        timeout = self.config.startup_timeout if first else self.config.timeout
        horizon = await self._advance_horizon(timeout)
        # The start-up aggregate is the one big statement: give it memory for its
        # GROUPING SETS sorts and skip JIT (measured: JIT compiled ~270
        # functions for ~9 s of a 31 s start-up on 1M rows; work_mem 256MB
        # took it from 31 s to 18.5 s). Incremental polls read few rows.
        settings = {"jit": "off"}
        if first:
            settings["work_mem"] = self.config.startup_work_mem
        async with self.database.read_only(
            timeout, repeatable_read=True, settings=settings, beyond_statement_timeout=first
        ) as conn:
            cur = await conn.execute(
                self.plan.statement(bounded=not first),
                {"since": self.horizon, "horizon": horizon},
            )
            columns = tuple(c.name for c in cur.description or [])
            rows = await cur.fetchall()
        # off the event loop: the start-up result can be large, and scrapes must not wait
        settled, live, skipped = await asyncio.to_thread(self.plan.split, columns, rows)
        return horizon, settled, live, skipped

    async def run_once(self) -> bool:
        started = time.monotonic()
        try:
            horizon, settled, live, skipped = await self.poll()
        except Exception as exc:
            report_failure(self.health, "stream", self.name, started, exc)
            return False
        _add(self.base, settled)
        self.live = live
        self.horizon = horizon
        self.exported = self._never_decreasing(self.totals())
        if skipped:
            self.health.dropped_rows.labels(self.name, "null_label").inc(skipped)
        live_series = sum(len(s) for s in live.values())
        self.health.succeeded(self.name, time.monotonic() - started, live_series)
        return True

    def _never_decreasing(self, totals: Aggregates) -> Aggregates:
        """Keep the previous value of any series that would go down, and say so.

        Append-only rows can only make base + live grow; a decrease means rows
        were deleted or updated under the exporter (or a value column went
        negative). Prometheus would read it as a counter reset and rate() would
        jump, so the series holds its value and the incident is counted.
        """
        for metric, series in totals.items():
            previous = self.exported.get(metric, {})
            for labels, value in series.items():
                before = previous.get(labels)
                if before is None:
                    continue
                went_down = (
                    value.count < before.count or value.total < before.total
                    if isinstance(value, HistogramValue) and isinstance(before, HistogramValue)
                    else value < before  # type: ignore[operator]
                )
                if went_down:
                    series[labels] = before
                    self.health.dropped_series.labels(metric, "counter_decrease").inc()
                    log.warning(
                        "stream %s: %s%s would decrease; holding", self.name, metric, labels
                    )
            for labels, before in previous.items():
                if labels not in series:  # a live series whose rows vanished
                    series[labels] = before
                    self.health.dropped_series.labels(metric, "counter_decrease").inc()
        return totals

    def totals(self) -> Aggregates:
        """base + live, per metric and label set."""
        merged: Aggregates = {name: dict(series) for name, series in self.base.items()}
        _add(merged, self.live)
        return merged

    async def run_forever(self, on_poll: asyncio.Event) -> None:
        await poll_forever(self.run_once, self.config.interval, on_poll)


def le_text(bound: float) -> str:
    """A bucket bound as /metrics writes it ("0.01", "1.0"); backfill must match it."""
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


class StreamRenderer:
    """Writes every stream's counters and histograms; floats appear only here."""

    def __init__(self, streams: dict[str, EventStream]) -> None:
        self.streams = streams
        self._labels = {m.name: LabelText(m.labels) for m in catalog.METRICS}

    def render(self) -> tuple[str, dict[str, int]]:
        """The text of every stream-fed family, and its sample-line count."""
        totals: Aggregates = {}
        for stream in list(self.streams.values()):
            _add(totals, stream.exported)
        parts: list[str] = []
        counts: dict[str, int] = {}
        for metric in catalog.METRICS:
            series = totals.get(metric.name)
            if series is None:
                continue
            labels = self._labels[metric.name]
            if metric.type is catalog.MetricType.HISTOGRAM:
                parts.append(self._histogram(metric, series, labels))
                counts[metric.name] = len(series) * (len(metric.buckets) + 3)
            else:
                as_float = {key: float(value) for key, value in series.items()}  # Decimals
                parts.append(simple_family(metric, as_float, labels))
                counts[metric.name] = len(series)
        return "".join(parts), counts

    @staticmethod
    def _histogram(
        metric: catalog.Metric, series: dict[LabelValues, Value], labels: LabelText
    ) -> str:
        bounds = [le_text(bound) for bound in metric.buckets]
        lines = [header(metric)]
        for key in sorted(series):
            value = series[key]
            assert isinstance(value, HistogramValue)
            lines += histogram_lines(
                metric.name, labels(key), bounds, value.buckets, value.count, float(value.total)
            )
        labels.prune(series, len(series))
        return "".join(lines)

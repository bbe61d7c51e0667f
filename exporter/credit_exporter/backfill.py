"""Backfill: the history of every event-stream counter and histogram as OpenMetrics,
turned into Prometheus TSDB blocks by ``promtool``.

The value written for a series at a step ``T`` is exactly what the live
exporter would have exported had it polled at ``T``: the totals of every row
whose time column is ``<= T`` (docs/backfill.md explains the boundary).

It is computed without one query per step: per stream, ONE grouped pass over
the rows up to the last step, each row put in the bucket of the first step
that counts it (bucket 0 holds everything up to the first step: the base),
sorted by series then bucket. Python walks each series once, adding buckets
up in ``Decimal`` and writing the running total at every step, so memory does
not grow with the range or the number of series: a series is written, then
forgotten.

The output is one OpenMetrics file per TSDB block window (``BLOCK_RANGE_MS``,
one of the block ranges promtool can produce), each a complete document: its
families contiguous, each series in time order, ``# EOF`` at the end. While a
stream is read, each (family, window) pair has its own scratch file; a window's
file is their concatenation. One file per block matters because promtool reads
its whole input once per block window it covers: a single file spanning 90
days would be read forty times.

State gauges are not backfilled: state queries read the current state only and
the reference schema keeps no history of it.
"""

from __future__ import annotations

import contextlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg
from prometheus_client.utils import floatToGoString
from psycopg import sql

from credit_exporter import catalog
from credit_exporter.config import Config, ConfigError, StreamConfig, parse_duration
from credit_exporter.db import QueryError
from credit_exporter.demo.progress import ProgressBar
from credit_exporter.limits import Refused
from credit_exporter.metric_state import LabelValues
from credit_exporter.sources.events import HistogramValue, StreamPlan, le_text
from credit_exporter.sources.ordering import TimeColumn, describe_stream_sync

DEFAULT_OUTPUT = "credit-exporter-backfill"
FILE_PREFIX = "credit-exporter-backfill-"
# 54h: a TSDB block range (2h * 3^n) promtool accepts through --max-block-duration.
# One output file and one block per window; longer windows mean fewer files and
# blocks but more promtool memory per block (series x window / step samples).
BLOCK_RANGE_MS = 2 * 3_600_000 * 27
FETCH_ROWS = 20_000
WRITE_BUFFER = 1 << 16
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
# what a run puts in its output: blocks (and promtool's <ULID>.tmp-for-creation), files
_OWN = re.compile(rf"^([0-9A-HJKMNP-TV-Z]{{26}}(\.tmp.*)?|{re.escape(FILE_PREFIX)}.*\.om)$")


class BackfillError(Exception):
    """Bad input (exit 2): an unusable time, step, range, label or database reference."""


# --- input: times, step, labels, range ----------------------------------------------


def parse_time(text: str, now: datetime, what: str = "time") -> datetime:
    """RFC 3339 (``2024-05-01T00:00:00Z``), ``now``, or ``now-90d`` / ``now-1h30m``."""
    value = text.strip()
    if value.lower().startswith("now"):
        rest = value[3:].strip()
        if not rest:
            return now
        sign, duration = rest[0], rest[1:].strip()
        if sign not in "+-" or not duration:
            raise BackfillError(f"{what}: cannot parse {text!r} (expected now, now-7d, now-1h30m)")
        try:
            seconds = parse_duration(duration)
        except ValueError as error:
            raise BackfillError(f"{what}: {text!r}: {error}") from None
        return now + timedelta(seconds=seconds if sign == "+" else -seconds)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BackfillError(
            f"{what}: cannot parse {text!r} (expected RFC 3339 like 2024-05-01T00:00:00Z, "
            "now, or now-90d)"
        ) from None
    if parsed.tzinfo is None:
        raise BackfillError(f"{what}: {text!r} has no UTC offset (add Z or +hh:mm)")
    return parsed


def parse_step(text: str) -> int:
    """A Prometheus duration of at least 1s, in whole milliseconds."""
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise BackfillError(f"--step: {error}") from None
    step_ms = round(seconds * 1000)
    if step_ms < 1000 or abs(step_ms - seconds * 1000) > 1e-6:
        raise BackfillError(f"--step: must be at least 1s in whole milliseconds, got {text!r}")
    return step_ms


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs added to every series (the live scrape's job and instance)."""
    labels: dict[str, str] = {}
    taken = {"le"} | {label for m in catalog.event_metrics() for label in m.labels}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _LABEL_NAME.match(name) or name.startswith("__"):
            raise BackfillError(f"--label: expected NAME=VALUE with a label name, got {item!r}")
        if name in taken:
            raise BackfillError(f"--label: {name} is a label the metrics already use")
        if name in labels:
            raise BackfillError(f"--label: {name} given twice")
        labels[name] = value
    return labels


def to_ms(moment: datetime) -> int:
    """Unix milliseconds, exactly (no float on the way)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


@dataclass(frozen=True)
class Steps:
    """The sample times: every multiple of ``step_ms`` in [from, to], in Unix milliseconds,
    split into the block windows ``[k * window_ms, (k + 1) * window_ms)`` they fall in."""

    first_ms: int
    step_ms: int
    count: int
    window_ms: int = BLOCK_RANGE_MS

    @classmethod
    def between(
        cls, start: datetime, end: datetime, step_ms: int, window_ms: int = BLOCK_RANGE_MS
    ) -> Steps:
        if start > end:
            raise BackfillError(f"--from ({start.isoformat()}) is after --to ({end.isoformat()})")
        first = -(-to_ms(start) // step_ms) * step_ms
        last = to_ms(end) // step_ms * step_ms
        if first > last:
            raise BackfillError(
                f"no multiple of the step between --from {start.isoformat()} "
                f"and --to {end.isoformat()}: widen the range or shorten --step"
            )
        return cls(first, step_ms, (last - first) // step_ms + 1, window_ms)

    @property
    def last_ms(self) -> int:
        return self.first_ms + (self.count - 1) * self.step_ms

    def ms(self, index: int) -> int:
        return self.first_ms + index * self.step_ms

    def at(self, index: int) -> datetime:
        return datetime.fromtimestamp(self.ms(index) / 1000, UTC)

    def text(self, index: int) -> str:
        """The OpenMetrics timestamp (seconds) of a step."""
        ms = self.ms(index)
        return str(ms // 1000) if ms % 1000 == 0 else f"{ms // 1000}.{ms % 1000:03d}"

    @property
    def windows(self) -> int:
        return self.last_ms // self.window_ms - self.first_ms // self.window_ms + 1

    def window_of(self, index: int) -> int:
        """The window (0-based, from the first step's) a step falls in."""
        return self.ms(index) // self.window_ms - self.first_ms // self.window_ms

    def window_start(self, window: int) -> int:
        """The first step index of a window (``count`` past the last one)."""
        if window <= 0:
            return 0
        start_ms = (self.first_ms // self.window_ms + window) * self.window_ms
        return min(self.count, -(-(start_ms - self.first_ms) // self.step_ms))


class _Timestamps:
    """Timestamp strings of the steps, built once (or on demand for huge ranges)."""

    PRECOMPUTE_MAX = 2_000_000

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self._all = (
            [steps.text(i) for i in range(steps.count)]
            if steps.count <= self.PRECOMPUTE_MAX
            else None
        )

    def slice(self, start: int, stop: int) -> list[str]:
        if self._all is not None:
            return self._all[start:stop]
        return [self.steps.text(i) for i in range(start, stop)]


# --- the query -------------------------------------------------------------------------


def bucket_statement(plan: StreamPlan, time_column: TimeColumn) -> sql.Composed:
    """The stream's SQL wrapped as ONE grouped pass: per series and step bucket.

    ``__bucket`` is the index of the first step ``T`` with ``time <= T``: 0 for
    every row up to the first step (the base), ``k`` for rows in
    ``(T[k-1], T[k]]``. Rows after the last step are not read. Integer
    microsecond arithmetic keeps the bucket edges exact. The aggregates are the
    live engine's own (``StreamPlan.aggregates``), so sums and histogram
    buckets are computed the same way. ``time_column`` says how the stream's
    time is typed (a naive timestamp is read in the stream's time_zone).
    """
    instant = time_column.instant()
    columns = [sql.Identifier(c) for c in plan.columns]
    masks: dict[int, tuple[str, ...]] = {}
    for metric_plan in plan.metrics:
        masks.setdefault(metric_plan.grouping_mask, metric_plan.label_columns)
    sets = sql.SQL(", ").join(
        sql.SQL("({})").format(
            sql.SQL(", ").join([sql.Identifier("__bucket"), *[sql.Identifier(c) for c in cols]])
        )
        for cols in masks.values()
    )
    grouping = (
        sql.SQL("GROUPING({})").format(sql.SQL(", ").join(columns)) if columns else sql.SQL("0")
    )
    select_list = sql.SQL(", ").join(
        [
            sql.Identifier("__bucket"),
            sql.SQL("{} AS __grouping").format(grouping),
            *columns,
            *[sql.SQL("{} AS {}").format(expr, sql.Identifier(name))
              for name, expr in plan.aggregates],
        ]
    )  # fmt: skip
    bucket = sql.SQL(
        "greatest(0, ((extract(epoch FROM {time}) * 1000000)::bigint"
        " - %(first_us)s::bigint + %(step_us)s::bigint - 1) / %(step_us)s::bigint)"
    ).format(time=instant)
    return sql.SQL(
        "SELECT {select_list} FROM ("
        "SELECT events.*, {bucket} AS __bucket "
        "FROM (\n{source}\n) AS events WHERE {time} <= %(last)s"
        ") AS stream GROUP BY GROUPING SETS ({sets}) "
        "ORDER BY __grouping, {order}"
    ).format(
        select_list=select_list,
        bucket=bucket,
        source=plan.source,
        time=instant,
        sets=sets,
        order=sql.SQL(", ").join([*columns, sql.Identifier("__bucket")]),
    )


def statement_params(steps: Steps) -> dict[str, Any]:
    return {
        "first_us": steps.first_ms * 1000,
        "step_us": steps.step_ms * 1000,
        "last": steps.at(steps.count - 1),
    }


# --- OpenMetrics writing ------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Iterable[str], values: Iterable[str], extra: dict[str, str]) -> str:
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    pairs += [f'{n}="{_escape_label(v)}"' for n, v in extra.items()]
    return ",".join(pairs)


class _Parts:
    """Scratch files, one per (metric, window), opened on demand in append mode.

    At most ``max_open`` stay open; past that all are closed and reopened as
    needed (a stream has few metrics, so this only happens for long ranges).
    """

    def __init__(self, directory: Path, max_open: int) -> None:
        self.directory = directory
        self.max_open = max_open
        self.open: dict[tuple[str, int], IO[str]] = {}

    def path(self, metric: str, window: int) -> Path:
        return self.directory / f"{window:06d}-{metric}"

    def get(self, metric: str, window: int) -> IO[str]:
        handle = self.open.get((metric, window))
        if handle is None:
            if len(self.open) >= self.max_open:
                self.close()
            handle = open(  # noqa: SIM115
                self.path(metric, window), "a", encoding="utf-8", buffering=WRITE_BUFFER
            )
            self.open[(metric, window)] = handle
        return handle

    def close(self) -> None:
        for handle in self.open.values():
            handle.close()
        self.open.clear()


class _Series:
    """One series being written: its running total, and the next step to write.

    ``add`` mirrors the live exporter's rule that a counter never goes down
    (events.py ``_never_decreasing``): a total below what was exported before
    holds the previous value.
    """

    def __init__(self, parts: _Parts, metric: str, stamps: _Timestamps, first_step: int) -> None:
        self.parts = parts
        self.metric = metric
        self.stamps = stamps
        self.steps = stamps.steps
        self.first_step = first_step
        self.next_step = first_step
        self.held = 0

    def advance_to(self, step: int) -> None:
        """Write the current value at every step before ``step``, window by window."""
        while self.next_step < step:
            window = self.steps.window_of(self.next_step)
            stop = min(step, self.steps.window_start(window + 1))
            self._write(self.parts.get(self.metric, window),
                        self.stamps.slice(self.next_step, stop))  # fmt: skip
            self.next_step = stop

    def _write(self, out: IO[str], stamps: list[str]) -> None:
        raise NotImplementedError

    def add(self, value: Any) -> None:
        raise NotImplementedError


class _CounterSeries(_Series):
    def __init__(
        self, parts: _Parts, metric: str, stamps: _Timestamps, first_step: int, labels: str
    ) -> None:
        super().__init__(parts, metric, stamps, first_step)
        self.prefix = f"{metric}{{{labels}}} " if labels else f"{metric} "
        self.total = Decimal(0)
        self.exported: Decimal | None = None
        self.line = ""

    def add(self, value: Decimal) -> None:
        self.total += value
        if self.exported is not None and self.total < self.exported:
            self.held += 1
            return
        self.exported = self.total
        self.line = f"{self.prefix}{floatToGoString(float(self.total))} "

    def _write(self, out: IO[str], stamps: list[str]) -> None:
        out.write(self.line + ("\n" + self.line).join(stamps) + "\n")


class _HistogramSeries(_Series):
    def __init__(
        self, parts: _Parts, metric: str, stamps: _Timestamps, first_step: int, labels: str,
        bounds: tuple[float, ...],
    ) -> None:  # fmt: skip
        super().__init__(parts, metric, stamps, first_step)
        sep = "," if labels else ""
        self.bucket_prefixes = [
            f'{metric}_bucket{{{labels}{sep}le="{le}"}} ' for le in [*map(le_text, bounds), "+Inf"]
        ]
        braces = f"{{{labels}}}" if labels else ""
        self.count_prefix = f"{metric}_count{braces} "
        self.sum_prefix = f"{metric}_sum{braces} "
        self.total = HistogramValue([0] * len(bounds))
        self.exported: HistogramValue | None = None
        self.lines: list[str] = []

    def add(self, value: HistogramValue) -> None:
        self.total = self.total.add(value)
        before = self.exported
        if before is not None and (
            self.total.count < before.count or self.total.total < before.total
        ):
            self.held += 1
            return
        now = self.exported = self.total
        counts = [*now.buckets, now.count]
        self.lines = [p + str(c) + " " for p, c in zip(self.bucket_prefixes, counts, strict=True)]
        self.lines.append(f"{self.count_prefix}{now.count} ")
        self.lines.append(f"{self.sum_prefix}{floatToGoString(float(now.total))} ")

    def _write(self, out: IO[str], stamps: list[str]) -> None:
        lines = self.lines
        out.write("".join((stamp + "\n").join(lines) + stamp + "\n" for stamp in stamps))


class _MergedSeries:
    """A series that several groups of the sorted result may feed: a label's NULL
    (exported as its ``if_null`` text) and the real value equal to that text, as the
    live engine adds them up. The groups are not adjacent in the result, so the
    series' totals per step bucket are kept here and written once the stream has
    been read; it stands in for a ``_Series`` meanwhile."""

    def __init__(self) -> None:
        self.buckets: dict[int, Any] = {}
        self.bucket = 0

    def advance_to(self, step: int) -> None:
        self.bucket = step

    def add(self, value: Any) -> None:
        present = self.buckets.get(self.bucket)
        if present is None:
            self.buckets[self.bucket] = value
        elif isinstance(present, HistogramValue):
            self.buckets[self.bucket] = present.add(value)
        else:
            self.buckets[self.bucket] = present + value

    @property
    def first_bucket(self) -> int:
        return min(self.buckets)

    def replay(self, series: _Series) -> None:
        """Write the merged totals through ``series``, in step order."""
        for bucket in sorted(self.buckets):
            series.advance_to(bucket)
            series.add(self.buckets[bucket])


@dataclass
class Summary:
    steps: Steps
    files: list[Path] = field(default_factory=list)  # OpenMetrics files left in the output
    bytes: int = 0  # OpenMetrics bytes written (kept or not)
    # Series as Prometheus stores them: a counter is one, a histogram one per bucket
    # (le values and +Inf) plus _count and _sum; histogram_series counts the latter.
    series: int = 0
    histogram_series: int = 0
    samples: int = 0
    rows: int = 0  # grouped rows read from the database
    skipped_rows: int = 0  # rows whose label the mapping's policy refuses (NULL, too long)
    held: int = 0  # steps at which a counter would have gone down and was held
    duplicates: int = 0  # series whose label text repeats another's (the first is kept)
    blocks: list[str] = field(default_factory=list)
    query_seconds: float = 0.0
    write_seconds: float = 0.0
    blocks_seconds: float = 0.0


class _StreamWriter:
    """Walks one stream's sorted result and writes each metric's series to its parts."""

    def __init__(
        self, plan: StreamPlan, parts: _Parts, stamps: _Timestamps, extra: dict[str, str],
        summary: Summary,
    ) -> None:  # fmt: skip
        self.plan = plan
        self.parts = parts
        self.stamps = stamps
        self.extra = extra
        self.summary = summary
        self.count = stamps.steps.count
        self.by_mask: dict[int, list[Any]] = {}
        for metric_plan in plan.metrics:
            self.by_mask.setdefault(metric_plan.grouping_mask, []).append(metric_plan)
        self.seen: dict[str, set[tuple[str, ...]]] = {p.metric.name: set() for p in plan.metrics}
        self.replaced = {p.metric.name: _replacement_texts(p) for p in plan.metrics}
        self.merged: dict[tuple[str, LabelValues], tuple[Any, _MergedSeries]] = {}
        self.key: tuple[Any, ...] | None = None
        self.current: list[tuple[Any, _Series | _MergedSeries]] = []
        self.failing = 0  # metrics of the current key whose label is NULL or too long

    def feed(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        index = {name: i for i, name in enumerate(columns)}
        i_bucket, i_grouping, i_rows = index["__bucket"], index["__grouping"], index["__rows"]
        key_columns = [index[c] for c in self.plan.columns]
        for row in rows:
            key = (row[i_grouping], *[row[i] for i in key_columns])
            bucket = int(row[i_bucket])
            if key != self.key:
                self._finish()
                self.key = key
                self._open(row, index, bucket)
            if self.failing:  # counted per metric, as the live engine does
                self.summary.skipped_rows += self.failing * int(row[i_rows])
            for metric_plan, series in self.current:
                series.advance_to(bucket)
                series.add(_value(metric_plan, row, index))

    def _open(self, row: tuple[Any, ...], index: dict[str, int], bucket: int) -> None:
        self.failing = 0
        for metric_plan in self.by_mask.get(row[index["__grouping"]], []):
            try:
                values = _label_values(metric_plan, row, index)
            except Refused:
                self.failing += 1 if metric_plan.counts_drops else 0
                continue
            metric = metric_plan.metric
            if any(values[i] == text for i, text in self.replaced[metric.name].items()):
                entry = self.merged.setdefault((metric.name, values),
                                               (metric_plan, _MergedSeries()))  # fmt: skip
                self.current.append(entry)
                continue
            seen = self.seen[metric.name]
            if values in seen:  # two database values with one label text: keep the first
                self.summary.duplicates += 1
                continue
            seen.add(values)
            self.current.append((metric_plan, self._series(metric_plan, values, bucket)))

    def _series(self, metric_plan: Any, values: LabelValues, first_step: int) -> _Series:
        metric = metric_plan.metric
        labels = _labels_text(metric.labels, values, self.extra)
        if metric.type is catalog.MetricType.HISTOGRAM:
            series = len(metric.buckets) + 3  # a _bucket per le and +Inf, _count, _sum
            self.summary.series += series
            self.summary.histogram_series += series
            return _HistogramSeries(self.parts, metric.name, self.stamps, first_step, labels,
                                    metric.buckets)  # fmt: skip
        self.summary.series += 1
        return _CounterSeries(self.parts, metric.name, self.stamps, first_step, labels)

    def _finish(self) -> None:
        for metric_plan, series in self.current:
            if isinstance(series, _MergedSeries):
                continue  # written by close()
            series.advance_to(self.count)
            samples = self.count - series.first_step
            if metric_plan.metric.type is catalog.MetricType.HISTOGRAM:
                samples *= len(metric_plan.metric.buckets) + 3
            self.summary.samples += samples
            self.summary.held += series.held
        self.current = []

    def close(self) -> None:
        self._finish()
        self.key = None
        for (_, values), (metric_plan, merged) in self.merged.items():
            series = self._series(metric_plan, values, merged.first_bucket)
            merged.replay(series)
            self.current.append((metric_plan, series))
        self._finish()
        self.merged.clear()


def _label_values(metric_plan: Any, row: tuple[Any, ...], index: dict[str, int]) -> LabelValues:
    """A group's label values, exactly as the live engine makes them: through the
    mapping's policy (NULL replacement, hashing, length cap), a dropped label empty;
    ``Refused`` when a cell cannot be a label value."""
    policy = metric_plan.mapping.policy
    return metric_plan.with_constant(
        tuple(
            "" if column is None else policy.label(label, row[index[column]])
            for label, column in metric_plan.label_slots
        )
    )


def _replacement_texts(metric_plan: Any) -> dict[int, str]:
    """Label position -> the text a NULL exports, for the labels with ``if_null``: a
    series holding that text may be fed by two groups (see ``_MergedSeries``)."""
    policy = metric_plan.mapping.policy
    texts: dict[int, str] = {}
    for position, (label, column) in enumerate(metric_plan.label_slots):
        if column is not None and label in policy.if_null:
            with contextlib.suppress(Refused):  # too long: every such group is refused
                texts[position] = policy.label(label, None)
    return texts


def _value(metric_plan: Any, row: tuple[Any, ...], index: dict[str, int]) -> Any:
    cells = [row[index[c]] for c in metric_plan.aggregate_columns]
    if metric_plan.metric.type is catalog.MetricType.HISTOGRAM:
        *buckets, count, total = cells
        return HistogramValue([int(b) for b in buckets], int(count), Decimal(total or 0))
    return Decimal(cells[0] or 0)


# --- the run ---------------------------------------------------------------------------------


def _connect(config: Config, database: str) -> psycopg.Connection[Any]:
    db = config.databases[database]
    try:
        dsn = db.resolve_dsn()
    except ConfigError as error:
        raise BackfillError(f"databases.{database}.{error}") from None
    return psycopg.connect(
        dsn,
        application_name=f"{db.application_name}-backfill",
        connect_timeout=max(1, round(db.connect_timeout)),
        autocommit=False,
    )


def _read_stream(
    conn: psycopg.Connection[Any], name: str, stream: StreamConfig, parts: _Parts,
    stamps: _Timestamps, extra: dict[str, str], summary: Summary, progress: bool,
    say: Callable[[str], None],
) -> None:  # fmt: skip
    steps = stamps.steps
    plan = StreamPlan(stream)
    conn.execute(
        sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(int(stream.startup_timeout * 1000))
        )
    )
    say(f"{name}: one grouped pass over the rows up to {steps.at(steps.count - 1).isoformat()}")
    started = time.monotonic()
    cursor_name = f"credit_exporter_backfill_{name}"
    try:
        described = describe_stream_sync(conn, plan.shape_statement(), stream)
    except QueryError as error:
        raise BackfillError(f"streams.{name}: {error}") from None
    plan = StreamPlan(stream, described.float_columns, described.non_finite_columns)
    with conn.cursor(name=cursor_name, scrollable=True) as cur:
        cur.execute(bucket_statement(plan, described.ordering.time), statement_params(steps))
        # runs the aggregate and counts its rows, for the progress bar
        moved = conn.execute(sql.SQL("MOVE ALL FROM {}").format(sql.Identifier(cursor_name)))
        total = max(moved.rowcount, 0)
        cur.scroll(0, mode="absolute")
        summary.query_seconds += time.monotonic() - started
        started = time.monotonic()
        writer = _StreamWriter(plan, parts, stamps, extra, summary)
        done = 0
        with ProgressBar(total, label=name, unit="rows", enabled=progress) as bar:
            while rows := cur.fetchmany(FETCH_ROWS):
                writer.feed(tuple(c.name for c in cur.description or []), rows)
                done += len(rows)
                bar.update(done)
        writer.close()
        summary.rows += done
    parts.close()
    summary.write_seconds += time.monotonic() - started


def _assemble(parts: _Parts, metrics: set[str], window: int, path: Path) -> bool:
    """Concatenate a window's parts, family by family in catalogue order; False if empty."""
    wrote = False
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as out:
        for metric in catalog.METRICS:
            part = parts.path(metric.name, window)
            if metric.name not in metrics or not part.exists():
                continue
            family = (
                metric.name.removesuffix("_total")
                if metric.type is catalog.MetricType.COUNTER
                else metric.name
            )
            out.write(f"# HELP {family} {_escape_help(metric.help)}\n")
            out.write(f"# TYPE {family} {metric.type.value}\n")
            with open(part, encoding="utf-8") as source:
                shutil.copyfileobj(source, out, 1 << 20)
            part.unlink()
            wrote = True
        out.write("# EOF\n")
    if not wrote:
        path.unlink()
    return wrote


def _block_dirs(output: Path) -> set[str]:
    return {p.name for p in output.iterdir() if p.is_dir() and _ULID.match(p.name)}


class _Promtool:
    """Runs ``promtool tsdb create-blocks-from openmetrics`` on finished files, at most
    ``jobs`` at a time (each is one block; promtool is single-threaded and CPU-bound)."""

    def __init__(
        self, binary: str, output: Path, window_ms: int, jobs: int, keep: bool,
        done: Callable[[], None],
    ) -> None:  # fmt: skip
        self.binary = binary
        self.output = output
        self.window_ms = window_ms
        self.jobs = max(1, jobs)
        self.keep = keep
        self.done = done
        self.running: list[tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = []

    def submit(self, path: Path) -> None:
        while len(self.running) >= self.jobs:
            self._wait_oldest()
        command = [
            self.binary, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
            f"--max-block-duration={self.window_ms}ms", str(path), str(self.output),
        ]  # fmt: skip
        log = tempfile.TemporaryFile()  # noqa: SIM115
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.running.append((process, path, log))

    def _wait_oldest(self) -> None:
        process, path, log = self.running.pop(0)
        with log:
            process.wait()
            if process.returncode != 0:
                log.seek(0)
                detail = log.read().decode(errors="replace").strip()
                raise RuntimeError(
                    f"promtool failed on {path} (exit {process.returncode}): {detail}"
                )
        if not self.keep:
            path.unlink()
        self.done()

    def drain(self) -> None:
        while self.running:
            self._wait_oldest()

    def stop(self) -> None:
        for process, _, log in self.running:
            if process.poll() is None:
                process.kill()
            process.wait()
            log.close()
        self.running = []


def _raise_open_files_limit() -> int:
    """Allow more scratch files open at once; returns how many to use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return max(16, min(soft if soft != resource.RLIM_INFINITY else 4096, 4096) - 64)


def _created_by_mkdir(output: Path) -> Path | None:
    """The outermost directory ``output.mkdir(parents=True)`` is about to create."""
    created = None
    path = output.absolute()
    while not path.exists() and path != path.parent:
        created, path = path, path.parent
    return created


def run(
    config: Config, steps: Steps, output: Path, *, extra_labels: dict[str, str] | None = None,
    promtool: str | None = None, keep_openmetrics: bool = False, jobs: int = 1,
    progress: bool = True, say: Callable[[str], None] | None = None,
) -> Summary:  # fmt: skip
    """Backfill every stream of ``config`` at ``steps`` into ``output``.

    Writes one OpenMetrics file per block window; with ``promtool`` turns each
    into a TSDB block in ``output`` (``jobs`` promtool processes at a time) and,
    unless ``keep_openmetrics``, deletes the file once its block is made. A run
    that fails leaves nothing of its own behind: the directories it created, or
    the blocks and files it wrote in a directory that was there before.
    """
    extra = extra_labels or {}
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    if not config.streams:
        raise BackfillError("the configuration has no streams: nothing to backfill")
    for name, stream in config.streams.items():
        if stream.database not in config.databases:
            raise BackfillError(f"streams.{name}.database: unknown database {stream.database!r}")
    created = _created_by_mkdir(output)
    output.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in output.iterdir()}
    try:
        return _write(config, steps, output, extra, promtool, keep_openmetrics, jobs,
                      progress, say)  # fmt: skip
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        else:  # the blocks (promtool's unfinished ones too) and files this run made
            for path in output.iterdir():
                if path.name not in before and _OWN.match(path.name):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        raise


def _write(
    config: Config, steps: Steps, output: Path, extra: dict[str, str], promtool: str | None,
    keep_openmetrics: bool, jobs: int, progress: bool, say: Callable[[str], None],
) -> Summary:  # fmt: skip
    summary = Summary(steps)
    stamps = _Timestamps(steps)
    by_database: dict[str, list[str]] = {}
    for name, stream in config.streams.items():
        by_database.setdefault(stream.database, []).append(name)
    scratch = Path(tempfile.mkdtemp(prefix=".backfill-", dir=output))
    parts = _Parts(scratch, _raise_open_files_limit())
    metrics = {m.metric for stream in config.streams.values() for m in stream.metrics}
    blocks_before = _block_dirs(output)
    try:
        for database, names in by_database.items():
            # one REPEATABLE READ snapshot per database: all its streams agree
            with _connect(config, database) as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                for name in names:
                    _read_stream(conn, name, config.streams[name], parts, stamps, extra,
                                 summary, progress, say)  # fmt: skip
                conn.rollback()
        label = "blocks" if promtool else "files"
        with ProgressBar(steps.windows, label=label, unit="windows", enabled=progress) as bar:
            if promtool is not None:
                maker = _Promtool(promtool, output, steps.window_ms, jobs, keep_openmetrics,
                                  bar.advance)  # fmt: skip
            blocks_started = time.monotonic()
            try:
                for window in range(steps.windows):
                    start = steps.at(steps.window_start(window))
                    path = output / f"{FILE_PREFIX}{start:%Y%m%dT%H%M%SZ}.om"
                    started = time.monotonic()
                    if not _assemble(parts, metrics, window, path):
                        bar.advance()
                        continue
                    summary.bytes += path.stat().st_size
                    summary.write_seconds += time.monotonic() - started
                    if promtool is None or keep_openmetrics:
                        summary.files.append(path)
                    if promtool is None:
                        bar.advance()
                    else:
                        maker.submit(path)
                if promtool is not None:
                    maker.drain()
                    summary.blocks_seconds = time.monotonic() - blocks_started
            finally:
                if promtool is not None:
                    maker.stop()
    finally:
        parts.close()
        shutil.rmtree(scratch, ignore_errors=True)
    summary.blocks = sorted(_block_dirs(output) - blocks_before)
    return summary

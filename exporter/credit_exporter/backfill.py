"""Backfill: the history of every event-stream counter and histogram as OpenMetrics,
turned into Prometheus TSDB blocks by ``promtool``.

The value written for a series at a step ``T`` is exactly what the live
exporter would have exported had it polled at ``T``: the totals of every row
whose time column is ``<= T`` (docs/backfill.md explains the boundary).

It is computed without one query per step: per stream and chunk of steps (see
below), ONE grouped pass over the chunk's rows, each row put in the bucket of
the first step that counts it (bucket 0 holds everything up to the first step:
the base), sorted by series then bucket. Python walks each series, adding buckets up in
``Decimal`` and writing the running total at every step, so memory does not
grow with the range: it holds each series' current sample lines, about what
one step writes.

The range is written in chunks, each a disjoint run of steps inside one TSDB
block window (``BLOCK_RANGE_MS``, one of the block ranges promtool can
produce), sized from the bytes the previous chunk wrote per step so that its
OpenMetrics file stays near ``chunk_bytes``. Per chunk and stream, one
grouped pass reads the rows in the chunk's time range; the running totals
carry on from one chunk to the next, so every row is read once. While a chunk
is written, each metric family has its own scratch file; the chunk's file is
their concatenation, a complete document: its families contiguous, each series
in time order, ``# EOF`` at the end. promtool turns it into one block (the
chunks' time ranges are disjoint, so are the blocks') while the next chunk is
written, and the file is deleted: the temporary disk is bounded by the chunk
size, not by the range.

State gauges are not backfilled: state queries read the current state only and
the reference schema keeps no history of it.
"""

from __future__ import annotations

import contextlib
import os
import re
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
from credit_exporter.limits import Refused
from credit_exporter.metric_state import LabelValues
from credit_exporter.progress import ProgressBar
from credit_exporter.sources.events import HistogramValue, StreamPlan, le_text
from credit_exporter.sources.ordering import TimeColumn, describe_stream_sync

DEFAULT_OUTPUT = "credit-exporter-backfill"
FILE_PREFIX = "credit-exporter-backfill-"
# 54h: a TSDB block range (2h * 3^n) promtool accepts through --max-block-duration.
# A chunk never crosses a window, so each chunk's file makes one block.
BLOCK_RANGE_MS = 2 * 3_600_000 * 27
# The target size of one chunk's OpenMetrics file (and so of its scratch files).
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
# A chunk is sized for the bytes a step of the series started so far writes, times
# this: values grow longer, and series that start within a chunk add to its steps.
CHUNK_HEADROOM = 1.25
# Before any series has started, each chunk is this many times the last one's steps.
CHUNK_GROWTH = 4
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


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]?)(i?)B?\s*$")


def parse_size(text: str) -> int:
    """A byte count: ``268435456``, ``256MiB``, ``300MB``, ``1G`` (k/M/G/T are powers of
    1000, with ``i`` of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise BackfillError(f"--chunk-size: expected a size like 256MiB or 300MB, got {text!r}")
    number, unit, binary = match.groups()
    power = "kMGT".index(unit.replace("K", "k")) + 1 if unit else 0
    size = int(float(number) * (1024 if binary else 1000) ** power)
    if size < 1024:
        raise BackfillError(f"--chunk-size: must be at least 1KiB, got {text!r}")
    return size


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

    def window_of(self, index: int) -> int:
        """The window (0-based, from the first step's) a step falls in."""
        return self.ms(index) // self.window_ms - self.first_ms // self.window_ms

    def window_end(self, index: int) -> int:
        """The first step index after the window of step ``index`` (``count`` at most)."""
        return self.window_start(self.window_of(index) + 1)

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
        self.width = len(steps.text(steps.count - 1)) + 1  # "<stamp>\n" after a line
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


def bucket_statement(
    plan: StreamPlan, time_column: TimeColumn, after: bool = False
) -> sql.Composed:
    """The stream's SQL wrapped as ONE grouped pass: per series and step bucket.

    ``__bucket`` is the index of the first step ``T`` with ``time <= T``: 0 for
    every row up to the first step (the base), ``k`` for rows in
    ``(T[k-1], T[k]]``. Rows after the chunk's last step (``%(last)s``) are not
    read, nor, with ``after``, rows up to the step before the chunk
    (``%(after)s``): those were counted by the chunks before. Integer
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
        "SELECT events.*, {bucket} AS __bucket{values} "
        "FROM (\n{source}\n) AS events WHERE {time} <= %(last)s{lower}"
        ") AS stream GROUP BY GROUPING SETS ({sets}) "
        "ORDER BY __grouping, {order}"
    ).format(
        select_list=select_list,
        bucket=bucket,
        values=plan.row_values,
        source=plan.source,
        time=instant,
        lower=sql.SQL(" AND {} > %(after)s").format(instant) if after else sql.SQL(""),
        sets=sets,
        order=sql.SQL(", ").join([*columns, sql.Identifier("__bucket")]),
    )


def statement_params(steps: Steps, start: int = 0, stop: int | None = None) -> dict[str, Any]:
    """The parameters of ``bucket_statement`` for the chunk of steps ``[start, stop)``."""
    params = {
        "first_us": steps.first_ms * 1000,
        "step_us": steps.step_ms * 1000,
        "last": steps.at((steps.count if stop is None else stop) - 1),
    }
    if start > 0:
        params["after"] = steps.at(start - 1)
    return params


# --- OpenMetrics writing ------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Iterable[str], values: Iterable[str], extra: dict[str, str]) -> str:
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    pairs += [f'{n}="{_escape_label(v)}"' for n, v in extra.items()]
    return ",".join(pairs)


def _family_header(metric: catalog.Metric) -> str:
    family = (
        metric.name.removesuffix("_total")
        if metric.type is catalog.MetricType.COUNTER
        else metric.name
    )
    return f"# HELP {family} {_escape_help(metric.help)}\n# TYPE {family} {metric.type.value}\n"


class _Parts:
    """The current chunk's scratch files, one per metric family, each opening with the
    family's ``# HELP`` and ``# TYPE``; ``assemble`` joins them into the chunk's file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.open: dict[str, IO[str]] = {}

    def get(self, metric: str) -> IO[str]:
        handle = self.open.get(metric)
        if handle is None:
            handle = open(  # noqa: SIM115
                self.directory / metric, "w", encoding="utf-8", buffering=WRITE_BUFFER
            )
            handle.write(_family_header(catalog.get(metric)))
            self.open[metric] = handle
        return handle

    def close(self) -> None:
        for handle in self.open.values():
            handle.close()
        self.open.clear()

    def assemble(self, path: Path) -> bool:
        """Join the chunk's parts into one OpenMetrics document at ``path``; False if the
        chunk wrote nothing. The largest part is renamed, not copied, and each other one
        removed once appended: the scratch holds at most the chunk plus one smaller part."""
        self.close()
        parts = sorted(self.directory.iterdir(), key=lambda p: (-p.stat().st_size, p.name))
        if not parts:
            return False
        os.replace(parts[0], path)
        with open(path, "a", encoding="utf-8", buffering=1 << 20) as out:
            for part in parts[1:]:
                with open(part, encoding="utf-8") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
                part.unlink()
            out.write("# EOF\n")
        return True


class _Series:
    """One series being written: its running total, and the next step to write.

    ``add`` mirrors the live exporter's rule that a counter never goes down
    (events.py ``_never_decreasing``): a total below what was exported before
    holds the previous value. A series outlives a chunk: the next one carries on
    from its total.
    """

    samples_per_step = 1

    def __init__(self, parts: _Parts, metric: str, stamps: _Timestamps, first_step: int) -> None:
        self.parts = parts
        self.metric = metric
        self.stamps = stamps
        self.first_step = first_step
        self.next_step = first_step
        self.held = 0

    def advance_to(self, step: int) -> None:
        """Write the current value at every step before ``step`` (inside the chunk)."""
        if self.next_step < step:
            self._write(self.parts.get(self.metric), self.stamps.slice(self.next_step, step))
            self.next_step = step

    def step_bytes(self) -> int:
        """The bytes one step of this series writes now."""
        return self._line_bytes() + self.samples_per_step * self.stamps.width

    def _line_bytes(self) -> int:
        raise NotImplementedError

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

    def _line_bytes(self) -> int:
        return len(self.line)


class _HistogramSeries(_Series):
    def __init__(
        self, parts: _Parts, metric: str, stamps: _Timestamps, first_step: int, labels: str,
        bounds: tuple[float, ...],
    ) -> None:  # fmt: skip
        super().__init__(parts, metric, stamps, first_step)
        self.samples_per_step = len(bounds) + 3  # a _bucket per le and +Inf, _count, _sum
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

    def _line_bytes(self) -> int:
        return sum(map(len, self.lines))


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
    chunks: int = 0  # OpenMetrics files written (one block each)
    largest_chunk: int = 0  # bytes of the largest one
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
    blocks_seconds: float = 0.0  # waiting for promtool once the writing was done or ahead


_Merged = tuple[str, LabelValues]  # a series several groups feed: (metric, label values)
_Target = tuple[Any, "_Series | _Merged"]


class _StreamWriter:
    """Walks one stream's sorted result, chunk by chunk, and writes each metric's series
    to the chunk's parts. A group's labels are worked out once, when it first shows up;
    its series keep their totals from one chunk to the next."""

    def __init__(
        self, plan: StreamPlan, parts: _Parts, stamps: _Timestamps, extra: dict[str, str],
        summary: Summary,
    ) -> None:  # fmt: skip
        self.plan = plan
        self.parts = parts
        self.stamps = stamps
        self.extra = extra
        self.summary = summary
        self.by_mask: dict[int, list[Any]] = {}
        for metric_plan in plan.metrics:
            self.by_mask.setdefault(metric_plan.grouping_mask, []).append(metric_plan)
        self.seen: set[tuple[str, LabelValues]] = set()
        self.replaced = {p.metric.name: _replacement_texts(p) for p in plan.metrics}
        # group key -> (metrics whose label it fails, what each other metric feeds)
        self.groups: dict[tuple[Any, ...], tuple[int, list[_Target]]] = {}
        self.series: list[_Series] = []  # every series, in the order they started
        self.merged_series: dict[_Merged, _Series] = {}
        self.merged: dict[_Merged, tuple[Any, _MergedSeries]] = {}  # this chunk's totals
        self.key: tuple[Any, ...] | None = None
        self.current: list[tuple[Any, _Series | _MergedSeries]] = []
        self.failing = 0  # metrics of the current key whose label is NULL or too long
        self.stop = 0  # the current chunk's end (a step index, exclusive)

    def start_chunk(self, stop: int) -> None:
        self.stop = stop

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
                self._open(key, row, index, bucket)
            if self.failing:  # counted per metric, as the live engine does
                self.summary.skipped_rows += self.failing * int(row[i_rows])
            for metric_plan, series in self.current:
                series.advance_to(bucket)
                series.add(_value(metric_plan, row, index))

    def _open(
        self, key: tuple[Any, ...], row: tuple[Any, ...], index: dict[str, int], bucket: int
    ) -> None:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = self._resolve(row, index, bucket)
        self.failing, targets = group
        for metric_plan, target in targets:
            if isinstance(target, tuple):
                entry = self.merged.setdefault(target, (metric_plan, _MergedSeries()))
                self.current.append(entry)
            else:
                self.current.append((metric_plan, target))

    def _resolve(
        self, row: tuple[Any, ...], index: dict[str, int], bucket: int
    ) -> tuple[int, list[_Target]]:
        """What a group feeds, the first time it shows up: per metric its series, or the
        series it shares with other groups, or nothing (a refused label, a duplicate)."""
        failing = 0
        targets: list[_Target] = []
        for metric_plan in self.by_mask.get(row[index["__grouping"]], []):
            try:
                values = _label_values(metric_plan, row, index)
            except Refused:
                failing += 1 if metric_plan.counts_drops else 0
                continue
            metric = metric_plan.metric
            if any(values[i] == text for i, text in self.replaced[metric.name].items()):
                targets.append((metric_plan, (metric.name, values)))
                continue
            if (metric.name, values) in self.seen:  # two database values, one label text:
                self.summary.duplicates += 1  # keep the first
                continue
            self.seen.add((metric.name, values))
            targets.append((metric_plan, self._series(metric_plan, values, bucket)))
        return failing, targets

    def _series(self, metric_plan: Any, values: LabelValues, first_step: int) -> _Series:
        metric = metric_plan.metric
        labels = _labels_text(metric.labels, values, self.extra)
        series: _Series
        if metric.type is catalog.MetricType.HISTOGRAM:
            series = _HistogramSeries(self.parts, metric.name, self.stamps, first_step, labels,
                                      metric.buckets)  # fmt: skip
            self.summary.histogram_series += series.samples_per_step
        else:
            series = _CounterSeries(self.parts, metric.name, self.stamps, first_step, labels)
        self.summary.series += series.samples_per_step
        self.series.append(series)
        return series

    def _finish(self) -> None:
        """Write the current group's series to the end of the chunk (their samples stay
        together in the chunk's file)."""
        for _, series in self.current:
            if isinstance(series, _Series):
                series.advance_to(self.stop)
        self.current = []

    def end_chunk(self) -> None:
        """Write the series several groups feed, then every series up to the chunk's end."""
        self._finish()
        self.key = None
        for merged_key, (metric_plan, merged) in self.merged.items():
            series = self.merged_series.get(merged_key)
            if series is None:
                series = self._series(metric_plan, merged_key[1], merged.first_bucket)
                self.merged_series[merged_key] = series
            merged.replay(series)
        self.merged.clear()
        for series in self.series:
            series.advance_to(self.stop)

    def step_bytes(self) -> int:
        """The bytes a step of every series started so far writes."""
        return sum(series.step_bytes() for series in self.series)

    def close(self) -> None:
        count = self.stamps.steps.count
        for series in self.series:
            self.summary.samples += (count - series.first_step) * series.samples_per_step
            self.summary.held += series.held


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


class _StreamReader:
    """One stream: its plan, described once, and its writer; ``read`` runs the grouped
    pass over one chunk's time range."""

    def __init__(
        self, conn: psycopg.Connection[Any], name: str, stream: StreamConfig, parts: _Parts,
        stamps: _Timestamps, extra: dict[str, str], summary: Summary,
    ) -> None:  # fmt: skip
        self.conn = conn
        self.name = name
        self.stream = stream
        self.summary = summary
        self.steps = stamps.steps
        plan = StreamPlan(stream)
        self._timeout()
        try:
            described = describe_stream_sync(conn, plan.shape_statement(), stream)
        except QueryError as error:
            raise BackfillError(f"streams.{name}: {error}") from None
        plan = StreamPlan(stream, described.float_columns, described.non_finite_columns)
        self.plan = plan
        self.time = described.ordering.time
        self.writer = _StreamWriter(plan, parts, stamps, extra, summary)
        self.loaded = 0  # the steps whose rows have been read

    def measure(self) -> None:
        """Read the base (the rows up to the first step) without writing: the series it
        starts tell the first chunk's bytes per step."""
        self.writer.start_chunk(0)
        self._load(1)
        self.writer.end_chunk()

    def _timeout(self) -> None:
        self.conn.execute(
            sql.SQL("SET LOCAL statement_timeout = {}").format(
                sql.Literal(int(self.stream.startup_timeout * 1000))
            )
        )

    def write(self, stop: int) -> None:
        """Write every series of the stream up to step ``stop`` (exclusive)."""
        written = time.monotonic()
        self.writer.start_chunk(stop)
        self.summary.write_seconds += time.monotonic() - written
        self._load(stop)
        written = time.monotonic()
        self.writer.end_chunk()
        self.summary.write_seconds += time.monotonic() - written

    def _load(self, stop: int) -> None:
        """Feed the writer the rows of the steps from ``loaded`` to ``stop``."""
        if stop <= self.loaded:
            return
        self._timeout()
        cursor_name = f"credit_exporter_backfill_{self.name}"
        with self.conn.cursor(name=cursor_name) as cur:
            cur.execute(bucket_statement(self.plan, self.time, after=self.loaded > 0),
                        statement_params(self.steps, self.loaded, stop))  # fmt: skip
            while True:
                fetched = time.monotonic()
                rows = cur.fetchmany(FETCH_ROWS)
                written = time.monotonic()
                self.summary.query_seconds += written - fetched
                if not rows:
                    break
                self.writer.feed(tuple(c.name for c in cur.description or []), rows)
                self.summary.rows += len(rows)
                self.summary.write_seconds += time.monotonic() - written
        self.loaded = stop


def _block_dirs(output: Path) -> set[str]:
    return {p.name for p in output.iterdir() if p.is_dir() and _ULID.match(p.name)}


class _Promtool:
    """Runs ``promtool tsdb create-blocks-from openmetrics`` on finished files, at most
    ``jobs`` at a time (each is one block; promtool is single-threaded and CPU-bound)."""

    def __init__(
        self, binary: str, output: Path, window_ms: int, jobs: int, keep: bool,
        done: Callable[[int], None],
    ) -> None:  # fmt: skip
        self.binary = binary
        self.output = output
        self.window_ms = window_ms
        self.jobs = max(1, jobs)
        self.keep = keep
        self.done = done
        self.running: list[tuple[subprocess.Popen[bytes], Path, IO[bytes], int]] = []
        self.waited = 0.0  # seconds the writer waited for promtool

    def submit(self, path: Path, steps: int) -> None:
        """Start promtool on ``path`` (once fewer than ``jobs`` run); ``steps`` is for
        the progress bar."""
        while len(self.running) >= self.jobs:
            self._wait_oldest()
        command = [
            self.binary, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
            f"--max-block-duration={self.window_ms}ms", str(path), str(self.output),
        ]  # fmt: skip
        log = tempfile.TemporaryFile()  # noqa: SIM115
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.running.append((process, path, log, steps))

    def _wait_oldest(self) -> None:
        process, path, log, steps = self.running.pop(0)
        with log:
            started = time.monotonic()
            process.wait()
            self.waited += time.monotonic() - started
            if process.returncode != 0:
                log.seek(0)
                detail = log.read().decode(errors="replace").strip()
                raise RuntimeError(
                    f"promtool failed on {path} (exit {process.returncode}): {detail}"
                )
        if not self.keep:
            path.unlink()
        self.done(steps)

    def drain(self) -> None:
        while self.running:
            self._wait_oldest()

    def stop(self) -> None:
        for process, _, log, _ in self.running:
            if process.poll() is None:
                process.kill()
            process.wait()
            log.close()
        self.running = []


def _chunk_stop(steps: Steps, start: int, last: int, step_bytes: int, chunk_bytes: int) -> int:
    """The end (exclusive) of the chunk starting at step ``start``: as many steps as fit
    in ``chunk_bytes`` at ``step_bytes`` a step (what the series started so far write,
    with headroom), at least one, never past the block window's end. With no series yet,
    ``CHUNK_GROWTH`` times the ``last`` chunk's steps, from one."""
    if step_bytes == 0:
        wanted = max(1, last * CHUNK_GROWTH)
    else:
        wanted = max(1, int(chunk_bytes / (step_bytes * CHUNK_HEADROOM)))
    return min(start + wanted, steps.window_end(start))


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
    chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> Summary:  # fmt: skip
    """Backfill every stream of ``config`` at ``steps`` into ``output``.

    Writes the range chunk by chunk, one OpenMetrics file of about ``chunk_bytes``
    each; with ``promtool`` turns each into a TSDB block in ``output`` (``jobs``
    promtool processes at a time) while the next is written and, unless
    ``keep_openmetrics``, deletes the file once its block is made. A run that
    fails leaves nothing of its own behind: the directories it created, or the
    blocks and files it wrote in a directory that was there before.
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
    blocks_before = _block_dirs(output)
    summary = Summary(steps)
    try:
        _write(config, steps, output, extra, promtool, keep_openmetrics, jobs, chunk_bytes,
               progress, say, summary)  # fmt: skip
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
    summary.blocks = sorted(_block_dirs(output) - blocks_before)
    return summary


def _write(
    config: Config, steps: Steps, output: Path, extra: dict[str, str], promtool: str | None,
    keep_openmetrics: bool, jobs: int, chunk_bytes: int, progress: bool,
    say: Callable[[str], None], summary: Summary,
) -> None:  # fmt: skip
    stamps = _Timestamps(steps)
    scratch = Path(tempfile.mkdtemp(prefix=".backfill-", dir=output))
    parts = _Parts(scratch)
    maker: _Promtool | None = None
    try:
        with contextlib.ExitStack() as stack:
            readers: list[_StreamReader] = []
            for database in dict.fromkeys(s.database for s in config.streams.values()):
                # one REPEATABLE READ snapshot per database: all its streams and chunks agree
                conn = stack.enter_context(_connect(config, database))
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                for name, stream in config.streams.items():
                    if stream.database == database:
                        readers.append(_StreamReader(conn, name, stream, parts, stamps, extra,
                                                     summary))  # fmt: skip
            say(
                f"{len(readers)} streams, {steps.count:,} steps up to "
                f"{steps.at(steps.count - 1).isoformat()}, in chunks of about "
                f"{chunk_bytes:,} bytes"
            )
            bar = stack.enter_context(
                ProgressBar(steps.count, label="backfill", unit="steps", enabled=progress)
            )
            if promtool is not None:
                maker = _Promtool(promtool, output, steps.window_ms, jobs, keep_openmetrics,
                                  bar.advance)  # fmt: skip
            for reader in readers:
                reader.measure()
            start, last = 0, 0
            while start < steps.count:
                stop = _chunk_stop(steps, start, last, sum(r.writer.step_bytes() for r in readers),
                                   chunk_bytes)  # fmt: skip
                for reader in readers:
                    reader.write(stop)
                path = output / f"{FILE_PREFIX}{steps.at(start):%Y%m%dT%H%M%SZ}.om"
                assembling = time.monotonic()
                if parts.assemble(path):
                    size = path.stat().st_size
                    summary.bytes += size
                    summary.chunks += 1
                    summary.largest_chunk = max(summary.largest_chunk, size)
                    summary.write_seconds += time.monotonic() - assembling
                    if promtool is None or keep_openmetrics:
                        summary.files.append(path)
                    if maker is not None:
                        maker.submit(path, stop - start)
                    else:
                        bar.advance(stop - start)
                else:
                    bar.advance(stop - start)
                start, last = stop, stop - start
            if maker is not None:
                maker.drain()
                summary.blocks_seconds = maker.waited
            for reader in readers:
                reader.writer.close()
                reader.conn.rollback()
    finally:
        if maker is not None:
            maker.stop()
        parts.close()
        shutil.rmtree(scratch, ignore_errors=True)

"""What ``check-config --connect`` says about a stream's key and time columns.

The running exporter only learns at its first poll that a key is text, and
never learns that ids come out of commit order or that a poll scans the whole
table: those streams miss rows or grow slow without an error. This judges a
stream's traced result columns (``sources/columns.py``) before deployment,
with the running exporter's own type rules (``ordering.ordering_for``) and the
assumptions docs/event-engine.md lists: a key fed by a sequence with CACHE 1,
ordering columns served by an index, a time that is never NULL.

A failure means the stream would crash or silently miss rows; a note means it
would run correctly but slowly, or that something cannot be verified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from credit_exporter.config import StreamConfig
from credit_exporter.db import QueryError
from credit_exporter.sources.columns import ResultColumn, TableColumn
from credit_exporter.sources.ordering import (
    KeyColumn,
    TimeColumn,
    TimeKind,
    key_column,
    ordering_for,
    time_column,
)

_T = TypeVar("_T")

ORDER_BY_TIME_INSTEAD = (
    "remove `key` and let the stream be ordered by `time`, with `arrives_within` set to how"
    " late rows commit after their time"
)


@dataclass
class StreamCheck:
    """The verdict on one stream: what the ok line says, failures (reason, message), notes."""

    summary: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def duration(seconds: float) -> str:
    """Seconds as a config duration (``2m``, ``1h30m``, ``0.5s``)."""
    if seconds != int(seconds) or seconds < 1:
        return f"{seconds:g}s"
    parts, rest = [], int(seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def time_reading(time: TimeColumn) -> str:
    """How the exporter reads the time column's values."""
    if time.kind is TimeKind.TIMESTAMP:
        return f"{time.type_name}, read in {time.zone}"
    if time.kind is TimeKind.DATE:
        return f"date, whole days in {time.zone}"
    if time.kind is TimeKind.EPOCH:
        return f"{time.type_name} epoch in {time.unit}"
    return time.type_name


def _located(message: str, column: str, source: TableColumn | None) -> str:
    """An ordering error with the table column it is about named after the result column."""
    if source is None:
        return message
    named = f"column {column!r}"
    if named in message:
        return message.replace(named, f"{named} ({source.qualified})", 1)
    return f"{source.qualified}: {message}"


def _index_hint(source: TableColumn) -> str:
    return f"CREATE INDEX ON {source.table} ({source.quoted})"


def _served(column: ResultColumn, polls: bool) -> str:
    """What filtering by a time that is not a table column needs (polls, or the reconcile)."""
    if not column.computed:
        reader = "the polls" if polls else "the background reconcile"
        return f"whether an index serves {reader} cannot be verified"
    if polls:
        return (
            "polls filter on it, so they need an index on exactly that expression (CREATE INDEX"
            " ON <table> ((<expression>))) or each one scans the table; select the table's own"
            " time column if it has one"
        )
    return (
        "the background reconcile chunks settled history by it and needs an index on exactly"
        " that expression, or it will scan the table"
    )


def _usable(build: Callable[[], _T], column: ResultColumn, check: StreamCheck) -> _T | None:
    """``build()``, or None after recording its QueryError as a failure."""
    try:
        return build()
    except QueryError as error:
        check.failures.append((error.reason, _located(str(error), column.name, column.source)))
        return None


def _check_key(key: KeyColumn, column: ResultColumn, check: StreamCheck) -> str:
    """Key failures and notes; returns how the ok line describes the key."""
    source = column.source
    if source is None:
        check.notes.append(
            f'key "{key.name}" is {column.opaque}: that a sequence feeds it in commit order'
            " cannot be verified, nor that an index serves the polls' `key > horizon`; select"
            " the table's key column itself as the key"
        )
        return f'key "{key.name}" ({key.type_name}, not verified)'
    if source.sequence is None:
        default = f"default {source.default}" if source.default else "no default"
        check.failures.append((
            "ordering",
            f'key "{key.name}" ({source.qualified}, {source.type_name}, {default}) is fed by no'
            " sequence or identity column: ids the application assigns are not in commit"
            " order, so a row committed after a higher id was seen would never be counted;"
            f" {ORDER_BY_TIME_INSTEAD} (or make the column bigserial or GENERATED ALWAYS AS"
            " IDENTITY)",
        ))  # fmt: skip
    elif (source.sequence_cache or 1) > 1:
        check.failures.append((
            "ordering",
            f'key "{key.name}" ({source.qualified}) is fed by sequence {source.sequence} with'
            f" CACHE {source.sequence_cache}: each session takes ids in blocks of"
            f" {source.sequence_cache}, so ids are handed out of commit order and rows would be"
            f" missed; run ALTER SEQUENCE {source.sequence} CACHE 1, or {ORDER_BY_TIME_INSTEAD}",
        ))  # fmt: skip
    if source.leading_index is None:
        check.notes.append(
            f'no index on {source.table} starts with key "{key.name}" ({source.qualified}):'
            f" every poll would scan the table; {_index_hint(source)}"
        )
    fed = "identity, sequence" if source.identity else "from sequence"
    feeder = f"{fed} {source.sequence}" if source.sequence else "no sequence"
    return f'key "{key.name}" ({key.type_name}, {feeder})'


def _check_time(
    config: StreamConfig, time: TimeColumn, column: ResultColumn, check: StreamCheck
) -> None:
    """Notes on the time column: the index polls or the reconcile need, NULL times."""
    source = column.source
    if config.by_time:
        if source is None:
            check.notes.append(f'time "{time.name}" is {column.opaque}: {_served(column, True)}')
            return
        if source.leading_index is None:
            readers = "steady polls and the reconcile" if config.reconcile else "steady polls"
            check.notes.append(
                f'no index on {source.table} starts with time "{time.name}"'
                f" ({source.qualified}): {readers} would scan the table; {_index_hint(source)}"
            )
        if not source.not_null:
            check.notes.append(
                f'time "{time.name}" ({source.qualified}) is nullable: rows with a NULL time are'
                " never settled by time; declare the column NOT NULL, or leave those rows out"
                f" in the stream's SQL (WHERE {source.quoted} IS NOT NULL)"
            )
        return
    if config.reconcile is False:
        return
    if source is None:
        check.notes.append(f'time "{time.name}" is {column.opaque}: {_served(column, False)}')
    elif source.leading_index is None:
        check.notes.append(
            f'no index on {source.table} starts with time "{time.name}" ({source.qualified}):'
            " the background reconcile chunks settled history by it and will scan the table;"
            f" {_index_hint(source)}"
        )


def check_stream(
    config: StreamConfig, columns: list[ResultColumn], type_names: dict[int, str]
) -> StreamCheck:
    """Judge one stream's ordering columns from its traced result columns."""
    check = StreamCheck()
    by_name = {c.name: c for c in columns}
    needed = {config.time, *([config.key] if config.key else [])} | {
        column for mapping in config.metrics for column in mapping.read_columns
    }
    if missing := sorted(needed - set(by_name)):
        check.failures.append(("validation", f"result has no column {', '.join(missing)}"))
        return check
    types = {c.name: c.type_oid for c in columns}

    def type_name(name: str) -> str:
        return type_names.get(types[name], f"oid {types[name]}")

    time_result = by_name[config.time]
    key_result = by_name[config.key] if config.key else None
    try:
        ordering = ordering_for(config, types, type_names)
        time: TimeColumn | None = ordering.time
        key: KeyColumn | None = ordering.key
    except QueryError:
        # ordering_for stops at the first unusable column: judge each one, by the same rules
        time = _usable(
            lambda: time_column(config.time, types[config.time], type_name(config.time),
                                config.time_zone, config.epoch_unit),
            time_result, check,
        )  # fmt: skip
        key = None
        if config.key is not None and key_result is not None:
            name = config.key
            key = _usable(lambda: key_column(name, types[name], type_name(name)), key_result, check)

    parts = []
    if key is not None and key_result is not None:
        parts.append(_check_key(key, key_result, check))
    if time is not None:
        _check_time(config, time, time_result, check)
        described = f'time "{time.name}" ({time_reading(time)})'
        if config.key is None:
            parts.append(described)
        elif config.by_time:
            parts.append(f"and by {described}")
        else:
            parts.append(f"with {described}")
    settled = f", settled {duration(config.window)} after its time" if config.by_time else ""
    check.summary = f"stream ordered by {' '.join(parts)}{settled}"
    return check

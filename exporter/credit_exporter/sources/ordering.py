"""A stream's ordering columns as the database types them, and the SQL that compares them.

A stream settles rows by its key (an integer from a sequence), by its time
column, or by both (docs/event-engine.md). Real tables type the time in many
ways: ``timestamptz``, a naive ``timestamp`` written in some zone, a ``date``,
or an epoch number. Every comparison here puts the conversion on the
horizon's side, never on the column's, so ``time > horizon`` stays an index
range scan whatever the type; and the horizon is kept in the column's own type,
so Python never compares a naive value with an aware one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql

from credit_exporter.config import StreamConfig
from credit_exporter.db import QueryError

# pg_type OIDs of the types a time or key column may have
TIMESTAMPTZ_OID, TIMESTAMP_OID, DATE_OID = 1184, 1114, 1082
INTEGER_OIDS = {21: "smallint", 23: "integer", 20: "bigint"}
EPOCH_OIDS = {**INTEGER_OIDS, 1700: "numeric", 701: "double precision", 700: "real"}
# seconds per unit of an epoch-number time column
EPOCH_UNITS = {"s": Decimal(1), "ms": Decimal("0.001"), "us": Decimal("0.000001")}

_EPOCH_DAY = date(1970, 1, 1)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_TIME_TYPES = (
    "timestamptz, timestamp, date, or an epoch number (integer, numeric, double precision)"
)


class TimeKind(StrEnum):
    TIMESTAMPTZ = "timestamptz"
    TIMESTAMP = "timestamp"  # naive: read in the stream's time_zone
    DATE = "date"  # a whole day in the stream's time_zone
    EPOCH = "epoch"  # a number of epoch_unit since 1970-01-01 UTC


@dataclass(frozen=True)
class OrderingColumn:
    """A column of the stream's result that rows are settled by, and its type."""

    name: str
    type_name: str  # format_type without modifiers: the cast given to every parameter

    @property
    def column(self) -> sql.Composable:
        return sql.SQL("events.") + sql.Identifier(self.name)

    def param(self, name: str) -> sql.Composable:
        """A query parameter cast to the column's type (the index compares like with like)."""
        return sql.SQL("{}::{}").format(sql.Placeholder(name), sql.SQL(self.type_name))


@dataclass(frozen=True)
class TimeColumn(OrderingColumn):
    """The stream's time column: its type, and for naive types the zone it is written in."""

    kind: TimeKind = TimeKind.TIMESTAMPTZ
    zone: str = "UTC"
    unit: str = "s"

    def cutoff(self, window_param: str) -> sql.Composable:
        """``now()`` minus a window (seconds, a parameter), in the column's own type.

        A ``date`` is a whole day: it is past the window once its last instant is,
        so the cutoff is the day before the one ``now() - window`` falls in.
        """
        ago = sql.SQL("(now() - make_interval(secs => {}))").format(sql.Placeholder(window_param))
        zone = sql.Literal(self.zone)
        if self.kind is TimeKind.TIMESTAMPTZ:
            return ago
        if self.kind is TimeKind.TIMESTAMP:
            return sql.SQL("({} AT TIME ZONE {})").format(ago, zone)
        if self.kind is TimeKind.DATE:
            return sql.SQL("(({} AT TIME ZONE {})::date - 1)").format(ago, zone)
        seconds = sql.SQL("(extract(epoch FROM {}) / {})").format(
            ago, sql.Literal(EPOCH_UNITS[self.unit])
        )
        if self.type_name in INTEGER_OIDS.values():
            return sql.SQL("floor({})::{}").format(seconds, sql.SQL(self.type_name))
        return sql.SQL("{}::{}").format(seconds, sql.SQL(self.type_name))

    def instant(self) -> sql.Composable:
        """The column's value as a timestamptz (a date: its first instant in the zone)."""
        zone = sql.Literal(self.zone)
        if self.kind is TimeKind.TIMESTAMPTZ:
            return self.column
        if self.kind is TimeKind.TIMESTAMP:
            return sql.SQL("({} AT TIME ZONE {})").format(self.column, zone)
        if self.kind is TimeKind.DATE:
            return sql.SQL("({}::timestamp AT TIME ZONE {})").format(self.column, zone)
        return sql.SQL("to_timestamp({}::numeric * {})").format(
            self.column, sql.Literal(EPOCH_UNITS[self.unit])
        )

    def position(self) -> sql.Composable:
        """The column's value as seconds on its own clock: the reconcile's chunk numbering.

        For naive types these are wall-clock seconds in the stream's zone, not
        instants: a chunk is a range of column values, which is all the reconcile
        needs, and its bounds (``bound``) are exact in the column's type.
        """
        if self.kind is TimeKind.EPOCH:
            return sql.SQL("({}::numeric * {})").format(
                self.column, sql.Literal(EPOCH_UNITS[self.unit])
            )
        return sql.SQL("extract(epoch FROM {})").format(self.column)

    def bound(self, seconds: int) -> Any:
        """The column value at ``seconds`` on the column's clock (see ``position``)."""
        if self.kind is TimeKind.TIMESTAMPTZ:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        if self.kind is TimeKind.TIMESTAMP:
            return _EPOCH_NAIVE + timedelta(seconds=seconds)
        if self.kind is TimeKind.DATE:
            return _EPOCH_DAY + timedelta(days=math.ceil(seconds / 86_400))
        value = Decimal(seconds) / EPOCH_UNITS[self.unit]
        if self.type_name in INTEGER_OIDS.values():
            return math.ceil(value)
        return value

    def seconds(self, value: Any) -> Decimal:
        """``position`` of a value in Python (the same number SQL computes)."""
        if self.kind is TimeKind.EPOCH:
            return Decimal(str(value)) * EPOCH_UNITS[self.unit]
        if self.kind is TimeKind.DATE:
            return Decimal((value - _EPOCH_DAY).days * 86_400)
        origin = (
            datetime(1970, 1, 1, tzinfo=UTC)
            if self.kind is TimeKind.TIMESTAMPTZ
            else (_EPOCH_NAIVE)
        )
        delta = value - origin
        return Decimal(delta.days * 86_400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)

    def chunk_of(self, value: Any, width: int) -> int:
        """The reconcile chunk a value falls in (SQL: floor(position / width))."""
        return math.floor(self.seconds(value) / width)

    def chunk_seconds(self, chunk: float) -> int:
        """A reconcile chunk's width in whole seconds (whole days for a date)."""
        seconds = max(1, math.ceil(chunk))
        return math.ceil(seconds / 86_400) * 86_400 if self.kind is TimeKind.DATE else seconds


@dataclass(frozen=True)
class KeyColumn(OrderingColumn):
    """The stream's insertion key: an integer column fed by a sequence."""


def time_column(name: str, oid: int, type_name: str, zone: str, unit: str) -> TimeColumn:
    """The TimeColumn for a result column of type ``oid`` (``type_name``, for the error);
    QueryError naming an unusable type."""
    kinds = {TIMESTAMPTZ_OID: TimeKind.TIMESTAMPTZ, TIMESTAMP_OID: TimeKind.TIMESTAMP,
             DATE_OID: TimeKind.DATE}  # fmt: skip
    names = {TIMESTAMPTZ_OID: "timestamp with time zone",
             TIMESTAMP_OID: "timestamp without time zone", DATE_OID: "date"}  # fmt: skip
    if oid in kinds:
        return TimeColumn(name, names[oid], kinds[oid], zone, unit)
    if oid in EPOCH_OIDS:
        return TimeColumn(name, EPOCH_OIDS[oid], TimeKind.EPOCH, zone, unit)
    raise QueryError(
        "validation",
        f"time column {name!r} is of type {type_name}; it must be {_TIME_TYPES}"
        " (cast it in the stream's SQL, with an expression index on that cast)",
    )


def key_column(name: str, oid: int, type_name: str) -> KeyColumn:
    """The KeyColumn for a result column of type ``oid``; QueryError for anything not an integer."""
    if oid in INTEGER_OIDS:
        return KeyColumn(name, INTEGER_OIDS[oid])
    raise QueryError(
        "validation",
        f"key column {name!r} is of type {type_name}; a key must be an integer fed by a sequence or"
        " identity column (bigserial, GENERATED ... AS IDENTITY). Random text or uuid ids are"
        " not in insertion order: remove `key` and let the stream be ordered by `time`, with"
        " `arrives_within` set to how late rows commit after their time",
    )


@dataclass(frozen=True)
class Horizon:
    """Rows with ``key <= key`` and ``time <= time`` (each where the stream orders by it) are
    settled. None for a dimension the stream orders by means nothing is settled yet."""

    key: Any = None
    time: Any = None


@dataclass(frozen=True)
class Ordering:
    """How one stream settles rows: by key, by time, or by both (a mutable keyed stream)."""

    time: TimeColumn
    key: KeyColumn | None
    by_time: bool  # the time column is a horizon dimension

    @property
    def dimensions(self) -> tuple[str, ...]:
        return (("key",) if self.key else ()) + (("time",) if self.by_time else ())

    def _bounds(self, prefix: str) -> list[tuple[sql.Composable, sql.Composable]]:
        pairs: list[tuple[sql.Composable, sql.Composable]] = []
        if self.key is not None:
            pairs.append((self.key.column, self.key.param(f"{prefix}_key")))
        if self.by_time:
            pairs.append((self.time.column, self.time.param(f"{prefix}_time")))
        return pairs

    def complete(self, horizon: Horizon | None) -> bool:
        """Whether every dimension of ``horizon`` has a value (something may be settled)."""
        if horizon is None:
            return False
        return all(getattr(horizon, d) is not None for d in self.dimensions)

    def settled(self, horizon: Horizon | None, prefix: str) -> sql.Composable:
        """The predicate "this row is settled at ``horizon``" (parameters ``<prefix>_key`` ...)."""
        if not self.complete(horizon):
            return sql.SQL("FALSE")
        return sql.SQL(" AND ").join(
            sql.SQL("{} <= {}").format(column, param) for column, param in self._bounds(prefix)
        )

    def unsettled_branches(self, horizon: Horizon | None, prefix: str) -> list[sql.Composable]:
        """WHERE clauses whose union is exactly the rows not settled at ``horizon``.

        Disjoint, one per dimension, each a range on one indexed column: with
        two dimensions ``key > k OR time > t`` is written as ``key > k`` and
        ``key <= k AND time > t`` so each branch is an index range scan.
        An empty list means every row (nothing is settled yet). A stream that
        settles by time never reads a row with a NULL time: it could never
        settle (the reconcile counts such rows as dropped, reason null_time).
        """
        timed = sql.SQL("{} IS NOT NULL").format(self.time.column)
        if not self.complete(horizon):
            return [timed] if self.by_time else []
        branches: list[sql.Composable] = []
        done: list[sql.Composable] = []
        for column, param in self._bounds(prefix):
            after = sql.SQL("{} > {}").format(column, param)
            branches.append(sql.SQL(" AND ").join([*done, after]))
            done.append(sql.SQL("{} <= {}").format(column, param))
        if self.by_time and self.key is not None:
            branches[0] = sql.SQL("{} AND {}").format(branches[0], timed)
        return branches

    def params(self, horizon: Horizon | None, prefix: str) -> dict[str, Any]:
        if horizon is None:
            return {}
        return {f"{prefix}_key": horizon.key, f"{prefix}_time": horizon.time}


TYPE_NAMES_SQL = "SELECT t, format_type(t, NULL) FROM unnest(%s::oid[]) AS t"


def ordering_for(
    config: StreamConfig, column_types: dict[str, int], type_names: dict[int, str]
) -> Ordering:
    """The stream's Ordering from its result's column types (``cursor.description``).

    QueryError(validation) names a missing ordering column or an unusable type.
    """
    wanted = [config.time, *([config.key] if config.key else [])]
    if missing := [c for c in wanted if c not in column_types]:
        raise QueryError(
            "validation",
            f"result has no column {', '.join(missing)} (columns: {', '.join(column_types)})",
        )

    def name(column: str) -> str:
        oid = column_types[column]
        return type_names.get(oid, f"oid {oid}")

    time = time_column(
        config.time, column_types[config.time], name(config.time), config.time_zone,
        config.epoch_unit,
    )  # fmt: skip
    key = None
    if config.key is not None:
        key = key_column(config.key, column_types[config.key], name(config.key))
    return Ordering(time, key, config.by_time)


FLOAT_OIDS = {700, 701}  # real, double precision
# text, varchar, char(n), name: a value's text output is the string psycopg reads
TEXT_OIDS = {25, 1043, 1042, 19}
NON_FINITE_OIDS = {*FLOAT_OIDS, 1700}  # the types that hold NaN and infinities (numeric too)


@dataclass(frozen=True)
class Described:
    """What a stream's result looks like: its ordering, its float columns, and the
    columns that can hold a NaN or an infinity."""

    ordering: Ordering
    float_columns: frozenset[str]
    non_finite_columns: frozenset[str] = frozenset()
    text_columns: frozenset[str] = frozenset()


def _described(
    config: StreamConfig, column_types: dict[str, int], type_names: dict[int, str]
) -> Described:
    floats = frozenset(name for name, oid in column_types.items() if oid in FLOAT_OIDS)
    non_finite = frozenset(name for name, oid in column_types.items() if oid in NON_FINITE_OIDS)
    texts = frozenset(name for name, oid in column_types.items() if oid in TEXT_OIDS)
    return Described(ordering_for(config, column_types, type_names), floats, non_finite, texts)


async def describe_stream(
    conn: psycopg.AsyncConnection[Any], shape: sql.Composable, config: StreamConfig
) -> Described:
    """Run the stream's no-row shape query and read its columns' types."""
    cur = await conn.execute(shape)
    column_types = {d.name: d.type_code for d in cur.description or []}
    names = await conn.execute(TYPE_NAMES_SQL, [list(set(column_types.values()))])
    described = _described(config, column_types, dict(await names.fetchall()))
    if conn.pgconn.parameter_status(b"client_encoding") == b"SQL_ASCII":
        # psycopg reads text as bytes then: not the strings a fingerprint is made of
        described = replace(described, text_columns=frozenset())
    return described


def describe_stream_sync(
    conn: psycopg.Connection[Any], shape: sql.Composable, config: StreamConfig
) -> Described:
    """``describe_stream`` on a blocking connection (backfill)."""
    cur = conn.execute(shape)
    column_types = {d.name: d.type_code for d in cur.description or []}
    names = conn.execute(TYPE_NAMES_SQL, [list(set(column_types.values()))])
    return _described(config, column_types, dict(names.fetchall()))

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
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg import sql

from credit_exporter import catalog
from credit_exporter.config import CheckpointConfig, MetricMapping, ReconcileConfig, StreamConfig
from credit_exporter.db import CHUNK_ROWS, DATABASE_OID_SQL, Database, classify
from credit_exporter.health import Health
from credit_exporter.limits import Refused, overflow_labels
from credit_exporter.metric_state import LabelValues
from credit_exporter.sources.checkpoint import Checkpoint
from credit_exporter.sources.ordering import Horizon, Ordering, describe_stream
from credit_exporter.sources.reconcile import Reconciler
from credit_exporter.sources.rowpoll import (
    Derive,
    Derived,
    GroupingSet,
    Kind,
    RowAggregate,
    Spec,
)
from credit_exporter.sources.state import last_failure, poll_forever, report_failure
from credit_exporter.sources.totals import (
    Aggregates,
    Checksum,
    HistogramValue,
    Value,
    add_aggregates,
    add_checksums,
    add_value,
    magnitude,
)
from credit_exporter.textformat import (
    BATCH_LINES,
    LabelText,
    header,
    histogram_lines,
    simple_family,
)

log = logging.getLogger(__name__)

# The oldest open transaction may hold the horizon back by at most this much:
# a session left "idle in transaction" for hours must not make every poll
# re-read hours of events. Past it, only ``settle`` protects late commits.
MAX_GUARD_HOLD_SECONDS = 3600.0

# Every aggregate: no JIT, and the plan a plain query would get (a cursor otherwise
# favours fast-start plans).
POLL_SETTINGS = {"jit": "off", "cursor_tuple_fraction": "1"}
# A steady poll runs the same text every time, only its parameters change: each pooled
# connection prepares it once and reuses one plan. Forced generic: left to choose,
# PostgreSQL re-plans every run, because a generic plan costs ``key > $1`` at a third of
# the table; that estimate must not buy parallel workers for the thousand rows read.
STEADY_POLL_SETTINGS = {
    **POLL_SETTINGS,
    "plan_cache_mode": "force_generic_plan",
    "max_parallel_workers_per_gather": "0",
}
# A steady poll reads its rows whole and sums them in Python (rowpoll.py): only when the
# poll before read at most this many rows. Past it (a burst, an hour of live rows) the
# database aggregates them, through a server-side cursor in fetches of CHUNK_ROWS.
STEADY_POLL_MAX_ROWS = CHUNK_ROWS
# Label sets whose fingerprint a stream keeps (StreamPlan.fingerprint_by_labels); past
# it the cache starts again empty. A label set's fingerprint never changes.
FINGERPRINT_CACHE_SIZE = 100_000
INT4_OID = 23  # hashtext's type


@dataclass(frozen=True)
class _MetricPlan:
    mapping: MetricMapping
    metric: catalog.Metric
    label_columns: tuple[str, ...]  # in the catalogue's label order, dropped labels left out
    grouping_mask: int
    aggregate_columns: tuple[str, ...]  # result columns this metric reads
    # the label of ``values`` and this plan's value of it (one plan per value column)
    constant: tuple[int, str] | None = None  # (position in the metric's labels, text)
    counts_drops: bool = True  # False for all but the first plan of a ``values`` mapping
    # the result column counting the rows whose value was NaN or infinite (left out)
    non_finite: str | None = None

    @property
    def label_slots(self) -> tuple[tuple[str, str | None], ...]:
        """(label, column) per catalogue label; the column is None for a dropped label
        and for the label of ``values`` (filled in by ``with_constant``)."""
        dropped = self.mapping.policy.dropped
        return tuple(
            (label, self.mapping.labels[label] if label in self.mapping.labels and
             label not in dropped else None)
            for label in self.metric.labels
        )  # fmt: skip

    def with_constant(self, labels: LabelValues) -> LabelValues:
        """``labels`` with the value of the ``values`` label put in its place."""
        if self.constant is None:
            return labels
        position, text = self.constant
        return (*labels[:position], text, *labels[position + 1 :])


@dataclass
class StreamPlan:
    """The SQL of one stream: one scan, one GROUPING SETS aggregate for every metric."""

    config: StreamConfig
    # value columns of a float type: summed as numeric, so their sums do not depend on
    # the order rows are added in (integer and numeric sums are exact as they are)
    float_columns: frozenset[str] = frozenset()
    # value columns of a type that holds NaN and infinities (numeric, float): such a
    # value leaves its row out of that metric's aggregate, never its whole group
    non_finite_columns: frozenset[str] = frozenset()
    # columns of a text type (text, varchar, char, name): the value psycopg reads is the
    # text a row's fingerprint is made of
    text_columns: frozenset[str] = frozenset()
    columns: list[str] = field(init=False)  # union of label columns, GROUPING() order
    metrics: list[_MetricPlan] = field(init=False)
    aggregates: list[tuple[str, sql.Composable]] = field(init=False)
    # per non-finite column, the per-row column the aggregates read instead (see row_values)
    finite_values: dict[str, str] = field(init=False)
    # per aggregate column (and __fp), how rowpoll computes it from one per-row input
    specs: dict[str, Spec] = field(init=False)
    # the per-row inputs a steady poll selects (rows_statement), by name
    row_inputs: dict[str, sql.Composable] = field(init=False)
    # the per-row inputs rowpoll derives from a numeric column itself, by name (their
    # finiteness and buckets, which are exact in Decimal and cost the database most)
    derived: dict[str, Derived] = field(init=False)

    def __post_init__(self) -> None:
        columns: list[str] = []
        for mapping in self.config.metrics:
            for label, column in mapping.labels.items():
                if column not in columns and label not in mapping.policy.dropped:
                    columns.append(column)
        self.columns = columns
        values = {m.value for m in self.config.metrics if m.value is not None} | {
            column for m in self.config.metrics if m.values is not None
            for column in m.value_columns.values()
        }  # fmt: skip
        self.finite_values = {
            column: f"__v{i}" for i, column in enumerate(sorted(values & self.non_finite_columns))
        }
        self.aggregates = [("__rows", sql.SQL("count(*)"))]
        self.specs = {"__rows": Spec(Kind.ROWS)}
        self.row_inputs = {}
        self.derived = {}
        self.metrics = []
        summed: dict[str, str] = {}
        for index, mapping in enumerate(self.config.metrics):
            metric = catalog.get(mapping.metric)
            label_columns = tuple(
                mapping.labels[label]
                for label in metric.labels
                if label in mapping.labels and label not in mapping.policy.dropped
            )
            mask = sum(
                1 << (len(columns) - 1 - i) for i, c in enumerate(columns) if c not in label_columns
            )
            if metric.type is catalog.MetricType.HISTOGRAM:
                assert mapping.value is not None
                observed = self._value(mapping.value)
                names = []
                bounds = [sql.Literal(Decimal(repr(bound))) for bound in metric.buckets]
                assert list(metric.buckets) == sorted(metric.buckets)  # cumulative buckets
                # per row, the first bucket it falls in (NULL: none); buckets ascend, so a
                # row is in bucket b exactly when that first one is at most b
                first = self._input(
                    f"__h{index}_first",
                    sql.SQL("CASE {} END").format(
                        sql.SQL(" ").join(
                            sql.SQL("WHEN {} <= {} THEN {}").format(observed, bound, sql.Literal(b))
                            for b, bound in enumerate(bounds)
                        )
                    ),
                    Derived(Derive.FIRST_BUCKET, mapping.value,
                            tuple(Decimal(repr(bound)) for bound in metric.buckets)),
                )  # fmt: skip
                for b, bound in enumerate(bounds):
                    name = f"__h{index}_b{b}"
                    self._add(
                        name,
                        sql.SQL("count(*) FILTER (WHERE {} <= {})").format(observed, bound),
                        Spec(Kind.AT_MOST, first, b),
                    )
                    names.append(name)
                self._add(
                    f"__h{index}_count",
                    sql.SQL("count({})").format(observed),
                    Spec(
                        Kind.COUNT,
                        self._input(
                            f"__h{index}_count", observed, Derived(Derive.FINITE, mapping.value)
                        ),
                    ),
                )
                self._add(
                    f"__h{index}_sum",
                    self._sum(mapping.value),
                    self._sum_spec(f"__h{index}_sum", mapping.value),
                )
                names += [f"__h{index}_count", f"__h{index}_sum"]
                self.metrics.append(
                    _MetricPlan(mapping, metric, label_columns, mask, tuple(names),
                                non_finite=self._non_finite(mapping.value))
                )  # fmt: skip
                continue
            elif mapping.values is not None:
                # one plan per value column, all of one metric: a single scan
                assert mapping.value_label is not None
                position = metric.labels.index(mapping.value_label)
                for n, (text, column) in enumerate(mapping.value_columns.items()):
                    constant = (position, mapping.policy.label(mapping.value_label, text))
                    self.metrics.append(
                        _MetricPlan(mapping, metric, label_columns, mask,
                                    (self._summed(column, summed),), constant, n == 0,
                                    self._non_finite(column))
                    )  # fmt: skip
                continue
            elif mapping.value is None:
                self.metrics.append(_MetricPlan(mapping, metric, label_columns, mask, ("__rows",)))
            else:
                self.metrics.append(
                    _MetricPlan(mapping, metric, label_columns, mask,
                                (self._summed(mapping.value, summed),),
                                non_finite=self._non_finite(mapping.value))
                )  # fmt: skip
        self.specs["__fp"] = Spec(Kind.SUM, "__fp_row")  # the checksum's sum(__fp_row)

    def _summed(self, column: str, summed: dict[str, str]) -> str:
        """The result column holding ``sum(column)``, added once however many metrics read it."""
        if column not in summed:
            summed[column] = name = f"__s{len(summed)}"
            self._add(name, self._sum(column), self._sum_spec(name, column))
        return summed[column]

    def _add(self, name: str, expression: sql.Composable, spec: Spec) -> None:
        """An aggregate column: its SQL, and how rowpoll computes it from a per-row input."""
        self.aggregates.append((name, expression))
        self.specs[name] = spec

    def _input(self, name: str, expression: sql.Composable, derived: Derived | None = None) -> str:
        """A per-row input of the steady poll's rows, named; the name. ``expression`` is
        over the aggregate's FROM; ``derived`` says how rowpoll computes the same value
        from the column itself, used for a numeric column that can hold NaN or infinities
        (the one kind of value column it derives)."""
        if derived is not None and self._derives(derived.column):
            self.derived[name] = derived
        else:
            self.row_inputs[name] = expression
        return name

    def _derives(self, column: str) -> bool:
        return column in self.non_finite_columns and column not in self.float_columns

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """The value columns ``derived`` inputs are computed from."""
        return tuple(dict.fromkeys(d.column for d in self.derived.values()))

    def _sum_spec(self, name: str, column: str) -> Spec:
        """``sum(column)`` from a per-row input: the value ``_sum`` adds up, cast alike."""
        cast = sql.SQL("::numeric") if column in self.float_columns else sql.SQL("")
        added = sql.SQL("{}{}").format(self._value(column), cast)
        return Spec(Kind.SUM, self._input(name, added, Derived(Derive.FINITE, column)))

    def _non_finite(self, column: str) -> str | None:
        """The result column counting ``column``'s NaN and infinite values, added once;
        None for a type that cannot hold them."""
        alias = self.finite_values.get(column)
        if alias is None:
            return None
        name = alias.replace("__v", "__nf", 1)
        if all(added != name for added, _ in self.aggregates):
            # the values that were there, less those left: the NaNs and infinities
            counted = sql.SQL("count({}) - count({})").format(
                sql.Identifier(column), sql.Identifier(alias)
            )
            dropped = sql.SQL("({} IS NOT NULL AND {} IS NULL)").format(
                sql.Identifier(column), sql.Identifier(alias)
            )
            left_out = self._input(name, dropped, Derived(Derive.NOT_FINITE, column))
            self._add(name, counted, Spec(Kind.TRUE, left_out))
        return name

    def _value(self, column: str) -> sql.Identifier:
        """What the aggregates read for a value column: the column, or for one that can
        hold NaN or an infinity, its finite values (``row_values``)."""
        return sql.Identifier(self.finite_values.get(column, column))

    @property
    def row_values(self) -> sql.Composable:
        """The per-row columns the aggregates read, each preceded by a comma (empty when
        none): every value column of a non-finite type, NULL where it is NaN or infinite.
        x - x is 0 for every finite number and NaN for NaN and both infinities, in numeric
        and float alike. Computed once per row here, not once per aggregate of every
        grouping set (as a FILTER on each sum would be)."""
        return sql.SQL("").join(
            sql.SQL(", CASE WHEN ({c} - {c}) = 0 THEN {c} END AS {alias}").format(
                c=sql.Identifier(column), alias=sql.Identifier(alias)
            )
            for column, alias in self.finite_values.items()
        )

    def _sum(self, column: str) -> sql.Composable:
        cast = sql.SQL("::numeric") if column in self.float_columns else sql.SQL("")
        return sql.SQL("sum({}{})").format(self._value(column), cast)

    @property
    def source(self) -> sql.Composable:
        """The stream's own SQL, as the subquery every statement wraps."""
        return sql.SQL(self.config.sql.strip().rstrip(";"))  # type: ignore[arg-type]

    def top_statement(self, column: str, lowest: bool = False) -> sql.Composed:
        """The highest (or lowest) value of ``column`` visible now: an index scan, one row."""
        order = sql.Identifier(column)
        return sql.SQL(
            "SELECT events.{order} FROM (\n{source}\n) AS events"
            " WHERE events.{order} IS NOT NULL ORDER BY events.{order} {direction} LIMIT 1"
        ).format(order=order, source=self.source, direction=sql.SQL("" if lowest else "DESC"))

    def shape_statement(self) -> sql.Composed:
        """No rows, only the stream's columns (check-config --connect)."""
        return sql.SQL("SELECT * FROM (\n{source}\n) AS events LIMIT 0").format(source=self.source)

    @property
    def row_fingerprint(self) -> sql.Composable:
        """A hash of one row's label columns. Summed per chunk, it is a checksum that moves
        when a settled row's labels change even though no count or sum does."""
        if not self.columns:
            return sql.SQL("0")
        return sql.SQL("hashtext(ROW({})::text)").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
        )

    @property
    def fingerprint_by_labels(self) -> bool:
        """Whether a steady poll asks for the fingerprint once per label set (cached by the
        stream), not once per row: when every label column is text, the label values
        psycopg reads are the text the fingerprint hashes."""
        return bool(self.columns) and all(c in self.text_columns for c in self.columns)

    def fingerprint_statement(self) -> sql.Composed:
        """The fingerprint of each label set given as one text array per label column
        (parameters c0, c1, ... in ``columns`` order), in order: ``row_fingerprint`` of a row with
        those labels."""
        names = [sql.Identifier(f"c{i}") for i in range(len(self.columns))]
        return sql.SQL(
            "SELECT hashtext(ROW({columns})::text) FROM unnest({arrays})"
            " WITH ORDINALITY AS labels({columns}, n) ORDER BY n"
        ).format(
            columns=sql.SQL(", ").join(names),
            arrays=sql.SQL(", ").join(
                sql.SQL("{}::text[]").format(sql.Placeholder(f"c{i}")) for i in range(len(names))
            ),
        )

    @property
    def checksum_columns(self) -> tuple[str, ...]:
        """The result columns of a chunk's checksum, in order."""
        return (*(name for name, _ in self.aggregates), "__fp")

    def _aggregate_list(self, fingerprint: sql.Composable) -> list[sql.Composable]:
        return [
            *[sql.SQL("{} AS {}").format(expr, sql.Identifier(name))
              for name, expr in self.aggregates],
            sql.SQL("sum({}) AS __fp").format(fingerprint),
        ]  # fmt: skip

    def _chunk(self, ordering: Ordering) -> sql.Composable:
        return sql.SQL("floor({} / %(chunk)s)::bigint").format(ordering.time.position())

    def aggregate_statement(
        self, ordering: Ordering, branches: list[sql.Composable], settled: sql.Composable
    ) -> sql.Composed:
        """One GROUPING SETS aggregate, every metric's label set plus the time chunk.

        The rows read are the union of ``branches`` (WHERE clauses; none means
        every row), each marked ``__settled`` by ``settled``. The chunk set
        (``__by_chunk`` 0) carries the per-chunk checksums the reconcile compares.
        """
        label_columns = [sql.Identifier(c) for c in self.columns]
        sets = sql.SQL(", ").join(
            [
                *(
                    sql.SQL("({})").format(
                        sql.SQL(", ").join(
                            [sql.Identifier("__settled"),
                             *[sql.Identifier(c) for c in plan.label_columns]]
                        )
                    )
                    for plan in self._distinct_sets()
                ),
                sql.SQL("(__settled, __chunk)"),
            ]
        )  # fmt: skip
        grouping = (
            sql.SQL("GROUPING({})").format(sql.SQL(", ").join(label_columns))
            if label_columns
            else sql.SQL("0")
        )
        select_list = sql.SQL(", ").join(
            [
                sql.Identifier("__settled"),
                sql.SQL("{} AS __grouping").format(grouping),
                sql.SQL("GROUPING(__chunk) AS __by_chunk"),
                sql.Identifier("__chunk"),
                *label_columns,
                # hashed once per row below, not once per grouping set
                *self._aggregate_list(sql.Identifier("__fp_row")),
            ]
        )
        return sql.SQL(
            "SELECT {select_list} FROM ({rows}) AS stream GROUP BY GROUPING SETS ({sets})"
        ).format(select_list=select_list, rows=self._rows(ordering, branches, settled), sets=sets)

    def _rows(
        self, ordering: Ordering, branches: list[sql.Composable], settled: sql.Composable
    ) -> sql.Composable:
        """The rows an aggregate reads: the union of ``branches``, each row with its
        settled flag, chunk, fingerprint and finite values."""
        branch = sql.SQL(
            "SELECT events.*, ({settled}) AS __settled, {chunk} AS __chunk,"
            " {fingerprint} AS __fp_row{values} FROM (\n{source}\n) AS events"
        ).format(
            settled=settled,
            chunk=self._chunk(ordering),
            fingerprint=self.row_fingerprint,
            values=self.row_values,
            source=self.source,
        )
        return sql.SQL(" UNION ALL ").join(
            [sql.SQL("{} WHERE {}").format(branch, where) for where in branches] or [branch]
        )

    def rows_statement(
        self, ordering: Ordering, since: Horizon | None, settle_at: Horizon | None
    ) -> sql.Composed:
        """``poll_statement``'s rows, not aggregated: per row, its settled flag, chunk,
        fingerprint (unless ``fingerprint_by_labels``), label columns and the input of
        every aggregate (``row_inputs``), for ``row_aggregate`` to sum in Python. Same
        parameters."""
        fingerprint = () if self.fingerprint_by_labels else ("__fp_row",)
        select_list = sql.SQL(", ").join(
            [
                *(sql.Identifier(c) for c in ("__settled", "__chunk", *fingerprint)),
                *(sql.Identifier(c) for c in self.columns),
                *(sql.SQL("{} AS {}").format(expression, sql.Identifier(name))
                  for name, expression in self.row_inputs.items()),
                *(sql.SQL("{} AS {}").format(sql.Identifier(c), sql.Identifier(f"__raw_{c}"))
                  for c in self.raw_columns),
            ]
        )  # fmt: skip
        rows = self._rows(
            ordering, ordering.unsettled_branches(since, "since"), ordering.settled(settle_at, "at")
        )
        return sql.SQL("SELECT {} FROM ({}) AS stream").format(select_list, rows)

    def row_aggregate(self, columns: tuple[str, ...], types: tuple[int, ...]) -> RowAggregate:
        """Sums ``rows_statement``'s rows (``columns`` of type OIDs ``types``) into the
        rows ``poll_statement`` would return."""
        full = (1 << len(self.columns)) - 1 if self.columns else 0
        sets = [
            *(GroupingSet(mask, plan.label_columns, self._read_by(mask))
              for mask, plan in ((p.grouping_mask, p) for p in self._distinct_sets())),
            GroupingSet(full, (), tuple(self.specs), by_chunk=True),
        ]  # fmt: skip
        return RowAggregate(self.columns, self.specs, sets, columns, types, self.derived)

    def _read_by(self, mask: int) -> tuple[str, ...]:
        """The aggregate columns the metrics of one grouping set read."""
        read: dict[str, None] = {"__rows": None}
        for plan in self.metrics:
            if plan.grouping_mask == mask:
                read.update(dict.fromkeys(plan.aggregate_columns))
                if plan.non_finite is not None:
                    read[plan.non_finite] = None
        return tuple(read)

    def poll_statement(
        self, ordering: Ordering, since: Horizon | None, settle_at: Horizon | None
    ) -> sql.Composed:
        """The rows not settled at ``since``, split by whether they are settled at ``settle_at``
        (parameters from ``Ordering.params`` with prefixes since and at)."""
        return self.aggregate_statement(
            ordering, ordering.unsettled_branches(since, "since"), ordering.settled(settle_at, "at")
        )

    @staticmethod
    def _in_chunks(ordering: Ordering, null_time: bool) -> sql.Composable:
        """The rows of chunks [lo, hi) (parameters lo, hi), or those with a NULL time."""
        column = ordering.time.column
        if null_time:
            return sql.SQL("{} IS NULL").format(column)
        return sql.SQL("{column} >= {lo} AND {column} < {hi}").format(
            column=column, lo=ordering.time.param("lo"), hi=ordering.time.param("hi")
        )

    def history_statement(
        self, ordering: Ordering, at: Horizon, null_time: bool = False
    ) -> sql.Composed:
        """The per-series totals of the rows settled at ``at`` in chunks [lo, hi)."""
        where = sql.SQL("({}) AND {}").format(
            ordering.settled(at, "at"), self._in_chunks(ordering, null_time)
        )
        return self.aggregate_statement(ordering, [where], sql.SQL("TRUE"))

    def null_time_statement(self) -> sql.Composed:
        """How many rows have no time (a stream settled by time cannot count them)."""
        return sql.SQL(
            "SELECT count(*) FROM (\n{source}\n) AS events WHERE events.{time} IS NULL"
        ).format(source=self.source, time=sql.Identifier(self.config.time))

    def checksum_statement(
        self, ordering: Ordering, at: Horizon, null_time: bool = False
    ) -> sql.Composed:
        """Per chunk in [lo, hi): the checksum of the rows settled at ``at``."""
        return sql.SQL(
            "SELECT {chunk} AS __chunk, {aggregates} FROM ("
            "SELECT events.*{values} FROM (\n{source}\n) AS events"
            " WHERE ({settled}) AND {within}) AS events GROUP BY 1"
        ).format(
            chunk=self._chunk(ordering),
            aggregates=sql.SQL(", ").join(self._aggregate_list(self.row_fingerprint)),
            values=self.row_values,
            source=self.source,
            settled=ordering.settled(at, "at"),
            within=self._in_chunks(ordering, null_time),
        )

    def _distinct_sets(self) -> list[_MetricPlan]:
        seen: dict[int, _MetricPlan] = {}
        for plan in self.metrics:
            seen.setdefault(plan.grouping_mask, plan)
        return list(seen.values())

    def split(
        self,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        admissions: dict[str, Admission] | None = None,
    ) -> Split:
        """Result rows -> settled and live aggregates per metric (one chunk at a time
        through ``PollSplit`` in the engine; whole here)."""
        split = self.splitter(columns, admissions or self.admissions())
        split.feed(rows)
        return split.finish()

    def splitter(self, columns: tuple[str, ...], admissions: dict[str, Admission]) -> PollSplit:
        """A splitter for one poll's result with these columns."""
        return PollSplit(self, columns, admissions)

    def admissions(self) -> dict[str, Admission]:
        """Fresh admission state: which label sets get a series of their own."""
        return {
            plan.metric.name: Admission(plan.mapping.policy.max_series - 1) for plan in self.metrics
        }


@dataclass
class Admission:
    """The label sets of one capped metric that have a series of their own.

    ``room`` is the cap minus the overflow series. Admission only grows, and
    closes for the life of the process the first time a label set is refused:
    from then on every label set not admitted goes to the overflow series, so
    a refused label set never moves out of it (the overflow never decreases)
    and an admitted one never moves in.
    """

    room: int
    admitted: set[LabelValues] = field(default_factory=set)
    closed: bool = False


class _Gate:
    """One poll's admission for one metric: new label sets are admitted smallest first.

    Pending label sets (new in this poll) are kept while they fit in twice the
    room left; beyond that the largest are folded into the overflow series,
    whose values they add to, so sums stay exact and memory stays bounded.
    """

    def __init__(self, plan: _MetricPlan, admission: Admission, settled: Aggregates,
                 live: Aggregates) -> None:  # fmt: skip
        self.admission = admission
        self.targets = (settled[plan.metric.name], live[plan.metric.name])
        self.overflow = overflow_labels(plan.metric.labels, plan.mapping.policy.dropped)
        self.pending: set[LabelValues] = set()
        self.cutoff: LabelValues | None = None  # pending label sets above it are refused
        self.refused = 0  # groups (label set x settled/live) folded into the overflow

    def add(self, labels: LabelValues, value: Value, settled: bool) -> None:
        admission = self.admission
        if labels not in admission.admitted and labels not in self.pending:
            room = admission.room - len(admission.admitted)
            if admission.closed or room <= 0 or (self.cutoff is not None and labels > self.cutoff):
                self.refused += 1
                self.fold(value, settled)
                return
            self.pending.add(labels)
            add_value(self.targets[0 if settled else 1], labels, value)
            if len(self.pending) >= 2 * room:
                self._trim(room)
            return
        add_value(self.targets[0 if settled else 1], labels, value)

    def fold(self, value: Value, settled: bool) -> None:
        """Add a group to the overflow series whatever its labels."""
        add_value(self.targets[0 if settled else 1], self.overflow, value)

    def _trim(self, keep: int) -> None:
        if len(self.pending) <= keep:
            return
        ordered = sorted(self.pending)
        for labels in ordered[keep:]:
            for target in self.targets:
                value = target.pop(labels, None)
                if value is not None:
                    add_value(target, self.overflow, value)
                    self.refused += 1
        self.pending = set(ordered[:keep])
        self.cutoff = ordered[keep - 1] if keep else ()

    def finish(self) -> None:
        """Commit this poll's admissions (only once its whole result has been read)."""
        self._trim(max(0, self.admission.room - len(self.admission.admitted)))
        self.admission.admitted |= self.pending
        if self.cutoff is not None or len(self.admission.admitted) >= self.admission.room:
            self.admission.closed = True


@dataclass
class Split:
    """One poll's aggregates, and what was not exported as its own series."""

    settled: Aggregates
    live: Aggregates
    dropped_rows: Counter[str] = field(default_factory=Counter)  # by dropped_rows reason
    over_limit: Counter[str] = field(default_factory=Counter)  # groups folded, by metric
    # per time chunk (None: rows without a time), the checksum of the rows it settled
    checksums: dict[int | None, Checksum] = field(default_factory=dict)
    whole_table: bool = False  # the poll read every row (nothing was settled before it)
    groups: int = 0  # result rows of the aggregate
    rows: int = 0  # rows the aggregate read (the settled and live chunk rows' __rows)


_Slots = tuple[tuple[str, int | None], ...]  # (label, result column index or None)


class PollSplit:
    """Splits one poll's aggregate rows, chunk by chunk, into settled and live series."""

    def __init__(self, plan: StreamPlan, columns: tuple[str, ...],
                 admissions: dict[str, Admission]) -> None:  # fmt: skip
        self.index = {name: i for i, name in enumerate(columns)}
        self.checksum_columns = plan.checksum_columns
        self.result = Split(
            settled={p.metric.name: {} for p in plan.metrics},
            live={p.metric.name: {} for p in plan.metrics},
        )
        self.by_mask: dict[int, list[tuple[_MetricPlan, _Gate, _Slots]]] = {}
        self.gates: dict[str, tuple[_MetricPlan, _Gate]] = {}  # one per metric (its cap)
        for metric_plan in plan.metrics:
            name = metric_plan.metric.name
            if name not in self.gates:
                self.gates[name] = (metric_plan, _Gate(
                    metric_plan, admissions[name], self.result.settled, self.result.live
                ))  # fmt: skip
            gate = self.gates[name][1]
            slots = tuple(
                (label, None if column is None else self.index[column])
                for label, column in metric_plan.label_slots
            )
            self.by_mask.setdefault(metric_plan.grouping_mask, []).append(
                (metric_plan, gate, slots)
            )

    def feed(self, rows: list[tuple[Any, ...]]) -> None:
        index, dropped = self.index, self.result.dropped_rows
        by_chunk = index.get("__by_chunk")
        checksum = [index[name] for name in self.checksum_columns] if by_chunk is not None else []
        for row in rows:
            settled = bool(row[index["__settled"]])
            if by_chunk is not None and row[by_chunk] == 0:
                self.result.rows += int(row[index["__rows"]])
                if settled:
                    chunk = row[index["__chunk"]]
                    self.result.checksums[chunk] = tuple(row[i] for i in checksum)
                continue
            for plan, gate, slots in self.by_mask.get(row[index["__grouping"]], []):
                if plan.non_finite is not None and settled:
                    # counted once, when its row settles (a live row is read every poll)
                    dropped["not_finite"] += int(row[index[plan.non_finite]])
                groups_rows = int(row[index["__rows"]])
                # a metric with ``values`` has one plan per value column: its
                # label cells count once
                counted = groups_rows if plan.counts_drops else 0
                try:
                    value = _value(plan, row, index)
                except Refused as refused:
                    dropped[refused.reason] += counted
                    continue
                policy = plan.mapping.policy
                try:
                    labels: LabelValues = plan.with_constant(
                        tuple(
                            "" if column is None else policy.label(label, row[column])
                            for label, column in slots
                        )
                    )
                except Refused as refused:
                    dropped[refused.reason] += counted
                    if refused.reason != "null_label":
                        # too long or not UTF-8: the rows still count, in the
                        # overflow series, so sum() stays equal to SQL
                        gate.fold(value, settled)
                    continue
                gate.add(labels, value, settled)

    def finish(self) -> Split:
        for name, (_, gate) in self.gates.items():
            gate.finish()
            if gate.refused:
                self.result.over_limit[name] += gate.refused
        return self.result


def _value(plan: _MetricPlan, row: tuple[Any, ...], index: dict[str, int]) -> Value:
    """A group's aggregate as exact Decimal or bucket counts; ``Refused`` when its
    sum is NaN or infinite, or too large for the float that /metrics writes."""
    cells = [row[index[c]] for c in plan.aggregate_columns]
    if plan.metric.type is catalog.MetricType.HISTOGRAM:
        *buckets, count, total = cells
        value: Value = HistogramValue(
            [int(b) for b in buckets], int(count), _finite(Decimal(total or 0))
        )
        return value
    return _finite(Decimal(cells[0] or 0))


def _finite(number: Decimal) -> Decimal:
    if not number.is_finite():
        raise Refused("not_finite")
    if not math.isfinite(float(number)):
        raise Refused("out_of_range")
    return number


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
         '{{}}'),
       {cutoff},
       ({database_oid})
"""


def activity_statement(ordering: Ordering) -> sql.Composed:
    """now(), whether this role sees other sessions, the open transactions, ``now()``
    minus the stream's window in its time column's type (parameter ``window``), and the
    database's OID (another database under the same DSN has another)."""
    cutoff = ordering.time.cutoff("window") if ordering.by_time else sql.SQL("NULL")
    return sql.SQL(ACTIVITY_SQL).format(  # type: ignore[arg-type]
        cutoff=cutoff, database_oid=sql.SQL(DATABASE_OID_SQL)
    )


@dataclass(frozen=True)
class Candidate:
    """A horizon that becomes safe once every transaction open after it was read has ended."""

    value: Any  # the highest ordering value visible when read
    open_transactions: frozenset[str]  # "pid@xact_start" read right after it
    seen: float  # time.monotonic() when read


class StartOver(Exception):
    """The rows the stream settled are not in this database any more (``reason``: a
    RECOMPUTE_REASONS value): its totals must be read again from the whole table."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _later(current: Any, new: Any) -> Any:
    """The horizon never moves back (naive times in a zone with DST can, by an hour)."""
    if new is None:
        return current
    return new if current is None or new > current else current


class EventStream:
    """One configured stream: base + live aggregates, advanced on every poll."""

    def __init__(
        self, name: str, config: StreamConfig, database: Database, health: Health,
        checkpoint: CheckpointConfig | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.config = config
        self.database = database
        self.health = health
        self.plan = StreamPlan(config)
        self.admissions = self.plan.admissions()
        for mapping in config.metrics:
            health.register_metric(mapping.metric, ("series_limit",))
        health.register_stream(name, [mapping.metric for mapping in config.metrics])
        # after a reload that changed the stream: what its metrics exported before, which
        # the first poll may not go below for the series it still has (set by the server)
        self.floor: Aggregates | None = None
        self.generation = 0  # moves when the stream starts over: older reconcile work is void
        # the last poll timed out: the next one reads a backlog, with the start-up's timeout
        self.backlog = False
        self._clear()
        # polls and reconcile steps take turns: each sees a horizon nobody else moves
        self.lock = asyncio.Lock()
        reconcile = config.reconcile or ReconcileConfig()
        self.chunk_width = 0  # seconds, known once the time column's type is
        self._chunk = reconcile.chunk
        self.reconciler = Reconciler(self, config.reconcile) if config.reconcile else None
        # label set -> its fingerprint (hashtext of the labels as a ROW's text)
        self.fingerprints: dict[tuple[Any, ...], int] = {}
        # the settled state kept on disk between runs (sources/checkpoint.py)
        self.checkpoint = Checkpoint(self, checkpoint) if checkpoint is not None else None

    def _clear(self) -> None:
        """No rows counted: the state of a stream that has not polled yet."""
        self.ordering: Ordering | None = None  # the ordering columns' types, read at first poll
        self.horizon: Horizon | None = None  # rows settled at it are in the base
        self.candidates: list[Candidate] = []
        self.identity: int | None = None  # the database's OID, read at every poll
        self.base: Aggregates = {p.metric.name: {} for p in self.plan.metrics}
        self.live: Aggregates = {p.metric.name: {} for p in self.plan.metrics}
        # what /metrics shows: base + live, never below what it showed before
        self.exported: Aggregates = {p.metric.name: {} for p in self.plan.metrics}
        # per time chunk, the checksum of the rows settled into the base
        self.checksums: dict[int | None, Checksum] = {}
        self.held: set[tuple[str, LabelValues]] = set()  # series held above the database's total
        self.last_rows = 0  # rows the last poll read

    def start_over(self, replaced: StartOver) -> None:
        """Forget every total and aggregate the whole table again at the next poll.

        The one place a counter may go down: the database itself is another one, and
        holding the old totals would show money that no longer exists while every new
        row went uncounted. Prometheus reads the drop as a counter reset.
        """
        log.error(
            "stream %s: %s; recomputing every total from the whole table (its counters will"
            " drop to the new database's totals, which Prometheus reads as a reset)",
            self.name, replaced,
        )  # fmt: skip
        self.health.recomputes.labels(self.name, replaced.reason).inc()
        self.fingerprints.clear()  # another server may encode the same labels otherwise
        self.generation += 1
        self.floor = None
        self.admissions = self.plan.admissions()
        self._clear()

    def reset_settled(self) -> None:
        """Nothing settled, the ordering kept: what the whole-history aggregate starts
        from when a checkpoint is not used (what was exported stays, as a floor)."""
        self.horizon = None
        self.candidates = []
        self.identity = None
        self.base = {p.metric.name: {} for p in self.plan.metrics}
        self.live = {p.metric.name: {} for p in self.plan.metrics}
        self.checksums = {}
        self.admissions = self.plan.admissions()
        self.backlog = False
        if self.reconciler is not None:
            self.reconciler.cursor = None

    async def describe(self, timeout: float) -> Ordering:
        """The ordering columns' types, read from the stream's result (no rows); the plan
        is made again to sum its float columns exactly."""
        async with self.database.read_only(timeout) as conn:
            described = await describe_stream(conn, self.plan.shape_statement(), self.config)
        self.plan = StreamPlan(
            self.config, described.float_columns, described.non_finite_columns,
            described.text_columns,
        )  # fmt: skip
        self.chunk_width = described.ordering.time.chunk_seconds(self._chunk)
        return described.ordering

    async def _advance_horizon(self, ordering: Ordering, timeout: float) -> Horizon:
        """Read a new candidate, release the safe ones, return the new horizon.

        Order matters: the top value is read first, the open transactions
        after it (in a later transaction), so any transaction that could still
        commit a row at or below the top value is in that set. A candidate is
        released when none of its transactions is open any more (read before
        the aggregate's snapshot is taken), or, when this role cannot see other
        sessions, once ``settle`` has passed. The guarded column is the key, or
        without one the time, which also trails ``now()`` by the stream's window;
        a keyed stream whose rows change settles by both (the time part trails
        by ``changes_within``).
        """
        guarded = ordering.key.name if ordering.key is not None else ordering.time.name
        previous = self.horizon or Horizon()
        guarded_horizon = previous.key if ordering.key is not None else previous.time
        async with self.database.read_only(timeout) as conn:
            cur = await conn.execute(self.plan.top_statement(guarded))
            top = await cur.fetchone()
        async with self.database.read_only(timeout) as conn:
            cur = await conn.execute(activity_statement(ordering), {"window": self.config.window})
            row = await cur.fetchone()
        assert row is not None
        _, can_see_all, open_list, cutoff, identity = row
        self._check_same_rows(ordering, previous, top, identity)
        open_now = frozenset(open_list)
        now = time.monotonic()
        if top is not None and (guarded_horizon is None or top[0] > guarded_horizon):
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
        value = max((c.value for c in released), default=None)
        if ordering.key is not None:
            horizon = Horizon(
                key=_later(previous.key, value),
                time=_later(previous.time, cutoff) if ordering.by_time else None,
            )
            guarded_horizon = horizon.key
        else:
            capped = None if value is None else min(value, cutoff)
            horizon = Horizon(time=_later(previous.time, capped))
            guarded_horizon = horizon.time
        self.candidates = [
            c
            for c in self.candidates
            if c not in released and (guarded_horizon is None or c.value > guarded_horizon)
        ]
        return horizon

    def _check_same_rows(
        self, ordering: Ordering, previous: Horizon, top: tuple[Any, ...] | None, identity: int
    ) -> None:
        """Raise StartOver when the database is not the one the totals were read from."""
        if self.identity is not None and identity != self.identity:
            raise StartOver(
                "database_replaced",
                f"the database under this DSN is another one (OID {self.identity} is now"
                f" {identity}: dropped and restored, or re-created)",
            )
        self.identity = identity
        if ordering.key is None or previous.key is None:
            return
        highest = None if top is None else top[0]
        if highest is None or highest < previous.key:
            raise StartOver(
                "key_went_back",
                f"the highest {ordering.key.name} is {highest}, below the {previous.key}"
                " already settled (a restore from an older backup, or the newest rows deleted)",
            )

    def params(self, since: Horizon | None, settle_at: Horizon | None) -> dict[str, Any]:
        assert self.ordering is not None
        return {
            **self.ordering.params(since, "since"),
            **self.ordering.params(settle_at, "at"),
            "chunk": self.chunk_width,
        }

    async def poll(self) -> tuple[Horizon, Split]:
        """One poll: the new horizon and the aggregates split at it."""
        if self.ordering is None:
            self.ordering = await self.describe(self.config.timeout)
        ordering = self.ordering
        first = not ordering.complete(self.horizon)
        # A poll that timed out is tried again as a start-up is: a burst of rows (a
        # batch import, hours of writes while the database was unreachable to us) that
        # one poll cannot aggregate within `timeout` would otherwise time out for ever.
        big = first or self.backlog
        timeout = self.config.startup_timeout if big else self.config.timeout
        try:
            horizon = await self._advance_horizon(ordering, timeout)
        except StartOver as replaced:
            self.start_over(replaced)
            return await self.poll()  # cannot start over twice: nothing is settled now
        params = self.params(self.horizon, horizon)
        if big or self.last_rows > STEADY_POLL_MAX_ROWS:
            statement = self.plan.poll_statement(ordering, self.horizon, horizon)
            split = await self._read_big(statement, params, timeout, big)
        else:
            # fetched whole: the previous poll read few rows, and so should this one
            async with self.database.read_only(
                timeout, repeatable_read=True, settings=STEADY_POLL_SETTINGS
            ) as conn:
                rows = self.plan.rows_statement(ordering, self.horizon, horizon)
                cur = await conn.execute(rows, params, prepare=True)
                split = await self.read_rows(conn, cur)
        split.whole_table = first
        self.last_rows = split.rows
        return horizon, split

    async def _read_big(self, statement: sql.Composed, params: dict[str, Any],
                        timeout: float, big: bool) -> Split:  # fmt: skip
        """An aggregate whose result may be large, through a server-side cursor: a
        start-up's can hold millions of groups, and only the capped series may stay in
        memory.

        The start-up or backlog statement (``big``) gets memory for its GROUPING SETS
        sorts, and no JIT (measured: JIT compiled ~270 functions for ~9 s of a 31 s
        start-up on 1M rows; work_mem 256MB took it from 31 s to 18.5 s).
        """
        settings = dict(POLL_SETTINGS)
        if big:
            settings["work_mem"] = self.config.startup_work_mem
        async with (
            self.database.read_only(
                timeout, repeatable_read=True, settings=settings, beyond_statement_timeout=big
            ) as conn,
            conn.cursor(name="credit_exporter_stream") as cur,
        ):
            await cur.execute(statement, params)
            return await self.read_split(cur)

    async def read_rows(self, conn: Any, cur: Any) -> Split:
        """A steady poll's rows (``rows_statement``, run on ``conn``), summed here into
        the aggregate's rows and split into settled and live series."""
        description = cur.description or []
        columns = tuple(c.name for c in description)
        types = tuple(c.type_code for c in description)
        rows = await cur.fetchall()
        if self.plan.fingerprint_by_labels:
            rows = await self._fingerprinted(conn, columns, rows)
            columns, types = (*columns, "__fp_row"), (*types, INT4_OID)
        aggregate = self.plan.row_aggregate(columns, types)

        def split() -> Split:
            splitter = self.plan.splitter(aggregate.result_columns, self.admissions)
            result = aggregate.aggregate(rows)
            splitter.feed(result)
            done = splitter.finish()
            done.groups, done.rows = len(result), len(rows)
            return done

        return await asyncio.to_thread(split)  # off the event loop: scrapes must not wait

    async def _fingerprinted(
        self, conn: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """``rows``, each with its fingerprint appended: from the cache, or for label sets
        not in it, computed by PostgreSQL (the same ``hashtext``) in one statement."""
        positions = [columns.index(c) for c in self.plan.columns]
        keys = [tuple(row[i] for i in positions) for row in rows]
        known = self.fingerprints
        missing = list(dict.fromkeys(key for key in keys if key not in known))
        if missing:
            if len(known) + len(missing) > FINGERPRINT_CACHE_SIZE:
                known.clear()
            arrays = {f"c{i}": list(values) for i, values in enumerate(zip(*missing, strict=True))}
            cur = await conn.execute(self.plan.fingerprint_statement(), arrays)
            for key, (fingerprint,) in zip(missing, await cur.fetchall(), strict=True):
                known[key] = fingerprint
        return [(*row, known[key]) for row, key in zip(rows, keys, strict=True)]

    async def read_split(self, cur: Any) -> Split:
        """An aggregate's rows, chunk by chunk, split into settled and live series."""
        columns = tuple(c.name for c in cur.description or [])
        split = self.plan.splitter(columns, self.admissions)
        groups = 0
        while rows := await cur.fetchmany(CHUNK_ROWS):
            groups += len(rows)
            # off the event loop: scrapes must not wait
            await asyncio.to_thread(split.feed, rows)
        result = split.finish()
        result.groups = groups
        return result

    async def run_once(self) -> bool:
        started = time.monotonic()
        async with self.lock:
            try:
                if self.checkpoint is not None:
                    await self.checkpoint.restore()  # once: the state at the last checkpoint
                horizon, split = await self.poll()
            except Exception as exc:
                reason = classify(exc).reason
                if reason not in ("connection", "timeout"):
                    self.ordering = None  # a changed table: read its column types again
                self.backlog = reason == "timeout"
                report_failure(self.health, "stream", self.name, started, exc)
                if self.backlog:
                    self.health.expect_long_poll(self.name)
                return False
            self.backlog = False
            if split.whole_table and self.reconciler is not None:
                # the base was just computed from the whole table: as good as a reconcile
                self.health.reconcile_last_success.labels(self.name).set(time.time())
            add_aggregates(self.base, split.settled)
            for chunk, checksum in split.checksums.items():
                self.checksums[chunk] = add_checksums(self.checksums.get(chunk), checksum)
            self.live = split.live
            self.horizon = horizon
            self.publish()
        for reason, count in split.dropped_rows.items():
            self.health.dropped_rows.labels(self.name, reason).inc(count)
        for metric, count in split.over_limit.items():
            self.health.dropped_series.labels(metric, "series_limit").inc(count)
        live_series = sum(len(s) for s in split.live.values())
        self.health.succeeded(self.name, time.monotonic() - started, live_series)
        log.debug(
            "stream %s: poll in %.3fs, horizon %s, %d live series",
            self.name, time.monotonic() - started, horizon, live_series,
        )  # fmt: skip
        return True

    def publish(self) -> None:
        """Export base + live, never below what was exported before."""
        totals = self.totals()
        if self.floor is not None:
            # series the changed definition no longer has simply end
            self.exported = {
                metric: {k: v for k, v in self.floor.get(metric, {}).items() if k in series}
                for metric, series in totals.items()
            }
            self.floor = None
        self.exported = self._never_decreasing(totals)

    def _never_decreasing(self, totals: Aggregates) -> Aggregates:
        """Keep the previous value of any series that would go down, and say so.

        Append-only rows can only make base + live grow; a decrease means rows
        were deleted or updated under the exporter (or a value column went
        negative). Prometheus would read it as a counter reset and rate() would
        jump, so the series holds its value, the incident is counted, and
        credit_exporter_counter_excess says how far the held values are above
        the database's totals.
        """
        held: set[tuple[str, LabelValues]] = set()
        for metric, series in totals.items():
            previous = self.exported.get(metric, {})
            excess = Decimal(0)
            for labels, before in previous.items():
                value = series.get(labels)
                if value is not None and not _went_down(value, before):
                    continue
                series[labels] = before
                excess += magnitude(before) - (Decimal(0) if value is None else magnitude(value))
                held.add((metric, labels))
                self.health.dropped_series.labels(metric, "counter_decrease").inc()
                if (metric, labels) not in self.held:
                    log.warning(
                        "stream %s: %s%s would decrease (rows deleted or lowered); holding",
                        self.name, metric, labels,
                    )  # fmt: skip
            self.health.counter_excess.labels(metric).set(float(excess))
        self.held = held
        return totals

    def totals(self) -> Aggregates:
        """base + live, per metric and label set."""
        merged: Aggregates = {name: dict(series) for name, series in self.base.items()}
        add_aggregates(merged, self.live)
        return merged

    async def run_forever(self, on_poll: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            polls = poll_forever(
                self.run_once, self.config.interval, on_poll,
                lambda: last_failure(self.health, self.name),
            )  # fmt: skip
            tasks.create_task(polls)
            if self.reconciler is not None:
                tasks.create_task(self.reconciler.run_forever(on_poll))
            if self.checkpoint is not None:
                tasks.create_task(self.checkpoint.run_forever())


def _went_down(value: Value, before: Value) -> bool:
    if isinstance(value, HistogramValue) and isinstance(before, HistogramValue):
        return value.count < before.count or value.total < before.total
    return value < before  # type: ignore[operator]


def le_text(bound: float) -> str:
    """A bucket bound as /metrics writes it ("0.01", "1.0"); backfill must match it."""
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


class StreamRenderer:
    """Writes every stream's counters and histograms; floats appear only here."""

    def __init__(self, streams: dict[str, EventStream]) -> None:
        self.streams = streams
        self._labels = {m.name: LabelText(m.labels) for m in catalog.METRICS}

    def render(self) -> tuple[list[bytes], dict[str, int]]:
        """The encoded text of every stream-fed family, and its sample-line count."""
        feeds: dict[str, list[dict[LabelValues, Value]]] = {}
        for stream in list(self.streams.values()):
            for metric_name, exported in stream.exported.items():
                feeds.setdefault(metric_name, []).append(exported)
        parts: list[bytes] = []
        counts: dict[str, int] = {}
        for metric in catalog.METRICS:
            fed = feeds.get(metric.name)
            if fed is None:
                continue
            series = fed[0]
            if len(fed) > 1:  # a metric fed by several streams: their sum (no copy otherwise)
                series = {}
                for exported in fed:
                    for key, value in exported.items():
                        add_value(series, key, value)
            labels = self._labels[metric.name]
            if metric.type is catalog.MetricType.HISTOGRAM:
                parts += self._histogram(metric, series, labels)
                counts[metric.name] = len(series) * (len(metric.buckets) + 3)
            else:
                parts += simple_family(metric, series, labels)  # type: ignore[arg-type]
                counts[metric.name] = len(series)
        return parts, counts

    @staticmethod
    def _histogram(
        metric: catalog.Metric, series: dict[LabelValues, Value], labels: LabelText
    ) -> list[bytes]:
        bounds = [le_text(bound) for bound in metric.buckets]
        chunks = [header(metric).encode()]
        keys = sorted(series)
        for start in range(0, len(keys), BATCH_LINES // 16):
            lines: list[str] = []
            for key in keys[start : start + BATCH_LINES // 16]:
                value = series[key]
                assert isinstance(value, HistogramValue)
                lines += histogram_lines(
                    metric.name, labels(key), bounds, value.buckets, value.count,
                    float(value.total),
                )  # fmt: skip
            chunks.append("".join(lines).encode())
        return chunks

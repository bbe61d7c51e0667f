"""One stream of a config, polled and reconciled in-process against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter
from psycopg import sql

from credit_exporter import catalog
from credit_exporter.config import Config, StreamConfig, parse_config
from credit_exporter.db import Database
from credit_exporter.health import Health
from credit_exporter.sources.events import STEADY_POLL_SETTINGS, EventStream

# The smallest usage table: sequence ids, timestamptz times, one label, numeric credits.
SPEND_TABLE = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    org text NOT NULL,
    credits numeric(18, 6) NOT NULL
);
CREATE INDEX ev_occurred_at ON ev (occurred_at);
"""


def one_stream_config(dsn: str, stream: dict[str, Any], name: str = "s") -> Config:
    """A config with one database and the one stream ``stream``."""
    return parse_config({"databases": {"db": {"dsn": dsn}}, "streams": {name: stream}})


class InProcessStream:
    """An EventStream on its own event loop: ``poll()`` and ``reconcile()`` run one step."""

    def __init__(self, config: Config, name: str = "s") -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.health = Health(self.registry)
        self.health.register_query(name, 1)
        self.loop = asyncio.new_event_loop()
        stream_config = config.streams[name]
        self.database = Database("db", config.databases[stream_config.database])
        self.stream = EventStream(name, stream_config, self.database, self.health)

    def poll(self) -> None:
        ok = self.loop.run_until_complete(self.stream.run_once())
        assert ok, self.health.queries[self.name].last_error

    def poll_error(self) -> str:
        """Poll once, expecting a failure; its message."""
        assert not self.loop.run_until_complete(self.stream.run_once())
        return self.health.queries[self.name].last_error or ""

    def reconcile(self) -> bool:
        """One reconcile pass; True when it found and folded in a difference."""
        assert self.stream.reconciler is not None
        return self.loop.run_until_complete(self.stream.reconciler.run_pass())

    def close(self) -> None:
        self.loop.run_until_complete(self.database.close())
        self.loop.close()

    def exported(self, metric: str) -> dict[tuple[str, ...], Any]:
        return dict(self.stream.exported.get(metric, {}))

    def by_reason(self, counter: Counter) -> dict[str, float]:
        """A self-metric labelled by query and reason, for this stream, by reason (zeros
        left out)."""
        return {
            sample.labels["reason"]: sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.labels["query"] == self.name and sample.value
        }

    def dropped_rows(self) -> dict[str, float]:
        """credit_exporter_dropped_rows_total of this stream, by reason."""
        return self.by_reason(self.health.dropped_rows)

    def total(self, metric: str) -> Decimal:
        return sum(self.exported(metric).values(), Decimal(0))

    def by_first_label(self, metric: str) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for labels, value in self.exported(metric).items():
            totals[labels[0]] = totals.get(labels[0], Decimal(0)) + value
        return totals

    def sample(self, name: str, **labels: str) -> float:
        """A self-metric's current value."""
        value = self.registry.get_sample_value(name, labels)
        assert value is not None, (name, labels)
        return value

    def prepared_poll(self) -> PreparedPoll | None:
        return self.loop.run_until_complete(prepared_poll(self.stream))

    def explain_steady_poll(self, dsn: str, seqscan: bool = True) -> str:
        """EXPLAIN of the poll the stream would run next (its horizon unchanged).

        ``seqscan=False`` asks for the plan a large table would get: on a few
        rows the planner rightly prefers a sequential scan, so this shows whether
        the filter can be an index condition at all.
        """
        stream = self.stream
        assert stream.ordering is not None and stream.horizon is not None
        statement = stream.plan.rows_statement(stream.ordering, stream.horizon, stream.horizon)
        with psycopg.connect(dsn) as conn:
            if not seqscan:
                conn.execute("SET enable_seqscan = off")
            rows = conn.execute(
                sql.SQL("EXPLAIN ") + statement, stream.params(stream.horizon, stream.horizon)
            ).fetchall()
        return "\n".join(row[0] for row in rows)


@dataclass(frozen=True)
class PreparedPoll:
    """The steady poll's statement (its rows) as prepared on the stream's own pooled
    connection."""

    executions: int  # generic plus custom plans so far
    generic_plans: int
    plan: str  # EXPLAIN of its next execution, with the stream's horizon


async def prepared_poll(stream: EventStream) -> PreparedPoll | None:
    """The stream's prepared steady poll and the plan of its next execution, None when the
    stream's connection has not prepared it. Read on the stream's own pool, which hands
    back its one connection to sequential polls."""
    assert stream.ordering is not None and stream.horizon is not None
    statement = stream.plan.rows_statement(stream.ordering, stream.horizon, stream.horizon)
    params = stream.params(stream.horizon, stream.horizon)
    async with stream.database.read_only(
        5.0, repeatable_read=True, settings=STEADY_POLL_SETTINGS
    ) as conn:
        cur = await conn.execute(
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%__fp_row%' AND statement NOT LIKE '%GROUPING SETS%'"
        )
        found = await cur.fetchall()
        if not found:
            return None
        (name, generic, custom), *_ = found
        # psycopg numbers the placeholders in order of first appearance
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement.as_string(conn))))
        explain = sql.SQL("EXPLAIN EXECUTE {}({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Literal(params[n]) for n in names)
        )
        rows = await (await conn.execute(explain)).fetchall()
    return PreparedPoll(generic + custom, generic, "\n".join(row[0] for row in rows))


def sql_value(dsn: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def sql_truth(dsn: str, config: StreamConfig) -> dict[str, dict[tuple[str, ...], Any]]:
    """Every series of a stream's metrics as plain SQL computes it, independently of the
    engine: ``GROUP BY`` over the stream's own SQL, NULL labels replaced by their
    ``if_null`` (rows with another NULL label left out), ``values`` unpivoted.
    Counters: the Decimal sum; histograms: (count, sum)."""
    truth: dict[str, dict[tuple[str, ...], Any]] = {}
    source = sql.SQL(config.sql.strip().rstrip(";"))  # type: ignore[arg-type]
    for mapping in config.metrics:
        metric = catalog.get(mapping.metric)
        value_columns = mapping.value_columns or {None: mapping.value}
        series = truth.setdefault(metric.name, {})
        for text, column in value_columns.items():
            labels: list[sql.Composable] = []
            for label in metric.labels:
                if label == mapping.value_label:
                    labels.append(sql.Literal(text))
                elif label in mapping.drop_labels:
                    labels.append(sql.Literal(""))
                else:
                    cell = sql.SQL("{}::text").format(sql.Identifier(mapping.labels[label]))
                    replacement = mapping.if_null.get(label)
                    labels.append(
                        cell if replacement is None
                        else sql.SQL("coalesce({}, {})").format(cell, sql.Literal(replacement))
                    )  # fmt: skip
            if metric.type is catalog.MetricType.HISTOGRAM:
                value = sql.SQL("count({0}), coalesce(sum({0}::numeric), 0)").format(
                    sql.Identifier(column)
                )
            elif column is None:
                value = sql.SQL("count(*)")
            else:
                value = sql.SQL("coalesce(sum({}::numeric), 0)").format(sql.Identifier(column))
            positions = sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(labels)))
            query = sql.SQL(
                "SELECT {keys}, {value} FROM (\n{source}\n) AS s GROUP BY {positions}"
            ).format(
                keys=sql.SQL(", ").join(labels), value=value, source=source, positions=positions
            )
            with psycopg.connect(dsn) as conn:
                for row in conn.execute(query).fetchall():
                    key = tuple(row[: len(metric.labels)])
                    if any(cell is None for cell in key):
                        continue
                    rest = row[len(metric.labels) :]
                    series[key] = (
                        (int(rest[0]), Decimal(rest[1])) if len(rest) == 2 else Decimal(rest[0])
                    )
    return truth

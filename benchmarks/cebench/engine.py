"""The real usage-event engine, driven in-process, with every statement it runs recorded."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from cebench import pg
from credit_exporter.config import Config, StreamConfig, parse_config
from credit_exporter.db import Database, Result
from credit_exporter.health import Health
from credit_exporter.sources.events import EventStream

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "config.example.yaml"
STREAM = "usage_events"
# The example's databases.billing.statement_timeout (10s) also caps the
# start-up aggregate (startup_timeout 10m), which takes longer than 10 s on a
# 10M table: the benchmark lifts it so start-up can be measured at all.
STATEMENT_TIMEOUT = "15m"
# What is not state, so not copied when a stream is snapshotted (the reconciler points at
# the stream itself; the lock is not held between polls).
_NOT_STATE = frozenset({"name", "config", "database", "health", "plan", "reconciler", "lock"})


def example_config(dsn: str, statement_timeout: str | None = STATEMENT_TIMEOUT) -> Config:
    """config.example.yaml with its DSN pointed at ``dsn`` and only the usage_events stream.

    ``statement_timeout`` None keeps the example's own.
    """
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    billing = data["databases"]["billing"]
    billing.pop("dsn_env", None)
    billing.pop("dsn_file", None)
    billing["dsn"] = dsn
    if statement_timeout is not None:
        billing["statement_timeout"] = statement_timeout
    data["queries"] = {}
    data["streams"] = {STREAM: data["streams"][STREAM]}
    return parse_config(data)


def stream_config(config: Config) -> StreamConfig:
    return config.streams[STREAM]


@dataclass(frozen=True)
class Executed:
    statement: pg.Statement
    params: Any


@dataclass(frozen=True)
class Transaction:
    """One read-only transaction the engine ran: its statements and its wall time (pool
    checkout to commit, fetching and the engine's handling of the rows included)."""

    executed: tuple[Executed, ...]
    seconds: float


class _RecordingConnection:
    """Delegates to a psycopg connection, noting what ``execute`` was asked to run,
    on the connection or on a cursor it opened (the aggregate runs through a
    server-side cursor)."""

    def __init__(self, conn: Any, log: list[Executed]) -> None:
        self._conn = conn
        self._log = log

    async def execute(self, statement: pg.Statement, params: Any = None, **kwargs: Any) -> Any:
        self._log.append(Executed(statement, params))
        return await self._conn.execute(statement, params, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> _RecordingCursor:
        return _RecordingCursor(self._conn.cursor(*args, **kwargs), self._log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _RecordingCursor:
    def __init__(self, cursor: Any, log: list[Executed]) -> None:
        self._cursor = cursor
        self._log = log

    async def __aenter__(self) -> _RecordingCursor:
        await self._cursor.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cursor.__aexit__(*exc)

    async def execute(self, statement: pg.Statement, params: Any = None, **kwargs: Any) -> Any:
        self._log.append(Executed(statement, params))
        await self._cursor.execute(statement, params, **kwargs)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class RecordingDatabase:
    """A ``Database`` whose read-only connections record every statement, and every
    transaction with its wall time."""

    def __init__(self, database: Database) -> None:
        self.inner = database
        self.executed: list[Executed] = []
        self.transactions: list[Transaction] = []

    @asynccontextmanager
    async def read_only(self, *args: Any, **kwargs: Any) -> AsyncIterator[_RecordingConnection]:
        first = len(self.executed)
        started = time.perf_counter()
        async with self.inner.read_only(*args, **kwargs) as conn:
            yield _RecordingConnection(conn, self.executed)
        seconds = time.perf_counter() - started
        self.transactions.append(Transaction(tuple(self.executed[first:]), seconds))

    async def fetch(self, query: pg.Statement, timeout: float, params: Any = None) -> Result:
        """The engine's own ``Database.fetch`` (the reconcile's queries), run through
        ``read_only`` above so it is recorded too."""
        return await Database.fetch(self, query, timeout, params)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True)
class Poll:
    seconds: float
    executed: tuple[Executed, ...]


class StreamHarness:
    """One EventStream of a config (by default the example's usage_events) over a
    benchmark database."""

    def __init__(self, config: Config, name: str = STREAM) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.health = Health(self.registry)
        stream = config.streams[name]
        self.health.register_query(name, stream.interval)
        self.database = RecordingDatabase(
            Database(stream.database, config.databases[stream.database])
        )
        self.stream = EventStream(
            name,
            stream,
            self.database,  # type: ignore[arg-type]
            self.health,
        )

    async def poll(self) -> Poll:
        """One ``run_once``, timed; fails loudly if the stream reports a failure."""
        self.database.executed.clear()
        self.database.transactions.clear()
        started = time.perf_counter()
        ok = await self.stream.run_once()
        seconds = time.perf_counter() - started
        if not ok:
            status = self.health.queries[self.name]
            raise RuntimeError(f"poll failed ({status.last_error_reason}): {status.last_error}")
        return Poll(seconds, tuple(self.database.executed))

    def snapshot(self) -> dict[str, Any]:
        """The stream's own state (horizon, base, live, ...), deep-copied."""
        return {k: copy.deepcopy(v) for k, v in vars(self.stream).items() if k not in _NOT_STATE}

    def restore(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self.stream, key, copy.deepcopy(value))

    def exported_total(self, metric: str) -> Decimal:
        series = self.stream.exported.get(metric, {})
        return sum((v for v in series.values() if isinstance(v, Decimal)), Decimal(0))

    def sample(self, metric: str, **labels: str) -> float:
        """One of the exporter's own series for this stream (0 when absent)."""
        value = self.registry.get_sample_value(metric, {"query": self.name, **labels})
        return value or 0.0

    def series_count(self) -> int:
        return sum(len(series) for series in self.stream.exported.values())

    async def close(self) -> None:
        await self.database.inner.close()


# The kinds of statement that read a poll's rows: the aggregate, or a steady poll's rows.
READS = ("aggregate", "rows")


def statement_kind(text: str) -> str:
    """A short name for one statement of a poll or of a reconcile pass."""
    if "GROUPING SETS" in text:
        return "aggregate"
    if "__settled" in text:
        return "rows"  # a steady poll's rows, summed by the exporter
    if "AS labels(" in text:
        return "fingerprints"  # of the label sets a steady poll saw first
    if "pg_stat_activity" in text:
        return "horizon: open transactions"
    if "DESC LIMIT 1" in text:
        return "horizon: newest row"
    if "LIMIT 1" in text:
        return "oldest row"
    if "AS __chunk" in text:
        return "checksum"
    if "SELECT count(*)" in text and "IS NULL" in text:
        return "rows without a time"
    return text.split()[0].lower()


def explain_poll(
    explainer: pg.Explainer, poll: Poll, fact_table: str = "usage_events"
) -> list[tuple[str, pg.Explained]]:
    """Everything a poll ran, re-run under EXPLAIN ANALYZE with the same parameters."""
    return explain_all(explainer, poll.executed, fact_table)


def explain_all(
    explainer: pg.Explainer, executed: Iterable[Executed], fact_table: str = "usage_events"
) -> list[tuple[str, pg.Explained]]:
    """Statements the engine ran, re-run under EXPLAIN ANALYZE with the same parameters."""
    explained = []
    for item in executed:
        text = explainer.literal(item.statement, item.params)
        explained.append((statement_kind(text), explainer.explain(text, fact_table)))
    return explained


def aggregate_sql(dsn: str, poll: Poll) -> str:
    """The poll's GROUPING SETS aggregate, parameters inlined (the others find the horizon)."""
    for item in poll.executed:
        text = pg.literal_sql(dsn, item.statement, item.params)
        if "GROUPING SETS" in text:
            return text
    raise LookupError("the poll ran no aggregate")

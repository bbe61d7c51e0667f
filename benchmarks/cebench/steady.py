"""The steady poll alone (``run.py --steady-only``): DB time, wall and CPU per poll after
1,000 new events, the way the engine runs it now (the new rows read once by a prepared
statement on its generic plan, summed in Python: ``sources/rowpoll.py``) and the old way
(the GROUPING SETS aggregate unprepared through a server-side cursor, the path start-up
and backlog polls take), against one index range scan of the same rows, and, in the
same run, the previous steady poll: that aggregate prepared (its DB time only).

DB time is EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) on a warm connection, planning plus
execution. A prepared statement is measured as ``EXPLAIN ... EXECUTE`` after six runs
under the settings the engine gives it, so the figure is its generic plan's; the old
aggregate is re-run as text, planned every time as it was.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from cebench import dataset, engine, pg, suite
from cebench.machine import Machine
from cebench.stats import Repeated
from credit_exporter.sources.events import STEADY_POLL_SETTINGS
from credit_exporter.sources.ordering import Horizon

WARM_RUNS = 6  # PostgreSQL makes its generic plan at the sixth run of a prepared statement
MODES = ("rows", "old")
STARTUP_TIMEOUT = 1800.0  # seconds


@dataclass
class ModeResult:
    """One way of running the steady poll, per repetition."""

    db_ms: list[float] = field(default_factory=list)  # every statement of the poll
    planning_ms: list[float] = field(default_factory=list)
    main_ms: list[float] = field(default_factory=list)  # the rows statement or the aggregate
    wall: list[float] = field(default_factory=list)  # seconds, run_once
    cpu: list[float] = field(default_factory=list)  # seconds of this process's CPU
    scans: set[str] = field(default_factory=set)  # how the main statement read usage_events
    statements: list[int] = field(default_factory=list)  # statements per poll
    table_rows: list[int] = field(default_factory=list)  # usage_events rows the poll read


@dataclass
class SteadyResult:
    events: int
    rows_read: int = 0
    range_scan_ms: list[float] = field(default_factory=list)  # the plain index range scan
    # the previous steady poll's GROUPING SETS aggregate over the same rows, prepared
    aggregate_prepared_ms: list[float] = field(default_factory=list)
    modes: dict[str, ModeResult] = field(default_factory=lambda: {m: ModeResult() for m in MODES})
    totals_match: bool = True  # exported spend == SQL SUM after every poll
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _numbered(text: str) -> tuple[str, list[str]]:
    """psycopg's ``%(name)s`` placeholders as ``$n`` (numbered in order of first
    appearance, as psycopg does), and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%%|%\((\w+)\)s", number, text), names


class PreparedExplainer:
    """EXPLAIN ANALYZE of statements run as prepared statements, on one warm connection."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET jit = off")
        self.names: dict[str, str] = {}

    def close(self) -> None:
        self.conn.close()

    def explain(
        self, statement: pg.Statement, params: Any, settings: dict[str, str]
    ) -> pg.Explained:
        text = statement if isinstance(statement, str) else statement.as_string(self.conn)
        numbered, order = _numbered(text)
        args = sql.SQL("")
        if order:
            args = sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(params[n]) for n in order))
        with self.conn.transaction():
            for name, value in settings.items():
                self.conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            name = self.names.get(numbered)
            if name is None:
                name = self.names[numbered] = f"bench_{len(self.names)}"
                self.conn.execute(f"PREPARE {name} AS {numbered}")  # type: ignore[arg-type]
            execute = sql.SQL("EXECUTE {}{}").format(sql.Identifier(name), args)
            for _ in range(WARM_RUNS):
                self.conn.execute(execute).fetchall()
            row = self.conn.execute(sql.SQL(pg.Explainer.PREFIX) + execute).fetchone()
        assert row is not None
        return pg.explained(row[0][0], "usage_events")


async def _poll(harness: engine.StreamHarness, old: bool) -> tuple[engine.Poll, float]:
    # the old way: the aggregate through a server-side cursor, unprepared (a backlog poll);
    # the new one as after an earlier steady poll (the start-up read every row)
    harness.stream.backlog = old
    harness.stream.last_rows = 0
    cpu = time.process_time()
    poll = await harness.poll()
    return poll, time.process_time() - cpu


async def _run(dsn: str, reps: int, new_events: int, result: SteadyResult, log: Any) -> None:
    config = engine.example_config(dsn)
    # the example's 10m start-up timeout is too short for 10M rows on a busy machine
    stream = config.streams[engine.STREAM]
    config.streams[engine.STREAM] = stream.model_copy(update={"startup_timeout": STARTUP_TIMEOUT})
    harness = engine.StreamHarness(config)
    explainer = pg.Explainer(dsn)
    prepared = PreparedExplainer(dsn)
    try:
        first = await harness.poll()
        log(f"  start-up run_once: {first.seconds:.1f}s")
        state = harness.snapshot()
        last_id = dataset.insert_new_events(dsn, new_events)
        for _ in range(WARM_RUNS):  # the pooled connection makes its generic plan
            harness.restore(state)
            await _poll(harness, old=False)
        dataset.delete_events_after(dsn, last_id)
        rows = []
        for rep in range(reps):
            last_id = dataset.insert_new_events(dsn, new_events)
            range_scan = explainer.explain(f"SELECT * FROM usage_events WHERE id > {last_id}")
            result.range_scan_ms.append(range_scan.database_ms)
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for mode in order:
                harness.restore(state)
                poll, cpu = await _poll(harness, old=mode == "old")
                spent = Decimal(pg.execute(dsn, suite.SPENT_SQL)[0][0])
                result.totals_match &= harness.exported_total(suite.SPENT) == spent
                _explain(explainer, prepared, poll, mode, cpu, result.modes[mode])
                if mode == "rows":
                    aggregate = _aggregate_prepared(harness, prepared, poll)
                    result.aggregate_prepared_ms.append(aggregate)
                    rows.append(result.modes[mode].table_rows[-1])
            dataset.delete_events_after(dsn, last_id)
            measured = {m: f"{result.modes[m].db_ms[-1]:.1f}" for m in MODES}
            log(
                f"  rep {rep + 1}/{reps}: DB ms {measured}, aggregate prepared"
                f" {result.aggregate_prepared_ms[-1]:.1f}, range scan"
                f" {range_scan.database_ms:.2f} ms"
            )
        result.rows_read = sorted(rows)[len(rows) // 2]
        harness.restore(state)
    finally:
        prepared.close()
        explainer.__exit__()
        await harness.close()


def _aggregate_prepared(harness: engine.StreamHarness, prepared: PreparedExplainer,
                        poll: engine.Poll) -> float:  # fmt: skip
    """DB ms of the previous steady poll over the same rows: the GROUPING SETS aggregate
    with the rows statement's horizons, prepared on its generic plan."""
    stream = harness.stream
    assert stream.ordering is not None
    (item,) = [i for i in poll.executed if _kind(prepared.conn, i.statement) == "rows"]
    since = Horizon(key=item.params.get("since_key"), time=item.params.get("since_time"))
    at = Horizon(key=item.params.get("at_key"), time=item.params.get("at_time"))
    aggregate = stream.plan.poll_statement(stream.ordering, since, at)
    return prepared.explain(aggregate, item.params, STEADY_POLL_SETTINGS).database_ms


def _kind(conn: psycopg.Connection[Any], statement: pg.Statement) -> str:
    text = statement if isinstance(statement, str) else statement.as_string(conn)
    return engine.statement_kind(text)


def _explain(explainer: pg.Explainer, prepared: PreparedExplainer, poll: engine.Poll, mode: str,
             cpu: float, into: ModeResult) -> None:  # fmt: skip
    total = pg.Explained(0.0, 0.0, 0, 0)
    for item in poll.executed:
        text = explainer.literal(item.statement, item.params)
        kind = engine.statement_kind(text)
        if kind == "aggregate":  # unprepared, through the cursor: planned every time
            explained = explainer.explain(text)
        elif kind == "rows":
            explained = prepared.explain(item.statement, item.params, STEADY_POLL_SETTINGS)
        else:  # psycopg prepares a statement it has run five times on a connection
            explained = prepared.explain(item.statement, item.params, {})
        if kind in engine.READS:
            into.main_ms.append(explained.database_ms)
            into.table_rows.append(explained.table_rows)
            into.scans |= explained.scans
        total = total + explained
    into.db_ms.append(total.database_ms)
    into.planning_ms.append(total.planning_ms)
    into.wall.append(poll.seconds)
    into.cpu.append(cpu)
    into.statements.append(len(poll.executed))


# A database already loaded by an earlier run (its name), reused instead of loading one:
# a 10M load takes minutes. The polls delete the events they add, so it stays as loaded.
REUSE_ENV = "CE_BENCH_STEADY_DATABASE"


def measure(admin_dsn: str, events: int, reps: int, new_events: int, log: Any) -> SteadyResult:
    result = SteadyResult(events)
    reuse = os.environ.get(REUSE_ENV)
    with _database(admin_dsn, events, reuse) as dsn:
        log(f"{events:,} usage events:")
        if reuse:
            rows = pg.execute(dsn, "SELECT count(*) FROM usage_events")
            result.events = int(rows[0][0])
            log(f"  reusing {reuse}: {result.events:,} usage events")
        else:
            loaded = dataset.load(dsn, events)
            result.events = loaded.summary.usage_events
            log(f"  loaded {result.events:,} usage events in {loaded.summary.seconds:.1f}s")
        result.load_before = os.getloadavg()
        asyncio.run(_run(dsn, reps, new_events, result, log))
        result.load_after = os.getloadavg()
    return result


@contextmanager
def _database(admin_dsn: str, events: int, reuse: str | None) -> Iterator[str]:
    """The named database, left in place, or a fresh one dropped on the way out."""
    if reuse:
        yield pg.with_dbname(admin_dsn, reuse)
        return
    with pg.bench_database(admin_dsn, f"steady{events // 1000}k") as dsn:
        yield dsn


def _med(values: list[float]) -> float:
    return Repeated.of(values).median


def table(results: list[SteadyResult]) -> str:
    header = (
        "| usage_events | rows read | index range scan (DB) | poll DB time, rows"
        " (planning) | per 1,000 new events | rows / range scan | statements per poll |"
        " rows statement alone | previous: aggregate prepared (DB) | poll DB time, old"
        " (planning) | rows / aggregate prepared | rows / old | wall, rows / old |"
        " exporter CPU, rows / old | rows statement reads usage_events by |"
    )
    lines = [header, "|" + "---|" * 15]
    for r in results:
        new, old = r.modes["rows"], r.modes["old"]
        scan, db = _med(r.range_scan_ms), _med(new.db_ms)
        aggregate = _med(r.aggregate_prepared_ms)
        per_thousand = db * 1000 / r.rows_read if r.rows_read else float("nan")
        lines.append(
            f"| {r.events:,} | {r.rows_read:,} | {scan:.2f} ms"
            f" | {db:.2f} ms ({_med(new.planning_ms):.2f} ms) | {per_thousand:.2f} ms"
            f" | {db / scan:.1f}x | {int(_med([float(n) for n in new.statements]))}"
            f" | {_med(new.main_ms):.2f} ms | {aggregate:.1f} ms"
            f" | {_med(old.db_ms):.1f} ms ({_med(old.planning_ms):.1f} ms)"
            f" | {db / aggregate:.2f}x | {db / _med(old.db_ms):.2f}x"
            f" | {_med(new.wall) * 1000:.1f} / {_med(old.wall) * 1000:.1f} ms"
            f" | {_med(new.cpu) * 1000:.1f} / {_med(old.cpu) * 1000:.1f} ms"
            f" | {'; '.join(sorted(new.scans))} |"
        )
    return "\n".join(lines)


def raw(results: list[SteadyResult]) -> str:
    """Every repetition's figures, for the medians above."""
    lines = []
    for r in results:
        for mode in MODES:
            m = r.modes[mode]
            lines.append(f"- {r.events:,}, {mode}: DB ms {[round(v, 2) for v in m.db_ms]},"
                         f" CPU ms {[round(v * 1000, 1) for v in m.cpu]}")  # fmt: skip
        lines.append(f"- {r.events:,}, aggregate prepared: DB ms"
                     f" {[round(v, 2) for v in r.aggregate_prepared_ms]}")  # fmt: skip
        lines.append(f"- {r.events:,}, range scan: DB ms {[round(v, 3) for v in r.range_scan_ms]}")
    return "\n".join(lines)


def document(machine: Machine, command: str, reps: int, results: list[SteadyResult]) -> str:
    loads = "; ".join(
        f"{r.events:,}: {r.load_before[0]:.2f} before, {r.load_after[0]:.2f} after" for r in results
    )
    exact = all(r.totals_match for r in results)
    return f"""# Steady poll

Generated by `{command}` on {machine.date}.

- machine: {machine.cpus} CPUs (nproc), {machine.memory} RAM; shared with other work
- {machine.postgres} on 127.0.0.1 ({machine.settings})
- Python {machine.python}; credit-exporter at {machine.revision}
- load average (1 min) around the polls: {loads}
- each repetition (n={reps}): 1,000 new events stamped within the last 15 s, then, from
  the same post-start-up state, one poll each way (alternating which goes first)

{__doc__.split(chr(10), 1)[1].strip()}

{table(results)}

Exported spend equal to SQL SUM after every poll: {"yes" if exact else "NO"}.

{raw(results)}
"""

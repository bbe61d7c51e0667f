"""The steady poll alone (``run.py --steady-only``): DB time, wall and CPU per poll after
1,000 new events, the way the engine runs it now (prepared, one generic plan per pooled
connection) and the old way (the same statement unprepared through a server-side cursor,
the path start-up and backlog polls take), against one index range scan of the same rows
and against the stream's own SQL over them (prepared, no aggregate: the floor of a poll
that leaves the joins to the database).

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
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, localcontext
from typing import Any

import psycopg
from psycopg import sql

from cebench import dataset, engine, pg, suite
from cebench.machine import Machine
from cebench.stats import Repeated
from credit_exporter.sources.events import STEADY_POLL_SETTINGS, StreamPlan

WARM_RUNS = 6  # PostgreSQL makes its generic plan at the sixth run of a prepared statement
MODES = ("prepared", "old")
STARTUP_TIMEOUT = 1800.0  # seconds


@dataclass
class ModeResult:
    """One way of running the steady poll, per repetition."""

    db_ms: list[float] = field(default_factory=list)  # every statement of the poll
    planning_ms: list[float] = field(default_factory=list)
    aggregate_ms: list[float] = field(default_factory=list)  # the aggregate alone
    aggregate_planning_ms: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)  # seconds, run_once
    cpu: list[float] = field(default_factory=list)  # seconds of this process's CPU
    scans: set[str] = field(default_factory=set)  # how the aggregate read usage_events


@dataclass
class FinestResult:
    """The alternative not taken: one GROUP BY at the finest grain (every label column,
    settled flag and chunk), rolled up to each metric's label set in Python."""

    db_ms: list[float] = field(default_factory=list)  # prepared, generic plan
    groups: list[int] = field(default_factory=list)  # rows it returns
    rollup_cpu_ms: list[float] = field(default_factory=list)  # the roll-up alone, in Python


@dataclass
class SteadyResult:
    events: int
    rows_read: int = 0
    range_scan_ms: list[float] = field(default_factory=list)  # the plain index range scan
    # the stream's own SQL over the same rows, prepared, no aggregate: the floor of any
    # poll that leaves the joins to the database
    stream_sql_ms: list[float] = field(default_factory=list)
    modes: dict[str, ModeResult] = field(default_factory=lambda: {m: ModeResult() for m in MODES})
    finest: FinestResult = field(default_factory=FinestResult)
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


_GROUPING_SETS = re.compile(r"GROUP BY GROUPING SETS \(.*\)\s*$", re.DOTALL)


def finest_statement(text: str, columns: list[str]) -> str:
    """The poll's GROUPING SETS aggregate (as text) grouped once at the finest grain."""
    quoted = ", ".join(f'"{c}"' for c in columns)
    text = text.replace(f"GROUPING({quoted}) AS __grouping", "0 AS __grouping")
    text = text.replace("GROUPING(__chunk) AS __by_chunk", "1 AS __by_chunk")
    finest, replaced = _GROUPING_SETS.subn(f'GROUP BY "__settled", "__chunk", {quoted}', text)
    assert replaced == 1
    return finest


def rollup_seconds(plan: StreamPlan, names: list[str], rows: list[tuple[Any, ...]]) -> float:
    """CPU seconds to roll finest-grain rows up to every metric's label set and to the
    per-chunk checksums, summing exactly what each set's metrics read."""
    index = {name: i for i, name in enumerate(names)}
    needed: dict[int, tuple[tuple[int, ...], set[int]]] = {}
    for metric in plan.metrics:
        labels = tuple(index[c] for c in metric.label_columns)
        read = {index[c] for c in (*metric.aggregate_columns, "__rows")}
        if metric.non_finite is not None:
            read.add(index[metric.non_finite])
        needed.setdefault(metric.grouping_mask, (labels, set()))[1].update(read)
    sets = [(labels, sorted(read)) for labels, read in needed.values()]
    settled, chunk = index["__settled"], index["__chunk"]
    checksum = [index[c] for c in plan.checksum_columns]
    started = time.process_time()
    with localcontext(Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)):
        for labels, read in [*sets, ((chunk,), checksum)]:
            groups: dict[tuple[Any, ...], list[Any]] = {}
            for row in rows:
                if labels == (chunk,) and not row[settled]:
                    continue
                key = (row[settled], *(row[i] for i in labels))
                values = [row[i] for i in read]
                before = groups.get(key)
                groups[key] = values if before is None else [
                    b if v is None else v if b is None else b + v
                    for b, v in zip(before, values, strict=True)
                ]  # fmt: skip
    return time.process_time() - started


def _finest(dsn: str, prepared: PreparedExplainer, stream_plan: StreamPlan, poll: engine.Poll,
            into: FinestResult) -> None:  # fmt: skip
    for item in poll.executed:
        statement = item.statement
        rendered = statement if isinstance(statement, str) else statement.as_string(prepared.conn)
        if "GROUPING SETS" not in rendered:
            continue
        finest = finest_statement(rendered, stream_plan.columns)
        into.db_ms.append(prepared.explain(finest, item.params, STEADY_POLL_SETTINGS).database_ms)
        with psycopg.connect(dsn) as conn:
            cur = conn.execute(finest, item.params)  # type: ignore[arg-type]
            names = [c.name for c in cur.description or []]
            rows = cur.fetchall()
        into.groups.append(len(rows))
        into.rollup_cpu_ms.append(rollup_seconds(stream_plan, names, rows) * 1000)


async def _poll(harness: engine.StreamHarness, old: bool) -> tuple[engine.Poll, float]:
    # the old way: the statement through a server-side cursor, unprepared (a backlog poll);
    # the new one as after an earlier steady poll (the start-up returned many groups)
    harness.stream.backlog = old
    harness.stream.last_groups = 0
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
            rows_after = sql.SQL("SELECT * FROM (\n{}\n) AS events WHERE events.id > %(since)s")
            joined = prepared.explain(
                rows_after.format(harness.stream.plan.source), {"since": last_id},
                STEADY_POLL_SETTINGS,
            )  # fmt: skip
            result.stream_sql_ms.append(joined.database_ms)
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for mode in order:
                harness.restore(state)
                poll, cpu = await _poll(harness, old=mode == "old")
                spent = Decimal(pg.execute(dsn, suite.SPENT_SQL)[0][0])
                result.totals_match &= harness.exported_total(suite.SPENT) == spent
                _explain(explainer, prepared, poll, mode, cpu, result.modes[mode])
                if mode == "prepared":
                    _finest(dsn, prepared, harness.stream.plan, poll, result.finest)
                rows.append(range_scan.table_rows)
            dataset.delete_events_after(dsn, last_id)
            measured = {m: f"{result.modes[m].db_ms[-1]:.1f}" for m in MODES}
            log(
                f"  rep {rep + 1}/{reps}: DB ms {measured}, range scan {range_scan.database_ms:.2f}"
                " ms"
            )
        result.rows_read = sorted(rows)[len(rows) // 2]
        harness.restore(state)
    finally:
        prepared.close()
        explainer.__exit__()
        await harness.close()


def _explain(explainer: pg.Explainer, prepared: PreparedExplainer, poll: engine.Poll, mode: str,
             cpu: float, into: ModeResult) -> None:  # fmt: skip
    total = pg.Explained(0.0, 0.0, 0, 0)
    for item in poll.executed:
        text = explainer.literal(item.statement, item.params)
        kind = engine.statement_kind(text)
        if kind == "aggregate" and mode == "old":
            explained = explainer.explain(text)
        elif kind == "aggregate":
            explained = prepared.explain(item.statement, item.params, STEADY_POLL_SETTINGS)
        else:  # psycopg prepares a statement it has run five times on a connection
            explained = prepared.explain(item.statement, item.params, {})
        if kind == "aggregate":
            into.aggregate_ms.append(explained.database_ms)
            into.aggregate_planning_ms.append(explained.planning_ms)
            into.scans |= explained.scans
        total = total + explained
    into.db_ms.append(total.database_ms)
    into.planning_ms.append(total.planning_ms)
    into.wall.append(poll.seconds)
    into.cpu.append(cpu)


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
        "| usage_events | rows read | index range scan (DB) | the stream's SQL alone (DB)"
        " | poll DB time, prepared"
        " (planning) | poll DB time, old (planning) | aggregate alone, prepared / old |"
        " prepared / range scan | prepared / old | wall, prepared / old |"
        " exporter CPU, prepared / old | aggregate reads usage_events by |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in results:
        new, old = r.modes["prepared"], r.modes["old"]
        scan = _med(r.range_scan_ms)
        lines.append(
            f"| {r.events:,} | {r.rows_read:,} | {scan:.2f} ms | {_med(r.stream_sql_ms):.1f} ms"
            f" | {_med(new.db_ms):.1f} ms ({_med(new.planning_ms):.1f} ms)"
            f" | {_med(old.db_ms):.1f} ms ({_med(old.planning_ms):.1f} ms)"
            f" | {_med(new.aggregate_ms):.1f} / {_med(old.aggregate_ms):.1f} ms"
            f" | {_med(new.db_ms) / scan:.1f}x | {_med(new.db_ms) / _med(old.db_ms):.2f}x"
            f" | {_med(new.wall) * 1000:.1f} / {_med(old.wall) * 1000:.1f} ms"
            f" | {_med(new.cpu) * 1000:.1f} / {_med(old.cpu) * 1000:.1f} ms"
            f" | {'; '.join(sorted(new.scans))} |"
        )
    return "\n".join(lines)


def finest_table(results: list[SteadyResult]) -> str:
    lines = [
        "| usage_events | GROUPING SETS aggregate, prepared (DB) | finest-grain GROUP BY,"
        " prepared (DB) | its groups | Python roll-up of them (CPU) | finest + roll-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        grouping_sets, finest = _med(r.modes["prepared"].aggregate_ms), r.finest
        both = _med(finest.db_ms) + _med(finest.rollup_cpu_ms)
        lines.append(
            f"| {r.events:,} | {grouping_sets:.1f} ms | {_med(finest.db_ms):.1f} ms"
            f" | {int(_med([float(g) for g in finest.groups])):,}"
            f" | {_med(finest.rollup_cpu_ms):.1f} ms | {both:.1f} ms |"
        )
    return "\n".join(lines)


def _alternative() -> str:
    return " ".join((FinestResult.__doc__ or "").split()).split(": ", 1)[1]


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

The alternative measured in the same run, not taken: {_alternative()}
The roll-up figure is a prototype's (sums only, no label policy or series caps).

{finest_table(results)}
"""

"""Section 5: a time-ordered stream with a one-hour window, and its background reconcile.

The gateway's spend log (``spendlog``) as ``gateway.spend_stream(arrives_within="1h")``:
no key, ordered by its naive ``"startTime"``, so every poll re-reads the last hour
(rows may still arrive for an hour after their time) and a reconcile pass
compares the settled history with the database, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cebench import baseline, engine, pg, spendlog
from cebench.stats import Repeated
from credit_exporter.config import Config, ReconcileConfig, parse_config
from credit_exporter.demo.shapes import gateway
from credit_exporter.sources.reconcile import Reconciler

STREAM = "gateway_spend"
WINDOW = "1h"
TABLE = "spend_logs"
SPENT = "credit_spent_credits_total"
NEW_REQUESTS = 1_000  # inserted before each steady poll, stamped within the last second
LATE_REQUESTS = 10  # stamped 3 hours ago: beyond the window, only a reconcile finds them
LATE_HOURS = 3
LATE_BY = timedelta(hours=LATE_HOURS)
PACED_SHARE = 0.05  # the pacing check's max_db_share
# Whether this engine's reconcile compares only a slice of the older history per pass
# (reconcile.full_every); without it every pass compares all settled history.
SLICED = "full_every" in ReconcileConfig.model_fields
# These statements run before every aggregate of the poll and of the reconcile.
PASS_KINDS = ("checksum", "oldest row", "horizon: newest row", "rows without a time")


def stream_config(dsn: str) -> Config:
    """The gateway's spend stream with a one-hour window, reconcile at its defaults."""
    return parse_config(
        {
            "databases": {"gateway": {"dsn": dsn}},
            "streams": {STREAM: gateway.spend_stream(arrives_within=WINDOW)},
        }
    )


@dataclass(frozen=True)
class PassResult:
    """One reconcile pass: wall time, the engine's own count of its database seconds,
    and what the recorder saw."""

    wall: float
    database_seconds: float  # credit_exporter_reconcile_database_seconds_total, its increase
    transactions: tuple[engine.Transaction, ...]
    chunks_same: int
    chunks_different: int
    rows_late: int

    def statements(self, kinds: Iterable[str] | None = None) -> list[engine.Executed]:
        wanted = None if kinds is None else set(kinds)
        return [
            e
            for t in self.transactions
            for e in t.executed
            if wanted is None or engine.statement_kind(_text(e)) in wanted
        ]

    def seconds_of(self, kinds: Iterable[str]) -> float:
        """Wall seconds of the transactions whose statement is of one of ``kinds``."""
        wanted = set(kinds)
        return sum(
            t.seconds
            for t in self.transactions
            if t.executed and engine.statement_kind(_text(t.executed[0])) in wanted
        )

    def count(self, kind: str) -> int:
        return len(self.statements([kind]))


def _text(executed: engine.Executed) -> str:
    statement = executed.statement
    return statement if isinstance(statement, str) else statement.as_string(None)


@dataclass
class WindowResult:
    """Everything measured on one spend_logs size."""

    requests: int  # rows when the stream started
    load: spendlog.SpendLog | None = None
    load_average: list[tuple[float, float, float]] = field(default_factory=list)  # start, end
    startup_seconds: float = 0.0
    startup_totals_match: bool = False
    series: int = 0
    # (a) steady polls: NEW_REQUESTS new rows, and the rows of one interval at the rate
    steady_db: Repeated | None = None  # ms
    steady_planning: Repeated | None = None  # ms
    steady_wall: Repeated | None = None  # s
    steady_rows: int = 0  # rows the aggregate read
    steady_scans: frozenset[str] = frozenset()  # how the steady statements read spend_logs
    steady_totals_match: bool = False
    steady_statements: dict[str, Repeated] = field(default_factory=dict)  # kind -> DB ms
    interval_new: int = 0  # new rows of one interval at the rate
    interval_db: Repeated | None = None  # ms
    interval_wall: Repeated | None = None  # s
    interval_rows: int = 0
    poll_interval: float = 15.0
    # (b) full aggregates
    aggregate_psql: Repeated | None = None  # s, the engine's start-up statement in psql
    groupby_db: Repeated | None = None  # ms, GROUP BY per label set
    groupby_queries: int = 0
    # (c) reconcile
    passes: list[PassResult] = field(default_factory=list)  # full, unpaced, nothing to find
    # passes at the stream's own settings, unpaced, when a pass there is not a full one
    scheduled: list[PassResult] = field(default_factory=list)
    pass_explain: pg.Explained | None = None  # the first full pass's statements under EXPLAIN
    pass_explain_by_kind: dict[str, tuple[int, float]] = field(default_factory=dict)
    reconcile_interval: float = 3600.0
    reconcile_share: float = 0.01
    paced: PassResult | None = None  # max_db_share PACED_SHARE
    # (d) a pass that finds LATE_REQUESTS rows
    late: PassResult | None = None
    late_check_explain: float = 0.0  # ms
    late_recompute_explain: pg.Explained | None = None
    late_totals_match: bool = False

    @property
    def pass_seconds(self) -> Repeated:
        return Repeated.of([p.database_seconds for p in self.passes])

    @property
    def pass_wall(self) -> Repeated:
        return Repeated.of([p.wall for p in self.passes])

    @property
    def scheduled_passes(self) -> list[PassResult]:
        """The passes the schedule runs: full ones unless the engine slices the history."""
        return self.scheduled or self.passes

    @property
    def scheduled_seconds(self) -> Repeated:
        return Repeated.of([p.database_seconds for p in self.scheduled_passes])

    def reconcile_core_share(self) -> float:
        """The reconcile's database seconds per second of wall time at its schedule: a pass
        every ``interval``, paced to ``max_db_share`` (longer passes run back to back)."""
        per_pass = self.scheduled_seconds.median
        return min(per_pass, self.reconcile_share * self.reconcile_interval) / (
            self.reconcile_interval
        )

    def poll_core_share(self) -> float:
        """The polls' database seconds per second of wall time, one every ``poll_interval``."""
        assert self.interval_db is not None
        return self.interval_db.median / 1000 / self.poll_interval


# --- the measurements ----------------------------------------------------------------


def measure(admin_dsn: str, requests: int, steady_reps: int, heavy_reps: int,
            paced: bool, log: Any) -> WindowResult:  # fmt: skip
    """Section 5 on ``requests`` rows in a database of its own (dropped afterwards)."""
    result = WindowResult(requests)
    result.load_average.append(os.getloadavg())
    with pg.bench_database(admin_dsn, f"window_{requests // 1000}k") as dsn:
        log(f"spend_logs, {requests:,} requests at {spendlog.REQUESTS_PER_HOUR:,}/h:")
        loaded = spendlog.load(dsn, requests)
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in loaded.phases.items())
        log(f"  loaded {loaded.days:.1f} days, {loaded.table_bytes / 2**20:,.0f} MiB ({phases})")
        result.load = loaded
        asyncio.run(_engine(dsn, loaded, steady_reps, heavy_reps, paced, result, log))
    result.load_average.append(os.getloadavg())
    return result


async def _engine(dsn: str, loaded: spendlog.SpendLog, steady_reps: int, heavy_reps: int,
                  paced: bool, result: WindowResult, log: Any) -> None:  # fmt: skip
    config = stream_config(dsn)
    stream = config.streams[STREAM]
    result.poll_interval = stream.interval
    assert stream.reconcile
    result.reconcile_interval = stream.reconcile.interval
    result.reconcile_share = stream.reconcile.max_db_share
    harness = engine.StreamHarness(config, STREAM)
    try:
        added = spendlog.top_up(dsn, loaded)
        result.requests = loaded.rows
        first = await harness.poll()
        log(f"  start-up run_once: {first.seconds:.1f}s (after topping up {added:,} requests)")
        result.startup_seconds = first.seconds
        result.startup_totals_match = harness.exported_total(SPENT) == spendlog.spend_sum(dsn)
        result.series = harness.series_count()
        aggregate = engine.aggregate_sql(dsn, first)
        history_end = spendlog.newest_start(dsn)
        await _steady(dsn, harness, loaded.keys, history_end, steady_reps, result, log)
        _full_aggregates(dsn, aggregate, config, heavy_reps, result, log)
        await _reconcile(dsn, harness, heavy_reps, paced, result, log)
        await _late_rows(dsn, harness, loaded.keys, result, log)
    finally:
        await harness.close()


async def _steady(dsn: str, harness: engine.StreamHarness, keys: spendlog.Keys,
                  history_end: Any, reps: int, result: WindowResult, log: Any) -> None:  # fmt: skip
    """From the state after start-up: new requests stamped within the last second, one
    poll, then the rows deleted and the state restored. NEW_REQUESTS new rows first, then
    one interval's worth at the rate (what a poll at the stream's interval reads)."""
    state = harness.snapshot()
    result.interval_new = round(spendlog.REQUESTS_PER_HOUR * result.poll_interval / 3600)
    for new, steady in ((NEW_REQUESTS, True), (result.interval_new, False)):
        walls, db, planning, rows, matches = [], [], [], [], []
        scans: set[str] = set()
        by_kind: dict[str, list[float]] = {}
        with pg.Explainer(dsn) as explainer:
            for rep in range(reps):
                spendlog.log_requests(dsn, keys, new, gateway.utc_now(), seed=rep)
                harness.restore(state)
                poll = await harness.poll()
                matches.append(harness.exported_total(SPENT) == spendlog.spend_sum(dsn))
                statements = engine.explain_poll(explainer, poll, TABLE)
                spendlog.delete_after(dsn, history_end)
                total = sum((e for _, e in statements), pg.Explained(0.0, 0.0, 0, 0))
                walls.append(poll.seconds)
                db.append(total.database_ms)
                planning.append(total.planning_ms)
                rows.append(sum(e.table_rows for kind, e in statements if kind in engine.READS))
                scans |= total.scans
                for kind, explained in statements:
                    by_kind.setdefault(kind, []).append(explained.database_ms)
        harness.restore(state)  # the last poll counted rows that are deleted now
        if steady:
            result.steady_db, result.steady_wall = Repeated.of(db), Repeated.of(walls)
            result.steady_planning = Repeated.of(planning)
            result.steady_rows = int(statistics.median(rows))
            result.steady_scans = frozenset(scans)
            result.steady_totals_match = all(matches)
            result.steady_statements = {k: Repeated.of(v) for k, v in by_kind.items()}
        else:
            result.interval_db, result.interval_wall = Repeated.of(db), Repeated.of(walls)
            result.interval_rows = int(statistics.median(rows))
        log(
            f"  poll after {new:,} new requests: {statistics.median(db):.1f} ms DB, "
            f"{statistics.median(walls) * 1000:.1f} ms wall, {int(statistics.median(rows)):,} "
            f"rows read; spend_logs read by {', '.join(sorted(scans))}; "
            f"totals = SQL: {all(matches)}"
        )


def _full_aggregates(dsn: str, aggregate: str, config: Config, reps: int, result: WindowResult,
                     log: Any) -> None:  # fmt: skip
    """(b) the engine's start-up aggregate in psql, and the GROUP BY per label set."""
    queries = baseline.baseline_queries(config.streams[STREAM])
    psql, groupby = [], []
    with pg.Explainer(dsn) as explainer:
        for _ in range(reps):
            psql.append(pg.psql_seconds(dsn, aggregate))
            groupby.append(sum(explainer.explain(q.sql, TABLE).database_ms for q in queries))
            log(
                f"  full aggregate: psql {psql[-1]:.1f}s; {len(queries)} GROUP BY queries "
                f"{groupby[-1] / 1000:.1f}s DB"
            )
    result.aggregate_psql, result.groupby_db = Repeated.of(psql), Repeated.of(groupby)
    result.groupby_queries = len(queries)


def reconciler(harness: engine.StreamHarness, share: float, whole: bool) -> Reconciler:
    """A reconciler of the harness's stream: its own reconcile settings at ``max_db_share``
    ``share``; ``whole``: every pass compares all settled history (an engine that compares
    a slice of the older history per pass, ``full_every``, is told to take all of it)."""
    settings = harness.stream.config.reconcile or ReconcileConfig()
    update: dict[str, Any] = {"max_db_share": share}
    if whole and SLICED:
        update["full_every"] = settings.interval
    return Reconciler(harness.stream, settings.model_copy(update=update))


async def run_pass(harness: engine.StreamHarness, reconciling: Reconciler) -> PassResult:
    """One reconcile pass, with what the engine counted and the recorder saw."""
    seconds = "credit_exporter_reconcile_database_seconds_total"
    chunks = "credit_exporter_reconcile_chunks_total"
    before = {
        "db": harness.sample(seconds),
        "same": harness.sample(chunks, result="same"),
        "different": harness.sample(chunks, result="different"),
        "late": harness.sample("credit_exporter_reconcile_rows_total", reason="late"),
    }
    harness.database.executed.clear()
    harness.database.transactions.clear()
    started = time.perf_counter()
    await reconciling.run_pass()
    wall = time.perf_counter() - started
    return PassResult(
        wall=wall,
        database_seconds=harness.sample(seconds) - before["db"],
        transactions=tuple(harness.database.transactions),
        chunks_same=round(harness.sample(chunks, result="same") - before["same"]),
        chunks_different=round(harness.sample(chunks, result="different") - before["different"]),
        rows_late=round(
            harness.sample("credit_exporter_reconcile_rows_total", reason="late") - before["late"]
        ),
    )


async def _reconcile(dsn: str, harness: engine.StreamHarness, reps: int, paced: bool,
                     result: WindowResult, log: Any) -> None:  # fmt: skip
    """(c) unpaced passes over all settled history that find nothing, their statements
    under EXPLAIN, passes at the stream's own settings when those compare less, and
    (``paced``) one full pass at max_db_share PACED_SHARE."""
    kinds = [("full", True)] + ([("scheduled", False)] if SLICED else [])
    for name, whole in kinds:
        reconciling = reconciler(harness, 1.0, whole)  # one: a slicing cursor moves on
        for _ in range(reps):
            last = await run_pass(harness, reconciling)
            (result.passes if whole else result.scheduled).append(last)
            log(
                f"  reconcile pass ({name}, unpaced): {last.database_seconds:.2f}s DB (engine),"
                f" {last.wall:.2f}s wall, {last.count('checksum')} checksum queries, "
                f"{last.chunks_same:,} chunks the same, {last.chunks_different} different"
            )
    with pg.Explainer(dsn) as explainer:
        explained = engine.explain_all(explainer, result.passes[0].statements(), TABLE)
    result.pass_explain = sum((e for _, e in explained), pg.Explained(0.0, 0.0, 0, 0))
    by_kind: dict[str, tuple[int, float]] = {}
    for kind, e in explained:
        count, ms = by_kind.get(kind, (0, 0.0))
        by_kind[kind] = (count + 1, ms + e.database_ms)
    result.pass_explain_by_kind = by_kind
    log(
        f"  the pass's {len(explained)} statements under EXPLAIN ANALYZE: "
        f"{result.pass_explain.database_ms / 1000:.2f}s DB, "
        f"{result.pass_explain.table_rows:,} rows of spend_logs read"
    )
    if paced:
        result.paced = await run_pass(harness, reconciler(harness, PACED_SHARE, True))
        log(
            f"  reconcile pass at max_db_share {PACED_SHARE}: {result.paced.wall:.1f}s wall, "
            f"{result.paced.database_seconds:.2f}s DB "
            f"({result.paced.wall / result.paced.database_seconds:.1f}x)"
        )


async def _late_rows(dsn: str, harness: engine.StreamHarness, keys: spendlog.Keys,
                     result: WindowResult, log: Any) -> None:  # fmt: skip
    """(d) LATE_REQUESTS requests stamped LATE_BY ago, then one unpaced pass at the stream's
    own settings."""
    spendlog.log_requests(dsn, keys, LATE_REQUESTS, gateway.utc_now() - LATE_BY, seed=1_000)
    late = await run_pass(harness, reconciler(harness, 1.0, False))
    result.late = late
    result.late_totals_match = harness.exported_total(SPENT) == spendlog.spend_sum(dsn)
    with pg.Explainer(dsn) as explainer:
        check = engine.explain_all(explainer, late.statements(PASS_KINDS), TABLE)
        recompute = engine.explain_all(explainer, late.statements(["aggregate"]), TABLE)
    result.late_check_explain = sum(e.database_ms for _, e in check)
    result.late_recompute_explain = sum((e for _, e in recompute), pg.Explained(0.0, 0.0, 0, 0))
    log(
        f"  pass after {LATE_REQUESTS} requests {LATE_HOURS} h late: "
        f"{late.database_seconds:.2f}s DB (engine; checksums "
        f"{late.seconds_of(PASS_KINDS):.2f}s, recompute "
        f"{late.seconds_of(['aggregate']):.2f}s in {late.count('aggregate')} queries), "
        f"{late.rows_late} late rows found, totals = SQL: {result.late_totals_match}"
    )

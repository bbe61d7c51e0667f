"""The measurements, one function each; ``run.py`` calls them in order."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from cebench import baseline, dataset, engine, pg, qe, scrape, window
from cebench.stats import Repeated

OUT = Path(__file__).resolve().parents[1] / "out"
SPENT = "credit_spent_credits_total"
SPENT_SQL = "SELECT coalesce(sum(greatest(credits, 0)), 0) FROM usage_events WHERE NOT playground"


@dataclass(frozen=True)
class Plan:
    """Sizes and repetition counts of one run."""

    sizes: tuple[int, ...]
    intake_reps: int  # load_demo runs per size (each replaces the data)
    steady_reps: int  # steady-state polls per size
    new_events: int  # inserted before each steady-state poll
    series: int  # /metrics series
    load_seconds: float  # per /metrics load mode
    clients: int = 20
    burst_events: int = 100_000  # inserted before each "how many per second" poll
    burst_reps: int = 3

    def heavy_reps(self, events: int) -> int:
        """Repetitions of whole-table work (start-up, full aggregates, query-exporter)."""
        return 3 if events <= 2_000_000 else 2


QUICK = Plan(sizes=(100_000,), intake_reps=2, steady_reps=5, new_events=1000, series=10_000,
             load_seconds=5)  # fmt: skip
FULL = Plan(sizes=(1_000_000, 10_000_000), intake_reps=3, steady_reps=7, new_events=1000,
            series=100_000, load_seconds=30)  # fmt: skip


@dataclass
class SizeResult:
    """Everything measured on one table size."""

    events: int
    loads: list[dataset.Load] = field(default_factory=list)
    bare: dataset.BareLoad | None = None  # PostgreSQL's own load of the same usage_events
    example_startup: str = ""  # outcome with config.example.yaml's own statement_timeout
    totals_match: bool = False  # engine's start-up total == SQL SUM, to the credit
    series: int = 0
    startup_engine: Repeated | None = None  # seconds
    startup_psql: Repeated | None = None  # seconds
    steady_wall: Repeated | None = None  # seconds
    steady_db: Repeated | None = None  # ms, EXPLAIN ANALYZE of every statement of the poll
    steady_planning: Repeated | None = None  # ms, of which planning
    steady_rows: int = 0
    burst_wall: Repeated | None = None  # seconds, a poll after burst_events new events
    burst_db: Repeated | None = None  # ms, EXPLAIN ANALYZE of that poll's statements
    burst_rows: int = 0
    burst_totals_match: bool = False
    steady_statements: dict[str, Repeated] = field(default_factory=dict)  # kind -> DB ms
    groupby_db: Repeated | None = None  # ms, sum over the per-label-set queries
    groupby_queries: int = 0
    qe_scrape: Repeated | None = None  # seconds
    qe_query: float = 0.0  # seconds per scrape by its own query_latency
    qe_version: str = ""


# --- loading ---------------------------------------------------------------


def load_dataset(dsn: str, events: int, reps: int, log: Log) -> list[dataset.Load]:
    loads = []
    for rep in range(reps):
        result = dataset.load(dsn, events)
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.summary.phases)
        log(
            f"  load {rep + 1}/{reps}: {result.summary.usage_events:,} usage events in "
            f"{result.summary.seconds:.1f}s ({result.events_per_second:,.0f}/s; {phases})"
        )
        loads.append(result)
    return loads


def intake(dsn: str, events: int, plan: Plan, result: SizeResult, log: Log) -> None:
    """load_demo repeated, then PostgreSQL's own load of the usage_events it wrote."""
    result.loads = load_dataset(dsn, events, plan.intake_reps, log)
    result.bare = dataset.bare_load(dsn, result.loads[-1].summary.usage_events)
    log(
        f"  bare COPY + indexes of usage_events in psql: {result.bare.seconds:.1f}s "
        f"({result.bare.events_per_second:,.0f}/s)"
    )


def measure_intake(admin_dsn: str, events: int, plan: Plan, log: Log) -> SizeResult:
    """Section 3 alone (``run.py --intake-only``)."""
    result = SizeResult(events)
    with pg.bench_database(admin_dsn, f"{events // 1000}k") as dsn:
        log(f"{events:,} usage events:")
        intake(dsn, events, plan, result, log)
    return result


# --- start-up and steady state ---------------------------------------------


async def example_startup(dsn: str) -> str:
    """One start-up with the example's own databases.billing.statement_timeout."""
    harness = engine.StreamHarness(engine.example_config(dsn, statement_timeout=None))
    try:
        poll = await harness.poll()
        return f"ok in {poll.seconds:.1f}s"
    except RuntimeError as error:
        return f"FAILED: {error}"
    finally:
        await harness.close()


async def startup_once(dsn: str) -> float:
    harness = engine.StreamHarness(engine.example_config(dsn))
    try:
        return (await harness.poll()).seconds
    finally:
        await harness.close()


async def engine_section(dsn: str, plan: Plan, result: SizeResult, log: Log) -> str:
    """Start-up, correctness check, then steady-state polls; returns the bare aggregate."""
    harness = engine.StreamHarness(engine.example_config(dsn))
    try:
        first = await harness.poll()
        log(f"  start-up run_once: {first.seconds:.1f}s")
        aggregate = engine.aggregate_sql(dsn, first)
        sql_total = Decimal(pg.execute(dsn, SPENT_SQL)[0][0])
        result.totals_match = harness.exported_total(SPENT) == sql_total
        result.series = harness.series_count()
        await steady_polls(dsn, harness, plan, result, log)
        await burst_polls(dsn, harness, plan, result, log)
    finally:
        await harness.close()
    result.startup_engine = Repeated.of([first.seconds])
    return aggregate


async def steady_polls(
    dsn: str, harness: engine.StreamHarness, plan: Plan, result: SizeResult, log: Log
) -> None:
    """Each repetition: from the same post-start-up state, ``new_events`` new rows, one poll.

    The rows of a repetition are deleted (and vacuumed) after it, and the
    stream's state restored, so every repetition reads the same amount.
    """
    state = harness.snapshot()
    walls, db, planning, rows = [], [], [], []
    by_kind: dict[str, list[float]] = {}
    with pg.Explainer(dsn) as explainer:
        for _ in range(plan.steady_reps):
            last_id = dataset.insert_new_events(dsn, plan.new_events)
            harness.restore(state)
            poll = await harness.poll()
            statements = engine.explain_poll(explainer, poll)
            dataset.delete_events_after(dsn, last_id)
            total = sum((e for _, e in statements), pg.Explained(0.0, 0.0, 0, 0))
            walls.append(poll.seconds)
            db.append(total.database_ms)
            planning.append(total.planning_ms)
            rows.append(sum(e.table_rows for kind, e in statements if kind in engine.READS))
            for kind, explained in statements:
                by_kind.setdefault(kind, []).append(explained.database_ms)
    harness.restore(state)  # the last poll counted rows that are deleted now
    result.steady_wall = Repeated.of(walls)
    result.steady_db = Repeated.of(db)
    result.steady_planning = Repeated.of(planning)
    result.steady_rows = int(statistics.median(rows))
    result.steady_statements = {kind: Repeated.of(ms) for kind, ms in by_kind.items()}
    log(
        f"  steady state: {result.steady_db.median:.1f} ms DB, "
        f"{result.steady_wall.median * 1000:.1f} ms wall, {result.steady_rows:,} rows"
    )


async def burst_polls(
    dsn: str, harness: engine.StreamHarness, plan: Plan, result: SizeResult, log: Log
) -> None:
    """How many new events a poll absorbs per second: ``burst_events`` new rows, one poll.

    Like the steady polls (same state each time, rows deleted after), with a
    check that the exported total still equals the SQL sum after each.
    """
    state = harness.snapshot()
    walls, db, rows, matches = [], [], [], []
    with pg.Explainer(dsn) as explainer:
        for _ in range(plan.burst_reps):
            last_id = dataset.insert_new_events(dsn, plan.burst_events)
            harness.restore(state)
            poll = await harness.poll()
            matches.append(
                harness.exported_total(SPENT) == Decimal(pg.execute(dsn, SPENT_SQL)[0][0])
            )
            statements = engine.explain_poll(explainer, poll)
            dataset.delete_events_after(dsn, last_id)
            walls.append(poll.seconds)
            db.append(sum(e.database_ms for _, e in statements))
            rows.append(sum(e.table_rows for kind, e in statements if kind in engine.READS))
    harness.restore(state)  # the last poll counted rows that are deleted now
    result.burst_wall = Repeated.of(walls)
    result.burst_db = Repeated.of(db)
    result.burst_rows = int(statistics.median(rows))
    result.burst_totals_match = all(matches)
    wall = result.burst_wall.median
    log(
        f"  poll after {plan.burst_events:,} new events: {wall:.2f}s wall, "
        f"{result.burst_db.median / 1000:.2f}s DB ({plan.burst_events / wall:,.0f} events/s)"
    )


def startup_comparison(dsn: str, aggregate: str, reps: int, result: SizeResult, log: Log) -> None:
    """The bare aggregate in psql, alternating with more fresh engine start-ups."""
    assert result.startup_engine is not None  # the first one ran before the steady polls
    psql, engine_runs = [], list(result.startup_engine.values)
    for rep in range(reps):
        psql.append(pg.psql_seconds(dsn, aggregate))
        if rep > 0:
            engine_runs.append(asyncio.run(startup_once(dsn)))
        log(f"  start-up {rep + 1}/{reps}: psql {psql[-1]:.1f}s, engine {engine_runs[-1]:.1f}s")
    result.startup_psql = Repeated.of(psql)
    result.startup_engine = Repeated.of(engine_runs)


# --- the generic exporters' way ------------------------------------------------


def groupby_baseline(
    dsn: str, queries: list[baseline.BaselineQuery], reps: int, result: SizeResult, log: Log
) -> None:
    totals = []
    with pg.Explainer(dsn) as explainer:
        for _ in range(reps):
            total = sum(explainer.explain(q.sql).database_ms for q in queries)
            totals.append(total)
            log(f"  {len(queries)} GROUP BY queries: {total / 1000:.1f}s DB")
    result.groupby_db = Repeated.of(totals)
    result.groupby_queries = len(queries)


def query_exporter_baseline(
    dsn: str, queries: list[baseline.BaselineQuery], reps: int, result: SizeResult, log: Log
) -> None:
    config_path, log_path = OUT / "query-exporter.yaml", OUT / "query-exporter.log"
    qe.write_config(config_path, dsn, queries)
    result.qe_version = qe.version()
    walls = []
    with qe.running(config_path, log_path) as url:
        for _ in range(reps):
            seconds, body = qe.scrape(url)
            if qe.errors(body):
                raise RuntimeError(f"query-exporter reported query errors; see {log_path}")
            walls.append(seconds)
            log(f"  query-exporter scrape: {seconds:.1f}s")
    result.qe_scrape = Repeated.of(walls)
    result.qe_query = qe.query_seconds(body) / reps


def measure_size(admin_dsn: str, events: int, plan: Plan, log: Log) -> SizeResult:
    result = SizeResult(events)
    reps = plan.heavy_reps(events)
    with pg.bench_database(admin_dsn, f"{events // 1000}k") as dsn:
        log(f"{events:,} usage events:")
        intake(dsn, events, plan, result, log)
        result.example_startup = asyncio.run(example_startup(dsn))
        log(f"  start-up with the example's statement_timeout: {result.example_startup}")
        aggregate = asyncio.run(engine_section(dsn, plan, result, log))
        startup_comparison(dsn, aggregate, reps, result, log)
        queries = baseline.baseline_queries(engine.stream_config(engine.example_config(dsn)))
        groupby_baseline(dsn, queries, reps, result, log)
        query_exporter_baseline(dsn, queries, reps, result, log)
    return result


# --- a time-ordered stream with a one-hour window ------------------------------


def measure_window(admin_dsn: str, requests: int, plan: Plan, log: Log) -> window.WindowResult:
    """Section 5 on ``requests`` spend_logs rows; the pacing check on the smallest size."""
    return window.measure(
        admin_dsn, requests, plan.steady_reps, plan.heavy_reps(requests),
        paced=requests == plan.sizes[0], log=log,
    )  # fmt: skip


# --- /metrics under load -----------------------------------------------------


@dataclass
class ScrapeResult:
    series: int
    ready_seconds: float
    rss_idle: int
    rss_peak: int  # VmHWM at the end
    loads: list[scrape.LoadResult]


def load_modes(plan: Plan) -> list[scrape.LoadMode]:
    return [
        scrape.LoadMode("paced, 1 scrape/s each", plan.clients, "gzip", 1.0),
        scrape.LoadMode("back to back", plan.clients, "gzip", None),
        scrape.LoadMode("paced, 1 scrape/s each", plan.clients, "identity", 1.0),
    ]


def measure_scrape(admin_dsn: str, plan: Plan, log: Log) -> ScrapeResult:
    config_path, log_path = OUT / "scrape-exporter.yaml", OUT / "scrape-exporter.log"
    with pg.bench_database(admin_dsn, "scrape") as dsn:
        scrape.write_config(config_path, dsn, plan.series)
        with scrape.running_exporter(config_path, log_path) as exporter:
            ready = scrape.wait_for_series(exporter.url, plan.series)
            time.sleep(1.0)  # let the post-render garbage settle before the idle reading
            idle = scrape.rss_bytes(exporter.pid)
            loads = []
            for mode in load_modes(plan):
                loads.append(scrape.load(exporter, mode, plan.load_seconds))
                last = loads[-1]
                log(
                    f"  /metrics {mode.name} ({mode.encoding}): p50 {last.p50 * 1000:.1f} ms,"
                    f" p99 {last.p99 * 1000:.1f} ms, {len(last.latencies)} scrapes"
                )
            peak = scrape.rss_bytes(exporter.pid, "VmHWM")
    return ScrapeResult(plan.series, ready, idle, peak, loads)


class Log:
    """Progress lines on stderr with the elapsed time."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.0f}s] {message}", file=sys.stderr, flush=True)

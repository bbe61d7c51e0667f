"""The generic SQL exporters side by side on the same data and the same GROUP BY queries:
query-exporter (PyPI) and sql_exporter (Debian), with credit-exporter's own polls and the
SQL's exact sums as the reference (``run.py --peers-only``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from cebench import baseline, dataset, engine, pg, qe, sqlexporter, suite
from cebench.machine import Machine
from cebench.stats import Repeated

SPENT = suite.SPENT
# (value column, ((label, value), ...)) -> value
Series = dict[tuple[str, tuple[tuple[str, str], ...]], Any]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Agreement:
    """How one exporter's series compare with the SQL rows of the same queries."""

    series: int  # expected series (one per SQL row and value column)
    equal: int  # of which exported with exactly float64(SQL value)
    spent: float  # its credit_spent_credits_total summed over series


@dataclass
class PeersResult:
    events: int
    steady_wall: Repeated | None = None  # credit-exporter's steady poll, seconds
    startup_wall: float = 0.0  # credit-exporter's start-up poll, seconds
    engine_spent: Decimal = Decimal(0)
    sql_spent: Decimal = Decimal(0)
    qe_scrape: Repeated | None = None  # seconds; each scrape runs every query
    qe_agreement: Agreement | None = None
    qe_version: str = ""
    sx_refresh: Repeated | None = None  # seconds, one job run by its own log
    sx_scrape: Repeated | None = None  # seconds, rendering the cached results
    sx_agreement: Agreement | None = None
    sx_version: str = ""
    sx_skipped: str = ""  # why sql_exporter was not measured
    queries: int = 0
    load_average: list[tuple[float, float, float]] = field(default_factory=list)


def expected_series(dsn: str, queries: list[baseline.BaselineQuery]) -> Series:
    """Every (value column, labels) the queries return, with the database's exact value."""
    expected: Series = {}
    with psycopg.connect(dsn) as conn:
        for query in queries:
            cursor = conn.execute(query.sql)
            names = [column.name for column in cursor.description or ()]
            for row in cursor.fetchall():
                record = dict(zip(names, row, strict=True))
                for column, labels in query.metrics.items():
                    key = tuple((label, str(record[label])) for label in labels)
                    expected[(column, key)] = record[column]
    return expected


def _samples(body: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    ]


def qe_series(body: str, queries: list[baseline.BaselineQuery]) -> Series:
    """query-exporter names each metric after its value column."""
    labels_of = {column: labels for q in queries for column, labels in q.metrics.items()}
    found: Series = {}
    for name, labels, value in _samples(body):
        if name in labels_of:
            found[(name, tuple((k, labels[k]) for k in labels_of[name]))] = value
    return found


def sx_series(body: str, queries: list[baseline.BaselineQuery]) -> Series:
    """sql_exporter: one gauge per query, the value column in ``col``."""
    by_metric = {f"sql_{sqlexporter.JOB}_{q.name}": q for q in queries}
    found: Series = {}
    for name, labels, value in _samples(body):
        query = by_metric.get(name)
        if query is None or labels.get("col") not in query.metrics:
            continue
        own = query.metrics[labels["col"]]
        if "le" in labels and "le" not in own and labels["le"] != "+Inf":
            continue  # a histogram's _count and _sum, repeated on every bucket row
        key = tuple((label, labels[sqlexporter.label_name(label)]) for label in own)
        found[(labels["col"], key)] = value
    return found


def agreement(expected: Series, found: Series) -> Agreement:
    equal = sum(
        1
        for key, value in expected.items()
        if key in found and found[key] == float(value if value is not None else 0)
    )
    spent = sum(value for (column, _), value in found.items() if column == SPENT)
    return Agreement(len(expected), equal, float(spent))


async def engine_polls(dsn: str, plan: suite.Plan, result: PeersResult, log: Log) -> None:
    """credit-exporter's start-up poll and steady polls, as section 1 runs them."""
    harness = engine.StreamHarness(engine.example_config(dsn))
    try:
        first = await harness.poll()
        result.startup_wall = first.seconds
        result.engine_spent = harness.exported_total(SPENT)
        size = suite.SizeResult(result.events)
        await suite.steady_polls(dsn, harness, plan, size, log)
        result.steady_wall = size.steady_wall
    finally:
        await harness.close()


def measure(admin_dsn: str, events: int, plan: suite.Plan, out: Path, log: Log) -> PeersResult:
    result = PeersResult(events)
    reps = plan.heavy_reps(events)
    with pg.bench_database(admin_dsn, f"peers_{events // 1000}k") as dsn:
        log(f"{events:,} usage events (peers):")
        loaded = dataset.load(dsn, events)
        result.events = loaded.summary.usage_events
        log(f"  loaded {result.events:,} usage events in {loaded.summary.seconds:.1f}s")
        result.load_average.append(os.getloadavg())
        asyncio.run(engine_polls(dsn, plan, result, log))
        result.sql_spent = Decimal(pg.execute(dsn, suite.SPENT_SQL)[0][0])
        queries = baseline.baseline_queries(engine.stream_config(engine.example_config(dsn)))
        result.queries = len(queries)
        expected = expected_series(dsn, queries)
        peers_side_by_side(dsn, queries, expected, reps, out, result, log)
        result.load_average.append(os.getloadavg())
    return result


def peers_side_by_side(
    dsn: str,
    queries: list[baseline.BaselineQuery],
    expected: Series,
    reps: int,
    out: Path,
    result: PeersResult,
    log: Log,
) -> None:
    """Alternating: one query-exporter scrape, one sql_exporter job run."""
    qe_config, qe_log = out / "query-exporter.yaml", out / "query-exporter.log"
    sx_config, sx_log = out / "sql-exporter.yaml", out / "sql-exporter.log"
    qe.write_config(qe_config, dsn, queries)
    result.qe_version = qe.version()
    binary = sqlexporter.executable()
    if binary is None:
        result.sx_skipped = (
            f"{sqlexporter.PACKAGE} is not installed and could not be installed "
            f"(not root or no apt-get): sudo apt-get install {sqlexporter.PACKAGE}"
        )
        log(f"  sql_exporter SKIPPED: {result.sx_skipped}")
    else:
        result.sx_version = sqlexporter.version(binary)
        sqlexporter.write_config(sx_config, dsn, queries)
    qe_walls, sx_runs, sx_scrapes = [], [], []
    with qe.running(qe_config, qe_log) as url:
        for _ in range(reps):
            seconds, body = qe.scrape(url)
            if qe.errors(body):
                raise RuntimeError(f"query-exporter reported query errors; see {qe_log}")
            qe_walls.append(seconds)
            result.qe_agreement = agreement(expected, qe_series(body, queries))
            line = f"  query-exporter scrape: {seconds:.2f}s"
            if binary is not None:
                run = sqlexporter.refresh(binary, sx_config, sx_log)
                sx_runs.append(run.seconds)
                sx_scrapes.append(run.scrape_seconds)
                result.sx_agreement = agreement(expected, sx_series(run.body, queries))
                line += f"; sql_exporter job run: {run.seconds:.2f}s"
            log(line)
    result.qe_scrape = Repeated.of(qe_walls)
    if sx_runs:
        result.sx_refresh = Repeated.of(sx_runs)
        result.sx_scrape = Repeated.of(sx_scrapes)


# --- the document ------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:,.2f} s" if seconds >= 1 else f"{seconds * 1000:,.1f} ms"


def _med(value: Repeated | None) -> float:
    assert value is not None
    return value.median


def _agreed(found: Agreement | None, result: PeersResult) -> str:
    if found is None:
        return "-"
    off = Decimal(repr(found.spent)) - result.sql_spent
    shown = "exactly the SQL sum" if off == 0 else f"off by {off:+}"
    return f"{found.equal:,} / {found.series:,}; spent total {found.spent!r} ({shown})"


def table(results: list[PeersResult]) -> str:
    header = [
        "usage_events", "(a) credit-exporter steady poll, wall", "credit-exporter start-up poll",
        "(c) query-exporter scrape", "(d) sql_exporter job run", "sql_exporter scrape (cached)",
        "c / a", "d / a", "d / c",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        a, c = _med(r.steady_wall), _med(r.qe_scrape)
        if r.sx_refresh is None:
            sx = ["skipped", "skipped", "-", "-"]
        else:
            d = _med(r.sx_refresh)
            sx = [_s(d), _s(_med(r.sx_scrape)), f"{d / a:,.0f}x", f"{d / c:.2f}x"]
        row = [f"{r.events:,}", _s(a), _s(r.startup_wall), _s(c), sx[0], sx[1], f"{c / a:,.0f}x"]
        lines.append("| " + " | ".join([*row, *sx[2:]]) + " |")
    return "\n".join(lines)


def totals_lines(results: list[PeersResult]) -> list[str]:
    lines = []
    for r in results:
        engine_equal = "equal" if r.engine_spent == r.sql_spent else f"NOT equal ({r.engine_spent})"
        lines += [
            f"- {r.events:,} events: SQL `{SPENT}` = {r.sql_spent}; credit-exporter: "
            f"{engine_equal} (exact decimal)",
            f"  - query-exporter, series equal to float64(SQL value): {_agreed(r.qe_agreement, r)}",
            "  - sql_exporter, series equal to float64(SQL value): "
            + (_agreed(r.sx_agreement, r) if r.sx_agreement else f"skipped: {r.sx_skipped}"),
        ]
    return lines


def document(machine: Machine, command: str, results: list[PeersResult]) -> str:
    first = results[0]
    loads = "; ".join(
        f"{r.events:,}: " + " -> ".join(f"{a[0]:.2f}" for a in r.load_average) for r in results
    )
    raw = []
    for r in results:
        for name, value in (
            ("credit-exporter steady poll s", r.steady_wall),
            ("query-exporter scrape s", r.qe_scrape),
            ("sql_exporter job run s", r.sx_refresh),
            ("sql_exporter scrape s", r.sx_scrape),
        ):
            if value is not None:
                shown = ", ".join(f"{v:.4g}" for v in value.values)
                raw.append(f"- {r.events:,} events, {name} (n={value.n}): {shown}")
    return "\n".join(
        [
            "# Generic SQL exporters side by side",
            "",
            f"Generated by `{command}` on {machine.date}; {machine.cpus} CPUs (nproc), shared with"
            f" other work; 1-minute load average before -> after the measurements: {loads}."
            f" credit-exporter at {machine.revision}.",
            "",
            f"The same {first.queries} GROUP BY queries (one per label set of the usage_events"
            " stream's metrics, section 1 (b2)) in query-exporter"
            f" ({first.qe_version}) and sql_exporter ({first.sx_version or 'not run'}),"
            " alternating. query-exporter runs them on every scrape (no `interval`);"
            " sql_exporter runs them in the background once per `interval` and a scrape renders"
            " its cache, so its refresh is the job's run from its own debug log, in a fresh"
            " process per repetition. (a) is credit-exporter's steady poll after 1,000 new"
            " events, as section 1 measures it. Medians.",
            "",
            table(results),
            "",
            "Totals: each exporter's series against the rows of the same queries in psql"
            " (equal when the exported value is exactly the SQL value rounded to float64), and"
            f" its `{SPENT}` series summed against the SQL sum:",
            "",
            *totals_lines(results),
            "",
            "Raw repetitions:",
            "",
            *raw,
            "",
        ]
    )

"""The results as Markdown: figures, ratios against the targets, raw repetitions."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from cebench.machine import Machine
from cebench.stats import Repeated
from cebench.suite import Plan, ScrapeResult, SizeResult

MIB = 2**20
INTAKE_TEXT = """\
`load_demo(days=90, seed=42, scale=...)` into an empty database: the generator renders
every table's rows in COPY's binary format on one thread while the main thread copies
the previous batch (one transaction, keys and indexes dropped), then rebuilds keys,
indexes and foreign keys, commits and runs ANALYZE on two sessions. Usage events/s is
usage_events rows over the whole wall time."""


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    met: bool


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:,.1f} s" if seconds >= 1 else _ms(seconds)


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _med(value: Repeated | None) -> float:
    assert value is not None
    return value.median


def _events(size: SizeResult) -> str:
    return f"{size.loads[-1].summary.usage_events:,}"


# --- the sections --------------------------------------------------------------


def steady_table(sizes: list[SizeResult]) -> str:
    rows = []
    for size in sizes:
        db = _med(size.steady_db) / 1000
        rows.append([
            _events(size),
            f"{_ms(db)} ({_ms(_med(size.steady_planning) / 1000)} planning)",
            _ms(_med(size.steady_wall)),
            f"{size.steady_rows:,}",
            _s(_med(size.startup_psql)),
            _s(_med(size.groupby_db) / 1000),
            _s(_med(size.qe_scrape)),
            _x(_med(size.startup_psql) / db),
            _x(_med(size.groupby_db) / 1000 / db),
            _x(_med(size.qe_scrape) / _med(size.steady_wall)),
        ])  # fmt: skip
    header = [
        "usage_events", "(a) steady poll, DB time", "(a) steady poll, wall", "rows read",
        "(b1) full aggregate, 1 scan (psql)", "(b2) full aggregate, GROUP BY per label set (DB)",
        "(c) query-exporter scrape", "b1 / a (DB)", "b2 / a (DB)", "c / a (wall)",
    ]  # fmt: skip
    return _table(header, rows)


def burst_table(plan: Plan, sizes: list[SizeResult]) -> str:
    rows = []
    for size in sizes:
        if size.burst_wall is None:
            continue
        wall, db = _med(size.burst_wall), _med(size.burst_db) / 1000
        rows.append([
            _events(size), f"{size.burst_rows:,}", _s(wall), _s(db),
            f"{plan.burst_events / wall:,.0f}", f"{wall / plan.burst_events * 1e6:.1f} µs",
            "yes" if size.burst_totals_match else "NO",
        ])  # fmt: skip
    header = [
        "usage_events", "rows read", "poll wall", "poll DB time", "new events per second of poll",
        "wall per new event", "totals = SQL SUM after it",
    ]  # fmt: skip
    return _table(header, rows)


def startup_table(sizes: list[SizeResult]) -> str:
    rows = [
        [
            _events(size),
            _s(_med(size.startup_engine)),
            _s(_med(size.startup_psql)),
            _x(_med(size.startup_engine) / _med(size.startup_psql)),
            _s(_med(size.groupby_db) / 1000),
            size.example_startup,
            "yes" if size.totals_match else "NO",
        ]
        for size in sizes
    ]
    header = [
        "usage_events", "engine: first run_once", "bare aggregate in psql", "engine / psql",
        "same totals by GROUP BY per label set (DB)",
        "start-up with the example's statement_timeout (10s)", "totals = SQL SUM",
    ]  # fmt: skip
    return _table(header, rows)


def intake_table(sizes: list[SizeResult]) -> str:
    rows = []
    for size in sizes:
        for load in size.loads:
            activity = ", ".join(f"{k} {v:.0%}" for k, v in load.phases.items() if v >= 0.02)
            rows.append([
                f"{load.summary.usage_events:,}", f"{load.rows:,}", _s(load.summary.seconds),
                f"{load.events_per_second:,.0f}", f"{load.rows_per_second:,.0f}",
                _s(load.phase_seconds("copy")), _s(load.phase_seconds("constraints")),
                _s(load.phase_seconds("analyze")), activity,
            ])  # fmt: skip
    header = [
        "usage_events", "rows, all tables", "load_demo wall", "usage events/s", "rows/s",
        "generate + COPY", "keys, indexes, foreign keys", "ANALYZE",
        "server activity during the load (pg_stat_activity samples)",
    ]  # fmt: skip
    return _table(header, rows)


def _intake_median(size: SizeResult) -> float:
    return statistics.median(load.events_per_second for load in size.loads)


def bare_table(sizes: list[SizeResult]) -> str:
    rows = []
    for size in sizes:
        if size.bare is None:
            continue
        bare, median = size.bare, _intake_median(size)
        rows.append([
            f"{bare.events:,}", _s(bare.copy_seconds), _s(bare.index_seconds),
            f"{bare.events_per_second:,.0f}", f"{median:,.0f}",
            f"{median / bare.events_per_second:.2f}",
        ])  # fmt: skip
    header = [
        "usage_events", "COPY from file (binary, FREEZE)", "primary key + 2 indexes",
        "bare load, usage events/s", "load_demo, usage events/s (median)", "load_demo / bare",
    ]  # fmt: skip
    return _table(header, rows)


def intake_check(sizes: list[SizeResult]) -> Check:
    medians = [(size, _intake_median(size)) for size in sizes if size.loads]
    measured = "; ".join(
        f"{_events(size)} events: {median:,.0f}/s (median of {len(size.loads)})"
        for size, median in medians
    )
    return Check(
        "intake >= 100k usage events/s (load_demo, every size)",
        measured,
        bool(medians) and all(median >= 100_000 for _, median in medians),
    )


def scrape_table(result: ScrapeResult) -> str:
    rows = [
        [
            f"{load.mode.clients} scrapers, {load.mode.name}", load.mode.encoding,
            f"{load.body_bytes / 1024:,.0f} KiB", f"{len(load.latencies):,}",
            f"{load.requests_per_second:,.0f}", _ms(load.p50), _ms(load.p99),
            _ms(load.latencies[-1]), f"{load.rss_max / MIB:.0f} MiB", str(load.failures),
        ]
        for load in result.loads
    ]  # fmt: skip
    header = [
        "load", "encoding", "body", "scrapes", "scrapes/s", "p50", "p99", "max",
        "exporter RSS (max sampled)", "failures",
    ]  # fmt: skip
    summary = (
        f"{result.series:,} series; first full body {result.ready_seconds:.1f}s after start; "
        f"exporter RSS idle {result.rss_idle / MIB:.0f} MiB, peak (VmHWM) "
        f"{result.rss_peak / MIB:.0f} MiB."
    )
    return _table(header, rows) + "\n\n" + summary


# --- targets ---------------------------------------------------------------------


def checks(sizes: list[SizeResult], scraped: ScrapeResult) -> list[Check]:
    largest, smallest = sizes[-1], sizes[0]
    db = _med(largest.steady_db)
    b1, b2 = _med(largest.startup_psql) * 1000 / db, _med(largest.groupby_db) / db
    startup = _med(largest.startup_engine) / _med(largest.startup_psql)
    headline = scraped.loads[0]
    result = [
        Check(
            f"steady poll at {_events(largest)} events: >= 100x less DB time than a full aggregate",
            f"{_x(b2)} vs GROUP BY per label set; {_x(b1)} vs the single-scan aggregate",
            min(b1, b2) >= 100,
        ),
        Check(
            f"start-up at {_events(largest)} events within 2x of the bare aggregate in psql",
            _x(startup),
            startup <= 2,
        ),
        intake_check(sizes),
        Check(
            f"/metrics, {scraped.series:,} series, {headline.mode.clients} scrapers "
            f"({headline.mode.name}, gzip): p99 <= 25 ms",
            _ms(headline.p99),
            headline.p99 <= 0.025,
        ),
        Check(
            "exporter memory <= 300 MB",
            f"{scraped.rss_peak / 1e6:.0f} MB peak (VmHWM)",
            scraped.rss_peak <= 300e6,
        ),
    ]
    if len(sizes) > 1:
        growth = _med(largest.steady_db) / _med(smallest.steady_db)
        wall = _med(largest.steady_wall) / _med(smallest.steady_wall)
        result.insert(1, Check(
            f"steady poll flat as the table grows ({_events(smallest)} -> {_events(largest)})",
            f"{_x(growth)} DB time, {_x(wall)} wall", growth <= 1.5,
        ))  # fmt: skip
    return result


def checks_table(items: list[Check]) -> str:
    return _table(
        ["target", "measured", "met"],
        [[c.target, c.measured, "yes" if c.met else "**NO**"] for c in items],
    )


# --- raw repetitions and the whole document ---------------------------------------


def raw_lines(sizes: list[SizeResult]) -> str:
    lines = []
    for size in sizes:
        figures = {
            "steady poll DB ms": size.steady_db,
            "steady poll planning ms": size.steady_planning,
            "steady poll wall s": size.steady_wall,
            "engine start-up s": size.startup_engine,
            "bare aggregate psql s": size.startup_psql,
            "GROUP BY per label set DB ms": size.groupby_db,
            "query-exporter scrape s": size.qe_scrape,
        }
        for name, value in figures.items():
            if value is not None:
                shown = ", ".join(f"{v:.4g}" for v in value.values)
                lines.append(f"- {_events(size)} events, {name} (n={value.n}): {shown}")
        kinds = ", ".join(f"{k} {v.median:.1f} ms" for k, v in size.steady_statements.items())
        lines.append(
            f"- {_events(size)} events: the steady poll's statements (median DB time): {kinds}; "
            f"{size.groupby_queries} GROUP BY queries; query-exporter's own query_latency "
            f"{_s(size.qe_query)} per scrape ({size.qe_version}); {size.series:,} series exported"
        )
    return "\n".join(lines)


def document(
    machine: Machine, plan: Plan, command: str, sizes: list[SizeResult], scraped: ScrapeResult
) -> str:
    reps = ", ".join(f"{s.events:,}: {plan.heavy_reps(s.events)}" for s in sizes)
    return f"""# Benchmark results

Generated by `{command}` on {machine.date}.

- machine: {machine.cpus} CPUs (nproc), {machine.memory} RAM, Linux {machine.kernel}; shared
  with other work, so figures are noisy
- {machine.postgres} on 127.0.0.1 ({machine.settings})
- Python {machine.python}; credit-exporter at {machine.revision}
- data: `load_demo(days=90, seed=42, scale=...)`, the reference schema with realistic data,
  loaded by COPY (no synthetic generate_series rows)
- figures are medians: steady-state polls n={plan.steady_reps}; start-up, full aggregates and
  query-exporter scrapes n per size = {reps}; /metrics loads {plan.load_seconds:g} s each

## Targets

{checks_table(checks(sizes, scraped))}

## 1. Steady-state poll vs full aggregate

Each steady poll follows the insertion of {plan.new_events:,} new events stamped within the last
15 s (copies of the latest events), from the state right after start-up. DB time is
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) of every statement the poll ran, re-run with the same
parameters; wall is the whole `run_once()`.

{steady_table(sizes)}

How many new events a poll absorbs: the same, after {plan.burst_events:,} new events
(n={plan.burst_reps}). A poll's aggregate runs in one backend (no parallel plan), so this is
one core's worth: a stream keeps up with a sustained rate below it, whatever its interval.

{burst_table(plan, sizes)}

## 2. Start-up

{startup_table(sizes)}

## 3. Intake (load_demo)

{INTAKE_TEXT}

{intake_table(sizes)}

Same run, the ceiling: PostgreSQL's own load of the usage_events rows that load_demo
wrote, from a binary file in psql (one table; load_demo also writes about one row of
messages, conversations and visitors per usage event).

{bare_table(sizes)}

## 4. /metrics under load

{scrape_table(scraped)}

## Raw repetitions

{raw_lines(sizes)}
"""


def intake_document(machine: Machine, command: str, sizes: list[SizeResult]) -> str:
    """Section 3 alone (``run.py --intake-only``)."""
    check = intake_check(sizes)
    return f"""# Intake (load_demo)

Generated by `{command}` on {machine.date}; {machine.cpus} CPUs, shared with other work.
{machine.postgres}; credit-exporter at {machine.revision}.

Target: {check.target}: {check.measured}: {"met" if check.met else "**NOT met**"}.

{INTAKE_TEXT}

{intake_table(sizes)}

PostgreSQL's own load of the same usage_events rows from a binary file in psql:

{bare_table(sizes)}
"""


def scrape_document(machine: Machine, command: str, scraped: ScrapeResult) -> str:
    """Section 4 alone, for iterating on the renderer without the 30-minute suite."""
    return f"""# /metrics under load

Generated by `{command}` on {machine.date}; {machine.cpus} CPUs, shared with other work.
credit-exporter at {machine.revision}.

{scrape_table(scraped)}
"""

"""The results as Markdown: figures, ratios against the targets, raw repetitions."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from cebench import spendlog, window
from cebench.machine import Machine
from cebench.stats import Repeated
from cebench.suite import Plan, ScrapeResult, SizeResult
from cebench.window import WindowResult

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
    machine: Machine,
    plan: Plan,
    command: str,
    sizes: list[SizeResult],
    scraped: ScrapeResult,
    windowed: list[WindowResult],
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

## 5. Time-ordered stream with a one-hour window, and the reconcile

{window_section(windowed, "###")}
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


# --- 5. a time-ordered stream with a one-hour window, and the reconcile ------------------


def _window_text(results: list[WindowResult]) -> str:
    load = results[0].load
    keys = (
        f", {len({t for t in load.keys.teams if t})} teams with keys, {len(load.keys.tokens)} keys"
        if load
        else ""
    )
    return f"""\
The LLM gateway's spend log (`demo/shapes/gateway.py`: text request ids in no order, a naive
`"startTime"`, float spend) streamed by `gateway.spend_stream(arrives_within="1h")`: no key, so
rows settle by time and every poll re-reads the last hour; reconcile at its defaults (a pass
per hour over the settled history, 1-hour chunks, paced to `max_db_share` 0.01). The table
is filled at a constant {spendlog.REQUESTS_PER_HOUR:,} requests per hour ending now (server-side
`generate_series`, fixed seed; {len(spendlog.MODELS)} models{keys}; indexes built after the
rows, then VACUUM ANALYZE), so a larger table is a longer history and the window holds the same
hour at every size."""


def _window_requests(result: WindowResult) -> str:
    if result.load is None:
        return f"{result.requests:,}"
    days = result.load.days
    return (
        f"{result.requests:,}, {days:.1f} days"
        if days < 10
        else f"{result.requests:,}, {days:.0f} days"
    )


def _load_averages(results: list[WindowResult]) -> str:
    return "; ".join(
        f"{r.requests:,} rows: {' -> '.join(f'{a[0]:.2f}' for a in r.load_average)}"
        for r in results
    )


def _scans(scans: frozenset[str]) -> str:
    return "; ".join(sorted(scans)) or "none"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def window_steady_table(results: list[WindowResult]) -> str:
    rows = []
    for r in results:
        db = _med(r.steady_db) / 1000
        b1, b2 = _med(r.aggregate_psql), _med(r.groupby_db) / 1000
        rows.append([
            _window_requests(r), f"{_ms(db)} ({_ms(_med(r.steady_planning) / 1000)} planning)",
            _ms(_med(r.steady_wall)), f"{r.steady_rows:,}", _scans(r.steady_scans), _s(b1),
            _s(b2), _x(b1 / db), _x(b2 / db), _yes(r.steady_totals_match),
        ])  # fmt: skip
    header = [
        "spend_logs rows, history", "(a) steady poll, DB time", "(a) wall",
        "rows read by the aggregate", "how the poll reads spend_logs",
        "(b1) full aggregate, 1 scan (psql)", "(b2) full aggregate, GROUP BY per label set (DB)",
        "b1 / a (DB)", "b2 / a (DB)", "totals = SQL after each poll",
    ]  # fmt: skip
    return _table(header, rows)


def window_startup_table(results: list[WindowResult]) -> str:
    rows = []
    for r in results:
        b1, b2 = _med(r.aggregate_psql), _med(r.groupby_db) / 1000
        rows.append([
            _window_requests(r), _s(r.startup_seconds), _s(b1), _s(b2),
            _x(r.startup_seconds / b1), _x(r.startup_seconds / b2), f"{r.series:,}",
            _yes(r.startup_totals_match),
        ])  # fmt: skip
    header = [
        "spend_logs rows, history", "engine: first run_once", "(b1) its aggregate in psql",
        "(b2) GROUP BY per label set (DB)", "engine / b1", "engine / b2", "series",
        "totals = SQL",
    ]  # fmt: skip
    return _table(header, rows)


def window_hour_table(results: list[WindowResult]) -> str:
    rows = []
    for r in results:
        assert r.interval_db is not None and r.interval_wall is not None
        passes = r.scheduled_seconds.median
        paced_wall = passes / r.reconcile_share
        compared = statistics.median(p.chunks_same + p.chunks_different for p in r.scheduled_passes)
        full = r.passes[0].chunks_same + r.passes[0].chunks_different
        kind = "all" if compared >= full else f"of {full:,}"
        rows.append([
            _window_requests(r), f"{r.interval_new}", f"{r.interval_rows:,}",
            _ms(r.interval_db.median / 1000),
            f"{_s(r.poll_core_share() * 3600)} ({r.poll_core_share():.2%})",
            f"{compared:,.0f} ({kind})", _s(passes),
            _s(paced_wall) + ("" if paced_wall <= r.reconcile_interval else
                              " (> interval: back to back)"),
            f"{_s(r.reconcile_core_share() * 3600)} ({r.reconcile_core_share():.3%})",
            f"{r.reconcile_core_share() / r.poll_core_share():.2f}x",
        ])  # fmt: skip
    header = [
        "spend_logs rows, history", "new rows per poll (15 s at the rate)", "rows read",
        "poll DB time", "polls' DB time per hour (share of one core)",
        "chunks a scheduled pass compares", "its DB time (unpaced, engine's count)",
        "its wall at max_db_share 0.01",
        "reconcile DB time per hour (share of one core)", "reconcile / polls",
    ]  # fmt: skip
    return _table(header, rows)


def window_pass_table(results: list[WindowResult]) -> str:
    rows = []
    for r in results:
        first = r.passes[0]
        assert r.pass_explain is not None
        rows.append([
            _window_requests(r), _s(r.pass_seconds.median), _s(r.pass_wall.median),
            _s(r.pass_explain.database_ms / 1000), f"{first.count('checksum')}",
            f"{first.chunks_same + first.chunks_different:,}", f"{r.pass_explain.table_rows:,}",
            _scans(r.pass_explain.scans),
            f"{r.pass_explain.table_rows / (r.pass_explain.database_ms / 1000):,.0f}",
        ])  # fmt: skip
    header = [
        "spend_logs rows, history", "pass DB time (engine's count)", "pass wall",
        "its statements under EXPLAIN ANALYZE", "checksum queries (batches)", "chunks compared",
        "rows read", "how the pass reads spend_logs", "rows per DB second",
    ]  # fmt: skip
    return _table(header, rows)


def _paced_ratio(paced: window.PassResult) -> float:
    return paced.wall / paced.database_seconds


def window_paced_table(results: list[WindowResult]) -> str:
    expected = 1 / window.PACED_SHARE
    rows = [
        [_window_requests(r), f"{window.PACED_SHARE}", _s(r.paced.wall),
         _s(r.paced.database_seconds), f"{_paced_ratio(r.paced):.1f}x", f"{expected:.0f}x",
         _yes(_paced_ratio(r.paced) >= expected * 0.99)]
        for r in results if r.paced is not None
    ]  # fmt: skip
    header = [
        "spend_logs rows, history", "max_db_share", "pass wall", "pass DB time (engine's count)",
        "wall / DB", "expected at least", "met",
    ]  # fmt: skip
    return _table(header, rows)


def window_late_table(results: list[WindowResult]) -> str:
    rows = []
    for r in results:
        late, recompute = r.late, r.late_recompute_explain
        if late is None or recompute is None:
            continue
        check = late.seconds_of(window.PASS_KINDS)
        redo = late.seconds_of(["aggregate"])
        rows.append([
            _window_requests(r), f"{late.rows_late} in {late.chunks_different} chunk(s)",
            _s(late.database_seconds), f"{_s(check)} ({_s(r.late_check_explain / 1000)})",
            f"{_s(redo)} ({_s(recompute.database_ms / 1000)})", f"{late.count('aggregate')}",
            f"{recompute.table_rows:,}", _x(redo / r.pass_seconds.median),
            _x(redo / _med(r.aggregate_psql)), _x(redo / (_med(r.groupby_db) / 1000)),
            _s(late.database_seconds / r.reconcile_share), _yes(r.late_totals_match),
        ])  # fmt: skip
    header = [
        "spend_logs rows, history", "late rows found", "pass DB time (engine's count)",
        "checksums: engine (EXPLAIN)", "recompute: engine (EXPLAIN)", "recompute queries",
        "rows re-read", "recompute / a pass that finds nothing", "recompute / b1",
        "recompute / b2", "the same pass at max_db_share 0.01 (wall)", "totals = SQL after it",
    ]  # fmt: skip
    return _table(header, rows)


def window_checks(results: list[WindowResult]) -> list[Check]:
    largest, smallest = results[-1], results[0]
    db = _med(largest.steady_db)
    b1 = _med(largest.aggregate_psql) * 1000 / db
    b2 = _med(largest.groupby_db) / db
    items = [
        Check(
            f"steady poll with a 1-hour window at {largest.requests:,} rows: >= 100x less DB "
            "time than a full aggregate",
            f"{_x(b2)} vs GROUP BY per label set; {_x(b1)} vs the single-scan aggregate",
            min(b1, b2) >= 100,
        ),
        Check(
            "the poll range-scans spend_logs_start_time (no Seq Scan on spend_logs)",
            "; ".join(f"{r.requests:,}: {_scans(r.steady_scans)}" for r in results),
            all(
                any("spend_logs_start_time" in s for s in r.steady_scans)
                and not any(s.startswith("Seq Scan") for s in r.steady_scans)
                for r in results
            ),
        ),
        Check(
            "exported total = SQL sum(spend::numeric) at start-up, after every poll and after "
            "a reconcile that found late rows",
            ", ".join(
                f"{r.requests:,}: start-up {_yes(r.startup_totals_match)}, polls "
                f"{_yes(r.steady_totals_match)}, reconcile {_yes(r.late_totals_match)}"
                for r in results
            ),
            all(
                r.startup_totals_match and r.steady_totals_match and r.late_totals_match
                for r in results
            ),
        ),
        Check(
            f"reconcile DB time per hour at {largest.requests:,} rows <= max_db_share "
            f"({largest.reconcile_share:.0%} of one core)",
            f"{largest.reconcile_core_share():.3%} of one core",
            largest.reconcile_core_share() <= largest.reconcile_share,
        ),
    ]
    if len(results) > 1:
        growth = _med(largest.steady_db) / _med(smallest.steady_db)
        wall = _med(largest.steady_wall) / _med(smallest.steady_wall)
        items.insert(1, Check(
            f"steady poll flat as the history grows ({smallest.requests:,} -> "
            f"{largest.requests:,} rows, the same hour in the window)",
            f"{_x(growth)} DB time, {_x(wall)} wall", growth <= 1.5,
        ))  # fmt: skip
    for r in results:
        if r.paced is not None:
            ratio = _paced_ratio(r.paced)
            items.append(Check(
                f"pacing at max_db_share {window.PACED_SHARE} ({r.requests:,} rows): "
                f"wall >= {1 / window.PACED_SHARE:.0f}x DB time",
                f"{ratio:.1f}x", ratio >= 1 / window.PACED_SHARE * 0.99,
            ))  # fmt: skip
    return items


def window_raw(results: list[WindowResult]) -> str:
    lines = []
    for r in results:
        figures = {
            "steady poll DB ms": r.steady_db,
            "steady poll planning ms": r.steady_planning,
            "steady poll wall s": r.steady_wall,
            f"poll after {r.interval_new} new rows, DB ms": r.interval_db,
            f"poll after {r.interval_new} new rows, wall s": r.interval_wall,
            "full aggregate psql s": r.aggregate_psql,
            "GROUP BY per label set DB ms": r.groupby_db,
            "full reconcile pass DB s (engine)": r.pass_seconds,
            "full reconcile pass wall s": r.pass_wall,
            "scheduled reconcile pass DB s (engine)": (
                r.scheduled_seconds if r.scheduled else None
            ),
        }
        for name, value in figures.items():
            if value is not None:
                shown = ", ".join(f"{v:.4g}" for v in value.values)
                lines.append(f"- {r.requests:,} rows, {name} (n={value.n}): {shown}")
        kinds = ", ".join(f"{k} {v.median:.1f} ms" for k, v in r.steady_statements.items())
        by_kind = ", ".join(
            f"{kind} {count} x, {ms / 1000:.2f} s"
            for kind, (count, ms) in r.pass_explain_by_kind.items()
        )
        load = r.load
        loaded = (
            f"loaded in {', '.join(f'{k} {v:.1f} s' for k, v in load.phases.items())}, "
            f"{load.table_bytes / 2**20:,.0f} MiB with indexes; "
            if load else ""
        )  # fmt: skip
        averages = " -> ".join(f"{a[0]:.2f}" for a in r.load_average)
        lines.append(
            f"- {r.requests:,} rows: {loaded}start-up {_s(r.startup_seconds)}; {r.series:,} "
            f"series; the steady poll's statements (median DB time): {kinds}; the pass's "
            f"statements under EXPLAIN: {by_kind}; {r.groupby_queries} GROUP BY queries; "
            f"1-minute load average {averages}"
        )
    return "\n".join(lines)


def window_section(results: list[WindowResult], heading: str = "##") -> str:
    return f"""{_window_text(results)}

{checks_table(window_checks(results))}

{heading} (a), (b) Steady poll vs full aggregate

Each steady poll follows {window.NEW_REQUESTS:,} new requests stamped within the last second
(`gateway.log_requests`), from the state right after start-up: it reads the hour of history
in the window plus the new rows. DB time is EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) of every
statement of the poll, re-run with the same parameters; wall is the whole `run_once()`.

{window_steady_table(results)}

Start-up: the stream's first `run_once()`, its one aggregate over the whole history (with
the per-chunk checksums the reconcile compares), against the same full aggregates.

{window_startup_table(results)}

{heading} (c) Per hour of wall time: the polls and the reconcile

A poll every 15 s (the stream's interval) after the requests of 15 s at the rate. The
reconcile's pass is measured unpaced (`max_db_share` 1.0) and scheduled as the defaults do:
a pass per hour, paced to 0.01 (a pass longer than the hour runs back to back with the
next, still at 1%), so its DB time per hour is min(pass, 36 s). A scheduled pass compares
all settled history, or, on an engine with `reconcile.full_every`, the recent history and
a slice of the rest (measured at the stream's own settings). Shares are of one core.

{window_hour_table(results)}

A full pass over all settled history, unpaced (median of the passes; statements of the
first under EXPLAIN):

{window_pass_table(results)}

Pacing, on the smallest size: a pass at `max_db_share` {window.PACED_SHARE}.

{window_paced_table(results)}

{heading} (d) A pass that finds a difference

{window.LATE_REQUESTS} requests stamped {window.LATE_HOURS} hours ago (beyond the window, so no
poll counts them), then one unpaced pass: the checksums find the chunk, and the recompute reads the
per-series totals of the whole settled history again, chunk range by chunk range. Engine
figures are the wall time of each query's transaction (what it adds to
`credit_exporter_reconcile_database_seconds_total`); EXPLAIN in brackets.

{window_late_table(results)}

{heading} Raw repetitions (spend_logs)

{window_raw(results)}
"""


def window_document(machine: Machine, command: str, results: list[WindowResult]) -> str:
    """Section 5 alone (``run.py --window-only``)."""
    return f"""# Time-ordered stream with a one-hour window, and the reconcile

Generated by `{command}` on {machine.date}.

- machine: {machine.cpus} CPUs (nproc), {machine.memory} RAM, Linux {machine.kernel}; shared
  with other work, so figures are noisy; 1-minute load average at the start and end of each
  size: {_load_averages(results)}
- {machine.postgres} on 127.0.0.1 ({machine.settings})
- Python {machine.python}; credit-exporter at {machine.revision}

{window_section(results)}"""

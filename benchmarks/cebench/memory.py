"""Resident memory per series: the real exporter process, its series spread over metrics
in different ways, against an idle exporter measured in the same run.

Each case gets a fresh exporter (``python -m credit_exporter run``) on one
``ce_bench_memory_*`` database. The data are PostgreSQL's own (``generate_series``):
distinct e-mail-like users, as tests/test_limits.py's flood builds them. Every case
polls every ``INTERVAL``; the figures are read once /metrics serves every series:

- **peak**: ``VmHWM`` (the process' highest resident set) after ``POLLS`` more polls
  and renders, so the start-up read, the first render and the steady polls are in it;
- **steady**: ``VmRSS`` at that moment;
- **series**: sample lines of the case's metrics in /metrics.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from cebench import pg, scrape
from cebench.machine import Machine
from cebench.stats import Repeated

INTERVAL = "5s"
POLLS = 3  # steady polls after the first full render
USER = "'user' || lpad(g::text, 7, '0') || '@example.com'"

# Ten state gauges whose first labels can take 10k values each (the rest constant).
TEN_GAUGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("credit_budget_used_credits", ("organization", "scope", "scope_id")),
    ("credit_budget_limit_credits", ("organization", "scope", "scope_id")),
    ("credit_balance_credits", ("organization", "pool")),
    ("credit_allocation_credits", ("organization", "pool")),
    ("credit_billing_period_start_timestamp_seconds", ("organization",)),
    ("credit_billing_period_end_timestamp_seconds", ("organization",)),
    ("credit_agent_slots_used", ("organization",)),
    ("credit_agent_slots_limit", ("organization",)),
    ("credit_seats_used", ("organization",)),
    ("credit_seats_limit", ("organization",)),
)
USER_COUNTERS = ("credit_spent_by_user_credits_total", "credit_user_requests_total")


def usage_table(users: int) -> str:
    """One usage row per distinct user (so one group per user and metric)."""
    return f"""
DROP TABLE IF EXISTS usage_flood;
CREATE TABLE usage_flood (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text NOT NULL, dept text NOT NULL, usr text NOT NULL, model text NOT NULL,
    credits numeric(18, 6) NOT NULL
);
INSERT INTO usage_flood (org, dept, usr, model, credits)
SELECT 'acme', 'd' || (g % 20), {USER}, 'm' || (g % 3), (g % 1000) / 1000.0 + 0.000001
FROM generate_series(1, {int(users)}) AS g;
ANALYZE usage_flood;
"""


def _database(dsn: str) -> dict[str, Any]:
    return {"billing": {"dsn": dsn, "statement_timeout": "120s"}}


def _state_query(metric: str, labels: tuple[str, ...], rows: int) -> dict[str, Any]:
    """``rows`` series of one gauge: the first label distinct per row, the others constant."""
    first, *rest = labels
    cells = [f"{USER} AS {first}", *(f"'x' AS {label}" for label in rest)]
    sql = f"SELECT {', '.join(cells)}, g::numeric AS v FROM generate_series(1, {int(rows)}) AS g"
    return {
        "database": "billing",
        "interval": INTERVAL,
        "timeout": INTERVAL,
        "sql": sql,
        "metrics": [{"metric": metric, "value": "v", "labels": list(labels)}],
    }


def idle_config(dsn: str) -> dict[str, Any]:
    """The baseline: one state query of two series."""
    return {
        "databases": _database(dsn),
        "queries": {
            "balances": {
                "database": "billing",
                "interval": INTERVAL,
                "timeout": INTERVAL,
                "sql": "SELECT * FROM (VALUES ('acme', 'plan', 5.5), ('beta', 'topup', 2))"
                " AS v(organization, pool, balance)",
                "metrics": [
                    {"metric": "credit_balance_credits", "value": "balance",
                     "labels": ["organization", "pool"]},
                ],
            }
        },
    }  # fmt: skip


def state_config(dsn: str, metrics: int, per_metric: int) -> dict[str, Any]:
    queries = {
        f"q{i}": _state_query(metric, labels, per_metric)
        for i, (metric, labels) in enumerate(TEN_GAUGES[:metrics])
    }
    return {"databases": _database(dsn), "queries": queries}


def stream_config(dsn: str, counters: tuple[str, ...]) -> dict[str, Any]:
    """A usage stream feeding the user-labelled counters, at the default caps."""
    labels = {"organization": "org", "department": "dept", "user": "usr",
              "gen_ai_request_model": "model"}  # fmt: skip
    values = {"credit_spent_by_user_credits_total": "credits", "credit_user_requests_total": None}
    metrics = []
    for metric in counters:
        mapping: dict[str, Any] = {"metric": metric, "labels": labels}
        if values[metric] is not None:
            mapping["value"] = values[metric]
        metrics.append(mapping)
    return {
        "databases": _database(dsn),
        "streams": {
            "usage": {
                "database": "billing",
                "key": "id",
                "time": "occurred_at",
                "interval": INTERVAL,
                "timeout": INTERVAL,
                "sql": "SELECT id, occurred_at, org, dept, usr, model, credits FROM usage_flood",
                "metrics": metrics,
            }
        },
    }


@dataclass(frozen=True)
class Case:
    name: str
    series: int  # series the case's metrics export (what /metrics must reach)
    metrics: tuple[str, ...]
    config: Callable[[str], dict[str, Any]]
    users: int = 0  # rows of usage_flood (streams only)


def cases(scale: float = 1.0) -> list[Case]:
    big, small = int(100_000 * scale), int(10_000 * scale)
    return [
        Case("idle (baseline)", 2, ("credit_balance_credits",), idle_config),
        Case(
            f"stream, {2 * big:,} users -> 2 user counters (default caps)",
            2 * big,  # each metric: cap - 1 users + the overflow series
            USER_COUNTERS,
            lambda dsn: stream_config(dsn, USER_COUNTERS),
            users=2 * big,
        ),
        Case(
            f"stream, 1 counter x {big:,} users",
            big,
            USER_COUNTERS[:1],
            lambda dsn: stream_config(dsn, USER_COUNTERS[:1]),
            users=big,  # at the default cap: 99,999 of their own and the overflow series
        ),
        Case(
            f"state, 1 gauge x {big:,}",
            big,
            (TEN_GAUGES[0][0],),
            lambda dsn: state_config(dsn, 1, big),
        ),
        Case(
            f"state, 10 gauges x {small:,}",
            10 * small,
            tuple(m for m, _ in TEN_GAUGES),
            lambda dsn: state_config(dsn, 10, small),
        ),
    ]


@dataclass(frozen=True)
class Measured:
    case: Case
    peak: Repeated  # bytes, VmHWM
    steady: Repeated  # bytes, VmRSS after the steady polls
    series: int
    ready: Repeated  # seconds until every series was served


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return bytes(response.read())


def count_series(body: bytes, metrics: tuple[str, ...]) -> int:
    prefixes = tuple(name.encode() + b"{" for name in metrics)
    return sum(1 for line in body.split(b"\n") if line.startswith(prefixes))


def polls_done(body: bytes) -> int:
    """Runs of every query and stream so far (the duration histograms' counts)."""
    total = 0
    for line in body.split(b"\n"):
        if line.startswith(b"credit_exporter_query_duration_seconds_count{"):
            total += int(float(line.rsplit(b" ", 1)[1]))
    return total


def run_case(
    dsn: str, case: Case, out: Path, log: Callable[[str], None]
) -> tuple[int, int, int, float]:
    """One exporter process: (peak bytes, steady bytes, series, seconds to ready)."""
    slug = "".join(c if c.isalnum() else "-" for c in case.name)[:40]
    config_path, log_path = out / f"memory-{slug}.yaml", out / f"memory-{slug}.log"
    config_path.write_text(yaml.safe_dump(case.config(dsn), sort_keys=False))
    sources = len(case.config(dsn).get("queries", {})) + len(case.config(dsn).get("streams", {}))
    with scrape.running_exporter(config_path, log_path) as exporter:
        started = time.monotonic()
        while True:
            body = _get(f"{exporter.url}/metrics")
            if count_series(body, case.metrics) >= case.series:
                break
            if time.monotonic() - started > 600:
                raise TimeoutError(f"{case.name}: /metrics never served {case.series} series")
            time.sleep(0.5)
        ready = time.monotonic() - started
        target = polls_done(body) + POLLS * sources
        while polls_done(body) < target:
            time.sleep(1.0)
            body = _get(f"{exporter.url}/metrics")
        time.sleep(2.0)  # the last poll's render
        body = _get(f"{exporter.url}/metrics")
        peak = scrape.rss_bytes(exporter.pid, "VmHWM")
        steady = scrape.rss_bytes(exporter.pid, "VmRSS")
    series = count_series(body, case.metrics)
    log(f"  {case.name}: peak {peak / 2**20:.0f} MB, steady {steady / 2**20:.0f} MB,"
        f" {series:,} series, ready in {ready:.1f}s")  # fmt: skip
    return peak, steady, series, ready


def measure(admin_dsn: str, reps: int, scale: float, out: Path,
            log: Callable[[str], None]) -> list[Measured]:  # fmt: skip
    results = []
    with pg.bench_database(admin_dsn, "memory") as dsn:
        loaded = -1
        for case in cases(scale):
            if case.users and case.users != loaded:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(usage_table(case.users).encode())
                loaded = case.users
            runs = [run_case(dsn, case, out, log) for _ in range(reps)]
            results.append(
                Measured(
                    case,
                    Repeated.of([float(r[0]) for r in runs]),
                    Repeated.of([float(r[1]) for r in runs]),
                    runs[-1][2],
                    Repeated.of([r[3] for r in runs]),
                )
            )
    return results


def document(machine: Machine, command: str, results: list[Measured]) -> str:
    mb = 2**20
    base = results[0]
    lines = [
        "# Memory per series",
        "",
        f"Generated by `{command}` on {machine.date}; {machine.cpus} CPUs, shared with other"
        f" work; {machine.python}. credit-exporter at {machine.revision}.",
        "",
        f"Medians of {base.peak.n} exporter processes per case. Peak: `VmHWM` after the"
        f" first full render and {POLLS} more polls of every source (interval {INTERVAL});"
        " steady: `VmRSS` then. Per series: (case - idle baseline) / series.",
        "",
        "| case | series | peak MB | steady MB | peak/idle | KB per series (peak) |"
        " KB per series (steady) | ready s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        per_peak = per_steady = "-"
        if r is not base and r.series:
            per_peak = f"{(r.peak.median - base.peak.median) / r.series / 1024:.2f}"
            per_steady = f"{(r.steady.median - base.steady.median) / r.series / 1024:.2f}"
        lines.append(
            f"| {r.case.name} | {r.series:,} | {r.peak.median / mb:.0f} |"
            f" {r.steady.median / mb:.0f} | {r.peak.median / base.peak.median:.1f}x |"
            f" {per_peak} | {per_steady} | {r.ready.median:.1f} |"
        )
    lines += ["", "Raw repetitions (MB, peak / steady):", ""]
    for r in results:
        pairs = ", ".join(
            f"{p / mb:.0f}/{s / mb:.0f}"
            for p, s in zip(r.peak.values, r.steady.values, strict=True)
        )
        lines.append(f"- {r.case.name}: {pairs}")
    return "\n".join(lines) + "\n"

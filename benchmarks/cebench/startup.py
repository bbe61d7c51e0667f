"""Start-up of the real exporter process with and without a checkpoint (``run.py --startup-only``).

Per table size, on one loaded dataset (the example's usage_events stream only). With
``per_day`` every size has the same write rate and a longer history (1M, 10M, 30M events
at 11,111 a day: 90, 900 and 2,700 days); without it, 90 days at a rate that grows with
the size (the intake benchmark's datasets).

1. a run with an empty checkpoint directory: the full aggregate, then the checkpoint is
   written (soon after ready, and again at shutdown);
2. ``NEW_EVENTS`` events inserted, as if written while the exporter was down;
3. runs with that checkpoint: process start to ``/-/ready`` 200, each loading it
   (``credit_exporter_checkpoint_loads_total{result="loaded"}``) and reading only the new
   rows, then verifying the recent history;
4. runs without a checkpoint (today's full aggregate) on the same data; the first run
   (1., an empty checkpoint directory: the same full aggregate) counts as one of them,
   so ``baseline_reps`` runs cost that many full aggregates (22-29 us an event here:
   at 30M, 11 minutes each; the bare SQL GROUP BY of one metric is timed as well).

Exactness: every run's credit_spent_credits_total samples equal SQL's GROUP BY of the
same rows, series by series; the base in the checkpoint each run wrote at shutdown sums,
in ``Decimal``, to SQL's ``SUM`` of the stream's settled spend; and, where a full aggregate
ran on the same data, all credit_* samples of the last checkpoint run equal its samples.

Phases of a checkpointed start (from the exporter's own log line and self-metrics): the
checkpoint read, checked and installed; the recent chunks compared with the database;
the rest of the first poll (reading the rows added since); and the process start-up
before the first poll (imports, configuration, connecting).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from cebench import dataset, pg, suite
from cebench.engine import EXAMPLE_CONFIG, STATEMENT_TIMEOUT, STREAM
from cebench.machine import Machine
from cebench.net import free_port
from cebench.stats import Repeated
from credit_exporter.sources.checkpoint import decode

NEW_EVENTS = 1000
READY_TIMEOUT = 3600.0
CHECKPOINT_FILE = f"{STREAM}.checkpoint"
LOADED_LINE = re.compile(
    r"read and installed in (?P<installed>[0-9.]+)s; (?P<chunks>[0-9]+) recent chunks"
    r" compared with the database in (?P<verify>[0-9.]+)s"
)
# credit_spent_credits_total of the example, per series, straight from SQL
SPENT_LABELS = ("organization", "project", "agent", "service_type")
SPENT_BY_SERIES_SQL = """
SELECT o.slug, pr.slug, coalesce(a.slug, ''), st.slug, sum(greatest(e.credits, 0))
FROM usage_events e
JOIN organizations o ON o.id = e.organization_id
JOIN projects pr ON pr.id = e.project_id
LEFT JOIN agents a ON a.id = e.agent_id
JOIN service_types st ON st.id = e.service_type_id
WHERE NOT e.playground
GROUP BY 1, 2, 3, 4
"""


@dataclass(frozen=True)
class Phases:
    """Where one checkpointed start spent its time (seconds)."""

    installed: float  # checkpoint read, sha256 and fingerprint checked, state installed
    verify: float  # the recent chunks' checksums compared with the database
    chunks: int  # how many recent chunks that compared
    poll: float  # the first poll after those two: the rows added since the checkpoint
    before_poll: float  # process start to the first poll (imports, config, connections)


@dataclass
class StartupResult:
    events: int
    days: int
    rows: int = 0  # usage_events loaded
    with_checkpoint: Repeated | None = None  # seconds from process start to ready
    without: Repeated | None = None
    loaded: int = 0  # runs that loaded the checkpoint
    same_samples: bool | None = None  # credit_* samples equal a full aggregate's (if one ran)
    exact: list[bool] = field(default_factory=list)  # per checkpoint run: base == SQL SUM
    series_exact: list[bool] = field(default_factory=list)  # per run: spent == SQL GROUP BY
    phases: list[Phases] = field(default_factory=list)
    sql_seconds: float = 0.0  # SQL GROUP BY of credit_spent_credits_total
    checkpoint_bytes: int = 0
    series: int = 0
    load_average: list[tuple[float, float, float]] = field(default_factory=list)

    def median_phase(self, name: str) -> float:
        return Repeated.of([getattr(p, name) for p in self.phases]).median


def config_data(dsn: str, checkpoint: Path | None) -> dict[str, Any]:
    """config.example.yaml with only the usage_events stream, its DSN at ``dsn``."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    billing = data["databases"]["billing"]
    billing.pop("dsn_env", None)
    billing.pop("dsn_file", None)
    billing["dsn"] = dsn
    billing["statement_timeout"] = STATEMENT_TIMEOUT
    data["queries"] = {}
    data["streams"] = {STREAM: data["streams"][STREAM]}
    data["streams"][STREAM]["startup_timeout"] = "60m"
    if checkpoint is not None:
        data["checkpoint"] = {"directory": str(checkpoint), "interval": "5m"}
    return data


@dataclass
class Run:
    seconds: float  # process start to /-/ready 200
    body: str  # /metrics once ready
    log: str  # what the process logged


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def run_once(config: Path, log_path: Path, keep_running: float = 0.0) -> Run:
    """Start the exporter, time it to ready, read /metrics, stop it with SIGTERM (a clean
    shutdown: a configured checkpoint is written then)."""
    port = free_port()
    command = [
        sys.executable, "-m", "credit_exporter", "run", "--config", str(config),
        "--listen", f"127.0.0.1:{port}", "--log-level", "info",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while _get(f"{url}/-/ready")[0] != 200:
                if process.poll() is not None:
                    raise RuntimeError(f"exporter exited with {process.returncode}; see {log_path}")
                if time.monotonic() - started > READY_TIMEOUT:
                    raise TimeoutError(f"not ready in {READY_TIMEOUT:.0f}s; see {log_path}")
                time.sleep(0.05)
            seconds = time.monotonic() - started
            _, body = _get(f"{url}/metrics")
            time.sleep(keep_running)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    with log_path.open("rb") as written:
        written.seek(offset)
        text = written.read().decode(errors="replace")
    return Run(seconds, body, text)


def credit_samples(body: str) -> list[str]:
    """The stream's own samples (credit_*, not the exporter's self-metrics)."""
    return sorted(
        line for line in body.splitlines()
        if line.startswith("credit_") and not line.startswith(("credit_exporter_", "credit_build"))
    )  # fmt: skip


def loaded(body: str) -> bool:
    wanted = f'credit_exporter_checkpoint_loads_total{{query="{STREAM}",result="loaded"}} 1.0'
    return wanted in body


def samples(body: str, name: str) -> dict[tuple[str, ...], float]:
    """``name``'s samples in an exposition, by (label values in SPENT_LABELS order)."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sample.labels.get(k, "") for k in SPENT_LABELS)] = sample.value
    return found


def first_poll_seconds(body: str) -> float:
    """The stream's first poll (restore included), from its duration histogram."""
    values = {s.name: s.value for family in text_string_to_metric_families(body)
              for s in family.samples if s.labels.get("query") == STREAM}  # fmt: skip
    if values.get("credit_exporter_query_duration_seconds_count") != 1.0:
        raise RuntimeError("expected exactly one poll before ready")
    return values["credit_exporter_query_duration_seconds_sum"]


def phases_of(run: Run) -> Phases:
    match = LOADED_LINE.search(run.log)
    if match is None:
        raise RuntimeError("no 'checkpoint ... loaded' line in the run's log")
    installed, verify = float(match["installed"]), float(match["verify"])
    poll = first_poll_seconds(run.body)
    return Phases(installed, verify, int(match["chunks"]), poll - installed - verify,
                  run.seconds - poll)  # fmt: skip


def spent_by_series(dsn: str) -> tuple[dict[tuple[str, ...], float], float]:
    """SQL's credit_spent_credits_total per series (as the float the exposition shows),
    and the seconds the GROUP BY took."""
    started = time.monotonic()
    rows = pg.execute(dsn, SPENT_BY_SERIES_SQL)
    seconds = time.monotonic() - started
    return {tuple(row[:4]): float(Decimal(row[4])) for row in rows}, seconds


def base_equals_sql(dsn: str, path: Path) -> bool:
    """The checkpoint's settled spend, summed exactly, equals SQL's SUM of the same rows."""
    body = decode(path.read_bytes())
    saved = sum((Decimal(v) for _, v in body["base"][suite.SPENT]), Decimal(0))
    key = body["horizon"]["key"]
    rows = pg.execute(dsn, suite.SPENT_SQL + " AND id <= %s", (key,))
    return saved == Decimal(rows[0][0])


def measure(
    admin_dsn: str, events: int, reps: int, baseline_reps: int, per_day: int | None,
    log: suite.Log,
) -> StartupResult:  # fmt: skip
    days, _ = dataset.history(events, per_day)
    result = StartupResult(events, days)
    result.load_average.append(os.getloadavg())
    with pg.bench_database(admin_dsn, f"startup{events // 1000}k") as dsn:
        log(f"{events:,} usage events over {days} days: loading")
        loaded_data = dataset.load(dsn, events, per_day)
        result.rows = loaded_data.summary.usage_events
        log(f"  loaded {result.rows:,} in {loaded_data.summary.seconds:.0f}s")
        work = Path(tempfile.mkdtemp(prefix="ce-startup-"))
        try:
            directory = work / "checkpoints"
            with_path, without_path = work / "with.yaml", work / "without.yaml"
            with_path.write_text(yaml.safe_dump(config_data(dsn, directory)))
            without_path.write_text(yaml.safe_dump(config_data(dsn, None)))
            logs = suite.OUT / f"startup-{events}.log"
            first = run_once(with_path, logs, keep_running=6.0)
            log(f"  first run (no checkpoint yet): ready in {first.seconds:.1f}s")
            checkpoint = directory / CHECKPOINT_FILE
            result.checkpoint_bytes = checkpoint.stat().st_size
            dataset.insert_new_events(dsn, NEW_EVENTS)
            expected, result.sql_seconds = spent_by_series(dsn)
            log(f"  SQL GROUP BY of {suite.SPENT}: {result.sql_seconds:.1f}s")
            timed: list[float] = []
            last = first
            for rep in range(reps):
                last = run_once(with_path, logs)
                timed.append(last.seconds)
                result.loaded += loaded(last.body)
                result.exact.append(base_equals_sql(dsn, checkpoint))
                result.series_exact.append(samples(last.body, suite.SPENT) == expected)
                phases = phases_of(last)
                result.phases.append(phases)
                log(f"  with checkpoint {rep + 1}/{reps}: ready in {last.seconds:.2f}s"
                    f" (before poll {phases.before_poll:.2f}, checkpoint {phases.installed:.2f},"
                    f" verify {phases.verify:.2f} for {phases.chunks} chunks, rest of the poll"
                    f" {phases.poll:.2f}), loaded: {loaded(last.body)}, base exact:"
                    f" {result.exact[-1]}, series exact: {result.series_exact[-1]}")  # fmt: skip
            result.with_checkpoint = Repeated.of(timed)
            result.series = len(credit_samples(last.body))
            full: list[float] = [first.seconds]
            for rep in range(1, baseline_reps):
                fresh = run_once(without_path, logs)
                full.append(fresh.seconds)
                result.series_exact.append(samples(fresh.body, suite.SPENT) == expected)
                result.same_samples = credit_samples(last.body) == credit_samples(fresh.body)
                same = result.same_samples
                log(f"  without checkpoint {rep + 1}/{baseline_reps}: ready in"
                    f" {fresh.seconds:.1f}s, samples as with it: {same}")  # fmt: skip
            result.without = Repeated.of(full)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result.load_average.append(os.getloadavg())
    return result


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "NO")


def document(
    described: Machine, command: str, per_day: int | None, results: list[StartupResult]
) -> str:
    rate = "90 days at every size: the write rate grows with the size"
    if per_day:
        rate = f"{per_day:,} events a day at every size: the history grows with the size"
    lines = [
        "# Start-up with and without a checkpoint",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {described.cpus} CPUs, {described.memory}; {described.postgres};"
        f" {described.date}; revision {described.revision}.",
        "",
        f"Datasets: {rate}. Process start to `/-/ready` 200, the example's `usage_events`"
        f" stream only (median of the runs; with a checkpoint, {NEW_EVENTS:,} events were"
        " added after it was written; without: the run that wrote the first checkpoint and"
        " runs with none configured, on the same data). SQL GROUP BY: one metric"
        " (credit_spent_credits_total) aggregated by PostgreSQL alone, no exporter: a floor"
        " for any start-up that reads all history. Series exact: every run's"
        " credit_spent_credits_total samples equal that GROUP BY, series by series. Base ="
        " SQL SUM: the spend in each checkpoint written at shutdown, summed in Decimal,"
        " equals SQL's SUM of its rows. Samples = full aggregate: all credit_* samples of"
        " the last run with a checkpoint equal those of a run without, on the same data"
        " (n/a: no full aggregate ran after the new events). Other benchmarks shared the"
        " 2-core machine: compare the columns of one row, not rows of different runs.",
        "",
        "| usage events | days | with checkpoint | without (full aggregate) | ratio |"
        " SQL GROUP BY | runs | loaded | series exact | base = SQL SUM |"
        " samples = full aggregate | checkpoint size | 1-min load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|",
    ]
    for r in results:
        assert r.with_checkpoint is not None and r.without is not None
        ratio = r.without.median / r.with_checkpoint.median
        load = " -> ".join(f"{avg[0]:.1f}" for avg in r.load_average)
        lines.append(
            f"| {r.rows:,} | {r.days:,} | {r.with_checkpoint.median:.2f} s |"
            f" {r.without.median:.1f} s | {ratio:.0f}x | {r.sql_seconds:.1f} s |"
            f" {r.with_checkpoint.n} + {r.without.n} | {r.loaded}/{r.with_checkpoint.n} |"
            f" {_yes(all(r.series_exact))} | {_yes(all(r.exact))} | {_yes(r.same_samples)}"
            f" ({r.series:,} samples) | {r.checkpoint_bytes / 1e6:.1f} MB | {load} |"
        )
    lines += [
        "",
        "Phases of the starts with a checkpoint (medians, seconds): process start to the"
        " first poll (imports, configuration, connections); the checkpoint read, checked"
        " and installed; the recent chunks' checksums compared with the database; the rest"
        " of the first poll (the rows added since).",
        "",
        "| usage events | before the poll | checkpoint load | verify (chunks) |"
        " rest of the first poll | ready |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        assert r.with_checkpoint is not None
        chunks = Repeated.of([float(p.chunks) for p in r.phases]).median
        lines.append(
            f"| {r.rows:,} | {r.median_phase('before_poll'):.2f} |"
            f" {r.median_phase('installed'):.2f} | {r.median_phase('verify'):.2f}"
            f" ({chunks:.0f}) | {r.median_phase('poll'):.2f} | {r.with_checkpoint.median:.2f} |"
        )
    lines += [
        "",
        "Every run: " + "; ".join(
            f"{r.rows:,}: with {', '.join(f'{v:.2f}' for v in r.with_checkpoint.values)} s,"
            f" without {', '.join(f'{v:.1f}' for v in r.without.values)} s"
            for r in results if r.with_checkpoint is not None and r.without is not None
        ) + ".",
        "",
    ]  # fmt: skip
    return "\n".join(lines)

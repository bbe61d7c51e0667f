"""Start-up of the real exporter process with and without a checkpoint (``run.py --startup-only``).

Per table size, on one loaded dataset (the example's usage_events stream only):

1. a run with an empty checkpoint directory: the full aggregate, then the checkpoint is
   written (soon after ready, and again at shutdown);
2. ``NEW_EVENTS`` events inserted, as if written while the exporter was down;
3. runs with that checkpoint: process start to ``/-/ready`` 200, each loading it
   (``credit_exporter_checkpoint_loads_total{result="loaded"}``) and reading only the new
   rows, then verifying the recent history;
4. runs without a checkpoint (today's full aggregate) on the same data; the first run
   (1., an empty checkpoint directory: the same full aggregate) counts as one of them,
   so ``reps`` runs each way cost ``reps`` full aggregates.

Exactness: the credit_* samples of the last checkpoint run equal the full aggregate's,
and the base in the checkpoint each run wrote at shutdown sums, in ``Decimal``, to SQL's
``SUM`` of the stream's spend.
"""

from __future__ import annotations

import os
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

from cebench import dataset, pg, suite
from cebench.engine import EXAMPLE_CONFIG, STATEMENT_TIMEOUT, STREAM
from cebench.machine import Machine
from cebench.net import free_port
from cebench.stats import Repeated
from credit_exporter.sources.checkpoint import decode

NEW_EVENTS = 1000
READY_TIMEOUT = 1800.0
CHECKPOINT_FILE = f"{STREAM}.checkpoint"


@dataclass
class StartupResult:
    events: int
    with_checkpoint: Repeated | None = None  # seconds from process start to ready
    without: Repeated | None = None
    loaded: int = 0  # runs that loaded the checkpoint
    same_samples: bool = False  # credit_* samples equal the full aggregate's
    exact: list[bool] = field(default_factory=list)  # per checkpoint run: base == SQL SUM
    checkpoint_bytes: int = 0
    series: int = 0
    load_average: list[tuple[float, float, float]] = field(default_factory=list)


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
    data["streams"][STREAM]["startup_timeout"] = "30m"
    if checkpoint is not None:
        data["checkpoint"] = {"directory": str(checkpoint), "interval": "5m"}
    return data


@dataclass
class Run:
    seconds: float  # process start to /-/ready 200
    body: str  # /metrics once ready


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
            time.sleep(keep_running)
            _, body = _get(f"{url}/metrics")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return Run(seconds, body)


def credit_samples(body: str) -> list[str]:
    """The stream's own samples (credit_*, not the exporter's self-metrics)."""
    return sorted(
        line for line in body.splitlines()
        if line.startswith("credit_") and not line.startswith(("credit_exporter_", "credit_build"))
    )  # fmt: skip


def loaded(body: str) -> bool:
    wanted = f'credit_exporter_checkpoint_loads_total{{query="{STREAM}",result="loaded"}} 1.0'
    return wanted in body


def base_equals_sql(dsn: str, path: Path) -> bool:
    """The checkpoint's settled spend, summed exactly, equals SQL's SUM of the same rows."""
    body = decode(path.read_bytes())
    saved = sum((Decimal(v) for _, v in body["base"][suite.SPENT]), Decimal(0))
    key = body["horizon"]["key"]
    rows = pg.execute(dsn, suite.SPENT_SQL + " AND id <= %s", (key,))
    return saved == Decimal(rows[0][0])


def measure(admin_dsn: str, events: int, reps: int, log: suite.Log) -> StartupResult:
    result = StartupResult(events)
    result.load_average.append(os.getloadavg())
    with pg.bench_database(admin_dsn, f"start{events // 1000}k") as dsn:
        log(f"{events:,} usage events: loading")
        loaded_data = dataset.load(dsn, events)
        log(f"  loaded {loaded_data.summary.usage_events:,} in {loaded_data.summary.seconds:.0f}s")
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
            timed: list[float] = []
            last = first
            for rep in range(reps):
                last = run_once(with_path, logs)
                timed.append(last.seconds)
                result.loaded += loaded(last.body)
                result.exact.append(base_equals_sql(dsn, checkpoint))
                log(f"  with checkpoint {rep + 1}/{reps}: ready in {last.seconds:.2f}s,"
                    f" loaded: {loaded(last.body)}, exact: {result.exact[-1]}")  # fmt: skip
            result.with_checkpoint = Repeated.of(timed)
            full: list[float] = [first.seconds]
            fresh = first
            for rep in range(1, reps):
                fresh = run_once(without_path, logs)
                full.append(fresh.seconds)
                log(f"  without checkpoint {rep + 1}/{reps}: ready in {fresh.seconds:.1f}s")
            result.without = Repeated.of(full)
            if fresh is first:  # one run each way: compare with a fresh full aggregate
                fresh = run_once(without_path, logs)
            result.same_samples = credit_samples(last.body) == credit_samples(fresh.body)
            result.series = len(credit_samples(fresh.body))
            log(f"  credit_* samples equal to the full aggregate's: {result.same_samples}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result.load_average.append(os.getloadavg())
    return result


def document(described: Machine, command: str, results: list[StartupResult]) -> str:
    lines = [
        "# Start-up with and without a checkpoint",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {described.cpus} CPUs, {described.memory}; {described.postgres};"
        f" {described.date}; revision {described.revision}.",
        "",
        "Process start to `/-/ready` 200, the example's `usage_events` stream only (median of"
        f" the runs; with a checkpoint, {NEW_EVENTS:,} events were added after it was written;"
        " without: the run that wrote the first checkpoint and runs with none configured, on"
        " the same data).  Samples = full aggregate: the credit_* samples of the last run with"
        " a checkpoint equal those of a run without; base = SQL SUM: the spend in each"
        " checkpoint written at shutdown, summed in Decimal, equals SQL's SUM of its rows."
        " Other benchmarks shared the 2-core machine: compare the two columns of one row, not"
        " rows of different runs.",
        "",
        "| usage events | with checkpoint | without (full aggregate) | ratio | runs | loaded |"
        " samples = full aggregate | base = SQL SUM | checkpoint size | 1-min load avg |",
        "|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for r in results:
        assert r.with_checkpoint is not None and r.without is not None
        ratio = r.without.median / r.with_checkpoint.median
        load = " -> ".join(f"{avg[0]:.1f}" for avg in r.load_average)
        lines.append(
            f"| {r.events:,} | {r.with_checkpoint.median:.2f} s | {r.without.median:.1f} s |"
            f" {ratio:.0f}x | {r.with_checkpoint.n} + {r.without.n} | {r.loaded}/"
            f"{r.with_checkpoint.n} | {'yes' if r.same_samples else 'NO'} ({r.series:,} samples)"
            f" | {'yes' if all(r.exact) else 'NO'} | {r.checkpoint_bytes / 1e6:.1f} MB | {load} |"
        )
    lines += [
        "",
        "Every run: " + "; ".join(
            f"{r.events:,}: with {', '.join(f'{v:.2f}' for v in r.with_checkpoint.values)} s,"
            f" without {', '.join(f'{v:.1f}' for v in r.without.values)} s"
            for r in results if r.with_checkpoint is not None and r.without is not None
        ) + ".",
        "",
    ]  # fmt: skip
    return "\n".join(lines)

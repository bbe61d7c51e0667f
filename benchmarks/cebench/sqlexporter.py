"""Real sql_exporter (Debian ``prometheus-sql-exporter``) on the same queries as query-exporter.

Debian's package is justwatchcom/sql_exporter (0.4.5 on bookworm; Debian's
source points at credativ's mirror of it), not free/burningalchemist's
sql_exporter: its configuration is a list of ``jobs``, each with an
``interval``, ``connections`` (URLs) and ``queries`` (``labels`` and
``values`` columns). Every query becomes one gauge ``sql_<name>`` with a
``col`` label naming the value column, plus ``driver``, ``host``,
``database``, ``user`` and ``sql_job``.

It runs a job's queries in the background, one after the other on one
connection, then sleeps ``interval``; a scrape only renders the cached
results (Debian dropped the patch that ran jobs with interval 0 on each
scrape). Its refresh cost is therefore the job's run, read from its own
debug log ("Running Query" of the first query to "Sleeping until next run"),
in a fresh process per repetition with a one-hour interval, so each process
runs the job exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from psycopg.conninfo import conninfo_to_dict

from cebench.baseline import BaselineQuery
from cebench.net import free_port, listening_process

PACKAGE = "prometheus-sql-exporter"
BINARY = "prometheus-sql-exporter"
JOB = "credit"
# sql_exporter adds these labels to every series; a query label of the same name would
# make its descriptor invalid (it panics at start-up), so such labels are renamed.
OWN_LABELS = frozenset({"driver", "host", "database", "user", "col", "sql_job"})
RENAMED_PREFIX = "query_"
RUN_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Refresh:
    """One run of the job: its wall time by sql_exporter's own log, then one scrape."""

    seconds: float
    scrape_seconds: float
    body: str


def executable() -> Path | None:
    """The binary, installed from Debian first when missing and running as root;
    None when it is missing and cannot be installed."""
    found = shutil.which(BINARY)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE]
        subprocess.run(install, check=False, env=env)
        found = shutil.which(BINARY)
    return Path(found) if found else None


def version(binary: Path) -> str:
    """Which sql_exporter this is, refusing one whose flags are not justwatchcom's."""
    usage = subprocess.run([str(binary), "-h"], capture_output=True, text=True, check=False)
    if "-web.telemetry-path" not in usage.stderr + usage.stdout:
        raise RuntimeError(f"{binary} is not justwatchcom/sql_exporter (no -web.telemetry-path)")
    query = ["dpkg-query", "-W", "-f", "${Version}", PACKAGE]
    package = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return f"justwatchcom/sql_exporter (Debian {PACKAGE} {package or 'version unknown'})"


def connection_url(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    user = params.get("user", "postgres")
    return f"postgres://{user}@{host}:{port}/{params['dbname']}?sslmode=disable"


def label_name(label: str) -> str:
    return RENAMED_PREFIX + label if label in OWN_LABELS else label


def query_labels(query: BaselineQuery) -> list[str]:
    """Every label of the query's metrics, in order (a histogram's ``le`` included)."""
    return list(dict.fromkeys(label for labels in query.metrics.values() for label in labels))


def query_entry(query: BaselineQuery) -> dict[str, object]:
    """One sql_exporter query for one baseline query: the same SQL, labels cast to text
    (it accepts only text labels) under names that do not clash with its own.

    Its metrics share one label set, so a histogram's ``_count`` and ``_sum`` repeat
    on every ``le`` row; the ``le="+Inf"`` row holds them once.
    """
    labels = query_labels(query)
    columns = [f"q.{label}::text AS {label_name(label)}" for label in labels]
    columns += [f"q.{value}" for value in query.metrics]
    return {
        "name": f"{JOB}_{query.name}",
        "help": f"baseline query {query.name}",
        "labels": [label_name(label) for label in labels],
        "values": list(query.metrics),
        "query": f"SELECT {', '.join(columns)}\nFROM (\n{query.sql}\n) AS q",
    }


def write_config(path: Path, dsn: str, queries: list[BaselineQuery]) -> None:
    job = {
        "name": JOB,
        "interval": "1h",
        "connections": [connection_url(dsn)],
        "queries": [query_entry(query) for query in queries],
    }
    path.write_text(yaml.safe_dump({"jobs": [job]}, sort_keys=False), encoding="utf-8")


@contextmanager
def running(binary: Path, config_path: Path, log_path: Path) -> Iterator[str]:
    """sql_exporter on a free loopback port, logging at debug; yields its /metrics URL."""
    port = free_port()
    command = [
        str(binary), "-config.file", str(config_path),
        "-web.listen-address", f"127.0.0.1:{port}",
    ]  # fmt: skip
    env = {**os.environ, "LOGLEVEL": "debug"}
    with listening_process(command, port, log_path, env=env):
        yield f"http://127.0.0.1:{port}/metrics"


def _log_records(log_path: Path) -> list[dict[str, str]]:
    records = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def _timestamp(record: dict[str, str]) -> float:
    # RFC 3339 with nanoseconds; microseconds are plenty for runs of 100 ms and more
    text = record["ts"].rstrip("Z")
    whole, _, fraction = text.partition(".")
    return datetime.fromisoformat(f"{whole}.{fraction[:6]:0<6}+00:00").timestamp()


def job_seconds(log_path: Path) -> float | None:
    """The first job run's wall time, or None while it is still running.

    Raises when a query failed: its totals would be missing, not slow.
    """
    records = _log_records(log_path)
    failures = [r for r in records if r.get("level") in ("warn", "error")]
    if failures:
        raise RuntimeError(f"sql_exporter reported {failures[0]}; see {log_path}")
    started = next((r for r in records if r.get("msg") == "Running Query"), None)
    ended = next((r for r in records if r.get("msg") == "Sleeping until next run"), None)
    if started is None or ended is None:
        return None
    return _timestamp(ended) - _timestamp(started)


def refresh(binary: Path, config_path: Path, log_path: Path) -> Refresh:
    """A fresh process: its one job run, then one scrape of what it cached."""
    with running(binary, config_path, log_path) as url:
        deadline = time.monotonic() + RUN_TIMEOUT
        seconds = job_seconds(log_path)
        while seconds is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sql_exporter's job did not finish; see {log_path}")
            time.sleep(0.05)
            seconds = job_seconds(log_path)
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read().decode()
        return Refresh(seconds, time.perf_counter() - started, body)

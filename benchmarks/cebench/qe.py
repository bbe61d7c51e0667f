"""Real query-exporter (PyPI ``query-exporter``) in its own virtualenv, on the same schema.

Its queries are the baseline full aggregates with no ``interval``, so each
scrape runs all of them (what it does every interval when one is set); the
scrape's wall time is the cost of one refresh.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from psycopg.conninfo import conninfo_to_dict

from cebench.baseline import BaselineQuery
from cebench.net import free_port, listening_process

BENCH_DIR = Path(__file__).resolve().parents[1]
VENV = BENCH_DIR / ".venv-qe"
REQUIREMENTS = ("query-exporter==5.0.2", "psycopg[binary]>=3.1")
SCRAPE_TIMEOUT = 3600.0
_LATENCY_SUM = re.compile(r'^query_latency_sum\{[^}]*query="([^"]+)"[^}]*\} ([0-9.e+-]+)$', re.M)
_ERRORS = re.compile(r'^queries_total\{[^}]*status="error"[^}]*\} ([0-9.e+-]+)$', re.M)


def executable() -> Path:
    """The query-exporter command, installing it into benchmarks/.venv-qe on first use."""
    binary = VENV / "bin" / "query-exporter"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "--quiet", *REQUIREMENTS]
        subprocess.run(pip, check=True)
    return binary


def version() -> str:
    result = subprocess.run(
        [str(executable()), "--version"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def sqlalchemy_url(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    return f"postgresql+psycopg://{params.get('user', 'postgres')}@{host}:{port}/{params['dbname']}"


def write_config(path: Path, dsn: str, queries: list[BaselineQuery]) -> None:
    metrics: dict[str, dict[str, object]] = {}
    for query in queries:
        for name, labels in query.metrics.items():
            metrics[name] = {"type": query.types[name], "labels": list(labels)}
    config = {
        "databases": {"billing": {"dsn": sqlalchemy_url(dsn)}},
        "metrics": metrics,
        "queries": {
            q.name: {"databases": ["billing"], "metrics": list(q.metrics), "sql": q.sql}
            for q in queries
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


@contextmanager
def running(config_path: Path, log_path: Path) -> Iterator[str]:
    """query-exporter on a free loopback port; yields its /metrics URL."""
    port = free_port()
    command = [
        str(executable()), "--config", str(config_path),
        "-H", "127.0.0.1", "-p", str(port), "-L", "warning",
    ]  # fmt: skip
    with listening_process(command, port, log_path):
        yield f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> tuple[float, str]:
    """One scrape: its wall time in seconds and its body."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
        body = response.read().decode()
    return time.perf_counter() - started, body


def query_seconds(body: str) -> float:
    """Total of query-exporter's own query_latency_sum over every query (cumulative)."""
    return sum(float(value) for _, value in _LATENCY_SUM.findall(body))


def errors(body: str) -> float:
    return sum(float(value) for value in _ERRORS.findall(body))

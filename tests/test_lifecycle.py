"""The exporter's lifecycle against a real PostgreSQL: reload storms, bounded stop,
recovery after an outage independent of the interval, and the stalled-source watchdog."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml
from support import ExporterProcess, http_get, http_post, start_exporter, wait_until

SOURCES = 18
REPO = Path(__file__).resolve().parent.parent


def example_sources(dsn: str, interval: str = "1s") -> dict[str, Any]:
    """config.example.yaml (11 state queries and 7 streams on one database), every
    source polled each ``interval``."""
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    config["databases"]["billing"] = {"dsn": dsn, "connect_timeout": "1s", "pool_size": 4}
    for section in ("queries", "streams"):
        for source in config[section].values():
            source["interval"] = source["timeout"] = interval
    return config


def exporter_connections(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'credit-exporter'"
            " AND datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def runs_per_source(exporter: ExporterProcess) -> dict[str, float]:
    samples = exporter.samples()
    return {
        dict(labels)["query"]: value
        for (name, labels), value in samples.items()
        if name == "credit_exporter_query_duration_seconds_count"
    }


def every_source_polled_since(exporter: ExporterProcess, before: dict[str, float]) -> bool:
    after = runs_per_source(exporter)
    return len(after) == SOURCES and all(after[name] > before.get(name, 0) for name in after)


def test_a_reload_storm_leaves_every_source_polling_and_reload_answering(
    schema_db: str, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    exporter = start_exporter(example_sources(schema_db), tmp_path)
    exporters.append(exporter)
    wait_until(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 30, "ready")
    print(f"python {sys.version.split()[0]}")
    for storm in range(3):
        # 50 SIGHUPs in 5 s, then 5 in 0.5 s: the report's two storms
        for _ in range(50):
            exporter.process.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        for _ in range(5):
            exporter.process.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        status, body = http_post(exporter.url + "/-/reload")  # waits up to 30 s
        assert status == 200, (storm, status, body)
        before = runs_per_source(exporter)
        wait_until(
            lambda before=before: every_source_polled_since(exporter, before), 20,
            f"every source to poll after storm {storm}",
        )  # fmt: skip
    assert http_get(exporter.url + "/-/ready")[0] == 200
    # every pool a reload dropped was closed: no connections leak from cancelled opens
    assert exporter_connections(schema_db) <= 4  # the pool_size of the one database
    assert "Task was destroyed but it is pending" not in exporter.log()
    started = time.monotonic()
    exporter.process.send_signal(signal.SIGTERM)
    exporter.process.wait(20)
    print(f"SIGTERM to exit: {time.monotonic() - started:.2f}s")

"""Tests that try to break the event engine with real processes: concurrent
writers holding transactions open and rolling some back, two exporters
started at different times, scrapes that must never see a counter go down,
and a database outage in the middle."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import ExporterProcess, parse_samples, start_exporter, wait_until

from credit_exporter.demo.embedded import EmbeddedPostgres

SCHEMA = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text NOT NULL,
    credits numeric(18, 6) NOT NULL
);
CREATE INDEX ev_occurred_at ON ev (occurred_at);
"""
ORGS = ("acme", "globex", "initech")


def config(dsn: str) -> dict[str, Any]:
    labels = {"organization": "org", "project": "p", "agent": "a", "service_type": "s"}
    return {
        "databases": {"billing": {"dsn": dsn, "connect_timeout": "2s"}},
        "streams": {
            "usage": {
                "database": "billing",
                "time": "occurred_at",
                "key": "id",
                "settle": "2s",
                "interval": "500ms",
                "timeout": "500ms",
                "sql": "SELECT id, occurred_at, org, 'p' AS p, 'a' AS a, 's' AS s,"
                " greatest(credits, 0) AS spent, greatest(-credits, 0) AS refunded FROM ev",
                "metrics": [
                    {"metric": "credit_spent_credits_total", "value": "spent", "labels": labels},
                    {
                        "metric": "credit_refunded_credits_total",
                        "value": "refunded",
                        "labels": labels,
                    },
                ],
            }
        },
    }


def writer(dsn: str, seed: int, seconds: float) -> None:
    """One writer process: random batches, some held open past settle, some rolled back."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn) as conn:
        while time.monotonic() < deadline:
            for _ in range(rng.randint(1, 5)):
                credits = Decimal(rng.randint(-2_000_000, 30_000_000)) / 1_000_000
                conn.execute(
                    "INSERT INTO ev (org, credits) VALUES (%s, %s)", (rng.choice(ORGS), credits)
                )
            roll = rng.random()
            if roll < 0.05:
                time.sleep(rng.uniform(2.5, 4.0))  # longer than settle: a late commit
            elif roll < 0.3:
                time.sleep(rng.uniform(0.0, 0.5))
            if rng.random() < 0.2:
                conn.rollback()
            else:
                conn.commit()


def sql_totals(dsn: str) -> dict[str, tuple[Decimal, Decimal]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT org, sum(greatest(credits, 0)), sum(greatest(-credits, 0)) FROM ev GROUP BY org"
        ).fetchall()
    return {org: (spent, refunded) for org, spent, refunded in rows}


def exported_totals(exporter: ExporterProcess) -> dict[str, tuple[float, float]]:
    samples = exporter.samples()
    totals: dict[str, tuple[float, float]] = {}
    for (name, labels), value in samples.items():
        org = dict(labels).get("organization")
        if org is None:
            continue
        spent, refunded = totals.get(org, (0.0, 0.0))
        if name == "credit_spent_credits_total":
            totals[org] = (value, refunded)
        elif name == "credit_refunded_credits_total":
            totals[org] = (spent, value)
    return totals


class MonotonicWatch:
    """Scrapes an exporter in a thread and records any counter that went down."""

    def __init__(self, exporter: ExporterProcess) -> None:
        self.exporter = exporter
        self.last: dict[Any, float] = {}
        self.decreases: list[str] = []
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                samples = parse_samples(self.exporter.metrics_text())
            except (OSError, AssertionError):
                continue
            self.scrapes += 1
            for key, value in samples.items():
                if key[0].endswith("_total") and key[0].startswith("credit_"):
                    if value < self.last.get(key, 0.0):
                        self.decreases.append(f"{key}: {self.last[key]} -> {value}")
                    self.last[key] = value
            time.sleep(0.05)

    def __enter__(self) -> MonotonicWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def assert_exact(exporter: ExporterProcess, dsn: str) -> None:
    """Each organization's spent and refunded equal SQL, to float precision of the exact sum."""
    expected = {org: (float(s), float(r)) for org, (s, r) in sql_totals(dsn).items()}
    try:
        wait_until(lambda: exported_totals(exporter) == expected, 15, "totals == SQL sums")
    except AssertionError:
        raise AssertionError(
            f"exported {exported_totals(exporter)} != SQL {expected}\n{exporter.log()[-3000:]}"
        ) from None


@pytest.fixture
def stress_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return empty_db


@pytest.mark.slow
def test_concurrent_writers_late_commits_and_rollbacks_are_counted_exactly_once(
    stress_db: str, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=writer, args=(stress_db, seed, 30.0)) for seed in range(8)]
    first = start_exporter(config(stress_db), tmp_path / "first")
    exporters.append(first)
    for process in writers:
        process.start()
    with MonotonicWatch(first) as watch_first:
        time.sleep(12)
        # a second replica, started while the writers are busy, must agree exactly
        second = start_exporter(config(stress_db), tmp_path / "second")
        exporters.append(second)
        with MonotonicWatch(second) as watch_second:
            for process in writers:
                process.join(60)
                assert process.exitcode == 0
            assert_exact(first, stress_db)
            assert_exact(second, stress_db)
    assert watch_first.scrapes > 50 and watch_second.scrapes > 20
    assert not watch_first.decreases, watch_first.decreases[:5]
    assert not watch_second.decreases, watch_second.decreases[:5]
    with psycopg.connect(stress_db) as conn:
        rows = conn.execute("SELECT count(*), max(id) FROM ev").fetchone()
    assert rows is not None and rows[1] > rows[0]  # rollbacks left gaps in the ids


@pytest.fixture
def own_postgres(stoppable_postgres: EmbeddedPostgres) -> EmbeddedPostgres:
    with psycopg.connect(stoppable_postgres.dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
    return stoppable_postgres


def test_a_database_outage_loses_nothing_and_doubles_nothing(
    own_postgres: EmbeddedPostgres, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    dsn = own_postgres.dsn()
    exporter = start_exporter(config(dsn), tmp_path / "exporter")
    exporters.append(exporter)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, credits) SELECT now() - i * interval '1 second',"
            " 'acme', 1.5 FROM generate_series(1, 1000) i"
        )
    with MonotonicWatch(exporter) as watch:
        assert_exact(exporter, dsn)
        own_postgres.stop(mode="immediate")
        wait_until(
            lambda: exporter.value("credit_exporter_query_up", query="usage") == 0, 10, "down"
        )
        time.sleep(2)  # several failed polls while down
        own_postgres.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO ev (org, credits) VALUES ('acme', 2.25), ('globex', 1)")
        wait_until(
            lambda: exporter.value("credit_exporter_query_up", query="usage") == 1, 15, "back"
        )
        assert_exact(exporter, dsn)
    assert not watch.decreases, watch.decreases[:5]
    assert exporter.process.poll() is None

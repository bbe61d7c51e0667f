"""Operating the exporter: reload by SIGHUP with new schedules, and /metrics under
20 concurrent scrapers while the database flaps."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support import (
    ExporterProcess,
    Samples,
    parse_samples,
    select,
    start_exporter,
    wait_until,
)

from credit_exporter.demo.embedded import EmbeddedPostgres

SCHEMA = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text NOT NULL,
    credits numeric(18, 6) NOT NULL
);
CREATE TABLE seats (organization text, used int);
INSERT INTO seats VALUES ('acme', 7);
"""
SPENT = "credit_spent_credits_total"


def config(dsn: str, seats_interval: str = "1s", stream_interval: str = "1s") -> dict[str, Any]:
    return {
        "databases": {"billing": {"dsn": dsn, "connect_timeout": "1s"}},
        "queries": {
            "seats": {
                "database": "billing", "interval": seats_interval, "timeout": "1s",
                "sql": "SELECT organization, used FROM seats",
                "metrics": [{"metric": "credit_seats_used", "value": "used",
                             "labels": ["organization"]}],
            }
        },
        "streams": {
            "usage": {
                "database": "billing", "time": "occurred_at", "key": "id", "settle": "1s",
                "interval": stream_interval, "timeout": "1s",
                "sql": "SELECT id, occurred_at, org, 'p' AS project, '' AS agent, 'chat' AS st,"
                       " credits FROM ev",
                "metrics": [{"metric": SPENT, "value": "credits",
                             "labels": {"organization": "org", "project": "project",
                                        "agent": "agent", "service_type": "st"}}],
            }
        },
    }  # fmt: skip


@pytest.fixture
def flappable_db(stoppable_postgres: EmbeddedPostgres) -> EmbeddedPostgres:
    with psycopg.connect(stoppable_postgres.dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
    return stoppable_postgres


@pytest.fixture
def exporter_on(tmp_path: Path) -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for exporter in started:
        exporter.stop()


def insert_events(dsn: str, count: int, credits: str = "1.000001") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (org, credits) SELECT 'org-' || (g %% 5), %s::numeric"
            " FROM generate_series(1, %s) g",
            (credits, count),
        )


def sql_totals(dsn: str) -> dict[str, float]:
    """Spent credits per organization, summed exactly by PostgreSQL."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT org, sum(credits) FROM ev GROUP BY org").fetchall()
    return {org: float(Decimal(total)) for org, total in rows}


def by_org(samples: Samples) -> dict[str, float]:
    found = select(samples, SPENT)
    return {dict(labels)["organization"]: value for labels, value in found.items()}


def exported_totals(exporter: ExporterProcess) -> dict[str, float]:
    return by_org(exporter.samples())


def exporter_over_events(
    db: EmbeddedPostgres, events: int, tmp_path: Path, started: list[ExporterProcess]
) -> ExporterProcess:
    """An exporter on ``db`` once ``events`` rows exist, its totals equal to SQL."""
    insert_events(db.dsn(), events)
    exporter = start_exporter(config(db.dsn()), tmp_path)
    started.append(exporter)
    wait_until(lambda: exported_totals(exporter) == sql_totals(db.dsn()), 20, "first totals")
    return exporter


def runs(exporter: ExporterProcess, query: str) -> float:
    return exporter.value("credit_exporter_query_duration_seconds_count", query=query) or 0.0


def test_sighup_applies_new_intervals_and_keeps_counter_values(
    flappable_db: EmbeddedPostgres, exporter_on: list[ExporterProcess], tmp_path: Path
) -> None:
    dsn = flappable_db.dsn()
    exporter = exporter_over_events(flappable_db, 500, tmp_path, exporter_on)
    expected = sql_totals(dsn)

    exporter.config_path.write_text(
        yaml.safe_dump(config(dsn, seats_interval="4s", stream_interval="4s"))
    )
    exporter.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: "config reloaded" in exporter.log_path.read_text(errors="replace"), 10, "reload"
    )
    assert exported_totals(exporter) == expected  # the counters survived the reload
    time.sleep(1.5)  # let the first runs on the new schedule start
    before = runs(exporter, "seats"), runs(exporter, "usage")
    time.sleep(8.5)
    after = runs(exporter, "seats"), runs(exporter, "usage")
    # 8.5 s at 4 s: 2 or 3 runs each; the old 1 s schedule would give about 8
    assert [a - b for a, b in zip(after, before, strict=True)] in ([2, 2], [2, 3], [3, 2], [3, 3])
    assert exporter.value("credit_exporter_config_last_reload_successful") == 1
    assert exported_totals(exporter) == expected


@dataclass(frozen=True)
class Seen:
    """One successful scrape: when it was sent and answered, and the counters it showed."""

    sent: float
    answered: float
    totals: dict[str, float]


class Scrapers:
    """``count`` threads scraping /metrics every ``period`` seconds, keeping what each
    response showed. Back to back, 20 threads parsing bodies would starve this test's
    own thread of the GIL (its 4 s sleeps took 20 s and more); 10 scrapes a second
    each is still far beyond any Prometheus."""

    def __init__(self, url: str, count: int, period: float = 0.1) -> None:
        self.url = url
        self.period = period
        self.statuses: Counter[int] = Counter()
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def __enter__(self) -> Scrapers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            sent = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
                    status, body = response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, ""
            except OSError as exc:  # a refused or reset connection is a failure too
                with self._lock:
                    self.errors.append(repr(exc))
                continue
            seen = Seen(sent, time.monotonic(), by_org(parse_samples(body))) if body else None
            with self._lock:
                self.statuses[status] += 1
                if seen is not None:
                    self.seen.append(seen)

    def decreases(self) -> list[str]:
        """Counters that went down between two scrapes that did not overlap in time."""
        answered = sorted(self.seen, key=lambda s: s.answered)
        highest: dict[str, float] = {}
        found: list[str] = []
        i = 0
        for scrape in sorted(self.seen, key=lambda s: s.sent):
            while i < len(answered) and answered[i].answered < scrape.sent:
                for org, value in answered[i].totals.items():
                    highest[org] = max(highest.get(org, value), value)
                i += 1
            found += [
                f"{org}: {value} after {highest[org]}"
                for org, value in scrape.totals.items()
                if value < highest.get(org, value)
            ]
        return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("VmRSS")


@pytest.mark.slow
def test_twenty_scrapers_for_60s_while_the_database_flaps(
    flappable_db: EmbeddedPostgres, exporter_on: list[ExporterProcess], tmp_path: Path
) -> None:
    dsn = flappable_db.dsn()
    exporter = exporter_over_events(flappable_db, 2000, tmp_path, exporter_on)
    pid = exporter.process.pid
    rss_samples: list[int] = []
    outages = 0

    restarts: list[float] = []  # seconds each database start took
    with Scrapers(exporter.url, 20) as scrapers:
        began = time.monotonic()
        # at least 60 s and 6 outages, whichever takes longer
        while outages < 6 or time.monotonic() - began < 60:
            assert time.monotonic() - began < 300, f"flapping stalled; starts took {restarts}"
            insert_events(dsn, 200)
            time.sleep(4)
            rss_samples.append(rss_kib(pid))
            flappable_db.stop(mode="immediate")
            outages += 1
            time.sleep(4)
            rss_samples.append(rss_kib(pid))
            started = time.monotonic()
            flappable_db.start()
            restarts.append(round(time.monotonic() - started, 1))
        time.sleep(1)

    assert exporter.process.poll() is None, "the exporter died"
    assert not scrapers.errors, scrapers.errors[:5]
    # /metrics answers 200 throughout: an outage marks queries down, it is not an HTTP error
    assert set(scrapers.statuses) == {200}, scrapers.statuses
    assert sum(scrapers.statuses.values()) > 20 * 60  # every scraper got answers all along
    assert not scrapers.decreases(), scrapers.decreases()[:5]
    # memory is flat: the last third of the samples is not above the first third by > 20 MiB
    third = len(rss_samples) // 3
    assert max(rss_samples[-third:]) - max(rss_samples[:third]) < 20 * 1024, rss_samples
    # after the last recovery nothing was lost or doubled
    wait_until(lambda: exported_totals(exporter) == sql_totals(dsn), 30, "final totals")
    errors = exporter.value(
        "credit_exporter_query_errors_total", query="usage", reason="connection"
    )
    assert (errors or 0) >= 1, "the outages were never seen: the test did not test anything"

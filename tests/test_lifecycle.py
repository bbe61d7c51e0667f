"""The exporter's lifecycle against a real PostgreSQL: reload storms, bounded stop,
recovery after an outage independent of the interval, and the stalled-source watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support import ExporterProcess, http_get, http_post, start_exporter, wait_until

from credit_exporter.config import parse_config
from credit_exporter.demo.embedded import EmbeddedPostgres
from credit_exporter.lifecycle import SOURCE_STOP_TIMEOUT, Exporter
from credit_exporter.server import Handlers
from credit_exporter.sources.events import EventStream
from credit_exporter.sources.state import StateQuery

REPO = Path(__file__).resolve().parent.parent
_EXAMPLE = yaml.safe_load((REPO / "config.example.yaml").read_text())
SOURCES = len(_EXAMPLE["queries"]) + len(_EXAMPLE["streams"])  # 13 + 7


def example_sources(dsn: str, interval: str = "1s") -> dict[str, Any]:
    """config.example.yaml (its SOURCES state queries and streams on one database),
    every source polled each ``interval``."""
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
    assert exporter.process.wait(20) == 0
    print(f"SIGTERM to exit: {time.monotonic() - started:.2f}s")
    assert f"shutting down: closing the HTTP server, stopping {SOURCES} sources" in exporter.log()
    assert re.search(r"msg=\"?stopped in \d+\.\ds", exporter.log()), exporter.log()[-2000:]


# --- recovery after an outage, independent of the interval ---------------------------


def test_a_five_minute_query_recovers_within_seconds_of_its_database(
    stoppable_postgres: EmbeddedPostgres, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    with psycopg.connect(stoppable_postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE seats (organization text, used int)")
        conn.execute("INSERT INTO seats VALUES ('acme', 3)")
    stoppable_postgres.stop()
    config = {
        "databases": {"billing": {"dsn": stoppable_postgres.dsn(), "connect_timeout": "1s"}},
        "queries": {"seats": {
            "database": "billing", "interval": "300s", "timeout": "5s",
            "sql": "SELECT organization, used FROM seats",
            "metrics": [{"metric": "credit_seats_used", "value": "used",
                         "labels": ["organization"]}],
        }},
    }  # fmt: skip
    exporter = start_exporter(config, tmp_path)
    exporters.append(exporter)
    # failures are retried on a backoff, not at the next 300 s tick
    wait_until(
        lambda: (exporter.value("credit_exporter_query_errors_total", query="seats",
                                reason="connection") or 0) >= 3, 30, "three failed attempts",
    )  # fmt: skip
    assert http_get(exporter.url + "/-/ready")[0] == 503
    stoppable_postgres.start()
    back = time.monotonic()
    wait_until(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 30, "ready again")
    recovered_in = time.monotonic() - back
    print(f"ready {recovered_in:.1f}s after the database accepted connections again")
    # retries are capped at 5 s (and the reconnect backoff too): a few seconds, not 300
    assert recovered_in < 15
    assert exporter.value("credit_seats_used", organization="acme") == 3


# --- the watchdog and bounded stop, in process ------------------------------------------


def two_queries(dsn: str) -> dict[str, Any]:
    seats = {
        "database": "billing", "interval": "1s", "timeout": "1s",
        "sql": "SELECT organization, used FROM seats",
        "metrics": [{"metric": "credit_seats_used", "value": "used", "labels": ["organization"]}],
    }  # fmt: skip
    limits = seats | {
        "sql": "SELECT organization, 10 AS lim FROM seats",
        "metrics": [{"metric": "credit_seats_limit", "value": "lim", "labels": ["organization"]}],
    }
    return {
        "databases": {"billing": {"dsn": dsn, "connect_timeout": "1s"}},
        "queries": {"stuck": seats, "fine": limits},
    }


@pytest.fixture
def seats_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE seats (organization text, used int)")
        conn.execute("INSERT INTO seats VALUES ('acme', 7)")
    return empty_db


async def wait_for_condition(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out after {timeout}s: {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def body_of(exporter: Exporter) -> str:
    return exporter.exposition.current.body.decode()


def test_a_source_that_stops_polling_turns_readiness_and_self_metrics_bad(
    seats_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hang = asyncio.Event()
    original = StateQuery.run_once

    async def run_once(self: StateQuery) -> bool:
        if self.name == "stuck" and hang.is_set():
            await asyncio.Event().wait()  # a task that never finishes its poll
        return await original(self)

    monkeypatch.setattr(StateQuery, "run_once", run_once)

    async def scenario() -> None:
        exporter = Exporter(parse_config(two_queries(seats_db)))
        await exporter.start()
        try:
            await wait_for_condition(lambda: exporter.ready, 20, "ready")
            assert (await Handlers(exporter).handle_ready(None)).status == 200  # type: ignore[arg-type]
            hang.set()
            # 3 intervals + the timeout = 4 s without a completed poll
            took = await wait_for_condition(
                lambda: 'credit_exporter_query_stalled{query="stuck"} 1.0' in body_of(exporter),
                20, "the stalled gauge",
            )  # fmt: skip
            print(f"stalled reported {took:.1f}s after the hang began")
            assert took >= 2  # not before a few intervals went by
            body = body_of(exporter)
            assert 'credit_exporter_query_up{query="stuck"} 0.0' in body
            assert 'credit_exporter_query_stalled{query="fine"} 0.0' in body
            assert 'credit_exporter_query_up{query="fine"} 1.0' in body
            response = await Handlers(exporter).handle_ready(None)  # type: ignore[arg-type]
            assert response.status == 503
            assert "stalled" in (response.text or "") and "stuck" in (response.text or "")
            assert "fine" not in (response.text or "")
        finally:
            await exporter.stop()

    asyncio.run(scenario())


def test_a_source_that_ignores_its_cancellation_is_abandoned_and_cannot_write(
    seats_db: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    release = asyncio.Event()
    stubborn: list[StateQuery] = []
    original = StateQuery.run_once

    async def run_once(self: StateQuery) -> bool:
        if self in stubborn:
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):  # ignores its cancellation
                    await release.wait()
            # what it does once it finally gets on: publish stale values
            self.state.replace(self.name, {"credit_seats_used": {("ghost",): 99.0}})
            self.health.succeeded(self.name, 0.0, 1)
            return True
        return await original(self)

    monkeypatch.setattr(StateQuery, "run_once", run_once)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(two_queries(seats_db)))

    async def scenario() -> None:
        exporter = Exporter(parse_config(two_queries(seats_db)), config_path)
        await exporter.start()
        try:
            await wait_for_condition(lambda: exporter.health.ready, 20, "ready")
            stubborn.append(exporter.queries["stuck"])
            await asyncio.sleep(1.5)  # its next poll has begun, and hangs
            started = time.monotonic()
            async with asyncio.timeout(SOURCE_STOP_TIMEOUT + 20):  # it waited for ever
                ok, problems = await exporter.reload()
            took = time.monotonic() - started
            print(f"reload answered in {took:.1f}s with a stubborn source")
            assert ok, problems
            assert took < SOURCE_STOP_TIMEOUT + 5
            assert len(exporter.abandoned) == 1
            assert "source stuck did not stop" in caplog.text
            # the new task of the same query polls
            await wait_for_condition(
                lambda: exporter.health.queries["stuck"].up, 10, "the new stuck task"
            )
            release.set()  # the abandoned one wakes up and writes
            await wait_for_condition(lambda: not exporter.abandoned, 10, "the abandoned task ends")
            exporter.exposition.render()
            assert "ghost" not in body_of(exporter)
        finally:
            await exporter.stop()

    asyncio.run(scenario())


def spend_stream(dsn: str, interval: str) -> dict[str, Any]:
    return {
        "databases": {"billing": {"dsn": dsn}},
        "streams": {"spend": {
            "database": "billing", "key": "id", "time": "at", "interval": interval,
            "timeout": "1s", "settle": "1s", "reconcile": False,
            "sql": "SELECT id, at, 'acme' AS org, 'p' AS project, 'a' AS agent,"
                   " 'chat' AS st, credits FROM spend",
            "metrics": [{"metric": "credit_spent_credits_total", "value": "credits", "labels": {
                "organization": "org", "project": "project", "agent": "agent",
                "service_type": "st"}}],
        }},
    }  # fmt: skip


def test_a_changed_stream_shows_its_counters_between_a_reload_and_its_first_poll(
    empty_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE spend (id bigserial PRIMARY KEY, at timestamptz, credits int)")
        conn.execute("INSERT INTO spend (at, credits) VALUES (now() - interval '1h', 42)")
    hold = asyncio.Event()
    original = EventStream.run_once

    async def run_once(self: EventStream) -> bool:
        if self.config.interval == 2:  # the reloaded definition: its first poll waits
            await hold.wait()
        return await original(self)

    monkeypatch.setattr(EventStream, "run_once", run_once)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(spend_stream(empty_db, "1s")))
    series = 'credit_spent_credits_total{organization="acme",project="p",agent="a",'

    async def scenario() -> None:
        exporter = Exporter(parse_config(spend_stream(empty_db, "1s")), path)
        await exporter.start()
        try:
            await wait_for_condition(lambda: series in body_of(exporter), 20, "the counter")
            path.write_text(yaml.safe_dump(spend_stream(empty_db, "2s")))  # a changed stream
            ok, problems = await exporter.reload()
            assert ok, problems
            exporter.exposition.render()
            assert [line for line in body_of(exporter).splitlines() if line.startswith(series)]
            assert f'{series}service_type="chat"}} 42' in body_of(exporter)
            hold.set()
        finally:
            await exporter.stop()

    asyncio.run(scenario())


def test_a_refused_connection_is_retried_within_seconds_whatever_the_interval() -> None:
    from credit_exporter.sources.state import RETRY_CAP_SECONDS, retry_delay

    delays = [retry_delay(n, 300.0, "connection") for n in range(1, 8)]
    assert delays == [1, 2, 4, RETRY_CAP_SECONDS, RETRY_CAP_SECONDS, RETRY_CAP_SECONDS, 5]


def test_a_failure_that_ran_on_the_database_backs_off_up_to_the_interval() -> None:
    """A query timing out on a loaded database must not run every five seconds."""
    from credit_exporter.sources.state import retry_delay

    delays = [retry_delay(n, 60.0, "timeout") for n in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]

"""The exporter process against a real PostgreSQL: polling, replace semantics,
isolation of failing queries, readiness, gzip, reload, and database outages."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support import ExporterProcess, http_get, http_post, start_exporter, wait_until

from credit_exporter.demo.embedded import EmbeddedPostgres


def pools_query(sql: str = "SELECT organization, pool, allocation FROM pools", **extra: Any):
    return {
        "database": "billing",
        "interval": "1s",
        "timeout": "1s",
        "sql": sql,
        "metrics": [
            {
                "metric": "credit_allocation_credits",
                "value": "allocation",
                "labels": ["organization", "pool"],
            }
        ],
        **extra,
    }


def seats_query(sql: str = "SELECT organization, used FROM seats") -> dict[str, Any]:
    return {
        "database": "billing",
        "interval": "1s",
        "timeout": "1s",
        "sql": sql,
        "metrics": [{"metric": "credit_seats_used", "value": "used", "labels": ["organization"]}],
    }


def make_config(dsn: str, **queries: dict[str, Any]) -> dict[str, Any]:
    return {"databases": {"billing": {"dsn": dsn, "connect_timeout": "2s"}}, "queries": queries}


@pytest.fixture
def billing_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE pools (organization text, pool text, allocation numeric)")
        conn.execute(
            "INSERT INTO pools VALUES ('acme', 'plan', 1000.5), ('acme', 'topup', 250),"
            " ('globex', 'plan', 5000)"
        )
        conn.execute("CREATE TABLE seats (organization text, used int)")
        conn.execute("INSERT INTO seats VALUES ('acme', 7)")
    return empty_db


def run(exporters: list[ExporterProcess], tmp_path: Path, config: dict[str, Any]):
    exporter = start_exporter(config, tmp_path)
    exporters.append(exporter)
    return exporter


def test_gauges_equal_the_rows_of_the_state_query(billing_db, exporters, tmp_path):
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=pools_query()))
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 10, "up")
    assert exporter.value("credit_allocation_credits", organization="acme", pool="plan") == 1000.5
    assert exporter.value("credit_allocation_credits", organization="acme", pool="topup") == 250
    assert exporter.value("credit_allocation_credits", organization="globex", pool="plan") == 5000
    assert exporter.value("credit_exporter_query_rows", query="pools") == 3


def test_a_deleted_row_vanishes_after_the_next_poll(billing_db, exporters, tmp_path):
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=pools_query()))
    wait_until(
        lambda: exporter.value("credit_allocation_credits", organization="globex", pool="plan")
        == 5000, 10, "globex series",
    )  # fmt: skip
    with psycopg.connect(billing_db, autocommit=True) as conn:
        conn.execute("DELETE FROM pools WHERE organization = 'globex'")
    wait_until(
        lambda: exporter.value("credit_allocation_credits", organization="globex", pool="plan")
        is None, 5, "globex series to vanish",
    )  # fmt: skip
    assert exporter.value("credit_allocation_credits", organization="acme", pool="plan") == 1000.5


def test_a_failing_query_marks_its_own_metrics_and_the_others_keep_serving(
    billing_db, exporters, tmp_path
):
    config = make_config(
        billing_db, pools=pools_query("SELECT * FROM no_such_table"), seats=seats_query()
    )
    exporter = run(exporters, tmp_path, config)
    wait_until(
        lambda: (exporter.value("credit_exporter_query_errors_total", query="pools", reason="sql")
                 or 0) >= 1, 10, "an sql error",
    )  # fmt: skip
    assert exporter.value("credit_exporter_query_up", query="pools") == 0
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="seats") == 1, 10, "seats")
    assert exporter.value("credit_seats_used", organization="acme") == 7
    assert exporter.process.poll() is None


def test_a_slow_query_fails_with_reason_timeout(billing_db, exporters, tmp_path):
    slow = pools_query("SELECT organization, pool, allocation FROM pools, pg_sleep(3)")
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=slow))
    wait_until(
        lambda: (exporter.value("credit_exporter_query_errors_total", query="pools",
                                reason="timeout") or 0) >= 1, 10, "a timeout",
    )  # fmt: skip
    assert exporter.value("credit_exporter_query_up", query="pools") == 0


def test_a_missing_column_fails_with_reason_validation(billing_db, exporters, tmp_path):
    bad = pools_query("SELECT organization, pool AS kind, allocation FROM pools")
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=bad))
    wait_until(
        lambda: (exporter.value("credit_exporter_query_errors_total", query="pools",
                                reason="validation") or 0) >= 1, 10, "a validation error",
    )  # fmt: skip
    _status, body, _ = http_get(exporter.url + "/")
    assert b"result has no column pool" in body


def test_queries_run_in_read_only_transactions(billing_db, exporters, tmp_path):
    writing = pools_query(
        "INSERT INTO pools VALUES ('evil', 'plan', 1) RETURNING organization, pool, allocation"
    )
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=writing))
    wait_until(
        lambda: (exporter.value("credit_exporter_query_errors_total", query="pools", reason="sql")
                 or 0) >= 1, 10, "the write to be refused",
    )  # fmt: skip
    with psycopg.connect(billing_db) as conn:
        assert conn.execute("SELECT count(*) FROM pools WHERE organization='evil'").fetchone() == (
            0,
        )
    assert "read-only transaction" in exporter.log()


def test_bad_rows_are_skipped_and_counted(billing_db, exporters, tmp_path):
    sql = (
        "SELECT * FROM (VALUES ('a', 'plan', 1::numeric), (NULL, 'plan', 2), ('b', 'plan', NULL),"
        " ('c', 'plan', 'NaN'::numeric), ('a', 'plan', 5)) AS t(organization, pool, allocation)"
    )
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=pools_query(sql)))
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 10, "up")
    assert exporter.value("credit_allocation_credits", organization="a", pool="plan") == 1
    for reason in ("null_label", "null_value", "not_finite", "duplicate_series"):
        assert (exporter.value("credit_exporter_dropped_rows_total", query="pools",
                               reason=reason) or 0) >= 1, reason  # fmt: skip


def test_ready_only_once_every_query_has_succeeded(billing_db, exporters, tmp_path):
    config = make_config(
        billing_db, pools=pools_query("SELECT * FROM missing"), seats=seats_query()
    )
    exporter = run(exporters, tmp_path, config)
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="seats") == 1, 10, "seats")
    status, body, _ = http_get(exporter.url + "/-/ready")
    assert status == 503 and b"pools" in body
    assert http_get(exporter.url + "/-/healthy")[0] == 200
    with psycopg.connect(billing_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE missing AS SELECT * FROM pools")
    wait_until(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 10, "ready")


def test_metrics_are_gzipped_when_the_scraper_asks(billing_db, exporters, tmp_path):
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=pools_query()))
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 10, "up")
    status, body, headers = http_get(exporter.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"credit_allocation_credits" in gzip.decompress(body)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_landing_page_lists_endpoints_and_query_status(billing_db, exporters, tmp_path):
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=pools_query()))
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 10, "up")
    status, body, _ = http_get(exporter.url + "/")
    assert status == 200
    for text in (b"/metrics", b"/-/healthy", b"/-/ready", b"/-/reload", b"pools", b"up"):
        assert text in body


def test_build_info_and_self_metrics_are_exported(billing_db, exporters, tmp_path):
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=pools_query()))
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 10, "up")
    samples = exporter.samples()
    names = {name for name, _ in samples}
    assert "credit_build_info" in names
    assert "credit_exporter_query_duration_seconds_bucket" in names
    assert "credit_exporter_query_last_success_timestamp_seconds" in names
    assert "credit_exporter_config_last_reload_successful" in names
    wait_until(lambda: (exporter.value("credit_exporter_exposition_bytes") or 0) > 0, 5, "size")


def test_reload_keeps_the_running_config_when_the_new_one_is_invalid(
    billing_db, exporters, tmp_path
):
    exporter = run(exporters, tmp_path, make_config(billing_db, pools=pools_query()))
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 10, "up")
    bad = make_config(billing_db, pools=pools_query(), seats=seats_query())
    bad["queries"]["seats"]["metrics"][0]["metric"] = "credit_seats_typo"
    exporter.config_path.write_text(yaml.safe_dump(bad))
    status, body = http_post(exporter.url + "/-/reload")
    assert status == 400 and b"queries.seats.metrics[0].metric" in body
    wait_until(lambda: exporter.value("credit_exporter_config_last_reload_successful") == 0, 5, "0")
    assert exporter.value("credit_allocation_credits", organization="acme", pool="plan") == 1000.5

    exporter.config_path.write_text(
        yaml.safe_dump(make_config(billing_db, pools=pools_query(), seats=seats_query()))
    )
    status, _ = http_post(exporter.url + "/-/reload")
    assert status == 200
    wait_until(lambda: exporter.value("credit_seats_used", organization="acme") == 7, 10, "seats")
    assert exporter.value("credit_exporter_config_last_reload_successful") == 1


@pytest.fixture
def own_postgres(stoppable_postgres: EmbeddedPostgres) -> EmbeddedPostgres:
    with psycopg.connect(stoppable_postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE pools (organization text, pool text, allocation numeric)")
        conn.execute("INSERT INTO pools VALUES ('acme', 'plan', 42)")
        conn.execute("CREATE TABLE seats (organization text, used int)")
        conn.execute("INSERT INTO seats VALUES ('acme', 3)")
    return stoppable_postgres


def test_database_outage_keeps_serving_and_recovers(own_postgres, exporters, tmp_path):
    config = make_config(own_postgres.dsn(), pools=pools_query(interval="2s", timeout="1s"))
    exporter = run(exporters, tmp_path, config)
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 10, "up")

    own_postgres.stop(mode="immediate")
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 0, 10, "down")
    # still serving the last good values, marked down
    assert exporter.value("credit_allocation_credits", organization="acme", pool="plan") == 42
    assert (exporter.value("credit_exporter_query_errors_total", query="pools",
                           reason="connection") or 0) >= 1  # fmt: skip
    assert exporter.process.poll() is None

    own_postgres.start()
    # recovery within one interval (2s) plus the reconnect backoff cap (1s) and a poll
    wait_until(lambda: exporter.value("credit_exporter_query_up", query="pools") == 1, 8, "back")
    assert exporter.process.poll() is None


def test_database_down_at_start_never_crashes_and_recovers(own_postgres, exporters, tmp_path):
    own_postgres.stop()
    config = make_config(own_postgres.dsn(), seats=seats_query() | {"interval": "2s"})
    exporter = run(exporters, tmp_path, config)
    wait_until(
        lambda: (exporter.value("credit_exporter_query_errors_total", query="seats",
                                reason="connection") or 0) >= 2, 15, "connection errors",
    )  # fmt: skip
    assert exporter.value("credit_exporter_query_up", query="seats") == 0
    assert http_get(exporter.url + "/-/ready")[0] == 503
    own_postgres.start()
    wait_until(lambda: exporter.value("credit_seats_used", organization="acme") == 3, 8, "data")
    assert http_get(exporter.url + "/-/ready")[0] == 200

"""A real Prometheus scrapes the real exporter: the exposition is accepted as is."""

from __future__ import annotations

from pathlib import Path

import psycopg
from support import start_exporter, start_prometheus, wait_until


def test_prometheus_scrapes_every_series_without_errors(empty_db: str, tmp_path: Path) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE seats (organization text, used int)")
        conn.execute("INSERT INTO seats VALUES ('acme', 7), ('globex', 3)")
    config = {
        "databases": {"billing": {"dsn": empty_db}},
        "queries": {
            "seats": {
                "database": "billing",
                "interval": "1s",
                "timeout": "1s",
                "sql": "SELECT organization, used FROM seats",
                "metrics": [
                    {"metric": "credit_seats_used", "value": "used", "labels": ["organization"]}
                ],
            }
        },
    }
    exporter = start_exporter(config, tmp_path / "exporter")
    target = exporter.url.removeprefix("http://")
    prometheus = start_prometheus(tmp_path / "prometheus", [target])
    try:
        wait_until(lambda: bool(prometheus.query("credit_seats_used")), 20, "a scrape")
        result = {r["metric"]["organization"]: float(r["value"][1]) for r in
                  prometheus.query("credit_seats_used")}  # fmt: skip
        assert result == {"acme": 7.0, "globex": 3.0}
        health = prometheus.api("/api/v1/targets")["activeTargets"][0]
        assert health["health"] == "up" and not health["lastError"], health
        assert prometheus.query('credit_build_info{version!=""}')
    finally:
        prometheus.stop()
        exporter.stop()

"""Per-scope usage in the current billing period resets at the period boundary,
with the example config's own SQL, across a boundary that passes during the test."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import yaml
from support import start_exporter, wait_until

REPO = Path(__file__).resolve().parent.parent
SECONDS_TO_BOUNDARY = 6


def test_budget_usage_rolls_over_at_the_billing_period_boundary(
    schema_db: str, tmp_path: Path
) -> None:
    with psycopg.connect(schema_db, autocommit=True) as conn:
        boundary = conn.execute(
            "SELECT now() + make_interval(secs => %s)", (SECONDS_TO_BOUNDARY,)
        ).fetchone()[0]
        conn.execute("INSERT INTO plans VALUES (1, 'pro', 'Pro', 1000, 5, 5)")
        conn.execute(
            "INSERT INTO organizations VALUES (1, 'acme', 'Acme', 1, now() - '90 days'::interval)"
        )
        conn.execute(
            "INSERT INTO billing_periods VALUES (1, %s - '30 days'::interval, %s),"
            " (1, %s, %s + '30 days'::interval)",
            (boundary, boundary, boundary, boundary),
        )
        conn.execute("INSERT INTO budgets VALUES (1, 1, 'organization', 1, 100)")
        usage = (
            "INSERT INTO usage_events (occurred_at, organization_id, project_id, department_id,"
            " user_id, model_id, service_type_id, pricing_rule_id, task_category_id, channel_id,"
            " pool, credits, latency_seconds, success, playground)"
            " VALUES (%s, 1, 1, 1, 1, 1, 1, 1, 1, 1, 'plan', %s, 1, true, %s)"
        )
        for at, credits, playground in (
            ("now() - interval '1 hour'", 10, False),
            ("now() - interval '2 hours'", "5.5", False),
            ("now() - interval '40 days'", 1000, False),  # the period before
            ("now() - interval '1 hour'", 99, True),  # playground
        ):
            conn.execute(usage.replace("VALUES (%s,", f"VALUES ({at},"), (credits, playground))

    example = yaml.safe_load((REPO / "config.example.yaml").read_text())
    config = {
        "databases": {"billing": {"dsn": schema_db}},
        "queries": {
            name: {**example["queries"][name], "interval": "1s", "timeout": "1s"}
            for name in ("budgets", "billing_periods")
        },
    }
    exporter = start_exporter(config, tmp_path)
    labels = {"organization": "acme", "scope": "organization", "scope_id": "acme"}
    try:
        wait_until(lambda: exporter.value("credit_budget_used_credits", **labels) == 15.5, 10,
                   "usage of the current period")  # fmt: skip
        assert exporter.value("credit_budget_limit_credits", **labels) == 100
        old_end = exporter.value("credit_billing_period_end_timestamp_seconds", organization="acme")
        assert old_end == boundary.timestamp()
        assert time.time() < boundary.timestamp(), "the set-up took longer than the period"

        wait_until(lambda: exporter.value("credit_budget_used_credits", **labels) == 0,
                   SECONDS_TO_BOUNDARY + 10, "usage to reset at the boundary")  # fmt: skip
        assert time.time() >= boundary.timestamp() - 1
        assert (
            exporter.value("credit_billing_period_start_timestamp_seconds", organization="acme")
            == boundary.timestamp()
        )
        with psycopg.connect(schema_db, autocommit=True) as conn:
            conn.execute(usage.replace("VALUES (%s,", "VALUES (now(),"), ("2.25", False))
        wait_until(lambda: exporter.value("credit_budget_used_credits", **labels) == 2.25, 10,
                   "usage of the new period")  # fmt: skip
    finally:
        exporter.stop()

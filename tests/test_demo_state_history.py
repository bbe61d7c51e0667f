"""deploy/demo_state_history.py: the demo's budget and balance gauges at a past time,
recomputed from the rows, against SQL written here and the live queries at now."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml

from monitoring import generate

REPO = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((REPO / "config.example.yaml").read_text())


history = generate.deploy_module("demo_state_history")


def test_budgets_as_of_now_return_what_the_live_budgets_query_returns(demo_db: str) -> None:
    sql = CONFIG["queries"]["budgets"]["sql"]
    with psycopg.connect(demo_db) as conn:  # one transaction: one now()
        now = conn.execute("SELECT now()").fetchone()[0]
        live = sorted(conn.execute(sql).fetchall())
        assert live and sorted(conn.execute(history.as_of(sql), {"t": now}).fetchall()) == live


def test_budget_used_as_of_a_past_time_counts_the_periods_rows_up_to_that_time_only(
    demo_db: str,
) -> None:
    with psycopg.connect(demo_db) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]
        t = now - timedelta(days=2, minutes=7)
        rows = conn.execute(history.as_of(CONFIG["queries"]["budgets"]["sql"]), {"t": t})
        used = {(r[0], r[2]): r[3] for r in rows.fetchall() if r[1] == "organization"}
        expected = conn.execute(
            "SELECT o.slug, coalesce(sum(ue.credits), 0) FROM organizations o "
            "JOIN billing_periods bp ON bp.organization_id = o.id "
            " AND bp.starts_at <= %(t)s AND %(t)s < bp.ends_at "
            "LEFT JOIN usage_events ue ON ue.organization_id = o.id AND NOT ue.playground "
            " AND ue.occurred_at >= bp.starts_at AND ue.occurred_at <= %(t)s "
            "WHERE EXISTS (SELECT 1 FROM budgets b WHERE b.organization_id = o.id "
            " AND b.scope = 'organization') GROUP BY o.slug",
            {"t": t},
        ).fetchall()
    assert expected and {(slug, slug): total for slug, total in expected} == used


def test_pool_balance_and_allocation_as_of_now_are_todays(demo_db: str) -> None:
    with psycopg.connect(demo_db) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]
        rows = conn.execute(history.POOLS, {"t": now, "now": now}).fetchall()
        today = {(slug, pool): (allocation, balance) for slug, pool, allocation, balance
                 in conn.execute(CONFIG["queries"]["credit_pools"]["sql"]).fetchall()}  # fmt: skip
    got = {(r[0], r[1]): history.pool_samples(r) for r in rows}
    assert got and {k: (v["credit_allocation_credits"], v["credit_balance_credits"])
                    for k, v in got.items()} == today  # fmt: skip


def test_pool_balance_a_day_ago_adds_back_what_was_drawn_since() -> None:
    row = ("acme", "topup", Decimal("500"), Decimal("120"), None, Decimal("30"), Decimal("200"))
    assert history.pool_samples(row) == {
        "credit_allocation_credits": Decimal("300"),  # before the 200 bought since
        "credit_balance_credits": Decimal("-50"),  # 120 + 30 drawn - 200 bought
    }


def test_openmetrics_writes_each_series_in_time_order_with_the_scrape_labels() -> None:
    series = '{organization="acme",pool="plan"}'
    gauges = {"credit_balance_credits": [(series, Decimal("2"), 600.0),
                                         (series, Decimal("3"), 300.0)]}  # fmt: skip
    text = history.openmetrics(gauges, {"job": "credit-exporter", "instance": "e:1"})
    labelled = ('credit_balance_credits{organization="acme",pool="plan",'
                'instance="e:1",job="credit-exporter"}')  # fmt: skip
    assert text.splitlines() == ["# TYPE credit_balance_credits gauge", f"{labelled} 3 300",
                                 f"{labelled} 2 600", "# EOF"]  # fmt: skip

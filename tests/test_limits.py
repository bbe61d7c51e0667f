"""Series caps: a metric never exports more than its cap, memory stays bounded, and
capped counters keep sum() equal to SQL through the ``__overflow__`` series.

The flood test runs a real exporter process against a million distinct users
produced by PostgreSQL, both as a state query and as a usage event stream.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from support import http_get, select, start_exporter, wait_until

from credit_exporter.limits import OVERFLOW

FLOOD_USERS = 1_000_000
CAP = 10_000
# Peak resident memory (VmHWM) the exporter may reach in the flood test; the
# measured figure and the bound are documented in docs/limits.md.
PEAK_RSS_BOUND_MB = 150

STATE_FLOOD_SQL = (
    "SELECT 'acme' AS organization, 'user' AS scope,"
    " 'user' || lpad(g::text, 7, '0') || '@example.com' AS scope_id, g::numeric AS used"
    f" FROM generate_series(1, {FLOOD_USERS}) AS g"
)

FLOOD_TABLE = f"""
CREATE TABLE flood_usage (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text NOT NULL, dept text NOT NULL, usr text NOT NULL, model text NOT NULL,
    credits numeric(18, 6) NOT NULL
);
INSERT INTO flood_usage (org, dept, usr, model, credits)
SELECT 'acme', 'd' || (g % 20), 'user' || lpad(g::text, 7, '0') || '@example.com',
       'm' || (g % 3), (g % 1000) / 1000.0 + 0.000001
FROM generate_series(1, {FLOOD_USERS}) AS g;
ANALYZE flood_usage;
"""


def flood_config(dsn: str) -> dict[str, object]:
    return {
        "databases": {"billing": {"dsn": dsn, "statement_timeout": "120s"}},
        "queries": {
            "budgets": {
                "database": "billing",
                "interval": "1h",
                "timeout": "120s",
                "sql": STATE_FLOOD_SQL,
                "metrics": [
                    {
                        "metric": "credit_budget_used_credits",
                        "value": "used",
                        "labels": ["organization", "scope", "scope_id"],
                        "limits": {"max_series_per_metric": CAP},
                    }
                ],
            },
            "balances": {
                "database": "billing",
                "interval": "1h",
                "sql": "SELECT * FROM (VALUES ('acme', 'plan', 5.5), ('beta', 'topup', 2))"
                " AS v(organization, pool, balance)",
                "metrics": [
                    {
                        "metric": "credit_balance_credits",
                        "value": "balance",
                        "labels": ["organization", "pool"],
                    },
                ],
            },
        },
        "streams": {
            "usage": {
                "database": "billing",
                "key": "id",
                "time": "occurred_at",
                "interval": "1h",
                "sql": "SELECT id, occurred_at, org, dept, usr, model, 'chat' AS task, credits"
                " FROM flood_usage",
                "metrics": [
                    {
                        "metric": "credit_spent_by_user_credits_total",
                        "value": "credits",
                        "labels": {
                            "organization": "org",
                            "department": "dept",
                            "user": "usr",
                            "gen_ai_request_model": "model",
                        },
                        "limits": {"max_series_per_metric": CAP},
                    },
                    {
                        "metric": "credit_spent_by_model_credits_total",
                        "value": "credits",
                        "labels": {
                            "organization": "org",
                            "gen_ai_request_model": "model",
                            "task_category": "task",
                        },
                    },
                ],
            }
        },
    }


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


@pytest.fixture(scope="module")
def flood_db(make_database) -> str:
    dsn = make_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FLOOD_TABLE)
    return dsn


@pytest.fixture(scope="module")
def flooded(flood_db: str, tmp_path_factory):
    exporter = start_exporter(flood_config(flood_db), tmp_path_factory.mktemp("flood"))
    try:
        wait_until(
            lambda: http_get(f"{exporter.url}/-/ready")[0] == 200, 240, "the flood to be exported"
        )
        yield exporter, exporter.samples(), peak_rss_mb(exporter.process.pid)
    finally:
        exporter.stop()


@pytest.mark.slow
def test_a_flooded_state_metric_exports_exactly_its_cap_of_smallest_label_sets(flooded) -> None:
    _, samples, _ = flooded
    series = select(samples, "credit_budget_used_credits")
    assert len(series) == CAP
    kept = sorted(dict(labels)["scope_id"] for labels in series)
    assert kept == [f"user{n:07d}@example.com" for n in range(1, CAP + 1)]
    assert all(value == int(dict(k)["scope_id"][4:11]) for k, value in series.items())


@pytest.mark.slow
def test_state_rows_refused_by_the_cap_are_counted_once_per_poll(flooded) -> None:
    _, samples, _ = flooded
    polls = select(samples, "credit_exporter_query_duration_seconds_count", query="budgets")
    assert list(polls.values()) == [1.0]  # interval 1h: exactly one poll so far
    dropped = select(
        samples, "credit_exporter_dropped_series_total",
        metric="credit_budget_used_credits", reason="series_limit",
    )  # fmt: skip
    assert list(dropped.values()) == [float(FLOOD_USERS - CAP)]


@pytest.mark.slow
def test_other_metrics_keep_serving_during_a_flood(flooded) -> None:
    _, samples, _ = flooded
    balances = select(samples, "credit_balance_credits")
    assert sorted(balances.values()) == [2.0, 5.5]
    by_model = select(samples, "credit_spent_by_model_credits_total")
    assert len(by_model) == 3


@pytest.mark.slow
def test_a_flooded_counter_exports_its_cap_including_one_overflow_series(
    flooded, flood_db: str
) -> None:
    _, samples, _ = flooded
    series = select(samples, "credit_spent_by_user_credits_total")
    assert len(series) == CAP
    with psycopg.connect(flood_db) as conn:
        smallest = conn.execute(
            "SELECT org, dept, usr, model, sum(credits) FROM flood_usage GROUP BY 1, 2, 3, 4"
            ' ORDER BY org COLLATE "C", dept COLLATE "C", usr COLLATE "C", model COLLATE "C"'
            " LIMIT %s",
            (CAP - 1,),
        ).fetchall()
        (total,) = conn.execute("SELECT sum(credits) FROM flood_usage").fetchone()
    expected = {
        (("department", d), ("gen_ai_request_model", m), ("organization", o), ("user", u)): float(s)
        for o, d, u, m, s in smallest
    }
    overflow_key = tuple(
        (name, OVERFLOW) for name in ("department", "gen_ai_request_model", "organization", "user")
    )
    expected[overflow_key] = float(total - sum((s for *_, s in smallest), Decimal(0)))
    assert {tuple(sorted(k)): v for k, v in series.items()} == expected


@pytest.mark.slow
def test_counter_groups_folded_into_the_overflow_are_counted(flooded) -> None:
    _, samples, _ = flooded
    dropped = select(
        samples, "credit_exporter_dropped_series_total",
        metric="credit_spent_by_user_credits_total", reason="series_limit",
    )  # fmt: skip
    assert list(dropped.values()) == [float(FLOOD_USERS - (CAP - 1))]


@pytest.mark.slow
def test_a_flood_keeps_the_exporter_under_its_documented_peak_memory(flooded) -> None:
    _, _, peak_mb = flooded
    print(f"exporter peak RSS (VmHWM) during the flood: {peak_mb:.1f} MB")
    assert peak_mb < PEAK_RSS_BOUND_MB
    docs = (Path(__file__).parents[1] / "docs" / "limits.md").read_text()
    assert f"{PEAK_RSS_BOUND_MB} MB" in docs

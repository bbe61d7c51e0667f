"""config.example.yaml against the reference schema: mapping and SQL semantics.

A small hand-built dataset (two organizations, a past and a current billing
period each) is inserted into a fresh reference-schema database; every query of
config.example.yaml runs in a read-only transaction, its rows are turned into
series through the file's own mapping, and the series are compared with values
computed by hand in the comments below.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from credit_exporter import catalog

REPO = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((REPO / "config.example.yaml").read_text(encoding="utf-8"))
QUERIES: dict[str, dict[str, Any]] = CONFIG["queries"]

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
# acme: past period [NOW-40d, NOW-10d), current [NOW-10d, NOW+20d)
# globex: past period [NOW-35d, NOW-5d), current [NOW-5d, NOW+25d)
ACME_START, ACME_END = NOW - 10 * DAY, NOW + 20 * DAY
GLOBEX_START, GLOBEX_END = NOW - 5 * DAY, NOW + 25 * DAY


def _labels(mapping: dict[str, Any]) -> dict[str, str]:
    labels = mapping.get("labels", {})
    if isinstance(labels, list):
        return {name: name for name in labels}
    return dict(labels)


def _mappings() -> dict[str, tuple[str, dict[str, Any]]]:
    """metric name -> (query name, metric mapping); duplicates fail the catalogue test."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for qname, query in QUERIES.items():
        for mapping in query["metrics"]:
            out.setdefault(mapping["metric"], (qname, mapping))
    return out


MAPPINGS = _mappings()


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def run_query(dsn: str, name: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one query of the example config the way the exporter does: read only."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.read_only = True
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '10s'")
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
            cur = conn.execute(QUERIES[name]["sql"])
            assert cur.description is not None
            return [col.name for col in cur.description], cur.fetchall()


def series(dsn: str, metric: str) -> dict[tuple[str, ...], float]:
    """The metric's series: label values in catalogue order -> sample value."""
    qname, mapping = MAPPINGS[metric]
    columns, rows = run_query(dsn, qname)
    label_columns = _labels(mapping)
    out: dict[tuple[str, ...], float] = {}
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        key = tuple(record[label_columns[label]] for label in catalog.get(metric).labels)
        assert all(isinstance(value, str) for value in key), (metric, key)
        assert key not in out, f"{metric}: duplicate series {key}"
        if "value" in mapping:
            value = record[mapping["value"]]
            assert isinstance(value, int | Decimal | float) and not isinstance(value, bool)
            out[key] = float(value)
        else:
            out[key] = 1.0
    return out


# --- the dataset ---------------------------------------------------------------

PLANS = [  # id, slug, name, monthly_credits, agent_slots, seats
    (1, "pro", "Pro", 10000, 10, 5),
    (2, "starter", "Starter", 1000, 2, 3),
]
PLAN_QUOTAS = [
    (1, "text_queries", 1000),
    (1, "voice_seconds", 3600),
    (1, "concurrent_calls", 5),
    (1, "phone_numbers", 3),
    (1, "human_agent_seats", 2),
    (2, "text_queries", 100),
    (2, "voice_seconds", 600),
    (2, "phone_numbers", 1),
]
ORGANIZATIONS = [
    (1, "acme", "Acme Corp", 1, NOW - 400 * DAY),
    (2, "globex", "Globex Inc", 2, NOW - 90 * DAY),
]
BILLING_PERIODS = [
    (1, NOW - 40 * DAY, ACME_START),
    (1, ACME_START, ACME_END),
    (2, NOW - 35 * DAY, GLOBEX_START),
    (2, GLOBEX_START, GLOBEX_END),
]
DEPARTMENTS = [(1, 1, "eng", "Engineering"), (2, 1, "sales", "Sales"), (3, 2, "ops", "Operations")]
PROJECTS = [
    (1, 1, "support", "Customer Support", "#1f77b4"),
    (2, 1, "internal", "Internal Tools", "#ff7f0e"),
    (3, 2, "helpdesk", "Helpdesk", "#2ca02c"),
]
USERS = [  # id, org, department, email, human_agent, deactivated_at
    (1, 1, 1, "alice@acme.test", True, None),
    (2, 1, 2, "bob@acme.test", False, None),
    (3, 1, 1, "carol@acme.test", True, NOW - 20 * DAY),  # deactivated
    (4, 2, 3, "dave@globex.test", False, None),
    (5, 1, 2, "erin@acme.test", False, None),
]
MODELS = [
    (1, "gpt-4o", "openai", "GPT-4o", Decimal("2.5"), "premium"),
    (2, "gpt-4o-mini", "openai", "GPT-4o mini", Decimal("0.25"), "economy"),
    (3, "claude-sonnet-4", "anthropic", "Claude Sonnet 4", Decimal("1"), "standard"),
]
AGENTS = [  # id, org, project, slug, name, model, paid, deleted_at
    (1, 1, 1, "helpbot", "Help Bot", 1, False, None),
    (2, 1, 1, "salesbot", "Sales Bot", 2, True, None),
    (3, 1, 2, "oldbot", "Old Bot", 1, True, NOW - 30 * DAY),  # deleted
    (4, 2, 3, "deskbot", "Desk Bot", 3, True, None),  # paid, no subscribers
    (5, 2, 3, "faqbot", "FAQ Bot", 2, False, None),
]
SERVICE_TYPES = [(1, "text_generation"), (2, "speech_to_text"), (3, "text_to_speech")]
CREDIT_POOLS = [
    (1, "plan", Decimal("10000"), Decimal("7500.5")),
    (1, "topup", Decimal("500"), Decimal("500")),
    (2, "plan", Decimal("1000"), Decimal("20.25")),
    (2, "topup", Decimal("0"), Decimal("0")),
]
BUDGETS = [  # id, org, scope, scope_ref_id, monthly_limit
    (1, 1, "organization", 1, 10000),
    (2, 1, "department", 1, 4000),
    (3, 1, "project", 1, 6000),
    (4, 1, "user", 1, 1000),
    (5, 1, "user", 2, 500),  # bob: only playground and past-period usage
    (6, 2, "organization", 2, 1000),
    (7, 2, "project", 3, 800),
]
BUDGET_ALERT_LEVELS = [  # org, budget (None: the org's ladder), level, percent
    (1, None, "usage_high", 50), (1, None, "almost_exhausted", 80), (1, None, "exhausted", 100),
    (1, 4, "usage_high", Decimal("62.5")),  # alice: her own first level only
    (2, 7, "usage_high", 70), (2, 7, "almost_exhausted", 85), (2, 7, "exhausted", 95),
]  # fmt: skip
AUTO_RECHARGE = [(1, True, 100, 500), (2, False, Decimal("50.5"), 200)]
PHONE_NUMBERS = [
    (1, 1, "+15550001", None),
    (2, 1, "+15550002", NOW - 3 * DAY),  # released
    (3, 1, "+15550003", None),
    (4, 2, "+15550004", NOW - 50 * DAY),  # released
]
VISITORS = [(1, 1, 1), (2, 1, 1), (3, 1, 2), (4, 2, 4)]  # id, org, agent
CONVERSATIONS = [  # id, org, agent, channel, visitor, type, started, ended, playground
    (1, 1, 1, 2, 1, "call", NOW - timedelta(minutes=20), None, False),  # in progress
    (2, 1, 1, 2, 2, "call", NOW - 2 * DAY, NOW - 2 * DAY + timedelta(minutes=5), False),
    (3, 1, 1, 2, 1, "call", NOW - timedelta(minutes=3), None, True),  # playground
    (4, 1, 1, 1, 3, "chat", NOW - timedelta(minutes=9), None, False),  # not a call
    (5, 1, 2, 2, 2, "call", NOW - timedelta(minutes=1), None, False),  # in progress
    (6, 2, 4, 2, 4, "call", NOW - timedelta(minutes=7), None, False),  # plan has no quota
]
SUBSCRIPTIONS = [  # id, org, agent, visitor, cancelled_at
    (1, 1, 2, 1, None),
    (2, 1, 2, 2, None),
    (3, 1, 2, 3, NOW - 4 * DAY),  # cancelled
    (4, 1, 3, 1, None),  # on the deleted agent
]
# id, when, org, project, department, user, agent, service type, credits, voice, playground
EVENTS = [
    # acme, current period [NOW-10d, NOW+20d)
    (1, NOW - 5 * DAY, 1, 1, 1, 1, 1, 1, "100", "0", False),
    (2, NOW - 4 * DAY, 1, 1, 1, 1, 2, 2, "30", "120", False),
    (3, NOW - 3 * DAY, 1, 2, 2, 5, None, 1, "50", "0", False),
    (4, NOW - 2 * DAY, 1, 1, 1, 1, 1, 1, "-20", "0", False),  # refund
    (5, NOW - 1 * DAY, 1, 1, 2, 2, 1, 1, "999", "0", True),  # playground
    (6, NOW - 1 * DAY, 1, 1, 2, 2, 1, 2, "70", "300", True),  # playground voice
    (7, ACME_START, 1, 2, 1, 1, None, 1, "5", "0", False),  # exactly at the start
    (8, NOW - 6 * DAY, 1, 1, 1, 3, 1, 1, "10", "0", False),  # deactivated user
    # acme, outside the current period
    (9, NOW - 15 * DAY, 1, 1, 2, 2, 1, 1, "400", "0", False),
    (10, NOW - 15 * DAY, 1, 1, 1, 1, 2, 2, "40", "200", False),
    (11, ACME_END, 1, 1, 1, 1, 1, 1, "1000", "0", False),  # at the end: excluded
    # globex, current period [NOW-5d, NOW+25d)
    (12, NOW - 2 * DAY, 2, 3, 3, 4, 4, 1, "60", "0", False),
    (13, NOW - 1 * DAY, 2, 3, 3, 4, 5, 2, "15", "90", False),
    (14, NOW - 1 * DAY, 2, 3, 3, 4, 4, 1, "77", "0", True),  # playground
    # globex, previous period (inside acme's current period: must not leak)
    (15, NOW - 6 * DAY, 2, 3, 3, 4, 4, 1, "300", "40", False),
]


def insert_dataset(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()

        def put(table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
            marks = ", ".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)

        put("plans", "id, slug, name, monthly_credits, agent_slots, seats", PLANS)
        put("plan_quotas", "plan_id, quota, quota_limit", PLAN_QUOTAS)
        put("organizations", "id, slug, name, plan_id, created_at", ORGANIZATIONS)
        put("billing_periods", "organization_id, starts_at, ends_at", BILLING_PERIODS)
        put("departments", "id, organization_id, slug, name", DEPARTMENTS)
        put("projects", "id, organization_id, slug, name, color", PROJECTS)
        put(
            "users",
            "id, organization_id, department_id, email, human_agent, deactivated_at, created_at",
            [(*row, NOW - 100 * DAY) for row in USERS],
        )
        put("models", "id, slug, provider, name, multiplier, tier", MODELS)
        put(
            "agents",
            "id, organization_id, project_id, slug, name, model_id, paid, deleted_at, created_at",
            [(*row, NOW - 60 * DAY) for row in AGENTS],
        )
        put("service_types", "id, slug, name", [(i, s, s) for i, s in SERVICE_TYPES])
        put(
            "pricing_rules",
            "id, service_type_id, slug, name, unit, credits_per_unit",
            [(i, i, f"rule_{s}", s, "unit", 1) for i, s in SERVICE_TYPES],
        )
        put("task_categories", "id, slug, name", [(1, "support", "Support")])
        put("channels", "id, slug, name", [(1, "web_chat", "Web chat"), (2, "phone", "Phone")])
        put(
            "credit_pools",
            "organization_id, pool, allocation, balance, updated_at",
            [(*row, NOW) for row in CREDIT_POOLS],
        )
        put("budgets", "id, organization_id, scope, scope_ref_id, monthly_limit", BUDGETS)
        put(
            "budget_alert_levels",
            "organization_id, budget_id, level, threshold_percent",
            BUDGET_ALERT_LEVELS,
        )
        put(
            "auto_recharge",
            "organization_id, enabled, threshold_credits, amount_credits",
            AUTO_RECHARGE,
        )
        put("phone_numbers", "id, organization_id, number, released_at", PHONE_NUMBERS)
        put(
            "visitors",
            "id, organization_id, agent_id, contact, first_seen_at",
            [(*row, f"visitor{row[0]}", NOW - 80 * DAY) for row in VISITORS],
        )
        put(
            "conversations",
            "id, organization_id, agent_id, channel_id, visitor_id, type, started_at, "
            "ended_at, playground",
            CONVERSATIONS,
        )
        put(
            "paid_agent_subscriptions",
            "id, organization_id, agent_id, visitor_id, cancelled_at, started_at",
            [(*row, NOW - 70 * DAY) for row in SUBSCRIPTIONS],
        )
        put(
            "usage_events",
            "id, occurred_at, organization_id, project_id, department_id, user_id, agent_id, "
            "service_type_id, credits, voice_seconds, playground, model_id, pricing_rule_id, "
            "task_category_id, channel_id, pool, latency_seconds, success",
            [(*row, 1, row[7], 1, 1, "plan", Decimal("0.5"), True) for row in EVENTS],
        )
        for table in ("visitors", "conversations", "paid_agent_subscriptions", "usage_events"):
            cur.execute(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")


@pytest.fixture
def billing_db(schema_db: str) -> Iterator[str]:
    insert_dataset(schema_db)
    yield schema_db


# --- the mapping against the catalogue -----------------------------------------


def test_every_state_metric_is_mapped_once_with_its_catalogue_labels() -> None:
    seen: list[str] = []
    for qname, query in QUERIES.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", qname)
        for mapping in query["metrics"]:
            name = mapping["metric"]
            seen.append(name)
            assert name in catalog.BY_NAME, f"{qname}: {name} is not in the catalogue"
            metric = catalog.get(name)
            assert metric.is_state, f"{qname}: {name} is not a state metric"
            labels = mapping["labels"]
            names = labels if isinstance(labels, list) else list(labels)
            assert len(names) == len(set(names)), f"{name}: a label is named twice"
            assert set(names) == set(metric.labels), f"{name}: labels differ from the catalogue"
            if metric.type is catalog.MetricType.INFO:
                assert "value" not in mapping, f"{name}: an _info metric has no value column"
            else:
                assert mapping.get("value"), f"{name}: no value column"
    assert len(seen) == len(set(seen)), "a metric is fed by more than one query"
    assert set(seen) == {m.name for m in catalog.state_metrics()}


def test_queries_and_database_follow_the_config_format() -> None:
    assert CONFIG["databases"]["billing"]["dsn_env"] == "CREDIT_EXPORTER_DSN"
    for key in ("statement_timeout", "connect_timeout"):
        _duration_seconds(CONFIG["databases"]["billing"][key])
    assert set(CONFIG) == {"databases", "queries", "streams"}
    for qname, query in QUERIES.items():
        assert query["database"] == "billing", qname
        interval, timeout = (
            _duration_seconds(query["interval"]),
            _duration_seconds(query["timeout"]),
        )
        assert timeout <= interval, qname


@pytest.mark.parametrize("qname", sorted(QUERIES))
def test_query_columns_include_every_mapped_value_and_label(schema_db: str, qname: str) -> None:
    columns, rows = run_query(schema_db, qname)
    assert rows == []
    assert len(columns) == len(set(columns)), f"{qname}: duplicate column names"
    for mapping in QUERIES[qname]["metrics"]:
        needed = set(_labels(mapping).values())
        if "value" in mapping:
            needed.add(mapping["value"])
        assert needed <= set(columns), (
            f"{qname}/{mapping['metric']}: missing {needed - set(columns)}"
        )


# --- semantics, by query ---------------------------------------------------------


def test_organization_info_carries_name_and_plan_slug(billing_db: str) -> None:
    assert series(billing_db, "credit_organization_info") == {
        ("acme", "Acme Corp", "pro"): 1,
        ("globex", "Globex Inc", "starter"): 1,
    }


def test_project_info_carries_name_and_color(billing_db: str) -> None:
    assert series(billing_db, "credit_project_info") == {
        ("acme", "support", "Customer Support", "#1f77b4"): 1,
        ("acme", "internal", "Internal Tools", "#ff7f0e"): 1,
        ("globex", "helpdesk", "Helpdesk", "#2ca02c"): 1,
    }


def test_agent_info_lists_active_agents_with_model_and_paid_flag(billing_db: str) -> None:
    # oldbot is deleted: no series.
    assert series(billing_db, "credit_agent_info") == {
        ("acme", "support", "helpbot", "Help Bot", "gpt-4o", "false"): 1,
        ("acme", "support", "salesbot", "Sales Bot", "gpt-4o-mini", "true"): 1,
        ("globex", "helpdesk", "deskbot", "Desk Bot", "claude-sonnet-4", "true"): 1,
        ("globex", "helpdesk", "faqbot", "FAQ Bot", "gpt-4o-mini", "false"): 1,
    }


def test_model_multiplier_for_every_model_with_provider_and_tier(billing_db: str) -> None:
    assert series(billing_db, "credit_model_multiplier_ratio") == {
        ("gpt-4o", "openai", "premium"): 2.5,
        ("gpt-4o-mini", "openai", "economy"): 0.25,
        ("claude-sonnet-4", "anthropic", "standard"): 1.0,
    }


def test_allocation_and_balance_per_pool(billing_db: str) -> None:
    assert series(billing_db, "credit_allocation_credits") == {
        ("acme", "plan"): 10000,
        ("acme", "topup"): 500,
        ("globex", "plan"): 1000,
        ("globex", "topup"): 0,
    }
    assert series(billing_db, "credit_balance_credits") == {
        ("acme", "plan"): 7500.5,
        ("acme", "topup"): 500,
        ("globex", "plan"): 20.25,
        ("globex", "topup"): 0,
    }


def test_billing_period_is_the_current_one_in_unix_seconds(billing_db: str) -> None:
    assert series(billing_db, "credit_billing_period_start_timestamp_seconds") == {
        ("acme",): ACME_START.timestamp(),
        ("globex",): GLOBEX_START.timestamp(),
    }
    assert series(billing_db, "credit_billing_period_end_timestamp_seconds") == {
        ("acme",): ACME_END.timestamp(),
        ("globex",): GLOBEX_END.timestamp(),
    }


def test_budget_used_excludes_playground_and_other_periods(billing_db: str) -> None:
    # acme current period, non-playground: events 1 (100), 2 (30), 3 (50),
    # 4 (-20, refund), 7 (5, at the period start), 8 (10) = 175.
    #   department eng (1): 1, 2, 4, 7, 8 = 125; project support (1): 1, 2, 4, 8 = 120;
    #   alice (1): 1, 2, 4, 7 = 115; bob (2): only playground (5, 6) and past (9) = 0.
    # globex current period: 12 (60) + 13 (15) = 75; 14 is playground, 15 is in
    # globex's previous period (though inside acme's current one).
    assert series(billing_db, "credit_budget_used_credits") == {
        ("acme", "organization", "acme"): 175,
        ("acme", "department", "eng"): 125,
        ("acme", "project", "support"): 120,
        ("acme", "user", "alice@acme.test"): 115,
        ("acme", "user", "bob@acme.test"): 0,
        ("globex", "organization", "globex"): 75,
        ("globex", "project", "helpdesk"): 75,
    }


def test_a_nan_usage_row_leaves_the_budget_and_quota_series_as_they_were(billing_db: str) -> None:
    """numeric accepts 'NaN': the row drops out of the sums, the budget keeps its series."""
    budgets = series(billing_db, "credit_budget_used_credits")
    quotas = series(billing_db, "credit_plan_quota_used")
    with psycopg.connect(billing_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_events (occurred_at, organization_id, project_id, department_id,"
            " user_id, agent_id, service_type_id, credits, voice_seconds, playground, model_id,"
            " pricing_rule_id, task_category_id, channel_id, pool, latency_seconds, success)"
            " SELECT occurred_at, organization_id, project_id, department_id, user_id, agent_id,"
            " 2, 'NaN', 'NaN', false, model_id, pricing_rule_id, task_category_id, channel_id,"
            " pool, latency_seconds, success FROM usage_events WHERE id = 2"
        )
    assert series(billing_db, "credit_budget_used_credits") == budgets
    assert series(billing_db, "credit_plan_quota_used") == quotas


def test_budget_limit_for_every_budget_row(billing_db: str) -> None:
    assert series(billing_db, "credit_budget_limit_credits") == {
        ("acme", "organization", "acme"): 10000,
        ("acme", "department", "eng"): 4000,
        ("acme", "project", "support"): 6000,
        ("acme", "user", "alice@acme.test"): 1000,
        ("acme", "user", "bob@acme.test"): 500,
        ("globex", "organization", "globex"): 1000,
        ("globex", "project", "helpdesk"): 800,
    }


def test_budget_with_missing_scope_row_is_skipped(billing_db: str) -> None:
    with psycopg.connect(billing_db) as conn:
        conn.execute(
            "INSERT INTO budgets (id, organization_id, scope, scope_ref_id, monthly_limit) "
            "VALUES (8, 1, 'department', 3, 100), (9, 1, 'user', 999, 100)"
        )  # department 3 belongs to globex; user 999 does not exist
    assert len(series(billing_db, "credit_budget_used_credits")) == len(BUDGETS)


def test_organization_alert_ladder_is_exported_as_ratios_by_alert_level(billing_db: str) -> None:
    assert series(billing_db, "credit_organization_budget_alert_threshold_ratio") == {
        ("acme", "UsageHigh"): 0.5,
        ("acme", "AlmostExhausted"): 0.8,
        ("acme", "Exhausted"): 1.0,
    }


def test_budget_ladders_are_exported_by_the_budgets_scope_and_scope_id(billing_db: str) -> None:
    assert series(billing_db, "credit_budget_alert_threshold_ratio") == {
        ("acme", "user", "alice@acme.test", "UsageHigh"): 0.625,
        ("globex", "project", "helpdesk", "UsageHigh"): 0.7,
        ("globex", "project", "helpdesk", "AlmostExhausted"): 0.85,
        ("globex", "project", "helpdesk", "Exhausted"): 0.95,
    }


def test_budget_ladder_of_a_budget_with_missing_scope_row_is_skipped(billing_db: str) -> None:
    with psycopg.connect(billing_db) as conn:
        conn.execute(
            "INSERT INTO budgets (id, organization_id, scope, scope_ref_id, monthly_limit) "
            "VALUES (8, 1, 'department', 3, 100)"
        )  # department 3 belongs to globex
        conn.execute(
            "INSERT INTO budget_alert_levels (organization_id, budget_id, level, threshold_percent)"
            " VALUES (1, 8, 'usage_high', 10)"
        )
    assert len(series(billing_db, "credit_budget_alert_threshold_ratio")) == 4


def test_a_budget_ladder_naming_another_organization_is_refused(billing_db: str) -> None:
    with psycopg.connect(billing_db) as conn, pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(
            "INSERT INTO budget_alert_levels (organization_id, budget_id, level, threshold_percent)"
            " VALUES (2, 4, 'exhausted', 90)"
        )  # budget 4 is acme's


def test_a_second_threshold_for_one_level_of_a_ladder_is_refused(billing_db: str) -> None:
    for budget in ("NULL", "4"):
        with psycopg.connect(billing_db) as conn, pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO budget_alert_levels"
                " (organization_id, budget_id, level, threshold_percent)"
                f" VALUES (1, {budget}, 'usage_high', 55)"
            )


def test_slots_and_seats_count_active_agents_and_users(billing_db: str) -> None:
    # acme: helpbot, salesbot (oldbot deleted); alice, bob, erin (carol deactivated).
    assert series(billing_db, "credit_agent_slots_used") == {("acme",): 2, ("globex",): 2}
    assert series(billing_db, "credit_agent_slots_limit") == {("acme",): 10, ("globex",): 2}
    assert series(billing_db, "credit_seats_used") == {("acme",): 3, ("globex",): 1}
    assert series(billing_db, "credit_seats_limit") == {("acme",): 5, ("globex",): 3}


def test_plan_quota_used_per_quota_of_the_plan(billing_db: str) -> None:
    # acme text_queries: text_generation, non-playground, current period:
    #   events 1, 3, 7, 8 = 4 (4 is a refund: a correction, not a query).
    # acme voice_seconds: event 2 = 120 (6 is playground, 10 is last period).
    # acme concurrent_calls: conversations 1 and 5 (2 ended, 3 playground, 4 a chat).
    # acme phone_numbers: 1 and 3 (2 released). human_agent_seats: alice (carol deactivated).
    # globex (starter: three quotas): text 12 = 1; voice 13 = 90; its only number is released.
    assert series(billing_db, "credit_plan_quota_used") == {
        ("acme", "text_queries"): 4,
        ("acme", "voice_seconds"): 120,
        ("acme", "concurrent_calls"): 2,
        ("acme", "phone_numbers"): 2,
        ("acme", "human_agent_seats"): 1,
        ("globex", "text_queries"): 1,
        ("globex", "voice_seconds"): 90,
        ("globex", "phone_numbers"): 0,
    }
    assert series(billing_db, "credit_plan_quota_limit") == {
        ("acme", "text_queries"): 1000,
        ("acme", "voice_seconds"): 3600,
        ("acme", "concurrent_calls"): 5,
        ("acme", "phone_numbers"): 3,
        ("acme", "human_agent_seats"): 2,
        ("globex", "text_queries"): 100,
        ("globex", "voice_seconds"): 600,
        ("globex", "phone_numbers"): 1,
    }


def test_plan_quota_used_is_zero_without_a_current_period(billing_db: str) -> None:
    with psycopg.connect(billing_db) as conn:
        conn.execute("DELETE FROM billing_periods WHERE organization_id = 2 AND ends_at > now()")
    used = series(billing_db, "credit_plan_quota_used")
    assert used[("globex", "text_queries")] == 0
    assert used[("globex", "voice_seconds")] == 0
    assert series(billing_db, "credit_billing_period_start_timestamp_seconds") == {
        ("acme",): ACME_START.timestamp()
    }
    assert (
        series(billing_db, "credit_budget_used_credits")[("globex", "organization", "globex")] == 0
    )


def test_auto_recharge_settings(billing_db: str) -> None:
    assert series(billing_db, "credit_auto_recharge_enabled") == {("acme",): 1, ("globex",): 0}
    assert series(billing_db, "credit_auto_recharge_threshold_credits") == {
        ("acme",): 100,
        ("globex",): 50.5,
    }
    assert series(billing_db, "credit_auto_recharge_amount_credits") == {
        ("acme",): 500,
        ("globex",): 200,
    }


def test_paid_agent_subscribers_count_active_subscriptions_of_active_paid_agents(
    billing_db: str,
) -> None:
    # salesbot: 1 and 2 (3 cancelled); deskbot: none; oldbot is deleted; helpbot is free.
    assert series(billing_db, "credit_paid_agent_subscribers") == {
        ("acme", "salesbot"): 2,
        ("globex", "deskbot"): 0,
    }


# --- efficiency ------------------------------------------------------------------


def _add_bulk_events(dsn: str, per_org: int) -> None:
    """per_org events per organization, evenly over the last 200 days, then ANALYZE."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for org, project, department, user in ((1, 1, 1, 1), (2, 3, 3, 4)):
            conn.execute(
                """
                INSERT INTO usage_events (occurred_at, organization_id, project_id,
                    department_id, user_id, model_id, service_type_id, pricing_rule_id,
                    task_category_id, channel_id, pool, credits, latency_seconds, success,
                    playground)
                SELECT now() - (200 * i / %(n)s) * interval '1 day', %(org)s, %(project)s,
                       %(department)s, %(user)s, 1, 1 + i %% 3, 1 + i %% 3, 1, 1, 'plan', 1,
                       0.5, true, i %% 50 = 0
                FROM generate_series(1, %(n)s) AS i
                """,
                {
                    "n": per_org,
                    "org": org,
                    "project": project,
                    "department": department,
                    "user": user,
                },
            )
        conn.execute("ANALYZE")


@pytest.mark.parametrize("qname", ["budgets", "plan_quotas"])
def test_period_sums_range_scan_the_org_occurred_at_index(billing_db: str, qname: str) -> None:
    _add_bulk_events(billing_db, per_org=5000)
    with psycopg.connect(billing_db) as conn:
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + QUERIES[qname]["sql"]).fetchall()
        )
    assert "Seq Scan on usage_events" not in plan, plan
    assert "usage_events_org_occurred_at" in plan, plan

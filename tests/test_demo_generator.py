"""The demo data generator, against a real PostgreSQL.

One 7-day load (seed 42, a fixed ``now``) is shared by the read-only tests;
every figure is recomputed here in SQL, independently of the generator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from credit_exporter.demo.generator import DemoSummary, demo_loaded, load_demo
from credit_exporter.demo.schema import apply_migrations

NOW = datetime(2025, 3, 14, 15, 30, tzinfo=UTC)  # a Friday afternoon
DAYS = 7
SEED = 42
FACT_TABLES = (
    "usage_events", "conversations", "messages", "feedback", "visitors", "topups",
    "paid_agent_subscriptions", "paid_agent_transactions",
)  # fmt: skip
# (organization, lowest, highest) current-period usage / organization budget limit
RATIO_BANDS = (
    ("northwind", 0.42, 0.48),
    ("acme", 0.76, 0.80),
    ("globex", 0.91, 0.94),
    ("initech", 1.01, 1.04),
    ("umbrella", 0.55, 0.65),
    ("hooli", 0.27, 0.33),
)
CURRENT_PERIOD = """
    SELECT organization_id, starts_at, ends_at FROM billing_periods
    WHERE starts_at <= %(now)s AND %(now)s < ends_at
"""


@pytest.fixture(scope="module")
def demo_dsn(make_database: Callable[[], str]) -> str:
    dsn = make_database()
    load_demo(dsn, days=DAYS, seed=SEED, now=NOW)
    return dsn


@dataclass(frozen=True)
class Reloaded:
    dsn: str
    other_seed: dict[str, str]  # fingerprints after the first load, with another seed
    summary: DemoSummary  # of the second load, like demo_dsn's


@pytest.fixture(scope="module")
def reloaded(make_database: Callable[[], str]) -> Reloaded:
    """A database loaded with another seed, then loaded again like demo_dsn."""
    dsn = make_database()
    load_demo(dsn, days=DAYS, seed=SEED + 1, now=NOW)
    other = _fingerprints(dsn)
    return Reloaded(dsn, other, load_demo(dsn, days=DAYS, seed=SEED, now=NOW))


def _rows(dsn: str, sql: str, params: dict | tuple | None = None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def _value(dsn: str, sql: str, params: dict | tuple | None = None) -> object:
    return _rows(dsn, sql, params)[0][0]


def _fingerprints(dsn: str) -> dict[str, str]:
    out = {
        table: str(_value(dsn, f"SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"))
        for table in FACT_TABLES
    }
    out["credit_pools"] = str(
        _value(
            dsn,
            "SELECT md5(string_agg(t::text, ',' ORDER BY organization_id, pool)) "
            "FROM credit_pools t",
        )
    )
    out["budgets"] = str(
        _value(dsn, "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM budgets t")
    )
    return out


def test_same_seed_and_now_give_identical_tables(demo_dsn: str, reloaded: Reloaded) -> None:
    assert _fingerprints(reloaded.dsn) == _fingerprints(demo_dsn)


# Every table of a seed-42, 7-day load at NOW, hashed as text in a fixed session
# setting: a change to what the generator produces changes it. (The alert ladders
# of budget_alert_levels changed it from f91376ca...30dec, which the other tables
# still give alone: the ladders draw nothing from the seed's random stream.)
DEMO_DIGEST = "4801b33fc0e8adcbcaed4fd5b2449b11fbe0baf6a24fa1054b810a3044610dc4"


def _digest(dsn: str) -> str:
    from credit_exporter.demo.generator import ALL_TABLES

    with psycopg.connect(dsn) as conn:
        for setting in ("TimeZone = 'UTC'", "DateStyle = 'ISO, YMD'",
                        "IntervalStyle = 'postgres'", "extra_float_digits = 1"):  # fmt: skip
            conn.execute(f"SET {setting}")
        parts = [
            f"{table}:"
            + str(
                conn.execute(
                    f"SELECT count(*), md5(string_agg(md5(t::text), ',' "
                    f'ORDER BY md5(t::text) COLLATE "C")) FROM {table} t'
                ).fetchone()
            )
            for table in sorted(ALL_TABLES)
        ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def test_a_fixed_seed_and_now_give_fixed_table_contents(demo_dsn: str) -> None:
    assert _digest(demo_dsn) == DEMO_DIGEST


def test_different_seed_gives_different_tables(demo_dsn: str, reloaded: Reloaded) -> None:
    ours = _fingerprints(demo_dsn)
    assert reloaded.other_seed["usage_events"] != ours["usage_events"]
    assert reloaded.other_seed["messages"] != ours["messages"]


def test_loading_again_replaces_the_data_and_the_summary_counts_rows(reloaded: Reloaded) -> None:
    dsn, summary = reloaded.dsn, reloaded.summary
    assert summary.usage_events == _value(dsn, "SELECT count(*) FROM usage_events")
    assert summary.conversations == _value(dsn, "SELECT count(*) FROM conversations")
    assert summary.messages == _value(dsn, "SELECT count(*) FROM messages")
    assert summary.seconds > 0
    assert dict(summary.ratios)["acme"] == pytest.approx(0.78, abs=0.005)


@pytest.mark.parametrize(("slug", "low", "high"), RATIO_BANDS)
def test_organization_usage_ratio_is_in_its_band(
    demo_dsn: str, slug: str, low: float, high: float
) -> None:
    ratio = _value(
        demo_dsn,
        f"""
        WITH cp AS ({CURRENT_PERIOD})
        SELECT sum(u.credits) / b.monthly_limit
        FROM organizations o
        JOIN cp ON cp.organization_id = o.id
        JOIN budgets b ON b.organization_id = o.id AND b.scope = 'organization'
        JOIN usage_events u ON u.organization_id = o.id AND NOT u.playground
         AND u.occurred_at >= cp.starts_at AND u.occurred_at < cp.ends_at
        WHERE o.slug = %(slug)s
        GROUP BY b.monthly_limit
        """,
        {"now": NOW, "slug": slug},
    )
    assert low <= float(ratio) <= high  # type: ignore[arg-type]


def test_organization_budget_is_plan_plus_topup_allocation(demo_dsn: str) -> None:
    mismatched = _rows(
        demo_dsn,
        """
        SELECT b.organization_id FROM budgets b
        JOIN credit_pools p ON p.organization_id = b.organization_id
        WHERE b.scope = 'organization'
        GROUP BY b.organization_id, b.monthly_limit
        HAVING b.monthly_limit <> sum(p.allocation)
        """,
    )
    assert mismatched == []


def test_pool_balance_is_allocation_minus_credits_drawn_this_period(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        f"""
        WITH cp AS ({CURRENT_PERIOD})
        SELECT p.organization_id, p.pool, p.allocation - p.balance,
               coalesce(sum(u.credits) FILTER (WHERE NOT u.playground), 0)
        FROM credit_pools p
        JOIN cp ON cp.organization_id = p.organization_id
        LEFT JOIN usage_events u ON u.organization_id = p.organization_id AND u.pool = p.pool
         AND u.occurred_at >= cp.starts_at AND u.occurred_at < cp.ends_at
        GROUP BY p.organization_id, p.pool, p.allocation, p.balance
        """,
        {"now": NOW},
    )
    assert len(rows) == 12
    assert all(used == drawn for _, _, used, drawn in rows), rows


def test_plan_pool_is_exhausted_before_topup_is_drawn(demo_dsn: str) -> None:
    # Orgs that drew their topup pool left (almost) nothing in the plan pool;
    # only initech is in overage.
    rows = _rows(
        demo_dsn,
        """
        SELECT o.slug, plan.balance, topup.balance, topup.allocation - topup.balance
        FROM organizations o
        JOIN credit_pools plan ON plan.organization_id = o.id AND plan.pool = 'plan'
        JOIN credit_pools topup ON topup.organization_id = o.id AND topup.pool = 'topup'
        ORDER BY o.id
        """,
    )
    for slug, plan_left, topup_left, topup_drawn in rows:
        if topup_drawn > 0:
            assert plan_left < 1, slug
        assert (topup_left < 0) == (slug == "initech"), slug


def test_current_period_contains_now_and_periods_cover_the_range(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        """
        SELECT o.slug,
               count(*) FILTER (WHERE bp.starts_at <= %(now)s AND %(now)s < bp.ends_at),
               min(bp.starts_at) <= %(now)s - make_interval(days => %(days)s),
               count(*) FILTER (WHERE bp.starts_at > %(now)s - make_interval(days => %(days)s))
        FROM organizations o JOIN billing_periods bp ON bp.organization_id = o.id
        GROUP BY o.slug
        """,
        {"now": NOW, "days": DAYS},
    )
    assert all(current == 1 and covered for _, current, covered, _ in rows)
    assert any(boundaries > 0 for *_, boundaries in rows)  # a period starts inside the range
    next_billing = _rows(
        demo_dsn, f"SELECT DISTINCT ends_at FROM ({CURRENT_PERIOD}) cp", {"now": NOW}
    )
    assert len(next_billing) == 6  # a different next billing date per organization


@pytest.mark.parametrize(
    ("table", "column", "sql_all"),
    [
        ("usage_events", "channel_id", "SELECT id FROM channels"),
        ("usage_events", "service_type_id", "SELECT id FROM service_types"),
        ("usage_events", "task_category_id", "SELECT id FROM task_categories"),
        ("usage_events", "model_id", "SELECT id FROM models"),
        ("usage_events", "pricing_rule_id", "SELECT id FROM pricing_rules"),
        ("conversations", "channel_id", "SELECT id FROM channels WHERE slug <> 'api'"),
    ],
)
def test_every_dimension_value_is_used(
    demo_dsn: str, table: str, column: str, sql_all: str
) -> None:
    unused = _rows(demo_dsn, f"{sql_all} EXCEPT SELECT DISTINCT {column} FROM {table}")
    assert unused == []


def test_reference_data_is_complete(demo_dsn: str) -> None:
    assert _value(demo_dsn, "SELECT count(DISTINCT tier) FROM models") == 3
    assert _value(demo_dsn, "SELECT count(*) FROM models") >= 12
    assert _rows(demo_dsn, "SELECT slug FROM plans ORDER BY id") == [
        ("free",), ("pro",), ("team",), ("enterprise",)
    ]  # fmt: skip
    assert _value(demo_dsn, "SELECT count(*) FROM plan_quotas") == 4 * 5
    assert _value(demo_dsn, "SELECT count(DISTINCT quota) FROM plan_quotas") == 5
    assert _value(demo_dsn, "SELECT count(DISTINCT slug) FROM organizations") == 6
    assert _value(demo_dsn, "SELECT count(*) FROM auto_recharge") == 6


def test_umbrella_has_most_traffic_and_projects_for_an_others_slice(demo_dsn: str) -> None:
    top = _value(
        demo_dsn,
        "SELECT o.slug FROM usage_events u JOIN organizations o ON o.id = u.organization_id "
        "GROUP BY o.slug ORDER BY count(*) DESC LIMIT 1",
    )
    assert top == "umbrella"
    projects = _rows(
        demo_dsn,
        "SELECT count(*), count(DISTINCT color) FROM projects p "
        "JOIN organizations o ON o.id = p.organization_id WHERE o.slug = 'umbrella'",
    )[0]
    assert projects[0] >= 8 and projects[0] == projects[1]


def test_playground_refund_failure_and_direct_prompt_rows_exist(demo_dsn: str) -> None:
    counts = _rows(
        demo_dsn,
        """
        SELECT count(*) FILTER (WHERE playground),
               count(*) FILTER (WHERE credits < 0),
               count(*) FILTER (WHERE NOT success),
               count(*) FILTER (WHERE agent_id IS NULL AND conversation_id IS NULL),
               count(*)
        FROM usage_events
        """,
    )[0]
    playground, refunds, failures, direct, total = counts
    assert 0.01 * total < playground < 0.06 * total
    assert refunds > 0
    assert 0.02 * total < failures < 0.06 * total
    assert direct > 0


def test_playground_rows_carry_credits_and_belong_to_playground_or_direct_prompts(
    demo_dsn: str,
) -> None:
    wrong = _value(
        demo_dsn,
        "SELECT count(*) FROM usage_events u LEFT JOIN conversations c ON c.id = u.conversation_id "
        "WHERE u.playground AND (u.credits <= 0 OR (c.id IS NOT NULL AND NOT c.playground))",
    )
    assert wrong == 0


def test_refunds_refer_to_existing_dimensions(demo_dsn: str) -> None:
    orphans = _value(
        demo_dsn,
        "SELECT count(*) FROM usage_events u WHERE u.credits < 0 AND NOT EXISTS ("
        "SELECT 1 FROM usage_events o WHERE o.credits > 0 AND o.organization_id = u.organization_id"
        " AND o.user_id = u.user_id AND o.model_id = u.model_id"
        " AND o.pricing_rule_id = u.pricing_rule_id AND o.occurred_at < u.occurred_at)",
    )
    assert orphans == 0


def test_credits_are_units_times_rate_times_multiplier(demo_dsn: str) -> None:
    wrong = _value(
        demo_dsn,
        """
        SELECT count(*) FROM usage_events u
        JOIN pricing_rules r ON r.id = u.pricing_rule_id
        JOIN models m ON m.id = u.model_id
        WHERE u.credits > 0 AND u.credits <> round(m.multiplier * CASE r.slug
            WHEN 'input_tokens' THEN u.input_tokens * r.credits_per_unit
                 + u.output_tokens * (SELECT credits_per_unit FROM pricing_rules
                                      WHERE slug = 'output_tokens')
            WHEN 'output_tokens' THEN u.output_tokens * r.credits_per_unit
                 + u.input_tokens * (SELECT credits_per_unit FROM pricing_rules
                                     WHERE slug = 'input_tokens')
            WHEN 'embedding_tokens' THEN u.input_tokens * r.credits_per_unit
            WHEN 'agent_message' THEN r.credits_per_unit
            WHEN 'agent_step' THEN r.credits_per_unit
            ELSE (u.voice_seconds + u.documents + u.tool_runs) * r.credits_per_unit
          END, 6)
        """,
    )
    assert wrong == 0


def test_usage_event_ids_increase_with_time(demo_dsn: str) -> None:
    for table, column in (("usage_events", "occurred_at"), ("messages", "created_at"),
                          ("conversations", "started_at")):  # fmt: skip
        backwards = _value(
            demo_dsn,
            f"SELECT count(*) FROM (SELECT {column} < lag({column}) OVER (ORDER BY id) AS back "
            f"FROM {table}) t WHERE back",
        )
        assert backwards == 0, table


def test_data_spans_the_range_before_now(demo_dsn: str) -> None:
    first, last = _rows(demo_dsn, "SELECT min(occurred_at), max(occurred_at) FROM usage_events")[0]
    assert (NOW - first).total_seconds() <= DAYS * 86400
    assert (NOW - first).total_seconds() > (DAYS - 0.1) * 86400
    assert last < NOW


def test_calls_are_in_progress_at_now(demo_dsn: str) -> None:
    in_progress = _value(
        demo_dsn,
        "SELECT count(*) FROM conversations WHERE type = 'call' AND ended_at IS NULL "
        "AND NOT playground",
    )
    assert in_progress > 0
    over_quota = _value(
        demo_dsn,
        """
        SELECT count(*) FROM (
          SELECT c.organization_id, count(*) AS n FROM conversations c
          WHERE c.type = 'call' AND c.ended_at IS NULL GROUP BY 1) calls
        JOIN organizations o ON o.id = calls.organization_id
        JOIN plan_quotas q ON q.plan_id = o.plan_id AND q.quota = 'concurrent_calls'
        WHERE calls.n > q.quota_limit
        """,
    )
    assert over_quota == 0


def test_messages_alternate_and_some_are_unanswered(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        """
        SELECT count(*) FILTER (WHERE role = 'assistant' AND unanswered),
               count(*) FILTER (WHERE role = 'assistant'),
               count(*) FILTER (WHERE role = prev_role)
        FROM (SELECT role, unanswered,
                     lag(role) OVER (PARTITION BY conversation_id ORDER BY created_at, id)
                       AS prev_role
              FROM messages) m
        """,
    )[0]
    unanswered, assistant, repeated = rows
    assert 0.01 < unanswered / assistant < 0.06
    assert repeated == 0


def test_ratings_per_model_average_between_4_2_and_4_8(demo_dsn: str) -> None:
    means = _rows(
        demo_dsn,
        "SELECT model_id, avg(rating), count(*) FROM feedback GROUP BY model_id "
        "HAVING count(*) >= 30",
    )
    assert means
    assert all(4.0 <= float(mean) <= 4.95 for _, mean, _ in means), means


def test_latency_means_follow_the_models(demo_dsn: str) -> None:
    means = dict(
        _rows(
            demo_dsn,
            "SELECT m.slug, avg(u.latency_seconds) FROM usage_events u "
            "JOIN models m ON m.id = u.model_id JOIN service_types s ON s.id = u.service_type_id "
            "WHERE s.slug IN ('text_generation', 'agent') AND u.success GROUP BY m.slug",
        )
    )
    assert float(means["claude-3-haiku"]) < float(means["claude-3-7-sonnet"])
    assert float(means["claude-3-7-sonnet"]) < float(means["gpt-4o"])
    assert float(means["gpt-4o"]) < float(means["o3-mini"])
    assert _value(demo_dsn, "SELECT max(latency_seconds) FROM usage_events") <= 60


def test_paid_agents_have_subscriptions_and_transactions(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        """
        SELECT a.slug, count(DISTINCT s.id), count(t.id), array_agg(DISTINCT t.currency)
        FROM agents a
        JOIN paid_agent_subscriptions s ON s.agent_id = a.id
        JOIN paid_agent_transactions t ON t.subscription_id = s.id
        WHERE a.paid GROUP BY a.id, a.slug
        """,
    )
    assert rows
    currencies = {c for *_, cs in rows for c in cs}
    assert currencies == {"USD", "EUR"}
    assert _value(demo_dsn, "SELECT count(*) FROM agents WHERE paid") == len(rows)


def test_topups_are_auto_only_where_auto_recharge_is_on(demo_dsn: str) -> None:
    assert (
        _value(
            demo_dsn,
            "SELECT count(*) FROM topups t JOIN auto_recharge a USING (organization_id) "
            "WHERE t.trigger = 'auto' AND NOT a.enabled",
        )
        == 0
    )
    assert _value(demo_dsn, "SELECT count(DISTINCT trigger) FROM topups") == 2


def test_topups_this_period_add_up_to_the_topup_allocation(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        f"""
        WITH cp AS ({CURRENT_PERIOD})
        SELECT p.allocation, coalesce(sum(t.credits), 0)
        FROM credit_pools p JOIN cp USING (organization_id)
        LEFT JOIN topups t ON t.organization_id = p.organization_id
         AND t.occurred_at >= cp.starts_at AND t.occurred_at < cp.ends_at
        WHERE p.pool = 'topup' GROUP BY p.organization_id, p.allocation
        """,
        {"now": NOW},
    )
    assert all(allocation == bought for allocation, bought in rows), rows


def test_scoped_budgets_sit_past_the_alert_thresholds(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        f"""
        WITH cp AS ({CURRENT_PERIOD})
        SELECT b.scope, sum(u.credits) / b.monthly_limit
        FROM budgets b JOIN cp ON cp.organization_id = b.organization_id
        JOIN usage_events u ON u.organization_id = b.organization_id AND NOT u.playground
         AND u.occurred_at >= cp.starts_at AND u.occurred_at < cp.ends_at
         AND CASE b.scope WHEN 'department' THEN u.department_id WHEN 'project' THEN u.project_id
                          ELSE u.user_id END = b.scope_ref_id
        WHERE b.scope <> 'organization'
        GROUP BY b.id, b.scope, b.monthly_limit
        """,
        {"now": NOW},
    )
    assert {scope for scope, _ in rows} == {"department", "project", "user"}
    ratios = [float(r) for _, r in rows]
    for low, high in ((0.75, 0.9), (0.9, 1.0), (1.0, 1.1)):
        assert any(low <= r < high for r in ratios), (low, high, sorted(ratios))


def test_cautious_organizations_carry_their_alert_ladders(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        "SELECT o.slug, l.level, l.threshold_percent FROM budget_alert_levels l"
        " JOIN organizations o ON o.id = l.organization_id WHERE l.budget_id IS NULL",
    )
    assert {(slug, level, int(percent)) for slug, level, percent in rows} == {
        ("umbrella", "usage_high", 50),
        ("umbrella", "almost_exhausted", 80),
        ("umbrella", "exhausted", 100),
        ("northwind", "usage_high", 40),
    }


def test_one_budget_between_its_organizations_80_and_90_percent_has_its_own_ladder(
    demo_dsn: str,
) -> None:
    """Its own 60/90/100 keeps it at UsageHigh where the organization's 50/80/100
    would say AlmostExhausted: the demo shows which ladder wins."""
    rows = _rows(
        demo_dsn,
        f"""
        WITH cp AS ({CURRENT_PERIOD})
        SELECT o.slug, b.scope, l.level, l.threshold_percent,
               sum(u.credits) / b.monthly_limit AS ratio
        FROM budget_alert_levels l
        JOIN budgets b ON b.id = l.budget_id
        JOIN organizations o ON o.id = b.organization_id
        JOIN cp ON cp.organization_id = b.organization_id
        JOIN usage_events u ON u.organization_id = b.organization_id AND NOT u.playground
         AND u.occurred_at >= cp.starts_at AND u.occurred_at < cp.ends_at
         AND CASE b.scope WHEN 'department' THEN u.department_id WHEN 'project' THEN u.project_id
                          ELSE u.user_id END = b.scope_ref_id
        GROUP BY o.slug, b.scope, l.level, l.threshold_percent, b.monthly_limit
        """,
        {"now": NOW},
    )
    assert {(slug, level, int(percent)) for slug, _, level, percent, _ in rows} == {
        ("umbrella", "usage_high", 60),
        ("umbrella", "almost_exhausted", 90),
        ("umbrella", "exhausted", 100),
    }
    assert {scope for _, scope, _, _, _ in rows} != {"organization"}
    assert all(0.8 <= float(ratio) < 0.9 for *_, ratio in rows), rows


def test_team_and_plan_limits_are_consistent(demo_dsn: str) -> None:
    rows = _rows(
        demo_dsn,
        """
        SELECT o.slug, p.seats,
          (SELECT count(*) FROM users u WHERE u.organization_id = o.id
            AND u.deactivated_at IS NULL),
          (SELECT count(*) FROM users u WHERE u.organization_id = o.id
            AND u.deactivated_at IS NOT NULL),
          p.agent_slots,
          (SELECT count(*) FROM agents a WHERE a.organization_id = o.id AND a.deleted_at IS NULL),
          (SELECT count(*) FROM agents a WHERE a.organization_id = o.id)
        FROM organizations o JOIN plans p ON p.id = o.plan_id
        """,
    )
    for slug, seats, active, deactivated, slots, live_agents, agents in rows:
        assert active <= seats and deactivated > 0, slug
        assert live_agents <= slots and 2 <= agents <= 12, slug
    umbrella_users = _value(
        demo_dsn,
        "SELECT count(*) FROM users u JOIN organizations o ON o.id = u.organization_id "
        "WHERE o.slug = 'umbrella'",
    )
    assert 50 <= umbrella_users <= 70
    assert _value(demo_dsn, "SELECT count(*) FROM users WHERE human_agent") > 0
    assert _value(demo_dsn, "SELECT count(*) FROM phone_numbers WHERE released_at IS NOT NULL") > 0


def test_deleted_agents_and_deactivated_users_stop_using_credits(demo_dsn: str) -> None:
    late = _value(
        demo_dsn,
        "SELECT count(*) FROM usage_events e LEFT JOIN agents a ON a.id = e.agent_id "
        "JOIN users u ON u.id = e.user_id WHERE e.credits >= 0 "  # a refund may come later
        "AND (e.occurred_at >= a.deleted_at OR e.occurred_at >= u.deactivated_at)",
    )
    assert late == 0


def test_visitors_first_seen_at_their_first_conversation(demo_dsn: str) -> None:
    wrong = _value(
        demo_dsn,
        "SELECT count(*) FROM visitors v JOIN (SELECT visitor_id, min(started_at) AS first "
        "FROM conversations GROUP BY 1) c ON c.visitor_id = v.id WHERE v.first_seen_at <> c.first",
    )
    assert wrong == 0


def test_runaway_agent_spends_five_times_its_usual_hourly_rate(demo_dsn: str) -> None:
    recent, usual = _rows(
        demo_dsn,
        """
        SELECT sum(u.credits) FILTER (WHERE u.occurred_at >= %(now)s - interval '6 hours') / 6,
               sum(u.credits) FILTER (WHERE u.occurred_at < %(now)s - interval '6 hours')
                 / (extract(epoch FROM %(now)s - interval '6 hours'
                                       - (%(now)s - make_interval(days => %(days)s))) / 3600)
        FROM usage_events u
        JOIN agents a ON a.id = u.agent_id
        JOIN organizations o ON o.id = a.organization_id
        WHERE o.slug = 'umbrella' AND a.slug = 'lead-qualifier' AND NOT u.playground
        """,
        {"now": NOW, "days": DAYS},
    )[0]
    assert recent >= 5 * usual


def test_runaway_agent_is_the_top_spender_of_the_last_hours(demo_dsn: str) -> None:
    top = _value(
        demo_dsn,
        "SELECT a.slug FROM usage_events u JOIN agents a ON a.id = u.agent_id "
        "WHERE u.occurred_at >= %(now)s - interval '6 hours' GROUP BY a.id, a.slug "
        "ORDER BY sum(u.credits) DESC LIMIT 1",
        {"now": NOW},
    )
    assert top == "lead-qualifier"


def test_weekdays_outspend_weekends(demo_dsn: str) -> None:
    today = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    midweek, weekend = _rows(
        demo_dsn,
        """
        SELECT avg(credits) FILTER (WHERE dow IN (2, 3, 4)),
               avg(credits) FILTER (WHERE dow IN (0, 6))
        FROM (SELECT date_trunc('day', occurred_at AT TIME ZONE 'UTC') AS day,
                     extract(dow FROM occurred_at AT TIME ZONE 'UTC') AS dow,
                     sum(credits) AS credits
              FROM usage_events
              WHERE occurred_at >= %(first)s AND occurred_at < %(today)s AND NOT playground
              GROUP BY 1, 2) days
        """,
        {"first": today - timedelta(days=DAYS - 1), "today": today},
    )[0]
    assert midweek > 3 * weekend


def test_launch_spike_is_one_day_about_20_days_ago_with_3_times_the_traffic(
    make_database: Callable[[], str],
) -> None:
    dsn = make_database()
    load_demo(dsn, days=30, seed=SEED, now=NOW, scale=0.1)
    days = _rows(
        dsn,
        """
        SELECT date_trunc('day', occurred_at AT TIME ZONE 'UTC') AS day, count(*)
        FROM usage_events u JOIN organizations o ON o.id = u.organization_id
        WHERE o.slug = 'umbrella' AND extract(isodow FROM occurred_at AT TIME ZONE 'UTC') <= 5
          AND occurred_at >= %(now)s - interval '29 days'
          AND occurred_at < %(now)s - interval '1 day'
        GROUP BY 1 ORDER BY 2 DESC
        """,
        {"now": NOW},
    )
    busiest, busiest_count = days[0]
    median = sorted(n for _, n in days)[len(days) // 2]
    assert busiest_count >= 2.5 * median
    assert 18 <= (NOW.replace(tzinfo=None) - busiest).days <= 22


def test_sequences_continue_after_the_loaded_ids(demo_dsn: str) -> None:
    with psycopg.connect(demo_dsn) as conn:
        for table in FACT_TABLES:
            top = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
            nxt = conn.execute(
                f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))"
            ).fetchone()
            assert top is not None and nxt is not None
            assert nxt[0] == top[0] + 1, table
        conn.rollback()


@pytest.fixture(scope="module")
def schema_only_dsn(make_database: Callable[[], str]) -> str:
    dsn = make_database()
    apply_migrations(dsn)
    return dsn


def test_constraints_and_indexes_survive_the_bulk_load(demo_dsn: str, schema_only_dsn: str) -> None:
    def definitions(dsn: str) -> list[tuple]:
        return _rows(
            dsn,
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace "
            "UNION ALL SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "ORDER BY 1, 2",
        )

    assert definitions(demo_dsn) == definitions(schema_only_dsn)


def test_demo_loaded_reports_schema_and_data(
    demo_dsn: str, schema_only_dsn: str, make_database: Callable[[], str]
) -> None:
    assert demo_loaded(demo_dsn)
    assert not demo_loaded(schema_only_dsn)
    assert not demo_loaded(make_database())


def test_volume_is_a_few_thousand_events_a_day(demo_dsn: str) -> None:
    events = _value(demo_dsn, "SELECT count(*) FROM usage_events")
    assert DAYS * 2_500 <= events <= DAYS * 4_500  # the launch spike and the runaway included

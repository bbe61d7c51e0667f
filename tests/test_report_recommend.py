"""Recommendations, built from rows inserted into the reference schema: a cheaper model is
recommended only with enough prompts, a comparable success rate and a comparable rating;
off-peak advice only when peak-hour responses are clearly slower."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from report_support import config_for, report_json

MONDAY_10 = "2026-01-05 10:00+00"  # a weekday peak hour
SATURDAY_10 = "2026-01-10 10:00+00"  # off-peak (weekend)

BASE = """
INSERT INTO plans VALUES (1, 'team', 'Team', 1000, 5, 5);
INSERT INTO organizations VALUES (1, 'org', 'Org', 1, '2025-01-01');
INSERT INTO departments VALUES (1, 1, 'eng', 'Eng');
INSERT INTO projects VALUES (1, 1, 'web', 'Web', '#000000');
INSERT INTO users (id, organization_id, department_id, email, created_at)
  VALUES (1, 1, 1, 'ann@org.example', '2025-01-01');
INSERT INTO models VALUES (1, 'big', 'acme', 'Big', 2, 'premium'),
                          (2, 'small', 'acme', 'Small', 0.5, 'economy');
INSERT INTO service_types VALUES (1, 'text_generation', 'Text generation');
INSERT INTO pricing_rules VALUES (1, 1, 'output_tokens', 'Output tokens', 'token', 1);
INSERT INTO task_categories VALUES (1, 'email_writing', 'Email');
INSERT INTO channels VALUES (1, 'api', 'API');
INSERT INTO agents VALUES (1, 1, 1, 'bot', 'Bot', 1, false, '2025-01-01', NULL);
INSERT INTO visitors (organization_id, agent_id, contact, first_seen_at)
  VALUES (1, 1, 'v@x', '2026-01-01');
INSERT INTO conversations (organization_id, agent_id, channel_id, visitor_id, type, started_at)
  VALUES (1, 1, 1, 1, 'chat', '2026-01-05');
INSERT INTO messages (conversation_id, organization_id, agent_id, role, created_at)
  VALUES (1, 1, 1, 'assistant', '2026-01-05');
"""


def _usage(
    conn: psycopg.Connection[Any],
    model_id: int,
    prompts: int,
    credits: str,
    successes: int,
    at: str = MONDAY_10,
    latency: str = "1.0",
) -> None:
    conn.execute(
        """INSERT INTO usage_events (occurred_at, organization_id, project_id, department_id,
               user_id, model_id, service_type_id, pricing_rule_id, task_category_id,
               channel_id, pool, credits, latency_seconds, success)
           SELECT %(at)s::timestamptz + g * interval '10 seconds', 1, 1, 1, 1, %(model)s,
                  1, 1, 1, 1, 'plan', %(credits)s, %(latency)s, g <= %(successes)s
           FROM generate_series(1, %(n)s) g""",
        {"at": at, "model": model_id, "credits": credits, "successes": successes,
         "n": prompts, "latency": latency},
    )  # fmt: skip


def _ratings(conn: psycopg.Connection[Any], model_id: int, count: int, rating: int) -> None:
    conn.execute(
        """INSERT INTO feedback (message_id, organization_id, agent_id, model_id, rating,
                                 created_at)
           SELECT 1, 1, 1, %s, %s, '2026-01-05 12:00+00' FROM generate_series(1, %s)""",
        (model_id, rating, count),
    )


def _switches(
    dsn: str,
    tmp_path: Path,
    small_prompts: int = 100,
    small_successes: int = 99,
    small_rating: int = 4,
) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        conn.execute(BASE)
        _usage(conn, 1, 100, "2.000000", 99)
        _usage(conn, 2, small_prompts, "0.500000", small_successes)
        _ratings(conn, 1, 30, 4)
        _ratings(conn, 2, 30, small_rating)
    document = report_json(config_for(dsn, tmp_path), tmp_path, "--period", "2026-01")
    return list(document["tables"]["model_switches"])


def test_cheaper_model_with_same_quality_is_recommended_with_its_saving(
    schema_db: str, tmp_path: Path
) -> None:
    (switch,) = _switches(schema_db, tmp_path)
    assert (switch["task_category"], switch["from_model"], switch["to_model"]) == (
        "email_writing", "big", "small",
    )  # fmt: skip
    assert Decimal(switch["saving_credits"]) == Decimal("150")  # 100 prompts x (2.0 - 0.5)
    assert (switch["prompts"], switch["to_prompts"]) == (100, 100)
    assert (switch["from_success_rate"], switch["to_success_rate"]) == (0.99, 0.99)
    assert (switch["from_ratings"], switch["to_average_rating"]) == (30, 4.0)
    assert "150.00 credits less" in switch["message"]


def test_no_switch_to_a_model_with_too_few_prompts(schema_db: str, tmp_path: Path) -> None:
    assert _switches(schema_db, tmp_path, small_prompts=29, small_successes=29) == []


def test_no_switch_to_a_model_with_a_worse_success_rate(schema_db: str, tmp_path: Path) -> None:
    # 97% against 99%: more than the default 1 point lower
    assert _switches(schema_db, tmp_path, small_successes=97) == []


def test_no_switch_to_a_model_with_a_worse_rating(schema_db: str, tmp_path: Path) -> None:
    assert _switches(schema_db, tmp_path, small_rating=3) == []


def test_thresholds_come_from_the_report_section(schema_db: str, tmp_path: Path) -> None:
    with psycopg.connect(schema_db) as conn:
        conn.execute(BASE)
        _usage(conn, 1, 100, "2.000000", 99)
        _usage(conn, 2, 100, "0.500000", 97)
        _ratings(conn, 1, 30, 4)
        _ratings(conn, 2, 30, 4)
    config = config_for(schema_db, tmp_path, report={"max_success_rate_drop": 0.05})
    document = report_json(config, tmp_path, "--period", "2026-01")
    assert [s["to_model"] for s in document["tables"]["model_switches"]] == ["small"]


def _off_peak(dsn: str, tmp_path: Path, peak_latency: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        conn.execute(BASE)
        _usage(conn, 1, 40, "1.000000", 40, at=MONDAY_10, latency=peak_latency)
        _usage(conn, 1, 40, "1.000000", 40, at=SATURDAY_10, latency="2.0")
    document = report_json(config_for(dsn, tmp_path), tmp_path, "--period", "2026-01")
    return list(document["tables"]["off_peak"])


def test_off_peak_advice_when_peak_responses_are_slower(schema_db: str, tmp_path: Path) -> None:
    (advice,) = _off_peak(schema_db, tmp_path, peak_latency="3.0")
    assert advice["peak_average_response_seconds"] == 3.0
    assert advice["off_peak_average_response_seconds"] == 2.0
    assert (advice["peak_prompts"], advice["off_peak_prompts"]) == (40, 40)
    assert advice["peak_credit_share"] == 0.5


def test_no_off_peak_advice_when_peak_is_only_slightly_slower(
    schema_db: str, tmp_path: Path
) -> None:
    assert _off_peak(schema_db, tmp_path, peak_latency="2.2") == []  # +10% < 20%


def test_no_switch_between_models_of_different_service_types(
    schema_db: str, tmp_path: Path
) -> None:
    """An embedding model is no cheaper replacement for a chat model in the same task."""
    with psycopg.connect(schema_db) as conn:
        conn.execute(BASE)
        conn.execute(
            "INSERT INTO service_types VALUES (2, 'embedding', 'Embedding');"
            "INSERT INTO models VALUES (3, 'embed', 'acme', 'Embed', 0.1, 'economy');"
        )
        _usage(conn, 1, 100, "2.000000", 99)
        _usage(conn, 3, 100, "0.010000", 100)
        conn.execute("UPDATE usage_events SET service_type_id = 2 WHERE model_id = 3")
        _ratings(conn, 1, 30, 4)
        _ratings(conn, 3, 30, 5)
    document = report_json(config_for(schema_db, tmp_path), tmp_path, "--period", "2026-01")
    assert document["tables"]["model_switches"] == []
    # the leaderboard ranks each within its own service type, not the embedding above the chat
    ranks = {(r["service_type"], r["model"], r["rank"]) for r in document["tables"]["efficiency"]}
    assert ranks == {("embedding", "embed", 1), ("text_generation", "big", 1)}


def test_a_switch_names_the_service_type_it_compares_within(schema_db: str, tmp_path: Path) -> None:
    (switch,) = _switches(schema_db, tmp_path)
    assert switch["service_type"] == "text_generation"
    assert "For email_writing (text_generation)," in switch["message"]

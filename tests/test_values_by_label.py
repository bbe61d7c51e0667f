"""``values``: several value columns of one row exported as the values of one label
(input and output tokens as gen_ai_token_type), from one scan of the table."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from stream_support import InProcessStream, one_stream_config
from support import select, start_exporter, wait_until

from credit_exporter.config import ConfigError, parse_config

TOKENS = {
    "metric": "credit_tokens_total",
    "labels": {"organization": "team", "project": "proj", "gen_ai_request_model": "model"},
    "values": {"gen_ai_token_type": {"input": "prompt_tokens", "output": "completion_tokens"}},
}
SPENT = {
    "metric": "credit_spent_credits_total",
    "value": "spend",
    "labels": {"organization": "team", "project": "proj", "agent": "model", "service_type": "st"},
}


@pytest.fixture
def calls_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE calls (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),"
            " team text NOT NULL, model text NOT NULL, prompt_tokens integer,"
            " completion_tokens integer, spend numeric NOT NULL)"
        )
        conn.execute(
            "INSERT INTO calls (team, model, prompt_tokens, completion_tokens, spend) VALUES"
            " ('search', 'gpt-4o', 120, 30, 0.5), ('search', 'gpt-4o', 80, NULL, 0.25),"
            " ('ads', 'haiku', 10, 5, 0.01)"
        )
    return empty_db


def stream(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "database": "db", "time": "at", "key": "id", "interval": "5s", "timeout": "5s",
        "sql": "SELECT id, at, team, 'gw' AS proj, model, 'chat' AS st, prompt_tokens,"
               " completion_tokens, spend FROM calls",
        "metrics": metrics,
    }  # fmt: skip


def sql_tokens(dsn: str) -> dict[tuple[str, str, str], Decimal]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT team, model, t.kind, coalesce(sum(t.n), 0) FROM calls CROSS JOIN LATERAL"
            " (VALUES ('input', prompt_tokens), ('output', completion_tokens)) AS t(kind, n)"
            " GROUP BY 1, 2, 3"
        ).fetchall()
    return {(team, model, kind): Decimal(n) for team, model, kind, n in rows}


def test_value_columns_become_the_values_of_one_label_equal_to_sql(calls_db) -> None:
    s = InProcessStream(one_stream_config(calls_db, stream([TOKENS, SPENT])))
    try:
        s.poll()
        exported = {
            (labels[0], labels[2], labels[3]): value
            for labels, value in s.exported("credit_tokens_total").items()
        }
        assert exported == sql_tokens(calls_db)
        assert exported[("search", "gpt-4o", "output")] == 30  # a NULL adds nothing
    finally:
        s.close()


def test_the_value_columns_are_summed_in_one_scan_of_the_table(calls_db) -> None:
    s = InProcessStream(one_stream_config(calls_db, stream([TOKENS, SPENT])))
    try:
        s.poll()
        sums = [name for name, _ in s.stream.plan.aggregates if name.startswith("__s")]
        assert sums == ["__s0", "__s1", "__s2"]  # each value column summed once
        assert s.stream.ordering is not None
        statement = s.stream.plan.poll_statement(s.stream.ordering, None, s.stream.horizon)
        assert statement.as_string(None).count("FROM calls") == 1
    finally:
        s.close()


def test_values_work_for_a_state_query_through_the_real_exporter(
    calls_db: str, tmp_path: Path
) -> None:
    config = {
        "databases": {"db": {"dsn": calls_db}},
        "queries": {
            "quotas": {
                "database": "db",
                "sql": "SELECT 'acme' AS org, 120 AS queries, 30.5 AS voice",
                "metrics": [
                    {"metric": "credit_plan_quota_used", "labels": {"organization": "org"},
                     "values": {"quota": {"text_queries": "queries", "voice_seconds": "voice"}}},
                ],
            }
        },
    }  # fmt: skip
    exporter = start_exporter(config, tmp_path)
    try:
        wait_until(lambda: bool(select(exporter.samples(), "credit_plan_quota_used")), 15,
                   "quota series")  # fmt: skip
        series = {
            dict(labels)["quota"]: value
            for labels, value in select(exporter.samples(), "credit_plan_quota_used").items()
        }
        assert series == {"text_queries": 120.0, "voice_seconds": 30.5}
    finally:
        exporter.stop()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"value": "spend"}, "give value (one column) or values (one per label value), not both"),
        ({"values": {"gen_ai_token_type": {}}}, "give at least one label value and its column"),
        ({"values": {"a": {"x": "p"}, "b": {"y": "q"}}}, "name exactly one label"),
        ({"values": {"tier": {"x": "prompt_tokens"}}}, "tier not a label of credit_tokens_total"),
        ({"values": {"gen_ai_token_type": {"input": "model"}}},
         "column model is also used as a label"),
        ({"values": {"gen_ai_token_type": {"input": "p", "output": "p"}}},
         "two label values read the same column"),
    ],
)  # fmt: skip
def test_a_bad_values_mapping_is_a_config_error_naming_the_key(
    change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(
            {"databases": {"db": {"dsn": "dbname=x"}},
             "streams": {"s": stream([{**TOKENS, **change}])}}
        )  # fmt: skip
    assert f"streams.s.metrics[0].values: {problem}" in str(error.value), error.value


def test_a_histogram_cannot_spread_values_over_a_label() -> None:
    latency = {
        "metric": "credit_response_duration_seconds",
        "labels": {"organization": "team"},
        "values": {"gen_ai_request_model": {"gpt": "spend"}},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(
            {"databases": {"db": {"dsn": "dbname=x"}}, "streams": {"s": stream([latency])}}
        )
    assert "a histogram observes one column (give value)" in str(error.value)

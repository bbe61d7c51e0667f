"""A billing schema shaped nothing like the reference one, mapped by YAML alone:
an LLM gateway's spend log keyed by a text request id, ordered by its
insertion timestamp, with spend as a float-ish numeric and latency in ms."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from support import ExporterProcess, select, start_exporter, wait_until

SCHEMA = """
CREATE TABLE spend_log (
    request_id     text PRIMARY KEY,                 -- e.g. chatcmpl-<uuid>
    logged_at      timestamptz NOT NULL DEFAULT now(), -- insertion time
    team_alias     text NOT NULL,
    api_key_alias  text,
    model          text NOT NULL,
    spend          numeric(20, 9) NOT NULL,           -- USD-like credits, 9 decimals
    prompt_tokens  integer NOT NULL,
    completion_tokens integer NOT NULL,
    latency_ms     integer NOT NULL,
    status         text NOT NULL CHECK (status IN ('success', 'failure'))
);
CREATE INDEX spend_log_logged_at ON spend_log (logged_at);
"""

STREAM_SQL = """
SELECT logged_at, team_alias AS team, coalesce(api_key_alias, 'unknown') AS api_key,
       model, status, spend, prompt_tokens + completion_tokens AS tokens,
       latency_ms / 1000.0 AS latency_seconds
FROM spend_log
"""


def gateway_config(dsn: str) -> dict:
    spent_labels = {"organization": "team", "project": "project", "agent": "api_key",
                    "service_type": "service_type"}  # fmt: skip
    return {
        "databases": {"gateway": {"dsn": dsn}},
        "streams": {
            "spend_log": {
                "database": "gateway",
                "time": "logged_at",  # no integer id: ordered by insertion time
                "settle": "2s",
                "interval": "500ms",
                "timeout": "500ms",
                "sql": STREAM_SQL.replace(
                    "FROM spend_log",
                    ", 'gateway' AS project, 'text_generation' AS service_type,"
                    " 'other' AS task_category FROM spend_log",
                ),
                "metrics": [
                    {
                        "metric": "credit_spent_credits_total",
                        "value": "spend",
                        "labels": spent_labels,
                    },
                    {
                        "metric": "credit_model_requests_total",
                        "labels": {
                            "organization": "team",
                            "gen_ai_request_model": "model",
                            "task_category": "task_category",
                            "outcome": "status",
                        },
                    },
                    {
                        "metric": "credit_response_duration_seconds",
                        "value": "latency_seconds",
                        "labels": {"organization": "team", "gen_ai_request_model": "model"},
                    },
                ],
            }
        },
    }


def log_requests(dsn: str, count: int, team: str, spend: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO spend_log (request_id, team_alias, api_key_alias, model, spend,"
            " prompt_tokens, completion_tokens, latency_ms, status)"
            " VALUES (%s, %s, %s, %s, %s, 100, 50, %s, %s)",
            [
                (f"chatcmpl-{uuid.uuid4()}", team, None if i % 5 == 0 else f"key-{i % 3}",
                 "gpt-4o" if i % 2 else "claude-3-haiku", spend, 200 + 37 * i,
                 "failure" if i % 11 == 0 else "success")
                for i in range(count)
            ],
        )  # fmt: skip


def sql_spend(dsn: str) -> dict[tuple[str, str], Decimal]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT team_alias, coalesce(api_key_alias, 'unknown'), sum(spend)"
            " FROM spend_log GROUP BY 1, 2"
        ).fetchall()
    return {(team, key): spend for team, key, spend in rows}


def exported_spend(exporter: ExporterProcess) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["organization"], dict(k)["agent"]): v
        for k, v in select(exporter.samples(), "credit_spent_credits_total").items()
    }


@pytest.fixture
def gateway_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return empty_db


def test_a_gateway_spend_log_is_mapped_by_yaml_alone_and_counted_exactly(
    gateway_db: str, tmp_path: Path
) -> None:
    log_requests(gateway_db, 300, "search-team", "0.000123456")
    exporter = start_exporter(gateway_config(gateway_db), tmp_path)
    try:

        def matches_sql() -> bool:
            expected = {k: float(v) for k, v in sql_spend(gateway_db).items()}
            return exported_spend(exporter) == expected

        wait_until(matches_sql, 15, "exported spend == SQL per team and key")
        # more traffic, including a transaction held open while others commit
        held = psycopg.connect(gateway_db)
        held.execute(
            "INSERT INTO spend_log (request_id, team_alias, api_key_alias, model, spend,"
            " prompt_tokens, completion_tokens, latency_ms, status)"
            " VALUES ('chatcmpl-held', 'ads-team', 'key-9', 'gpt-4o', 2.5, 1, 1, 900, 'success')"
        )
        log_requests(gateway_db, 120, "ads-team", "0.5")
        wait_until(matches_sql, 15, "the new requests counted")
        assert ("ads-team", "key-9") not in exported_spend(exporter)
        held.commit()
        held.close()
        wait_until(matches_sql, 15, "the held request counted once committed")
        assert exported_spend(exporter)[("ads-team", "key-9")] == 2.5

        samples = exporter.samples()
        with psycopg.connect(gateway_db) as conn:
            failures = conn.execute(
                "SELECT count(*) FROM spend_log WHERE team_alias = 'search-team'"
                " AND status = 'failure' AND model = 'gpt-4o'"
            ).fetchone()[0]
            count, total = conn.execute(
                "SELECT count(*), sum(latency_ms / 1000.0) FROM spend_log"
                " WHERE team_alias = 'ads-team' AND model = 'claude-3-haiku'"
            ).fetchone()
        requests = select(
            samples, "credit_model_requests_total", organization="search-team",
            gen_ai_request_model="gpt-4o", outcome="failure",
        )  # fmt: skip
        assert list(requests.values()) == [failures]
        labels = {"organization": "ads-team", "gen_ai_request_model": "claude-3-haiku"}
        assert list(
            select(samples, "credit_response_duration_seconds_count", **labels).values()
        ) == [count]
        assert list(select(samples, "credit_response_duration_seconds_sum", **labels).values()) == [
            float(total)
        ]
    finally:
        exporter.stop()

"""A label's ``if_null``: a NULL cell exports the declared text instead of dropping the row.

Real PostgreSQL produces the NULLs; state queries and streams run in-process,
and every value is checked against SQL that coalesces the column itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from stream_support import InProcessStream

from credit_exporter.config import Config, parse_config
from credit_exporter.db import Database
from credit_exporter.health import Health
from credit_exporter.metric_state import MetricState
from credit_exporter.sources.state import StateQuery

KEY_ENV = "CREDIT_EXPORTER_TEST_HMAC_KEY"
KEY = "if-null-test-key-0123456789abcdef"


def hmac16(text: str) -> str:
    return hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()[:16]


def dropped_rows(health: Health, source: str) -> dict[str, float]:
    return {
        sample.labels["reason"]: sample.value
        for family in health.dropped_rows.collect()
        for sample in family.samples
        if sample.labels["query"] == source and sample.value
    }


def run(coroutine: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


# --- state queries -----------------------------------------------------------------


def balances(dsn: str, rows_sql: str, pool: Any, **mapping: Any) -> dict[str, Any]:
    """A config whose query returns ``rows_sql`` as (organization, pool, balance) rows
    feeding credit_balance_credits, its pool label given by ``pool``."""
    return {
        "databases": {"billing": {"dsn": dsn}},
        "privacy": {"hmac_key_env": KEY_ENV},
        "queries": {"q": {
            "database": "billing",
            "sql": f"SELECT * FROM ({rows_sql}) AS r(organization, pool, balance)",
            "metrics": [{"metric": "credit_balance_credits", "value": "balance",
                         "labels": {"organization": "organization", "pool": pool}, **mapping}],
        }},
    }  # fmt: skip


def poll_state(data: dict[str, Any]) -> tuple[dict[tuple[str, ...], float], Health]:
    """One real poll of query ``q``: its credit_balance_credits series and its health."""
    config = parse_config(data)
    health = Health(CollectorRegistry())
    health.register_query("q", 30)
    state = MetricState()
    database = Database("billing", config.databases["billing"])
    query = StateQuery("q", config.queries["q"], database, state, health)

    async def once() -> bool:
        try:
            return await query.run_once()
        finally:
            await database.close()

    assert run(once()), health.queries["q"].last_error
    return state.series("credit_balance_credits"), health


@pytest.fixture(scope="module")
def any_db(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture(autouse=True)
def _hmac_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


POOL_OR_NONE = {"column": "pool", "if_null": "none"}


def test_a_null_state_label_exports_its_if_null_text(any_db: str) -> None:
    rows = "VALUES ('acme', NULL, 5), ('acme', 'plan', 2)"
    series, health = poll_state(balances(any_db, rows, POOL_OR_NONE))
    assert series == {("acme", "none"): 5.0, ("acme", "plan"): 2.0}
    assert dropped_rows(health, "q") == {}


def test_an_empty_if_null_exports_an_empty_label(any_db: str) -> None:
    rows = "VALUES ('acme', NULL::text, 5)"
    series, _ = poll_state(balances(any_db, rows, {"column": "pool", "if_null": ""}))
    assert series == {("acme", ""): 5.0}


def test_a_null_in_a_label_without_if_null_still_drops_the_row(any_db: str) -> None:
    rows = "VALUES (NULL, NULL, 5), ('acme', NULL, 2)"
    series, health = poll_state(balances(any_db, rows, POOL_OR_NONE))
    assert series == {("acme", "none"): 2.0}
    assert dropped_rows(health, "q") == {"null_label": 1}


def test_a_state_replacement_equal_to_another_rows_labels_is_a_duplicate_series(
    any_db: str,
) -> None:
    rows = "SELECT * FROM (VALUES (1, 'acme', NULL, 5), (2, 'acme', 'none', 7)) v ORDER BY 1"
    sql = f"SELECT o, p, b FROM ({rows}) AS r(i, o, p, b)"
    series, health = poll_state(balances(any_db, sql, POOL_OR_NONE))
    assert series == {("acme", "none"): 5.0}  # the first row wins, as for any repeat
    assert dropped_rows(health, "q") == {"duplicate_series": 1}


def test_a_replacement_longer_than_the_cap_is_refused_like_such_a_cell(any_db: str) -> None:
    pool = {"column": "pool", "if_null": "x" * 17}
    data = balances(any_db, "VALUES ('acme', NULL::text, 5)", pool,
                    limits={"max_label_value_length": 16})  # fmt: skip
    series, health = poll_state(data)
    assert series == {}
    assert dropped_rows(health, "q") == {"label_value_too_long": 1}


def test_a_hashed_state_label_exports_the_hmac_of_its_replacement(any_db: str) -> None:
    rows = "VALUES ('acme', NULL, 5), ('acme', 'plan', 2)"
    series, _ = poll_state(balances(any_db, rows, POOL_OR_NONE, hash_labels=["pool"]))
    assert series == {("acme", hmac16("none")): 5.0, ("acme", hmac16("plan")): 2.0}


# --- streams -------------------------------------------------------------------------

EVENTS = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text NOT NULL,
    agent text,
    credits numeric(18, 6) NOT NULL,
    latency numeric(10, 3)
);
"""
EVENTS_SQL = (
    "SELECT id, occurred_at, org, agent, 'p' AS project, 'chat' AS st, credits, latency FROM ev"
)
AGENT_OR_UNKNOWN = {"column": "agent", "if_null": "unknown"}


def usage_config(dsn: str, hashed: bool) -> Config:
    """Spend per agent and response time per agent (as the model), both reading ``agent``
    with ``if_null: unknown``, and with that label hashed when ``hashed``."""
    spent_hashed = {"hash_labels": ["agent"]} if hashed else {}
    latency_hashed = {"hash_labels": ["gen_ai_request_model"]} if hashed else {}
    return parse_config({
        "databases": {"billing": {"dsn": dsn}},
        "privacy": {"hmac_key_env": KEY_ENV},
        "streams": {"usage": {
            "database": "billing", "time": "occurred_at", "key": "id", "settle": "1s",
            "interval": "1s", "timeout": "1s", "sql": EVENTS_SQL,
            "metrics": [
                {"metric": "credit_spent_credits_total", "value": "credits",
                 "labels": {"organization": "org", "project": "project",
                            "agent": AGENT_OR_UNKNOWN, "service_type": "st"}, **spent_hashed},
                {"metric": "credit_response_duration_seconds", "value": "latency",
                 "labels": {"organization": "org", "gen_ai_request_model": AGENT_OR_UNKNOWN},
                 **latency_hashed},
            ],
        }},
    })  # fmt: skip


class Usage(InProcessStream):
    """The ``usage`` stream over ``ev``, polled in-process."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, "usage")

    def spent_by_agent(self) -> dict[str, Decimal]:
        series = self.stream.exported["credit_spent_credits_total"]
        return {labels[2]: value for labels, value in series.items()}

    def latency_by_agent(self) -> dict[str, tuple[int, Decimal]]:
        series = self.stream.exported["credit_response_duration_seconds"]
        return {labels[1]: (value.count, value.total) for labels, value in series.items()}


@pytest.fixture
def ev_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(EVENTS)
    return empty_db


@pytest.fixture
def usage(ev_db: str) -> Iterator[Callable[..., Usage]]:
    made: list[Usage] = []

    def make(hashed: bool = False) -> Usage:
        made.append(Usage(usage_config(ev_db, hashed)))
        return made[-1]

    yield make
    for stream in made:
        stream.close()


def add_events(dsn: str, rows: list[tuple[str | None, str, str]]) -> None:
    """(agent, credits, latency) rows of organization acme."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ev (org, agent, credits, latency) VALUES ('acme', %s, %s, %s)", rows
        )


def sql_by_agent(dsn: str) -> dict[str, tuple[Decimal, int, Decimal]]:
    """coalesce(agent, 'unknown') -> (sum of credits, count and sum of latency)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT coalesce(agent, 'unknown'), sum(credits), count(latency), sum(latency)"
            " FROM ev GROUP BY 1"
        ).fetchall()
    return {agent: (spent, count, latency) for agent, spent, count, latency in rows}


def test_a_stream_merges_null_and_the_replacement_value_into_one_series_equal_to_sql(
    ev_db: str, usage: Callable[..., Usage]
) -> None:
    add_events(ev_db, [(None, "1.5", "0.2"), ("unknown", "2.25", "1"), ("bot", "4", "3")])
    stream = usage()
    stream.poll()
    add_events(ev_db, [(None, "0.125", "0.4"), ("unknown", "8", "2")])  # a later poll too
    stream.poll()
    expected = sql_by_agent(ev_db)
    assert set(expected) == {"unknown", "bot"}
    assert stream.spent_by_agent() == {a: spent for a, (spent, _, _) in expected.items()}
    assert stream.latency_by_agent() == {a: (n, total) for a, (_, n, total) in expected.items()}
    assert dropped_rows(stream.health, "usage") == {}


def test_a_hashed_stream_label_merges_null_and_the_replacement_under_its_hmac(
    ev_db: str, usage: Callable[..., Usage]
) -> None:
    add_events(ev_db, [(None, "1.5", "0.2"), ("unknown", "2.25", "1"), ("bot", "4", "3")])
    stream = usage(hashed=True)
    stream.poll()
    expected = sql_by_agent(ev_db)
    assert stream.spent_by_agent() == {hmac16(a): spent for a, (spent, _, _) in expected.items()}
    assert stream.latency_by_agent() == {
        hmac16(a): (n, total) for a, (_, n, total) in expected.items()
    }

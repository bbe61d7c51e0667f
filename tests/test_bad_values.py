"""Bad values in query results: every one has the outcome docs/limits.md documents.

Real PostgreSQL produces each value (NULL, NaN, infinities, huge numerics,
non-numeric text, non-UTF-8 bytea, very long text); the exporter either skips
the row and counts it in credit_exporter_dropped_rows_total{reason}, or
converts it as documented. Nothing crashes and nothing non-finite is exported.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from credit_exporter.config import parse_config
from credit_exporter.db import Database
from credit_exporter.health import Health
from credit_exporter.limits import OVERFLOW
from credit_exporter.metric_state import MetricState
from credit_exporter.sources.events import EventStream
from credit_exporter.sources.state import StateQuery


@pytest.fixture(scope="module")
def any_db(make_database: Callable[[], str]) -> str:
    return make_database()


def run_state_query(dsn: str, sql: str) -> tuple[dict[tuple[str, ...], float], Health]:
    """One real poll of a state query feeding credit_balance_credits{organization,pool}."""
    config = parse_config(
        {
            "databases": {"billing": {"dsn": dsn}},
            "queries": {
                "q": {
                    "database": "billing",
                    "sql": f"SELECT * FROM ({sql}) AS r(organization, pool, balance)",
                    "metrics": [{"metric": "credit_balance_credits", "value": "balance",
                                 "labels": ["organization", "pool"]}],
                }
            },
        }
    )  # fmt: skip
    health = Health(CollectorRegistry())
    health.register_query("q", 30)
    state = MetricState()
    database = Database("billing", config.databases["billing"])
    query = StateQuery("q", config.queries["q"], database, state, health)
    loop = asyncio.new_event_loop()
    try:
        ok = loop.run_until_complete(query.run_once())
        loop.run_until_complete(database.close())
    finally:
        loop.close()
    assert ok, health.queries["q"].last_error
    return state.series("credit_balance_credits"), health


def dropped(health: Health, source: str) -> dict[str, float]:
    found = {}
    for family in health.dropped_rows.collect():
        for sample in family.samples:
            if sample.labels["query"] == source and sample.value:
                found[sample.labels["reason"]] = sample.value
    return found


# (bad row: organization, pool, balance) -> the reason it is dropped for
SKIPPED = {
    "null value": ("'x', 'p', NULL::numeric", "null_value"),
    "null label": ("'x', NULL::text, 1::numeric", "null_label"),
    "float8 NaN": ("'x', 'p', 'NaN'::float8::numeric", "not_finite"),
    "float8 NaN as float": ("'x', 'p', 'NaN'::float8", "not_finite"),
    "float8 +Infinity": ("'x', 'p', 'Infinity'::float8", "not_finite"),
    "float8 -Infinity": ("'x', 'p', '-Infinity'::float8", "not_finite"),
    "numeric NaN": ("'x', 'p', 'NaN'::numeric", "not_finite"),
    "numeric Infinity": ("'x', 'p', 'Infinity'::numeric", "not_finite"),
    "numeric 1e400": ("'x', 'p', 1e400::numeric", "out_of_range"),
    "text abc": ("'x', 'p', 'abc'::text", "not_a_number"),
    "text nan": ("'x', 'p', 'nan'::text", "not_a_number"),
    "text with underscores": ("'x', 'p', '1_000'::text", "not_a_number"),
    "a timestamp": ("'x', 'p', now()", "not_a_number"),
    "non-UTF-8 bytea label": ("'x', '\\xff00fe'::bytea, 1::numeric", "invalid_utf8"),
    "1025-character label": ("'x', repeat('é', 1025), 1::numeric", "label_value_too_long"),
}

CONVERTED = {
    "numeric 1e30": ("'x', 'p', 1e30::numeric", 1e30),
    "bigint max": ("'x', 'p', 9223372036854775807::bigint", 9.223372036854776e18),
    "numeric 1e-400 underflows to 0": ("'x', 'p', 1e-400::numeric", 0.0),
    "text decimal literal": ("'x', 'p', ' 12.5 '::text", 12.5),
    "boolean true": ("'x', 'p', true", 1.0),
    "1024-character label": ("'x', repeat('é', 1024), 3::numeric", 3.0),
}


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_a_state_row_with_a_bad_value_is_skipped_and_counted(any_db: str, case: str) -> None:
    row, reason = SKIPPED[case]
    series, health = run_state_query(any_db, f"SELECT {row}")
    assert series == {}
    assert dropped(health, "q") == {reason: 1}


def test_only_the_bad_rows_of_a_result_are_skipped(any_db: str) -> None:
    series, health = run_state_query(
        any_db,
        "VALUES ('a', 'p', 1.5::float8), ('b', 'p', 'NaN'), ('c', NULL, 2), ('d', 'p', 3),"
        " ('a', 'p', 4), ('e', 'p', NULL)",
    )
    assert series == {("a", "p"): 1.5, ("d", "p"): 3.0}
    assert dropped(health, "q") == {
        "not_finite": 1,
        "null_label": 1,
        "duplicate_series": 1,
        "null_value": 1,
    }


@pytest.mark.parametrize("case", sorted(CONVERTED))
def test_a_state_value_that_converts_is_exported_as_documented(any_db: str, case: str) -> None:
    row, expected = CONVERTED[case]
    series, health = run_state_query(any_db, f"SELECT {row}")
    (value,) = series.values()
    assert value == expected and math.isfinite(value)
    assert dropped(health, "q") == {}


def test_a_valid_utf8_bytea_label_is_exported_as_its_text(any_db: str) -> None:
    series, _ = run_state_query(any_db, "SELECT 'x', convert_to('zürich', 'UTF8'), 1::numeric")
    assert series[("x", "zürich")] == 1.0


# --- event streams -----------------------------------------------------------

STREAM_TABLE = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text, channel text, raw bytea, amount numeric, ratio float8
);
"""


class Stream:
    """One in-process stream over ``ev`` mapping ``label`` and ``value`` expressions."""

    def __init__(self, dsn: str, label: str, value: str) -> None:
        sql = f"SELECT id, occurred_at, org, {label} AS label, {value} AS value FROM ev"
        config = parse_config(
            {
                "databases": {"billing": {"dsn": dsn}},
                "streams": {"s": {
                    "database": "billing", "key": "id", "time": "occurred_at", "sql": sql,
                    "metrics": [
                        {"metric": "credit_spent_by_channel_credits_total", "value": "value",
                         "labels": {"organization": "org", "channel": "label"}},
                        {"metric": "credit_visitors_total",
                         "labels": {"organization": "org", "agent": "label"}},
                    ],
                }},
            }
        )  # fmt: skip
        self.health = Health(CollectorRegistry())
        self.health.register_query("s", 15)
        self.loop = asyncio.new_event_loop()
        self.database = Database("billing", config.databases["billing"])
        self.stream = EventStream("s", config.streams["s"], self.database, self.health)

    def poll(self) -> bool:
        return self.loop.run_until_complete(self.stream.run_once())

    def spent(self) -> dict[tuple[str, ...], Any]:
        return dict(self.stream.exported["credit_spent_by_channel_credits_total"])

    def requests(self) -> dict[tuple[str, ...], Any]:
        return dict(self.stream.exported["credit_visitors_total"])

    def close(self) -> None:
        self.loop.run_until_complete(self.database.close())
        self.loop.close()


@pytest.fixture
def ev(empty_db: str) -> Iterator[Callable[..., Stream]]:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(STREAM_TABLE)
        conn.execute(
            "INSERT INTO ev (org, channel, raw, amount, ratio)"
            " VALUES ('acme', 'web', 'web', 2.5, 0.5), ('acme', 'web', 'web', 1.25, 0.25)"
        )
    made: list[Stream] = []

    def make(rows_sql: str, label: str = "channel", value: str = "amount") -> Stream:
        with psycopg.connect(empty_db, autocommit=True) as conn:
            conn.execute(f"INSERT INTO ev (org, channel, raw, amount, ratio) {rows_sql}")
        made.append(Stream(empty_db, label, value))
        return made[-1]

    yield make
    for stream in made:
        stream.close()


def test_a_null_value_adds_nothing_to_a_sum_but_its_row_is_counted(ev) -> None:
    s = ev("VALUES ('acme', 'web', 'web', NULL, NULL)")
    assert s.poll()
    assert s.spent() == {("acme", "web"): Decimal("3.75")}
    assert s.requests() == {("acme", "web"): Decimal(3)}


def test_a_null_label_group_is_skipped_and_its_rows_counted(ev) -> None:
    s = ev("VALUES ('acme', NULL, NULL, 4, 1), ('acme', NULL, NULL, 5, 1)")
    assert s.poll()
    assert s.spent() == {("acme", "web"): Decimal("3.75")}
    assert dropped(s.health, "s") == {"null_label": 4}  # 2 rows x 2 metrics


@pytest.mark.parametrize("value", ["'NaN'::numeric", "'Infinity'::numeric", "'-Infinity'::numeric"])
def test_a_non_finite_numeric_value_leaves_out_its_row_not_its_group(ev, value: str) -> None:
    s = ev(f"SELECT 'acme', 'web', 'web', {value}, 1")
    assert s.poll()
    assert s.spent() == {("acme", "web"): Decimal("3.75")}  # the two finite rows
    assert s.requests() == {("acme", "web"): Decimal(3)}  # the row still happened
    assert dropped(s.health, "s") == {"not_finite": 1}


@pytest.mark.parametrize("ratio", ["'NaN'::float8", "'Infinity'::float8", "'-Infinity'::float8"])
def test_a_non_finite_float8_value_leaves_out_its_row_not_its_group(ev, ratio: str) -> None:
    s = ev(f"SELECT 'acme', 'web', 'web', 1, {ratio}", value="ratio")
    assert s.poll()
    assert s.spent() == {("acme", "web"): Decimal("0.75")}
    assert dropped(s.health, "s") == {"not_finite": 1}


def test_a_non_finite_row_is_counted_once_however_many_polls_read_it(ev) -> None:
    s = ev("SELECT 'acme', 'web', 'web', 'NaN'::numeric, 1")
    assert s.poll() and s.poll() and s.poll()
    assert dropped(s.health, "s") == {"not_finite": 1}


def test_a_group_whose_sum_is_beyond_float_range_is_skipped(ev) -> None:
    s = ev("SELECT 'acme', 'phone', 'phone', 1e400::numeric, 1")
    assert s.poll()
    assert s.spent() == {("acme", "web"): Decimal("3.75")}
    assert s.requests() == {("acme", "web"): Decimal(2), ("acme", "phone"): Decimal(1)}
    assert dropped(s.health, "s") == {"out_of_range": 1}


def test_a_huge_but_float_sized_sum_is_exported_exactly_in_decimal(ev) -> None:
    s = ev("VALUES ('acme', 'phone', 'phone', 1e30, 1)")
    assert s.poll()
    assert s.spent()[("acme", "phone")] == Decimal("1e30")


def test_a_non_numeric_value_column_fails_the_run_with_an_sql_error(ev) -> None:
    s = ev("VALUES ('acme', 'web', 'web', 1, 1)", value="'abc'::text")
    assert s.poll() is False
    assert s.health.queries["s"].last_error_reason == "sql"
    assert s.spent() == {}


@pytest.mark.parametrize(
    ("label", "rows_sql", "reason"),
    [("raw", "VALUES ('acme', 'x', '\\xfffe'::bytea, 4, 1)", "invalid_utf8"),
     ("channel", "SELECT 'acme', repeat('y', 5000), NULL::bytea, 4, 1", "label_value_too_long")],
)  # fmt: skip
def test_an_unusable_label_folds_its_rows_into_the_overflow_series(
    ev, label: str, rows_sql: str, reason: str
) -> None:
    s = ev(rows_sql, label=label)
    assert s.poll()
    assert s.spent() == {("acme", "web"): Decimal("3.75"), (OVERFLOW, OVERFLOW): Decimal(4)}
    assert sum(s.spent().values()) == Decimal("7.75")  # = SELECT sum(amount) FROM ev
    assert dropped(s.health, "s") == {reason: 2}  # 1 row x 2 metrics

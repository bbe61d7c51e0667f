"""Series caps: a metric never exports more than its cap, memory stays bounded, and
capped counters keep sum() equal to SQL through the ``__overflow__`` series.

The flood test runs a real exporter process against a million distinct users
produced by PostgreSQL, both as a state query and as a usage event stream.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from support import http_get, select, start_exporter, wait_until

from credit_exporter.config import ConfigError, parse_config
from credit_exporter.db import Database
from credit_exporter.health import Health
from credit_exporter.limits import OVERFLOW
from credit_exporter.sources.events import EventStream

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


def flood_config(dsn: str) -> dict[str, Any]:
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


# --- admission across polls, in process ------------------------------------------------

SMALL_TABLE = """
CREATE TABLE usage (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text NOT NULL, channel text NOT NULL, credits numeric(18, 6) NOT NULL
);
"""


class CappedStream:
    """An in-process stream over ``usage`` whose channel counter is capped at ``cap``."""

    def __init__(self, dsn: str, cap: int) -> None:
        config = parse_config(
            {
                "databases": {"billing": {"dsn": dsn}},
                "streams": {"s": {
                    "database": "billing", "key": "id", "time": "occurred_at",
                    "sql": "SELECT id, occurred_at, org AS organization, channel, credits"
                           " FROM usage",
                    "metrics": [{"metric": "credit_spent_by_channel_credits_total",
                                 "value": "credits", "labels": ["organization", "channel"],
                                 "limits": {"max_series_per_metric": cap}}],
                }},
            }
        )  # fmt: skip
        self.health = Health(CollectorRegistry())
        self.health.register_query("s", 15)
        self.loop = asyncio.new_event_loop()
        self.database = Database("billing", config.databases["billing"])
        self.stream = EventStream("s", config.streams["s"], self.database, self.health)

    def poll(self) -> dict[tuple[str, ...], Decimal]:
        assert self.loop.run_until_complete(self.stream.run_once()), self.health.queries
        return dict(self.stream.exported["credit_spent_by_channel_credits_total"])

    def refused(self) -> float:
        metric = "credit_spent_by_channel_credits_total"
        return self.health.dropped_series.labels(metric, "series_limit")._value.get()

    def close(self) -> None:
        self.loop.run_until_complete(self.database.close())
        self.loop.close()


@pytest.fixture
def usage_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SMALL_TABLE)
    return empty_db


def add_usage(dsn: str, rows: list[tuple[str, str]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for channel, credits in rows:
            conn.execute(
                "INSERT INTO usage (org, channel, credits) VALUES ('acme', %s, %s)",
                (channel, credits),
            )


def sql_total(dsn: str) -> Decimal:
    with psycopg.connect(dsn) as conn:
        (total,) = conn.execute("SELECT sum(credits) FROM usage").fetchone()  # type: ignore[misc]
    return total


@pytest.fixture
def capped(usage_db: str) -> Iterator[CappedStream]:
    stream = CappedStream(usage_db, cap=3)
    yield stream
    stream.close()


OVER = (OVERFLOW, OVERFLOW)


def test_admission_starts_with_the_smallest_label_sets_when_over_the_cap(
    usage_db: str, capped: CappedStream
) -> None:
    add_usage(usage_db, [("web", "1"), ("api", "2"), ("sms", "4"), ("phone", "8")])
    assert capped.poll() == {
        ("acme", "api"): Decimal(2), ("acme", "phone"): Decimal(8), OVER: Decimal(5),
    }  # fmt: skip
    assert capped.refused() == 2


def test_a_refused_label_set_stays_in_the_overflow_and_admitted_ones_keep_counting(
    usage_db: str, capped: CappedStream
) -> None:
    add_usage(usage_db, [("web", "1"), ("api", "2"), ("sms", "4"), ("phone", "8")])
    capped.poll()
    # "aaa" sorts before every admitted label set, but admission is closed
    add_usage(usage_db, [("aaa", "0.5"), ("api", "1"), ("sms", "0.25")])
    assert capped.poll() == {
        ("acme", "api"): Decimal(3), ("acme", "phone"): Decimal(8), OVER: Decimal("5.75"),
    }  # fmt: skip
    assert sum(capped.poll().values()) == sql_total(usage_db)


def test_label_sets_are_admitted_while_there_is_room_and_then_admission_closes(
    usage_db: str, capped: CappedStream
) -> None:
    add_usage(usage_db, [("web", "1")])
    assert capped.poll() == {("acme", "web"): Decimal(1)}
    add_usage(usage_db, [("sms", "2"), ("api", "4")])  # room for one: api (smaller) wins
    assert capped.poll() == {
        ("acme", "web"): Decimal(1), ("acme", "api"): Decimal(4), OVER: Decimal(2),
    }  # fmt: skip
    add_usage(usage_db, [("sms", "1"), ("web", "1")])
    exported = capped.poll()
    assert exported[OVER] == Decimal(3) and exported[("acme", "web")] == Decimal(2)
    assert sum(exported.values()) == sql_total(usage_db)


def test_no_series_of_a_capped_counter_ever_decreases_or_disappears(
    usage_db: str, capped: CappedStream
) -> None:
    previous: dict[tuple[str, ...], Decimal] = {}
    for batch in range(6):
        add_usage(usage_db, [(f"c{(batch * 3 + i) % 7}", "1.000001") for i in range(3)])
        exported = capped.poll()
        assert len(exported) <= 3
        assert all(exported.get(k, Decimal(-1)) >= v for k, v in previous.items())
        assert sum(exported.values()) == sql_total(usage_db)
        previous = exported


@pytest.mark.parametrize(
    ("limits", "problem"),
    [({"max_series_per_metric": 0},
      "limits.max_series_per_metric: Input should be greater than or equal to 1"),
     ({"max_label_value_length": 8},
      "limits.max_label_value_length: Input should be greater than or equal to 16"),
     ({"max_series": 5}, "limits.max_series: unknown key"),
     ({"max_series_per_metric": "many"},
      "limits.max_series_per_metric: Input should be a valid integer, unable to parse string"
      " as an integer")],
)  # fmt: skip
def test_bad_limits_are_reported_with_their_key_path(limits: dict[str, Any], problem: str) -> None:
    base = flood_config("dbname=x")
    with pytest.raises(ConfigError) as error:
        parse_config({**base, "limits": limits})
    assert error.value.problems == [problem]


def test_a_mapping_limit_overrides_the_top_level_default() -> None:
    config = parse_config({**flood_config("dbname=x"), "limits": {"max_series_per_metric": 50}})
    capped, default = config.streams["usage"].metrics
    assert (capped.policy.max_series, default.policy.max_series) == (CAP, 50)


def test_a_bad_mapping_limit_names_the_mapping() -> None:
    config = flood_config("dbname=x")
    config["queries"]["budgets"]["metrics"][0]["limits"] = {"max_label_value_length": 10**6}
    with pytest.raises(ConfigError) as error:
        parse_config(config)
    assert error.value.problems == [
        "queries.budgets.metrics[0].limits.max_label_value_length:"
        " Input should be less than or equal to 65536"
    ]

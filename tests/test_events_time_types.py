"""The time column works as it is typed: timestamptz, a naive timestamp written in some
zone, a date, or an epoch number. Steady polls compare the column itself with the
horizon, so they range-scan its index. Unusable ordering columns are refused by name."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from stream_support import InProcessStream, one_stream_config, sql_value

SPENT_LABELS = {"organization": "team", "project": "p", "agent": "a", "service_type": "st"}
SPENT = {"metric": "credit_spent_credits_total", "value": "spend", "labels": SPENT_LABELS}


def stream(time_type_sql: str, **settings: Any) -> dict[str, Any]:
    return {
        "database": "db",
        "time": "t",
        "interval": "5s",
        "timeout": "5s",
        "sql": f"SELECT {time_type_sql} AS t, team, 'p' AS p, 'a' AS a, 'chat' AS st, spend"
        " FROM spend_log",
        "metrics": [SPENT],
        **settings,
    }


def create_log(dsn: str, time_type: str, key: str = "request_id text PRIMARY KEY") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE spend_log ({key}, t {time_type}, team text NOT NULL,"
            " spend double precision NOT NULL)"
        )
        conn.execute("CREATE INDEX spend_log_t ON spend_log (t)")


def insert(dsn: str, rows: list[tuple[Any, str, float]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO spend_log (request_id, t, team, spend)"
            " VALUES (md5(random()::text), %s, %s, %s)",
            rows,
        )


def sql_spend_by_team(dsn: str) -> dict[str, Decimal]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT team, sum(spend::numeric) FROM spend_log GROUP BY 1").fetchall()
    return dict(rows)


@pytest.fixture
def streams():
    made: list[InProcessStream] = []

    def make(dsn: str, config: dict[str, Any]) -> InProcessStream:
        made.append(InProcessStream(one_stream_config(dsn, config)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def naive_utc(delta: timedelta) -> datetime:
    return (datetime.now(UTC) + delta).replace(tzinfo=None)


def test_a_naive_timestamp_stream_counts_every_row_exactly(empty_db, streams) -> None:
    create_log(empty_db, "timestamp(3) NOT NULL")
    insert(empty_db, [(naive_utc(-timedelta(hours=h)), "search", 0.1) for h in range(0, 50, 7)])
    s = streams(empty_db, stream("t", arrives_within="1s"))
    s.poll()
    assert s.by_first_label("credit_spent_credits_total") == sql_spend_by_team(empty_db)
    insert(empty_db, [(naive_utc(timedelta(seconds=-1)), "ads", 0.7)] * 3)
    time.sleep(1.1)
    s.poll()
    s.poll()
    assert s.by_first_label("credit_spent_credits_total") == sql_spend_by_team(empty_db)
    assert s.by_first_label("credit_spent_credits_total")["ads"] == Decimal("2.1")


def test_a_steady_poll_of_a_naive_time_stream_range_scans_the_time_index(empty_db, streams) -> None:
    create_log(empty_db, "timestamp(3) NOT NULL")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO spend_log SELECT 'r' || i, (now() AT TIME ZONE 'UTC')"
            " - i * interval '1 second', 'team' || (i % 7), 0.001 * i"
            " FROM generate_series(1, 200000) i"
        )
        conn.execute("ANALYZE spend_log")
    s = streams(empty_db, stream("t", arrives_within="1m"))
    s.poll()
    s.poll()
    plan = s.explain_steady_poll(empty_db)
    assert "spend_log_t" in plan, plan
    assert "Seq Scan on spend_log" not in plan, plan


def test_a_naive_time_streams_prepared_steady_poll_keeps_the_time_index_past_its_fifth_run(
    empty_db, streams
) -> None:
    create_log(empty_db, "timestamp(3) NOT NULL")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO spend_log SELECT 'r' || i, (now() AT TIME ZONE 'UTC')"
            " - i * interval '1 second', 'team' || (i % 7), 0.001 * i"
            " FROM generate_series(1, 200000) i"
        )
        conn.execute("ANALYZE spend_log")
    s = streams(empty_db, stream("t", arrives_within="1m"))
    for _ in range(8):
        s.poll()
    prepared = s.prepared_poll()
    assert prepared is not None
    assert prepared.generic_plans >= 1
    assert "spend_log_t" in prepared.plan, prepared.plan
    assert "Seq Scan on spend_log" not in prepared.plan, prepared.plan


def test_naive_times_are_read_in_the_configured_zone(empty_db, streams) -> None:
    """Tokyo wall-clock times: the horizon trails Tokyo's now by the window, not UTC's."""
    create_log(empty_db, "timestamp NOT NULL")
    tokyo_now = sql_value(empty_db, "SELECT now() AT TIME ZONE 'Asia/Tokyo'")
    insert(empty_db, [(tokyo_now - timedelta(minutes=30), "recent", 1.0),
                      (tokyo_now - timedelta(hours=2), "older", 2.0)])  # fmt: skip
    s = streams(empty_db, stream("t", arrives_within="1h", time_zone="Asia/Tokyo"))
    s.poll()
    assert s.stream.horizon is not None
    horizon = s.stream.horizon.time
    assert abs(horizon - (tokyo_now - timedelta(hours=1))) < timedelta(minutes=1)
    assert [labels[0] for labels in s.stream.base["credit_spent_credits_total"]] == ["older"]
    assert [labels[0] for labels in s.stream.live["credit_spent_credits_total"]] == ["recent"]


def test_a_date_stream_settles_a_day_once_the_day_and_the_window_have_passed(
    empty_db, streams
) -> None:
    create_log(empty_db, "date NOT NULL")
    today = sql_value(empty_db, "SELECT (now() AT TIME ZONE 'UTC')::date")
    insert(empty_db, [(today - timedelta(days=d), f"day-{d}", 1.5) for d in range(4)])
    s = streams(empty_db, stream("t", arrives_within="1h"))
    s.poll()
    assert s.stream.horizon is not None
    last_settled = sql_value(empty_db, "SELECT (now() AT TIME ZONE 'UTC' - interval '1h')::date")
    assert s.stream.horizon.time == last_settled - timedelta(days=1)
    assert "day-0" not in {labels[0] for labels in s.stream.base["credit_spent_credits_total"]}
    assert s.by_first_label("credit_spent_credits_total") == sql_spend_by_team(empty_db)


@pytest.mark.parametrize(
    ("column_type", "unit"),
    [("bigint", "s"), ("bigint", "ms"), ("integer", "s"), ("double precision", "s"),
     ("numeric(16, 3)", "ms")],
)  # fmt: skip
def test_an_epoch_number_time_column_is_read_in_its_unit(
    empty_db, streams, column_type: str, unit: str
) -> None:
    create_log(empty_db, f"{column_type} NOT NULL")
    scale = {"s": 1, "ms": 1000}[unit]
    now = sql_value(empty_db, "SELECT extract(epoch FROM now())")
    ages = [7200, 3, 1]  # seconds before now
    insert(empty_db, [(int((now - age) * scale), f"age-{age}", 0.25) for age in ages])
    s = streams(empty_db, stream("t", arrives_within="1m", epoch_unit=unit))
    s.poll()
    assert s.stream.horizon is not None
    horizon_seconds = Decimal(str(s.stream.horizon.time)) / scale
    assert abs(horizon_seconds - (now - 60)) < 5
    assert [labels[0] for labels in s.stream.base["credit_spent_credits_total"]] == ["age-7200"]
    assert s.by_first_label("credit_spent_credits_total") == sql_spend_by_team(empty_db)
    s.poll()
    plan = s.explain_steady_poll(empty_db, seqscan=False)
    assert "Index Cond: (t > " in plan, plan


def test_a_time_column_of_an_unusable_type_is_refused_with_its_type(empty_db, streams) -> None:
    create_log(empty_db, "text NOT NULL")
    insert(empty_db, [("2026-11-30", "search", 1.0)])
    s = streams(empty_db, stream("t"))
    error = s.poll_error()
    assert "time column 't' is of type text" in error, error
    assert "epoch number" in error, error


@pytest.mark.parametrize(
    "key", ["request_id text PRIMARY KEY", "request_id uuid PRIMARY KEY"], ids=["text", "uuid"]
)
def test_a_text_or_uuid_key_is_refused_with_what_to_use_instead(empty_db, streams, key) -> None:
    create_log(empty_db, "timestamptz NOT NULL", key=key)
    config = stream("t")
    config["key"] = "request_id"
    config["sql"] = config["sql"].replace("SELECT ", "SELECT request_id, ")
    s = streams(empty_db, config)
    error = s.poll_error()
    kind = key.split()[1]
    assert f"key column 'request_id' is of type {kind}" in error, error
    assert "remove `key`" in error and "arrives_within" in error, error


def test_a_timestamptz_stream_still_settles_by_the_window(empty_db, streams) -> None:
    create_log(empty_db, "timestamptz NOT NULL")
    now = datetime.now(UTC)
    insert(empty_db, [(now - timedelta(minutes=10), "old", 1.0), (now, "new", 2.0)])
    s = streams(empty_db, stream("t", arrives_within="2m"))
    s.poll()
    assert [labels[0] for labels in s.stream.base["credit_spent_credits_total"]] == ["old"]
    assert s.by_first_label("credit_spent_credits_total") == sql_spend_by_team(empty_db)


def test_an_unknown_time_zone_is_a_config_error_naming_the_key() -> None:
    from credit_exporter.config import ConfigError

    with pytest.raises(ConfigError) as error:
        one_stream_config("dbname=x", stream("t", time_zone="Mars/Olympus"))
    assert "streams.s.time_zone: unknown time zone 'Mars/Olympus'" in str(error.value)


def test_arrives_within_on_a_keyed_stream_is_a_config_error() -> None:
    from credit_exporter.config import ConfigError

    config = stream("t", arrives_within="1h")
    config["key"] = "id"
    with pytest.raises(ConfigError) as error:
        one_stream_config("dbname=x", config)
    assert "arrives_within is for streams ordered by time" in str(error.value)

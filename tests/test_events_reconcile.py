"""The reconcile: settled history compared with the database, differences folded in
(increases) or held (decreases), and every one of them counted where on-call can see it."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from stream_support import InProcessStream, one_stream_config
from support import http_get, http_post, start_exporter, wait_until

SCHEMA = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz DEFAULT now(),
    org text NOT NULL,
    credits numeric(18, 6) NOT NULL
);
CREATE INDEX ev_occurred_at ON ev (occurred_at);
"""
LABELS = {"organization": "org", "project": "p", "agent": "a", "service_type": "st"}
METRICS = [
    {"metric": "credit_spent_credits_total", "value": "credits", "labels": LABELS},
    {"metric": "credit_requests_total", "labels": LABELS},
]
SPENT = "credit_spent_credits_total"
RECONCILE = {"interval": "1h", "full_every": "1h", "chunk": "1h", "max_db_share": 1.0}


def stream(keyed: bool, **settings: Any) -> dict[str, Any]:
    return {
        "database": "db",
        "time": "occurred_at",
        **({"key": "id"} if keyed else {"arrives_within": "1s"}),
        "settle": "1s",
        "interval": "5s",
        "timeout": "5s",
        "sql": "SELECT id, occurred_at, org, 'p' AS p, 'a' AS a, 'chat' AS st, credits FROM ev",
        "reconcile": RECONCILE,
        "metrics": METRICS,
        **settings,
    }


@pytest.fixture
def ev_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return empty_db


@pytest.fixture
def streams(ev_db: str):
    made: list[InProcessStream] = []

    def make(keyed: bool = True, **settings: Any) -> InProcessStream:
        made.append(InProcessStream(one_stream_config(ev_db, stream(keyed, **settings))))
        return made[-1]

    yield make
    for s in made:
        s.close()


def execute(dsn: str, statement: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def insert(dsn: str, org: str, credits: str, age: timedelta = timedelta(0)) -> None:
    execute(
        dsn, "INSERT INTO ev (occurred_at, org, credits) VALUES (now() - %s, %s, %s)",
        (age, org, credits),
    )  # fmt: skip


def sql_by_org(dsn: str) -> dict[str, Decimal]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT org, sum(credits) FROM ev GROUP BY org").fetchall())


def settled(s: InProcessStream) -> None:
    """Poll until every row older than the window is settled."""
    time.sleep(1.1)
    s.poll()
    s.poll()


def test_a_row_committed_after_its_window_is_counted_by_the_next_reconcile(ev_db, streams) -> None:
    insert(ev_db, "acme", "10", timedelta(hours=3))
    insert(ev_db, "acme", "0")  # the horizon trails the newest row by arrives_within
    s = streams(keyed=False)
    settled(s)
    insert(ev_db, "acme", "2.5", timedelta(hours=2))  # 2 hours late: far beyond arrives_within
    s.poll()
    assert s.by_first_label(SPENT) == {"acme": Decimal(10)}  # a poll cannot see it
    assert s.reconcile() is True
    assert s.by_first_label(SPENT) == sql_by_org(ev_db) == {"acme": Decimal("12.5")}
    assert s.sample("credit_exporter_reconcile_rows_total", query="s", reason="late") == 1
    assert s.sample("credit_exporter_reconcile_difference_total", query="s", metric=SPENT,
                    direction="up") == 2.5  # fmt: skip
    assert s.sample("credit_exporter_reconcile_chunks_total", query="s", result="different") == 1


def test_a_pass_that_finds_nothing_changes_nothing(ev_db, streams) -> None:
    for hours in (30, 20, 10, 1):
        insert(ev_db, "acme", "1", timedelta(hours=hours))
    s = streams()
    settled(s)
    before = s.exported(SPENT)
    assert s.reconcile() is False
    assert s.exported(SPENT) == before
    assert s.sample("credit_exporter_reconcile_chunks_total", query="s", result="different") == 0
    assert s.sample("credit_exporter_reconcile_chunks_total", query="s", result="same") >= 30
    assert s.sample("credit_exporter_reconcile_last_success_timestamp_seconds", query="s") > 0


def test_an_update_raising_a_settled_value_is_folded_into_the_counter(ev_db, streams) -> None:
    insert(ev_db, "acme", "4")
    s = streams()
    settled(s)
    execute(ev_db, "UPDATE ev SET credits = 9")
    s.poll()
    assert s.by_first_label(SPENT) == {"acme": Decimal(4)}
    assert s.reconcile() is True
    assert s.by_first_label(SPENT) == {"acme": Decimal(9)}
    assert s.sample("credit_exporter_reconcile_rows_total", query="s", reason="late") == 0
    assert s.sample("credit_exporter_reconcile_difference_total", query="s", metric=SPENT,
                    direction="up") == 5  # fmt: skip


def test_a_lowered_settled_value_is_held_and_shown_as_excess_until_sql_catches_up(
    ev_db, streams
) -> None:
    insert(ev_db, "acme", "10")
    s = streams()
    settled(s)
    execute(ev_db, "UPDATE ev SET credits = 7")
    assert s.reconcile() is True
    assert s.by_first_label(SPENT) == {"acme": Decimal(10)}  # a counter never goes down
    assert s.sample("credit_exporter_counter_excess", metric=SPENT) == 3
    assert s.sample("credit_exporter_reconcile_difference_total", query="s", metric=SPENT,
                    direction="down") == 3  # fmt: skip
    insert(ev_db, "acme", "2")
    s.poll()
    assert s.by_first_label(SPENT) == {"acme": Decimal(10)}  # 9 in SQL: still held
    assert s.sample("credit_exporter_counter_excess", metric=SPENT) == 1
    insert(ev_db, "acme", "5")
    s.poll()
    assert s.by_first_label(SPENT) == sql_by_org(ev_db) == {"acme": Decimal(14)}
    assert s.sample("credit_exporter_counter_excess", metric=SPENT) == 0


def test_a_deleted_settled_row_is_counted_as_deleted_and_held(ev_db, streams) -> None:
    insert(ev_db, "acme", "1", timedelta(hours=5))
    insert(ev_db, "acme", "2", timedelta(hours=1))
    s = streams()
    settled(s)
    execute(ev_db, "DELETE FROM ev WHERE credits = 1")
    assert s.reconcile() is True
    assert s.sample("credit_exporter_reconcile_rows_total", query="s", reason="deleted") == 1
    assert s.by_first_label(SPENT) == {"acme": Decimal(3)}
    assert s.sample("credit_exporter_counter_excess", metric=SPENT) == 1
    requests = s.sample("credit_exporter_counter_excess", metric="credit_requests_total")
    assert requests == 1


def test_a_settled_row_moved_to_another_label_is_found_by_the_label_checksum(
    ev_db, streams
) -> None:
    insert(ev_db, "acme", "3")
    insert(ev_db, "globex", "3")
    s = streams()
    settled(s)
    execute(ev_db, "UPDATE ev SET org = 'initech' WHERE org = 'globex'")  # same count, same sum
    assert s.reconcile() is True
    assert s.by_first_label(SPENT) == {"acme": Decimal(3), "globex": Decimal(3),
                                       "initech": Decimal(3)}  # fmt: skip
    assert s.sample("credit_exporter_counter_excess", metric=SPENT) == 3  # globex, held


def test_two_replicas_agree_with_each_other_and_sql_after_a_reconcile(ev_db, streams) -> None:
    insert(ev_db, "acme", "1", timedelta(hours=2))
    insert(ev_db, "acme", "0")
    first = streams(keyed=False)
    settled(first)
    insert(ev_db, "acme", "41", timedelta(hours=1))  # late for the first replica
    second = streams(keyed=False)  # started after the late row: counts it at start-up
    settled(second)
    first.poll()
    assert first.exported(SPENT) != second.exported(SPENT)
    first.reconcile()
    second.reconcile()
    assert first.exported(SPENT) == second.exported(SPENT)
    assert first.by_first_label(SPENT) == sql_by_org(ev_db) == {"acme": Decimal(42)}


def test_rows_without_a_time_are_reconciled_too(ev_db, streams) -> None:
    execute(ev_db, "INSERT INTO ev (occurred_at, org, credits) VALUES (NULL, 'acme', 5)")
    s = streams()
    settled(s)
    assert s.by_first_label(SPENT) == {"acme": Decimal(5)}
    execute(ev_db, "UPDATE ev SET credits = 6")
    assert s.reconcile() is True
    assert s.by_first_label(SPENT) == {"acme": Decimal(6)}


def test_a_pass_spends_at_most_its_share_of_wall_time_on_the_database(ev_db, streams) -> None:
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, credits) SELECT now() - i * interval '1 minute',"
            " 'org' || (i % 5), 1 FROM generate_series(1, 20000) i"
        )
    s = streams(reconcile={**RECONCILE, "max_db_share": 0.25})
    settled(s)
    started = time.monotonic()
    s.reconcile()
    wall = time.monotonic() - started
    database = s.sample("credit_exporter_reconcile_database_seconds_total", query="s")
    assert database > 0
    assert database <= 0.25 * wall + 0.05, (database, wall)


def test_a_late_row_in_a_chunk_nothing_had_settled_in_is_found(ev_db, streams) -> None:
    insert(ev_db, "acme", "1", timedelta(days=3))
    insert(ev_db, "acme", "1")
    s = streams(keyed=False)
    settled(s)
    insert(ev_db, "acme", "8", timedelta(days=2))  # the day between had no rows at all
    assert s.reconcile() is True
    assert s.by_first_label(SPENT) == {"acme": Decimal(10)}


def test_a_time_ordered_stream_leaves_rows_without_a_time_out_and_says_how_many(
    ev_db, streams
) -> None:
    insert(ev_db, "acme", "2")
    execute(ev_db, "INSERT INTO ev (occurred_at, org, credits) VALUES (NULL, 'acme', 5)")
    s = streams(keyed=False)
    settled(s)
    assert s.by_first_label(SPENT) == {"acme": Decimal(2)}
    assert s.sample("credit_exporter_counter_excess", metric=SPENT) == 0  # nothing held
    s.reconcile()
    s.reconcile()
    assert s.sample("credit_exporter_dropped_rows_total", query="s", reason="null_time") == 1


def test_a_stream_without_a_reconcile_exports_no_reconcile_age(ev_db, streams) -> None:
    """With reconcile: false nothing would ever refresh it, so it must not exist at all."""
    insert(ev_db, "acme", "1")
    s = streams(reconcile=False)
    s.poll()
    assert s.stream.reconciler is None
    assert (
        s.registry.get_sample_value(
            "credit_exporter_reconcile_last_success_timestamp_seconds", {"query": "s"}
        )
        is None
    )


def test_a_reload_that_removes_a_stream_removes_its_reconcile_series(
    ev_db: str, tmp_path: Path
) -> None:
    insert(ev_db, "acme", "1")
    config = {"databases": {"db": {"dsn": ev_db}},
              "streams": {"s": stream(True), "t": stream(True, metrics=[METRICS[0]])}}  # fmt: skip
    config["streams"]["s"]["metrics"] = [METRICS[1]]
    exporter = start_exporter(config, tmp_path)
    try:
        wait_until(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 15, "ready")
        assert exporter.value("credit_exporter_reconcile_rows_total", query="t", reason="late") == 0
        assert exporter.value("credit_exporter_counter_excess", metric=SPENT) == 0
        del config["streams"]["t"]
        exporter.config_path.write_text(yaml.safe_dump(config))
        assert http_post(exporter.url + "/-/reload")[0] == 200
        wait_until(
            lambda: exporter.value("credit_exporter_reconcile_rows_total", query="t",
                                   reason="late") is None, 10, "t's series removed",
        )  # fmt: skip
        assert exporter.value("credit_exporter_counter_excess", metric=SPENT) is None
        assert exporter.value("credit_exporter_reconcile_rows_total", query="s", reason="late") == 0
    finally:
        exporter.stop()


def test_a_reload_that_lowers_a_streams_totals_holds_its_counters(
    ev_db: str, tmp_path: Path
) -> None:
    """A changed stream is recomputed, but a counter never goes down within a process."""
    insert(ev_db, "acme", "3")
    insert(ev_db, "acme", "10")
    config = {"databases": {"db": {"dsn": ev_db}}, "streams": {"s": stream(True)}}
    exporter = start_exporter(config, tmp_path)
    try:
        wait_until(lambda: exporter.value(SPENT, organization="acme") == 13, 15, "13 credits")
        config["streams"]["s"]["sql"] = stream(True)["sql"] + " WHERE credits < 5"
        exporter.config_path.write_text(yaml.safe_dump(config))
        assert http_post(exporter.url + "/-/reload")[0] == 200
        wait_until(lambda: exporter.value("credit_exporter_counter_excess", metric=SPENT) == 10,
                   15, "the 10 credits the new SQL leaves out held")  # fmt: skip
        assert exporter.value(SPENT, organization="acme") == 13
    finally:
        exporter.stop()


def test_each_pass_compares_the_recent_history_and_a_slice_of_the_rest(ev_db, streams) -> None:
    """recent: 2h, full_every three intervals: older chunks are compared a third per pass,
    so a change there is found within three passes, one in the recent history at once."""
    for hours in range(1, 13):  # one row an hour over the last 12 hours
        insert(ev_db, "acme", "1", timedelta(hours=hours, minutes=30))
    s = streams(reconcile={"interval": "1h", "recent": "2h", "full_every": "3h",
                           "chunk": "1h", "max_db_share": 1.0})  # fmt: skip
    settled(s)
    assert s.reconcile() is False
    first_pass = s.sample("credit_exporter_reconcile_chunks_total", query="s", result="same")
    assert first_pass < 8  # 2 recent chunks and a third of the 10 or so older ones
    execute(ev_db, "UPDATE ev SET credits = 5 WHERE occurred_at < now() - interval '11 hours'")
    found = [s.reconcile() for _ in range(3)]
    assert found.count(True) == 1
    assert s.by_first_label(SPENT) == sql_by_org(ev_db)
    execute(ev_db, "UPDATE ev SET credits = 7 WHERE occurred_at > now() - interval '2 hours'")
    assert s.reconcile() is True
    assert s.by_first_label(SPENT) == sql_by_org(ev_db)

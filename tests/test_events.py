"""The usage-event engine: exact, absolute, incremental counters and histograms.

In-process streams against a real PostgreSQL for the fine-grained behaviours;
the concurrent, restart and outage cases run real exporter processes
(tests/test_events_stress.py).
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from stream_support import InProcessStream

from credit_exporter.catalog import LLM_LATENCY_BUCKETS
from credit_exporter.config import parse_config
from credit_exporter.sources import events
from credit_exporter.sources.events import HistogramValue

SCHEMA = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    org text NOT NULL,
    agent text,
    credits numeric(18, 6) NOT NULL,
    latency numeric(10, 3),
    playground boolean NOT NULL DEFAULT false
);
CREATE INDEX ev_occurred_at ON ev (occurred_at);
"""

STREAM_SQL = (
    "SELECT id, occurred_at, org, coalesce(agent, '') AS agent, 'p' AS project, 'chat' AS st,"
    " greatest(credits, 0) AS spent, greatest(-credits, 0) AS refunded,"
    " CASE WHEN credits >= 0 THEN 1 ELSE 0 END AS request, latency"
    " FROM ev WHERE NOT playground"
)
LABELS = {"organization": "org", "project": "project", "agent": "agent", "service_type": "st"}


def stream_config(
    dsn: str,
    settle: str = "1s",
    sql: str = STREAM_SQL,
    key: str | None = None,
    database: dict[str, str] | None = None,
    stream: dict[str, str] | None = None,
) -> Any:
    return parse_config(
        {
            "databases": {"billing": {"dsn": dsn, **(database or {})}},
            "streams": {
                "usage": {
                    "database": "billing",
                    "time": "occurred_at",
                    **({"key": key} if key else {}),
                    "settle": settle,
                    "interval": "1s",
                    "timeout": "1s",
                    **(stream or {}),
                    "sql": sql,
                    "metrics": [
                        {"metric": "credit_spent_credits_total", "value": "spent",
                         "labels": LABELS},
                        {"metric": "credit_refunded_credits_total", "value": "refunded",
                         "labels": LABELS},
                        {"metric": "credit_requests_total", "value": "request", "labels": LABELS},
                        {"metric": "credit_response_duration_seconds", "value": "latency",
                         "labels": {"organization": "org", "gen_ai_request_model": "agent"}},
                    ],
                }
            },
        }
    )  # fmt: skip


@pytest.fixture
def ev_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return empty_db


class Harness(InProcessStream):
    """The ``usage`` stream over ``ev``, polled in-process."""

    def __init__(
        self, dsn: str, settle: str = "1s", sql: str = STREAM_SQL, key: str | None = None
    ) -> None:
        self.dsn = dsn
        super().__init__(stream_config(dsn, settle, sql, key), "usage")

    def spent_by_org(self) -> dict[str, Decimal]:
        return self.by_first_label("credit_spent_credits_total")


def sql_spent_by_org(dsn: str) -> dict[str, Decimal]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT org, sum(greatest(credits, 0)) FROM ev WHERE NOT playground GROUP BY org"
        ).fetchall()
    return dict(rows)


def sql_refunded(dsn: str) -> Decimal:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(greatest(-credits, 0)), 0) FROM ev WHERE NOT playground"
        ).fetchone()
    assert row is not None
    return row[0]


def insert(dsn: str, rows: list[tuple[str, str | None, str]], **extra: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for org, agent, credits in rows:
            conn.execute(
                "INSERT INTO ev (org, agent, credits, latency, playground)"
                " VALUES (%s, %s, %s, %s, %s)",
                (org, agent, credits, extra.get("latency", 1.5), extra.get("playground", False)),
            )


@pytest.fixture
def harness(ev_db: str):
    made: list[Harness] = []

    def make(settle: str = "1s", sql: str = STREAM_SQL, key: str | None = None) -> Harness:
        made.append(Harness(ev_db, settle, sql, key))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_totals_equal_the_sql_sum_to_the_micro_credit(ev_db, harness) -> None:
    # a big total made of many tiny amounts: float accumulation would drift
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, credits, latency)"
            " SELECT now() - i * interval '1 second', 'acme', 1234567.000001 + (i % 7) * 0.000001,"
            " 1 FROM generate_series(1, 5000) i"
        )
    h = harness()
    h.poll()
    assert h.spent_by_org() == sql_spent_by_org(ev_db)
    # 5000 x 1234567.000001 + sum(i % 7 for i in 1..5000) = 14997 micro-credits
    assert h.spent_by_org()["acme"] == Decimal("6172835000.019997")


def test_playground_rows_are_never_counted(ev_db, harness) -> None:
    insert(ev_db, [("acme", "bot", "5")])
    insert(ev_db, [("acme", "bot", "100")], playground=True)
    h = harness()
    h.poll()
    assert h.spent_by_org() == {"acme": Decimal(5)}


def test_refunds_land_on_their_own_counter_and_spent_never_decreases(ev_db, harness) -> None:
    insert(ev_db, [("acme", "bot", "10"), ("acme", "bot", "2.5")])
    h = harness()
    h.poll()
    spent_before = h.spent_by_org()["acme"]
    insert(ev_db, [("acme", "bot", "-4")])
    h.poll()
    assert h.spent_by_org()["acme"] == spent_before == Decimal("12.5")
    refunded = sum(h.exported("credit_refunded_credits_total").values())
    assert refunded == sql_refunded(ev_db) == Decimal(4)
    # a refund is not a request
    assert sum(h.exported("credit_requests_total").values()) == 2


def test_new_rows_are_counted_on_the_next_poll(ev_db, harness) -> None:
    h = harness()
    h.poll()
    assert h.spent_by_org() == {}
    insert(ev_db, [("acme", "bot", "1"), ("globex", None, "2")])
    h.poll()
    assert h.spent_by_org() == {"acme": Decimal(1), "globex": Decimal(2)}


def test_rows_move_from_live_to_settled_without_being_counted_twice(ev_db, harness) -> None:
    insert(ev_db, [("acme", "bot", "3")])
    h = harness(settle="1s")
    h.poll()
    assert h.stream.base["credit_spent_credits_total"] == {}  # still live
    time.sleep(1.2)
    h.poll()
    base = h.stream.base["credit_spent_credits_total"]
    assert sum(base.values()) == 3  # settled now
    assert h.stream.live["credit_spent_credits_total"] == {}
    h.poll()
    assert h.spent_by_org() == {"acme": Decimal(3)}


def test_a_fresh_stream_exports_the_same_totals_as_a_long_running_one(ev_db, harness) -> None:
    first = harness(settle="1s")
    for i in range(5):
        insert(ev_db, [("acme", "bot", f"{i}.25"), ("globex", "x", "1")])
        first.poll()
        time.sleep(0.3)
    first.poll()
    second = harness(settle="1s")  # a restart, or a second replica started later
    second.poll()
    for metric in ("credit_spent_credits_total", "credit_requests_total"):
        assert first.exported(metric) == second.exported(metric)
    assert first.exported("credit_response_duration_seconds") == second.exported(
        "credit_response_duration_seconds"
    )


def test_histogram_buckets_count_and_sum_equal_sql(ev_db, harness) -> None:
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (org, agent, credits, latency) SELECT 'acme', 'gpt-4o', 1,"
            " (i % 100) * 0.137 FROM generate_series(1, 1000) i"
        )
    h = harness()
    h.poll()
    value = h.exported("credit_response_duration_seconds")[("acme", "gpt-4o")]
    assert isinstance(value, HistogramValue)
    with psycopg.connect(ev_db) as conn:
        count, total = conn.execute("SELECT count(latency), sum(latency) FROM ev").fetchone()
        for bound, counted in zip(LLM_LATENCY_BUCKETS, value.buckets, strict=True):
            expected = conn.execute(
                "SELECT count(*) FROM ev WHERE latency <= %s", (Decimal(repr(bound)),)
            ).fetchone()[0]
            assert counted == expected, bound
    assert value.count == count and value.total == total


def test_a_nan_row_leaves_every_series_equal_to_its_finite_rows_through_a_restart(
    ev_db, harness
) -> None:
    """numeric accepts 'NaN': its row drops out of the sums, never its group's history."""
    insert(ev_db, [("acme", "bot", "3.5"), ("acme", "bot", "1.25"), ("globex", "x", "2")])
    first = harness(settle="1s")
    first.poll()
    insert(ev_db, [("acme", "bot", "NaN"), ("acme", "bot", "0.25")])
    time.sleep(1.2)
    first.poll()
    first.poll()
    expected = {"acme": Decimal("5.00"), "globex": Decimal(2)}
    assert first.spent_by_org() == expected
    second = harness(settle="1s")  # the restart reads it all in its first aggregate
    second.poll()
    assert second.spent_by_org() == expected
    assert second.by_first_label("credit_requests_total") == {"acme": 4, "globex": 1}
    assert second.dropped_rows() == {"not_finite": 2}  # its spent and refunded values


def test_a_nan_observation_is_left_out_of_every_bucket_the_count_and_the_sum(
    ev_db, harness
) -> None:
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (org, agent, credits, latency) VALUES ('acme', 'm', 1, 0.2),"
            " ('acme', 'm', 1, 'NaN'), ('acme', 'm', 1, 7)"
        )
    h = harness()
    h.poll()
    value = h.exported("credit_response_duration_seconds")[("acme", "m")]
    assert isinstance(value, HistogramValue)
    assert (value.count, value.total, max(value.buckets)) == (2, Decimal("7.200"), 2)


def test_a_transaction_open_longer_than_settle_is_counted_once_it_commits(ev_db, harness) -> None:
    """The late commit: id 1 and its timestamp are taken first, committed last."""
    h = harness(settle="1s")
    late = psycopg.connect(ev_db)
    late.execute("INSERT INTO ev (org, agent, credits) VALUES ('acme', 'late', 7)")
    insert(ev_db, [("acme", "bot", "1")])  # a later id, committed first
    for _ in range(4):  # the horizon would pass the late row's timestamp by now
        h.poll()
        time.sleep(0.6)
    assert h.spent_by_org() == {"acme": Decimal(1)}
    late.commit()
    late.close()
    h.poll()
    assert h.spent_by_org() == {"acme": Decimal(8)}
    time.sleep(1.2)
    h.poll()
    h.poll()
    assert h.spent_by_org() == sql_spent_by_org(ev_db) == {"acme": Decimal(8)}


def test_rolled_back_rows_are_never_counted_and_leave_no_hole(ev_db, harness) -> None:
    h = harness(settle="1s")
    doomed = psycopg.connect(ev_db)
    doomed.execute("INSERT INTO ev (org, agent, credits) VALUES ('acme', 'gone', 1000)")
    insert(ev_db, [("acme", "bot", "2")])
    h.poll()
    doomed.rollback()
    doomed.close()
    insert(ev_db, [("acme", "bot", "3")])
    time.sleep(1.2)
    h.poll()
    h.poll()
    assert h.spent_by_org() == sql_spent_by_org(ev_db) == {"acme": Decimal(5)}


def test_a_deleted_row_does_not_make_a_counter_go_backwards(ev_db, harness) -> None:
    insert(ev_db, [("acme", "bot", "5"), ("acme", "bot", "6")])
    h = harness()
    h.poll()
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute("DELETE FROM ev WHERE credits = 6")
    h.poll()
    assert h.spent_by_org() == {"acme": Decimal(11)}  # held, not decreased
    held = h.health.dropped_series.labels("credit_spent_credits_total", "counter_decrease")
    assert held._value.get() >= 1


def test_a_null_label_row_is_skipped_and_counted(ev_db, harness) -> None:
    sql = STREAM_SQL.replace("coalesce(agent, '') AS agent", "agent")
    insert(ev_db, [("acme", None, "5"), ("acme", "bot", "1")])
    h = harness(sql=sql)
    h.poll()
    assert h.spent_by_org() == {"acme": Decimal(1)}
    assert h.health.dropped_rows.labels("usage", "null_label")._value.get() >= 1


@pytest.mark.parametrize(("key", "index"), [(None, "ev_occurred_at"), ("id", "ev_pkey")])
def test_steady_state_poll_range_scans_an_index(ev_db, harness, key, index) -> None:
    """The incremental query reads rows after the horizon through the index, never the table."""
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, agent, credits, latency)"
            " SELECT now() - i * interval '1 second', 'org' || (i % 5), 'a' || (i % 9), 1, 1"
            " FROM generate_series(1, 200000) i"
        )
        conn.execute("ANALYZE ev")
    h = harness(settle="1m", key=key)
    h.poll()
    h.poll()
    assert h.stream.horizon is not None
    stream = h.stream
    assert stream.ordering is not None
    statement = stream.plan.poll_statement(stream.ordering, stream.horizon, stream.horizon)
    with psycopg.connect(ev_db) as conn:
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                sql.SQL("EXPLAIN ") + statement, stream.params(stream.horizon, stream.horizon)
            )
        )
    assert "Seq Scan on ev" not in plan, plan
    assert index in plan, plan


@pytest.mark.parametrize(("key", "index"), [(None, "ev_occurred_at"), ("id", "ev_pkey")])
def test_a_steady_polls_statement_is_prepared_and_keeps_the_index_scan_past_its_fifth_run(
    ev_db, harness, key, index
) -> None:
    """PostgreSQL plans a prepared statement once for all parameters after five runs: that
    generic plan must still read the rows after the horizon through the index."""
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, agent, credits, latency)"
            " SELECT now() - i * interval '1 second', 'org' || (i % 5), 'a' || (i % 9), 1, 1"
            " FROM generate_series(1, 200000) i"
        )
        conn.execute("ANALYZE ev")
    h = harness(settle="1m", key=key)
    for _ in range(8):
        insert(ev_db, [("acme", "bot", "2")])
        h.poll()
    prepared = h.prepared_poll()
    assert prepared is not None
    assert prepared.executions >= 6
    assert prepared.generic_plans >= 1
    assert "Seq Scan on ev" not in prepared.plan, prepared.plan
    assert index in prepared.plan, prepared.plan
    assert h.spent_by_org() == sql_spent_by_org(ev_db)


def test_a_poll_after_one_that_read_many_rows_reads_through_the_server_side_cursor_unprepared(
    ev_db, harness, monkeypatch
) -> None:
    """A steady poll's rows are fetched whole: after a poll that read more rows than the
    limit, polls go back to the database's aggregate through the server-side cursor."""
    monkeypatch.setattr(events, "STEADY_POLL_MAX_ROWS", 1)
    h = harness(settle="1m", key="id")
    for _ in range(7):
        insert(ev_db, [("acme", "bot", "2"), ("globex", "x", "1")])
        h.poll()
    assert h.prepared_poll() is None
    assert h.spent_by_org() == sql_spent_by_org(ev_db)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("insert"), st.sampled_from(["acme", "globex"]),
                      st.decimals(min_value=Decimal("-50"), max_value=Decimal("500"), places=6)),
            st.tuples(st.just("rollback"), st.sampled_from(["acme", "globex"]),
                      st.decimals(min_value=Decimal("0"), max_value=Decimal("500"), places=6)),
            st.tuples(st.just("late"), st.sampled_from(["acme", "globex"]),
                      st.decimals(min_value=Decimal("0"), max_value=Decimal("500"), places=6)),
            st.tuples(st.just("restart"), st.just(""), st.just(Decimal(0))),
            st.tuples(st.just("wait"), st.just(""), st.just(Decimal(0))),
        ),
        min_size=1,
        max_size=12,
    )
)  # fmt: skip
def test_counters_equal_sql_sums_after_every_step(make_database, steps) -> None:
    """Property: inserts, refunds, rollbacks, late commits and restarts in any order."""
    dsn = make_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    h = Harness(dsn, settle="1s")
    pending: list[tuple[psycopg.Connection[Any], str]] = []
    try:
        h.poll()
        for action, org, credits in steps:
            # transactions opened in the previous step end now: committed late, or rolled back
            for conn, fate in pending:
                conn.commit() if fate == "late" else conn.rollback()
                conn.close()
            pending = []
            if action == "insert":
                insert(dsn, [(org, "bot", str(credits))])
            elif action in ("rollback", "late"):
                conn = psycopg.connect(dsn)
                conn.execute(
                    "INSERT INTO ev (org, agent, credits) VALUES (%s, 'bot', %s)", (org, credits)
                )
                pending.append((conn, action))
            elif action == "restart":
                h.close()
                h = Harness(dsn, settle="1s")
            elif action == "wait":
                time.sleep(1.1)
            h.poll()  # open transactions are invisible here, and must not be lost later
            assert h.spent_by_org() == sql_spent_by_org(dsn), (action, org, credits)
            refunded = sum(h.exported("credit_refunded_credits_total").values(), Decimal(0))
            assert refunded == sql_refunded(dsn)
        for conn, fate in pending:
            conn.commit() if fate == "late" else conn.rollback()
            conn.close()
        pending = []
        h.poll()
        assert h.spent_by_org() == sql_spent_by_org(dsn)
    finally:
        for conn, _ in pending:
            conn.close()
        h.close()


def test_a_backdated_row_is_counted_when_streams_are_keyed_by_insertion_id(ev_db, harness):
    """Late-arriving usage (an import, a provider's batch log) carries old timestamps."""
    insert(ev_db, [("acme", "bot", "1")])
    h = harness(settle="1s", key="id")
    h.poll()
    time.sleep(1.2)
    h.poll()
    assert h.stream.horizon is not None
    with psycopg.connect(ev_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, agent, credits)"
            " VALUES (now() - interval '30 days', 'acme', 'import', 41)"
        )
    h.poll()
    assert h.spent_by_org() == sql_spent_by_org(ev_db) == {"acme": Decimal(42)}


def test_a_late_commit_is_counted_once_with_an_insertion_id_key(ev_db, harness) -> None:
    h = harness(settle="1s", key="id")
    late = psycopg.connect(ev_db)
    late.execute("INSERT INTO ev (org, agent, credits) VALUES ('acme', 'late', 7)")  # id 1
    insert(ev_db, [("acme", "bot", "1")])  # id 2, committed first
    for _ in range(4):
        h.poll()
        time.sleep(0.6)
    # id 2 is visible but id 1 is still open: the horizon must stay below id 1
    horizon = h.stream.horizon
    assert horizon is None or horizon.key is None or horizon.key < 1
    assert h.spent_by_org() == {"acme": Decimal(1)}
    late.commit()
    late.close()
    for _ in range(3):
        h.poll()
    assert h.stream.horizon is not None and h.stream.horizon.key == 2
    assert h.spent_by_org() == sql_spent_by_org(ev_db) == {"acme": Decimal(8)}


def test_with_no_open_transaction_the_live_window_is_empty(ev_db, harness) -> None:
    """Keyed by id, every visible row settles at once: a poll re-reads nothing."""
    insert(ev_db, [("acme", "bot", "1"), ("acme", "bot", "2")])
    h = harness(settle="10m", key="id")
    h.poll()
    assert h.stream.horizon is not None and h.stream.horizon.key == 2
    assert h.stream.live["credit_spent_credits_total"] == {}
    assert h.spent_by_org() == {"acme": Decimal(3)}


def test_the_start_up_aggregate_is_not_capped_by_the_database_statement_timeout(ev_db):
    """Start-up has its own startup_timeout: a 10M-row history takes minutes, not 10 s."""
    insert(ev_db, [("acme", "bot", "1")] * 40)
    slow = STREAM_SQL.replace("FROM ev WHERE", "FROM ev, LATERAL pg_sleep(0.05) WHERE")
    parsed = stream_config(
        ev_db, sql=slow, database={"statement_timeout": "1s"},
        stream={"startup_timeout": "30s"},
    )  # fmt: skip
    stream = InProcessStream(parsed, "usage")
    try:
        stream.poll()
        assert stream.total("credit_spent_credits_total") == 40
    finally:
        stream.close()


def test_an_unexpected_error_fails_one_run_and_the_next_run_recovers(ev_db, harness) -> None:
    """A bug in one run must not end the polling task: it counts as a failed run."""
    insert(ev_db, [("acme", "bot", "4")])
    h = harness()
    h.poll()  # the first poll reads the column types and makes the stream's final plan
    insert(ev_db, [("acme", "bot", "1")])
    plan = h.stream.plan
    splitter = plan.splitter

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    plan.splitter = broken  # type: ignore[method-assign]
    assert h.loop.run_until_complete(h.stream.run_once()) is False
    status = h.health.queries["usage"]
    assert not status.up and "RuntimeError: boom" in (status.last_error or "")
    h.stream.plan.splitter = splitter  # type: ignore[method-assign]
    h.poll()
    assert h.spent_by_org() == {"acme": Decimal(5)}

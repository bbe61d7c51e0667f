"""A stream recovers on its own, says so, and equals SQL again.

- A different database under the same DSN: dropped and restored with less history plus new
  rows, the exporter used to keep the old totals, never count the new rows, and look
  healthy. Now it recomputes from the whole table, counts the event in
  credit_exporter_stream_recomputes_total and logs it.
- A burst of rows one poll cannot aggregate within its timeout: every poll used to time
  out for ever. The poll after a timeout reads it with the start-up timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from stream_support import SPEND_TABLE, InProcessStream, one_stream_config

SQL = "SELECT id, occurred_at, org, 'p' AS project, 'a' AS agent, 'chat' AS st, credits FROM ev"
LABELS = {"organization": "org", "project": "project", "agent": "agent", "service_type": "st"}
SPENT = "credit_spent_credits_total"


def _fill(dsn: str, days: int, per_day: int, fresh: int = 0) -> None:
    """``days`` of history (``per_day`` rows a day, 1.5 credits each), then ``fresh`` rows
    of 0.25 credits stamped now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SPEND_TABLE)
        conn.execute(
            "INSERT INTO ev (occurred_at, org, credits) SELECT now() - (i || ' minutes')::interval"
            " - interval '1 hour', CASE WHEN i %% 3 = 0 THEN 'acme' ELSE 'globex' END, 1.5"
            " FROM generate_series(1, %s) i",
            (days * per_day,),
        )
        conn.execute(
            "INSERT INTO ev (occurred_at, org, credits) SELECT now() - interval '2 minutes',"
            " 'acme', 0.25 FROM generate_series(1, %s)",
            (fresh,),
        )


def _sql_by_org(dsn: str) -> dict[str, Decimal]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT org, sum(credits) FROM ev GROUP BY org").fetchall())


def _by_org(stream: InProcessStream) -> dict[str, Decimal]:
    return stream.by_first_label(SPENT)


def _stream(dsn: str, key: bool) -> InProcessStream:
    config = {
        "database": "db", "sql": SQL, "time": "occurred_at", "interval": "1s",
        "timeout": "1s", "settle": "1s", "reconcile": False,
        "metrics": [{"metric": SPENT, "value": "credits", "labels": LABELS}],
    }  # fmt: skip
    if key:
        config["key"] = "id"
    else:
        config["arrives_within"] = "1m"
    return InProcessStream(one_stream_config(dsn, config))


def _drop_and_restore(admin_dsn: str, dsn: str, days: int, fresh: int) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    _fill(dsn, days=days, per_day=50, fresh=fresh)


@pytest.fixture
def streams() -> Iterator[list[InProcessStream]]:
    made: list[InProcessStream] = []
    yield made
    for stream in made:
        stream.close()


def _poll_until_up(stream: InProcessStream) -> None:
    """The first poll after the drop may find its pooled connection closed: that poll
    fails (counted like any outage), the next reconnects."""
    for _ in range(3):
        if stream.loop.run_until_complete(stream.stream.run_once()):
            return
    raise AssertionError(stream.health.queries[stream.name].last_error)


@pytest.mark.parametrize("key", [True, False], ids=["keyed", "time-ordered"])
def test_a_dropped_and_restored_database_is_recomputed_and_equals_sql(
    empty_db: str, pg_admin_dsn: str, streams: list[InProcessStream], key: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    _fill(empty_db, days=10, per_day=50)
    stream = _stream(empty_db, key)
    streams.append(stream)
    stream.poll()
    before = _by_org(stream)
    assert before == _sql_by_org(empty_db)
    _drop_and_restore(pg_admin_dsn, empty_db, days=3, fresh=1000)
    with caplog.at_level(logging.ERROR, logger="credit_exporter.sources.events"):
        _poll_until_up(stream)
    assert _by_org(stream) == _sql_by_org(empty_db)  # new rows in, old history out
    assert _by_org(stream)["acme"] < before["acme"] + 250
    assert stream.by_reason(stream.health.recomputes) == {"database_replaced": 1}
    assert "the database under this DSN is another one" in caplog.text


def test_a_keyed_table_whose_highest_key_went_back_is_recomputed(
    empty_db: str, streams: list[InProcessStream]
) -> None:
    """A restore from an older backup into the same database: fewer rows, lower ids."""
    _fill(empty_db, days=5, per_day=50)
    stream = _stream(empty_db, key=True)
    streams.append(stream)
    stream.poll()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("TRUNCATE ev RESTART IDENTITY")
        conn.execute(
            "INSERT INTO ev (occurred_at, org, credits)"
            " SELECT now() - interval '3 hours', 'acme', 2 FROM generate_series(1, 40)"
        )
    stream.poll()
    assert _by_org(stream) == {"acme": Decimal(80)} == _sql_by_org(empty_db)
    assert stream.by_reason(stream.health.recomputes) == {"key_went_back": 1}


def test_new_rows_in_the_same_database_never_start_a_stream_over(
    empty_db: str, streams: list[InProcessStream]
) -> None:
    _fill(empty_db, days=2, per_day=50)
    stream = _stream(empty_db, key=True)
    streams.append(stream)
    for _ in range(3):
        stream.poll()
        with psycopg.connect(empty_db, autocommit=True) as conn:
            conn.execute("INSERT INTO ev (occurred_at, org, credits) VALUES (now(), 'acme', 1)")
    assert stream.by_reason(stream.health.recomputes) == {}


def test_a_burst_too_big_for_one_poll_is_read_with_the_start_up_timeout(
    empty_db: str, streams: list[InProcessStream]
) -> None:
    """Rows that take longer than `timeout` to aggregate (here: three that sleep 0.6 s
    each in the stream's SQL) used to time every poll out, for ever."""
    _fill(empty_db, days=1, per_day=10)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE ev ADD COLUMN slow boolean NOT NULL DEFAULT false")
    slow_sql = SQL.replace(
        " FROM ev", " FROM ev WHERE (SELECT true FROM pg_sleep(CASE WHEN slow THEN 0.6 ELSE 0 END))"
    )
    config = {
        "database": "db", "sql": slow_sql, "time": "occurred_at", "key": "id",
        "interval": "1s", "timeout": "1s", "startup_timeout": "30s", "settle": "1s",
        "reconcile": False,
        "metrics": [{"metric": SPENT, "value": "credits", "labels": LABELS}],
    }  # fmt: skip
    stream = InProcessStream(one_stream_config(empty_db, config))
    streams.append(stream)
    stream.poll()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, credits, slow) SELECT now(), 'acme', 2, i < 4"
            " FROM generate_series(1, 4) i"
        )  # the newest row is not slow: reading the top key stays quick
    assert "timeout" in stream.poll_error()
    stream.poll()  # the backlog, read with the start-up timeout
    assert _by_org(stream) == _sql_by_org(empty_db)
    stream.poll()
    assert stream.stream.backlog is False

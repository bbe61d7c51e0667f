"""A steady poll sums its rows in Python (sources/rowpoll.py): exactly what the database's
GROUPING SETS aggregate of the same rows gives, whatever the values.

Each case writes rows to a real table, then splits the same rows at the same horizons
both ways (the aggregate through the server-side cursor, the rows prepared and summed
here) and compares every settled and live series, checksum, dropped-row count and
folded group.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_support import InProcessStream

from credit_exporter.catalog import LLM_LATENCY_BUCKETS
from credit_exporter.config import parse_config
from credit_exporter.sources import events
from credit_exporter.sources.events import STEADY_POLL_SETTINGS, EventStream, Split
from credit_exporter.sources.ordering import Horizon
from credit_exporter.sources.totals import same_checksum

KEY_ENV = "CREDIT_EXPORTER_TEST_HMAC_KEY"
SCHEMA = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    org text,
    agent text,
    credits numeric,
    latency numeric,
    voice double precision,
    tokens_in bigint,
    tokens_out integer
);
"""
# the project label: text (fingerprinted once per label set) or not (once per row)
STREAM_SQL = (
    "SELECT id, occurred_at, org, agent, {project} AS project, 'chat' AS st, credits, latency,"
    " voice, tokens_in, tokens_out FROM ev"
)
LABELS = {"organization": "org", "project": "project", "agent": "agent", "service_type": "st"}
# every kind of aggregate column: sums of numeric, float, bigint and integer columns,
# a row count, a histogram, ``values``, a capped metric, a hashed label, ``if_null``;
# numeric values are derived in Python, float ones in SQL
METRICS = [
    {"metric": "credit_spent_credits_total", "value": "credits", "labels": LABELS,
     "limits": {"max_series_per_metric": 3}},
    {"metric": "credit_requests_total", "labels": LABELS},
    {"metric": "credit_response_duration_seconds", "value": "latency",
     "labels": {"organization": "org", "gen_ai_request_model": "agent"}},
    {"metric": "credit_voice_seconds_total", "value": "voice",
     "labels": {"organization": "org", "agent": {"column": "agent", "if_null": "none"},
                "service_type": "st"}, "hash_labels": ["agent"]},
    {"metric": "credit_tokens_total", "labels": {"organization": "org", "project": "project",
     "gen_ai_request_model": "agent"},
     "values": {"gen_ai_token_type": {"input": "tokens_in", "output": "tokens_out"}}},
]  # fmt: skip

NUMERICS = st.one_of(
    st.none(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e40", "-0.000000001", "0"]),
    st.decimals(allow_nan=False, allow_infinity=False, places=9,
                min_value=Decimal("-1e12"), max_value=Decimal("1e12")).map(str),
)  # fmt: skip
# the bucket bounds themselves, their neighbours, and the values numerics alone have
LATENCIES = st.one_of(
    NUMERICS,
    st.sampled_from([repr(bound) for bound in LLM_LATENCY_BUCKETS]),
    st.sampled_from(["0.0100000000000000000001", "0.00999999999999999999", "81.92", "81.93"]),
)
FLOATS = st.one_of(
    st.none(),
    st.sampled_from(LLM_LATENCY_BUCKETS),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e308]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
)
ROWS = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex", "initech", "umbrella", None]),
        st.sampled_from(["a", "b", "c", None, "x" * 300]),
        NUMERICS,
        LATENCIES,
        FLOATS,
        st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    ),
    min_size=1,
    max_size=40,
)


class Usage(InProcessStream):
    """The ``usage`` stream over ``ev``, and the database's DSN."""

    def __init__(self, dsn: str, project: str = "'p'") -> None:
        self.dsn = dsn
        super().__init__(parse_config({
            "databases": {"billing": {"dsn": dsn}},
            "privacy": {"hmac_key_env": KEY_ENV},
            "streams": {"usage": {
                "database": "billing", "time": "occurred_at", "key": "id", "settle": "1s",
                "interval": "5s", "timeout": "5s", "sql": STREAM_SQL.format(project=project),
                "metrics": METRICS,
            }},
        }), "usage")  # fmt: skip


@pytest.fixture
def usage(
    empty_db: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Usage]:
    monkeypatch.setenv(KEY_ENV, "k" * 32)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    stream = Usage(empty_db, getattr(request, "param", "'p'"))
    stream.poll()  # reads the column types: float columns summed as numeric
    yield stream
    stream.close()


def insert(dsn: str, rows: list[tuple[Any, ...]]) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE ev")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ev (occurred_at, org, agent, credits, latency, voice, tokens_in,"
                " tokens_out) VALUES (now() - random() * interval '3 hours', %s, %s,"
                " %s::numeric, %s::numeric, %s, %s, %s)"
                " RETURNING id",
                rows,
                returning=True,
            )
            ids = []
            while True:
                ids += [row[0] for row in cur.fetchall()]
                if not cur.nextset():
                    return ids


async def both_ways(stream: EventStream, since: Horizon, at: Horizon) -> tuple[Split, Split]:
    """The rows above ``since``, split at ``at``: by the database's aggregate and by rowpoll."""
    assert stream.ordering is not None
    params = stream.params(since, at)
    stream.admissions = stream.plan.admissions()
    aggregate = stream.plan.poll_statement(stream.ordering, since, at)
    by_database = await stream._read_big(aggregate, params, 5.0, big=False)
    stream.admissions = stream.plan.admissions()
    async with stream.database.read_only(
        5.0, repeatable_read=True, settings=STEADY_POLL_SETTINGS
    ) as conn:
        rows = stream.plan.rows_statement(stream.ordering, since, at)
        by_rows = await stream.read_rows(conn, await conn.execute(rows, params, prepare=True))
    return by_database, by_rows


def assert_same_split(by_database: Split, by_rows: Split) -> None:
    assert by_rows.settled == by_database.settled
    assert by_rows.live == by_database.live
    assert by_rows.dropped_rows == by_database.dropped_rows
    assert by_rows.over_limit == by_database.over_limit
    assert by_rows.rows == by_database.rows
    assert by_rows.checksums.keys() == by_database.checksums.keys()
    for chunk, checksum in by_database.checksums.items():
        assert same_checksum(by_rows.checksums[chunk], checksum), chunk


@pytest.mark.parametrize("usage", ["'p'", "length(org)"], indirect=True)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=ROWS, settled_share=st.floats(0, 1), since_share=st.floats(0, 1))
def test_rows_summed_in_python_split_exactly_as_the_database_aggregates_them(
    usage: Usage, rows: list[tuple[Any, ...]], settled_share: float,
    since_share: float,
) -> None:  # fmt: skip
    ids = insert(usage.dsn, rows)
    since = ids[0] - 1 + int(len(ids) * since_share * 0.5)
    at = since + int((ids[-1] - since) * settled_share)
    by_database, by_rows = usage.loop.run_until_complete(
        both_ways(usage.stream, Horizon(key=since), Horizon(key=at))
    )
    assert by_rows.rows == sum(1 for i in ids if i > since)
    assert_same_split(by_database, by_rows)


def test_a_steady_poll_after_one_that_read_many_rows_is_aggregated_by_the_database(
    usage: Usage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are fetched whole: after a poll that read more than STEADY_POLL_MAX_ROWS, the
    next goes back to the database's aggregate through the server-side cursor."""
    monkeypatch.setattr(events, "STEADY_POLL_MAX_ROWS", 1)
    read: list[str] = []
    read_rows, read_split = usage.stream.read_rows, usage.stream.read_split

    async def rows(conn: Any, cur: Any) -> Split:
        read.append("rows")
        return await read_rows(conn, cur)

    async def aggregate(cur: Any) -> Split:
        read.append("aggregate")
        return await read_split(cur)

    monkeypatch.setattr(usage.stream, "read_rows", rows)
    monkeypatch.setattr(usage.stream, "read_split", aggregate)
    dsn = usage.dsn
    for count in (1, 2, 1, 1):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO ev (occurred_at, org, agent, credits) SELECT now(), 'acme', 'a', 1"
                " FROM generate_series(1, %s)",
                (count,),
            )
        usage.poll()
    # the first poll with rows is the start-up (nothing settled before it)
    assert read == ["aggregate", "rows", "aggregate", "rows"]
    assert usage.total("credit_spent_credits_total") == 5


def test_a_steady_poll_exports_what_the_aggregate_would_after_many_polls(
    usage: Usage,
) -> None:
    """Polls of the rows path, one after the other, add up to the database's sums."""
    dsn = usage.dsn
    for n in range(6):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO ev (occurred_at, org, agent, credits, tokens_in)"
                " SELECT now(), 'org' || (i %% 3), 'a' || (i %% 2), i * 0.001, i"
                " FROM generate_series(1, %s) i",
                (n + 1,),
            )
        usage.poll()
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT sum(credits), sum(tokens_in) FROM ev").fetchone()
    assert row is not None
    assert usage.total("credit_spent_credits_total") == row[0]
    tokens = usage.exported("credit_tokens_total")
    assert sum(v for k, v in tokens.items() if k[-1] == "input") == row[1]

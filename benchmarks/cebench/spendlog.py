"""An LLM gateway's spend log (demo/shapes/gateway.py) filled at a constant request rate.

The gateway's own tables (``gateway.create``), its seeded teams and keys plus
more of them, and ``spend_logs`` rows generated on the server by one
``INSERT ... SELECT ... FROM generate_series`` per million rows: the rate is
fixed, so a larger table is a longer history, not a denser one (1M rows are
about 9 days, 10M about 90 days), and the last hour always holds the same
number of requests. Request ids are md5 text (no order), spend is a float
computed from each model's token prices, ``"startTime"`` is naive UTC ending
now and ``"endTime"`` the start plus the request's latency. The draws come
from ``random()`` after ``setseed``: the same rows every time but for the
clock they end at.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from credit_exporter.demo.shapes import gateway

REQUESTS_PER_HOUR = 4_600
STEP_SECONDS = 3600 / REQUESTS_PER_HOUR
SEED = 42
BATCH_ROWS = 1_000_000  # rows per INSERT ... SELECT
FAILURE_RATE = 0.03

# Beyond the shape's three teams and five keys: organizations, teams and keys
# in the numbers a mid-sized gateway has.
ORGANIZATIONS = ("acme", "globex", "initech", "umbrella")
TEAMS_PER_ORGANIZATION = 10
KEYS_PER_TEAM = 10

# model, call type, USD per million input tokens, per million output tokens
MODELS: tuple[tuple[str, str, float, float], ...] = (
    ("gpt-4o-mini", "acompletion", 0.15, 0.60),
    ("gpt-4o", "acompletion", 2.50, 10.00),
    ("claude-3-5-sonnet", "acompletion", 3.00, 15.00),
    ("claude-3-haiku", "acompletion", 0.25, 1.25),
    ("gemini-1.5-flash", "acompletion", 0.075, 0.30),
    ("gemini-1.5-pro", "acompletion", 1.25, 5.00),
    ("llama-3.1-70b", "atext_completion", 0.88, 0.88),
    ("mistral-large", "acompletion", 2.00, 6.00),
    ("text-embedding-3-small", "aembedding", 0.02, 0.0),
    ("text-embedding-3-large", "aembedding", 0.13, 0.0),
)

# Rows start..start+n*step, one every STEP_SECONDS with a jitter within the step, so
# the heap is in time order as a gateway appends it. Keys (and the models) are drawn
# with a skew: the first ones carry most of the traffic.
INSERT_SQL = """
INSERT INTO spend_logs (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
                        completion_tokens, "startTime", "endTime", model, team_id, status)
SELECT 'chatcmpl-' || md5(%(batch)s || ':' || g), call_type, token,
       CASE WHEN failed THEN 0.0
            ELSE (prompt * price_in + completion * price_out) / 1e6 END,
       prompt + completion, prompt, completion, start,
       start + make_interval(secs => latency), model, team,
       CASE WHEN failed THEN 'failure' ELSE 'success' END
FROM (
  SELECT r.g, a.tokens[r.k] AS token, a.teams[r.k] AS team, a.models[r.m] AS model,
         a.calls[r.m] AS call_type, a.price_in[r.m] AS price_in, a.price_out[r.m] AS price_out,
         20 + floor(power(r.rp, 2) * 6000)::int AS prompt,
         CASE WHEN a.calls[r.m] = 'aembedding' THEN 0 ELSE floor(r.rc * 1500)::int END
           AS completion,
         r.rf < %(failure_rate)s AS failed,
         0.08 + power(r.rl, 3) * 30 AS latency,
         %(start)s::timestamp + make_interval(secs => (r.g - 1 + r.rt) * %(step)s) AS start
  FROM (SELECT g, 1 + floor(power(random(), 2) * %(keys)s)::int AS k,
               1 + floor(power(random(), 1.5) * %(model_count)s)::int AS m,
               random() AS rp, random() AS rc, random() AS rf, random() AS rl, random() AS rt
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g) AS r
  CROSS JOIN (SELECT %(tokens)s::text[] AS tokens, %(team_ids)s::text[] AS teams,
                     %(models)s::text[] AS models, %(calls)s::text[] AS calls,
                     %(prices_in)s::float8[] AS price_in,
                     %(prices_out)s::float8[] AS price_out) AS a
) AS requests
"""


@dataclass(frozen=True)
class Keys:
    """Every virtual key (its hash) and its team (None: a key without one)."""

    tokens: list[str]
    teams: list[str | None]


@dataclass
class SpendLog:
    """What was loaded: rows, the history's span, and where the time went."""

    keys: Keys
    rows: int = 0
    first: datetime | None = None  # naive UTC, the oldest "startTime"
    end: datetime | None = None  # naive UTC, just after the newest "startTime"
    phases: dict[str, float] = field(default_factory=dict)  # seconds
    table_bytes: int = 0

    @property
    def days(self) -> float:
        assert self.first is not None and self.end is not None
        return (self.end - self.first).total_seconds() / 86_400


def _seed_keys(conn: psycopg.Connection[Any]) -> Keys:
    """The shape's own teams and keys, then TEAMS_PER_ORGANIZATION teams per organization
    with KEYS_PER_TEAM keys each (one key in ten without an alias, one team per
    organization without one), and one key per organization without a team."""
    rng = random.Random(SEED)
    tokens = gateway.seed_teams_and_keys(conn, rng)
    rows = conn.execute("SELECT token, team_id FROM gateway_keys ORDER BY key_alias").fetchall()
    teams_of = dict(rows)
    teams, keys = [], []
    for org in ORGANIZATIONS:
        for t in range(TEAMS_PER_ORGANIZATION):
            team_id = f"team-{rng.getrandbits(128):032x}"
            teams.append((team_id, None if t == 0 else f"{org}-team-{t}", org))
            for k in range(KEYS_PER_TEAM):
                alias = None if k == 0 else f"{org}-team-{t}-key-{k}"
                keys.append((f"{rng.getrandbits(256):064x}", alias, team_id))
        keys.append((f"{rng.getrandbits(256):064x}", f"{org}-no-team", None))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO gateway_teams (team_id, team_alias, organization_id) VALUES (%s, %s, %s)",
            teams,
        )
        cur.executemany(
            "INSERT INTO gateway_keys (token, key_alias, team_id) VALUES (%s, %s, %s)", keys
        )
    all_tokens = tokens + [token for token, _, _ in keys]
    all_teams = [teams_of[token] for token in tokens] + [team for _, _, team in keys]
    # the busiest keys first, mixed across organizations (the draw is skewed to the front)
    order = list(range(len(all_tokens)))
    rng.shuffle(order)
    return Keys([all_tokens[i] for i in order], [all_teams[i] for i in order])


def _insert(
    conn: psycopg.Connection[Any], keys: Keys, batch: str, start: datetime, rows: int
) -> None:
    """``rows`` requests from ``start`` on, one every STEP_SECONDS, in batches."""
    params: dict[str, Any] = {
        "batch": batch,
        "failure_rate": FAILURE_RATE,
        "start": start,
        "step": STEP_SECONDS,
        "keys": len(keys.tokens),
        "model_count": len(MODELS),
        "tokens": keys.tokens,
        "team_ids": keys.teams,
        "models": [m[0] for m in MODELS],
        "calls": [m[1] for m in MODELS],
        "prices_in": [m[2] for m in MODELS],
        "prices_out": [m[3] for m in MODELS],
    }
    for first in range(1, rows + 1, BATCH_ROWS):
        last = min(rows, first + BATCH_ROWS - 1)
        conn.execute(INSERT_SQL, {**params, "first": first, "last": last})  # type: ignore[arg-type]


def _index_definitions(conn: psycopg.Connection[Any]) -> list[str]:
    """spend_logs' primary key and indexes as DDL (read back, so the shape's stay the truth)."""
    constraints = conn.execute(
        "SELECT format('ALTER TABLE spend_logs ADD CONSTRAINT %I %s', conname,"
        " pg_get_constraintdef(oid)) FROM pg_constraint"
        " WHERE conrelid = 'spend_logs'::regclass AND contype IN ('p', 'u')"
    ).fetchall()
    indexes = conn.execute(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = 'spend_logs'::regclass"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
    ).fetchall()
    return [row[0] for row in constraints + indexes]


def _drop_indexes(conn: psycopg.Connection[Any]) -> None:
    for (name,) in conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'spend_logs'::regclass"
        " AND contype IN ('p', 'u')"
    ).fetchall():
        conn.execute(f'ALTER TABLE spend_logs DROP CONSTRAINT "{name}"')  # type: ignore[arg-type]
    for (name,) in conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'spend_logs'::regclass"
    ).fetchall():
        conn.execute(f"DROP INDEX {name}")  # type: ignore[arg-type]


def load(dsn: str, rows: int) -> SpendLog:
    """The gateway's tables with ``rows`` requests ending now; indexes built after the
    rows, then VACUUM (ANALYZE) as an old table's autovacuum would have left it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        gateway.create(dsn)
        keys = _seed_keys(conn)
        definitions = _index_definitions(conn)
        _drop_indexes(conn)
        end = gateway.utc_now()
        start = end - timedelta(seconds=rows * STEP_SECONDS)
        conn.execute("SELECT setseed(%s)", (SEED / 100,))
        _insert(conn, keys, "history", start, rows)
        inserted = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for statement in definitions:
            conn.execute(statement)  # type: ignore[arg-type]
        indexed = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) spend_logs")
        vacuumed = time.perf_counter()
        size = conn.execute("SELECT pg_total_relation_size('spend_logs')").fetchone()
    return SpendLog(
        keys,
        rows=rows,
        first=start,
        end=start + timedelta(seconds=rows * STEP_SECONDS),
        phases={"insert": inserted - started, "indexes": indexed - inserted,
                "vacuum analyze": vacuumed - indexed},
        table_bytes=int(size[0]) if size else 0,
    )  # fmt: skip


def top_up(dsn: str, log: SpendLog) -> int:
    """Requests at the same rate from the end of ``log`` up to now (the minutes the load
    took), so the last hour is full when the stream starts. Returns the rows added."""
    assert log.end is not None
    rows = math.floor((gateway.utc_now() - log.end).total_seconds() / STEP_SECONDS)
    if rows > 0:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT setseed(%s)", (SEED / 100 + 0.01,))
            _insert(conn, log.keys, f"top-up-{log.rows}", log.end, rows)
        log.rows += rows
        log.end += timedelta(seconds=rows * STEP_SECONDS)
    return rows


def newest_start(dsn: str) -> datetime:
    """The newest "startTime" in the table."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute('SELECT max("startTime") FROM spend_logs').fetchone()
    assert row is not None and row[0] is not None
    return row[0]


def log_requests(dsn: str, keys: Keys, count: int, started: datetime, seed: int) -> None:
    """``count`` requests as the gateway flushes them (``gateway.log_requests``)."""
    with psycopg.connect(dsn) as conn:
        gateway.log_requests(conn, random.Random(seed), keys.tokens, count, started)
        conn.commit()


def delete_after(dsn: str, after: datetime) -> None:
    """Remove requests started after ``after`` and vacuum, so repetitions start alike."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('DELETE FROM spend_logs WHERE "startTime" > %s', (after,))
        conn.execute("VACUUM spend_logs")


def spend_sum(dsn: str) -> Any:
    """The database's own total spend, as the stream sums it (``spend::numeric``)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(spend::numeric), 0) FROM spend_logs").fetchone()
    assert row is not None
    return row[0]

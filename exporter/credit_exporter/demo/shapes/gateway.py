"""An LLM gateway's spend log, budgets per team and per virtual key.

Modelled on the documented tables of open-source LLM proxies (LiteLLM's
``LiteLLM_SpendLogs``, ``LiteLLM_TeamTable`` and ``LiteLLM_VerificationToken``):

- ``spend_logs``: one row per request, keyed by the provider's text request id
  (random order), spend as ``double precision``, the request's start as a naive
  ``timestamp(3)`` in UTC (``"startTime"``, quoted camelCase as Prisma writes it).
  The gateway buffers rows in memory and writes them in batches, so a row
  commits seconds to minutes after its ``"startTime"``, and hours or days after it
  when a flush failed and was retried.
- ``gateway_teams`` and ``gateway_keys``: a budget (``max_budget``, NULL for none)
  and the running ``spend`` of the current budget period, per team and per
  virtual key (stored as the hash of the key, with an optional alias), and the
  organization the team or key belongs to (NULL when the gateway has none; a
  key without one belongs to its team's).

``BUDGET_QUERIES`` maps the budget tables onto the contract's budget scopes
``team`` and ``api_key``; ``spend_stream`` maps the spend log onto the spend,
request, token and latency metrics; ``log_requests`` writes requests the way the
gateway flushes them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE gateway_teams (
    team_id          text PRIMARY KEY,              -- a uuid, as text
    team_alias       text,
    organization_id  text,                          -- NULL: no organization
    max_budget       double precision,              -- NULL: no budget
    spend            double precision NOT NULL DEFAULT 0,
    budget_duration  text,                          -- '30d', '1mo', ...
    budget_reset_at  timestamp(3)
);
CREATE TABLE gateway_keys (
    token            text PRIMARY KEY,              -- sha256 of the virtual key
    key_alias        text,
    team_id          text REFERENCES gateway_teams (team_id),
    organization_id  text,                          -- NULL: its team's, if any
    max_budget       double precision,
    spend            double precision NOT NULL DEFAULT 0,
    budget_reset_at  timestamp(3)
);
CREATE TABLE spend_logs (
    request_id         text PRIMARY KEY,            -- chatcmpl-<uuid>: random order
    call_type          text NOT NULL,               -- acompletion, aembedding, ...
    api_key            text NOT NULL DEFAULT '',    -- hash of the virtual key
    spend              double precision NOT NULL DEFAULT 0.0,
    total_tokens       integer NOT NULL DEFAULT 0,
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    "startTime"        timestamp(3) NOT NULL,       -- naive, UTC
    "endTime"          timestamp(3) NOT NULL,
    model              text NOT NULL DEFAULT '',
    "user"             text DEFAULT '',
    team_id            text,                        -- NULL: a key without a team
    end_user           text,
    status             text                         -- success, failure
);
CREATE INDEX spend_logs_start_time ON spend_logs ("startTime");
"""


def create(dsn: str) -> None:
    """Create the gateway's tables in an empty database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


# --------------------------------------------------------------------------
# Budgets: credit_budget_used_credits and credit_budget_limit_credits
# --------------------------------------------------------------------------

# The organization label of a team or key that has none (and, for a key, whose
# team has none or which has no team): a gateway without organizations is one.
NO_ORGANIZATION = "default"
# A key without an alias is named by the start of its hash: with 12 hex digits
# (48 bits), two of 10,000 unaliased keys of one organization share a name with
# a probability of about 2e-7, and the name says nothing usable about the key.
KEY_HASH_DIGITS = 12

# One row per team and per key: labels, used credits, and the limit (NULL: none).
_BUDGETS = f"""
SELECT coalesce(t.organization_id, '{NO_ORGANIZATION}') AS organization,
       'team' AS scope,
       coalesce(nullif(t.team_alias, ''), t.team_id) AS scope_id,
       t.spend AS used_credits,
       t.max_budget AS limit_credits
FROM gateway_teams t
UNION ALL
SELECT coalesce(k.organization_id, t.organization_id, '{NO_ORGANIZATION}'),
       'api_key',
       coalesce(nullif(k.key_alias, ''), left(k.token, {KEY_HASH_DIGITS})),
       k.spend,
       k.max_budget
FROM gateway_keys k
LEFT JOIN gateway_teams t ON t.team_id = k.team_id
""".strip()
_LABELS = ["organization", "scope", "scope_id"]


def _budget_query(sql: str, metric: str, value: str) -> dict[str, Any]:
    return {
        "database": "gateway",
        "interval": "30s",
        "timeout": "10s",
        "sql": sql + "\n",
        "metrics": [{"metric": metric, "value": value, "labels": list(_LABELS)}],
    }


# State queries in the exporter's config form (the mapping under ``queries:``),
# for a database named ``gateway`` in ``databases:``. A team's or key's budget
# period is its own (``budget_duration``; the gateway zeroes ``spend`` at
# ``budget_reset_at``), so "used" is ``spend`` as it stands: the credit here is
# the gateway's spend unit (US dollars for LiteLLM).
#
# Exactness: ``spend`` is double precision, a float the gateway increments by
# each request's cost, so it carries the gateway's binary rounding: at most
# about 1e-16 of the total per addition (a million requests adding up to a
# million leave it within a hundredth of a cent), not exact to the micro-credit
# like the reference schema's numeric columns, and its last digits may differ
# from the sum of spend_logs.spend over the same requests. The exporter adds
# no error of its own: the float reaches /metrics unchanged (shortest
# round-tripping repr), bit for bit what the column holds.
#
# Two queries, one per metric, each over teams and keys together: a metric may
# be fed by one query only (check-config refuses a second, whose series could
# collide), and a row feeds every metric of its query, so a NULL max_budget in
# a query that also exported the limit would count as a dropped row
# (null_value) on every poll. A team or key without a budget exports its used
# credits only. Two teams with the same alias in one organization (gateways do
# not require aliases to be unique) export one series, whichever row comes
# first, and count the other as a dropped row (duplicate_series), which
# CreditExporterRowsDropped reports.
BUDGET_QUERIES: dict[str, dict[str, Any]] = {
    "gateway_budgets": _budget_query(_BUDGETS, "credit_budget_used_credits", "used_credits"),
    "gateway_budget_limits": _budget_query(
        f"SELECT * FROM (\n{_BUDGETS}\n) budgets\nWHERE limit_credits IS NOT NULL",
        "credit_budget_limit_credits",
        "limit_credits",
    ),
}


# --------------------------------------------------------------------------
# Spend: one stream over spend_logs
# --------------------------------------------------------------------------

# Every request's labels come from its key and team (either may be missing);
# latency is the request's own duration.
SPEND_SQL = f"""
SELECT s."startTime",
       coalesce(k.organization_id, t.organization_id, '{NO_ORGANIZATION}') AS organization,
       t.team_alias AS team,
       k.key_alias,
       s.call_type,
       s.model,
       CASE WHEN s.status = 'failure' THEN 'failure' ELSE 'success' END AS outcome,
       'other' AS task_category,
       s.spend,
       s.prompt_tokens,
       s.completion_tokens,
       extract(epoch FROM s."endTime" - s."startTime") AS latency_seconds
FROM spend_logs s
LEFT JOIN gateway_keys k ON k.token = s.api_key
LEFT JOIN gateway_teams t ON t.team_id = coalesce(s.team_id, k.team_id)
""".strip()

_TEAM = {"column": "team", "if_null": "no-team"}
_KEY = {"column": "key_alias", "if_null": "unnamed-key"}


def spend_stream(arrives_within: str = "15m", **settings: Any) -> dict[str, Any]:
    """The spend log as a stream (the mapping under ``streams:``), for a database named
    ``gateway``. Ordered by ``"startTime"``: the ids are random text, so there is no
    key; the gateway writes a request within ``arrives_within`` of its start."""
    return {
        "database": "gateway",
        "time": "startTime",
        "time_zone": "UTC",
        "arrives_within": arrives_within,
        "sql": SPEND_SQL + "\n",
        "metrics": [
            {"metric": "credit_spent_credits_total", "value": "spend",
             "labels": {"organization": "organization", "project": _TEAM, "agent": _KEY,
                        "service_type": "call_type"}},
            {"metric": "credit_spent_by_model_credits_total", "value": "spend",
             "labels": {"organization": "organization", "gen_ai_request_model": "model",
                        "task_category": "task_category"}},
            {"metric": "credit_model_requests_total",
             "labels": {"organization": "organization", "gen_ai_request_model": "model",
                        "task_category": "task_category", "outcome": "outcome"}},
            {"metric": "credit_tokens_total",
             "labels": {"organization": "organization", "project": _TEAM,
                        "gen_ai_request_model": "model"},
             "values": {"gen_ai_token_type": {"input": "prompt_tokens",
                                              "output": "completion_tokens"}}},
            {"metric": "credit_response_duration_seconds", "value": "latency_seconds",
             "labels": {"organization": "organization", "gen_ai_request_model": "model"}},
        ],
        **settings,
    }  # fmt: skip


MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "text-embedding-3-small")
CALL_TYPES = {"text-embedding-3-small": "aembedding"}


def seed_teams_and_keys(conn: psycopg.Connection[Any], rng: random.Random) -> list[str]:
    """Three teams (one without an alias), five keys (one without a team, one without an
    alias); returns the keys' tokens."""
    teams = [("team-" + _hex(rng, 8), alias, org)
             for alias, org in (("search", "acme"), ("ads", "acme"), (None, "globex"))]  # fmt: skip
    conn.cursor().executemany(
        "INSERT INTO gateway_teams (team_id, team_alias, organization_id) VALUES (%s, %s, %s)",
        teams,
    )
    keys = [
        (_hex(rng, 64), alias, team)
        for alias, team in (("search-prod", teams[0][0]), ("search-ci", teams[0][0]),
                            ("ads-bot", teams[1][0]), (None, teams[2][0]), ("solo", None))
    ]  # fmt: skip
    conn.cursor().executemany(
        "INSERT INTO gateway_keys (token, key_alias, team_id) VALUES (%s, %s, %s)", keys
    )
    return [token for token, _, _ in keys]


def log_requests(
    conn: psycopg.Connection[Any], rng: random.Random, keys: list[str], count: int,
    started: datetime,
) -> None:  # fmt: skip
    """Write ``count`` requests started just before ``started`` (naive UTC) in one batch, as
    the gateway's flush does; the caller commits."""
    rows = []
    for _ in range(count):
        model = rng.choice(MODELS)
        start = started - timedelta(milliseconds=rng.randint(0, 900))
        prompt, completion = rng.randint(10, 4000), rng.randint(0, 1500)
        failed = rng.random() < 0.05
        rows.append((
            f"chatcmpl-{_hex(rng, 32)}", CALL_TYPES.get(model, "acompletion"), rng.choice(keys),
            0.0 if failed else round(rng.uniform(0.00001, 0.05), 9),  # float spend
            prompt + completion, prompt, completion, start,
            start + timedelta(milliseconds=rng.randint(80, 30_000)), model,
            "failure" if failed else "success",
        ))  # fmt: skip
    conn.cursor().executemany(
        "INSERT INTO spend_logs (request_id, call_type, api_key, spend, total_tokens,"
        ' prompt_tokens, completion_tokens, "startTime", "endTime", model, status)'
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        rows,
    )


def utc_now() -> datetime:
    """Now as the gateway writes it: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"

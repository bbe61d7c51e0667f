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
  virtual key (stored as the hash of the key, with an optional alias).
"""

from __future__ import annotations

import psycopg

SCHEMA = """
CREATE TABLE gateway_teams (
    team_id          text PRIMARY KEY,              -- a uuid, as text
    team_alias       text,
    max_budget       double precision,              -- NULL: no budget
    spend            double precision NOT NULL DEFAULT 0,
    budget_duration  text,                          -- '30d', '1mo', ...
    budget_reset_at  timestamp(3)
);
CREATE TABLE gateway_keys (
    token            text PRIMARY KEY,              -- sha256 of the virtual key
    key_alias        text,
    team_id          text REFERENCES gateway_teams (team_id),
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

"""A chatbot builder's messages, written in two steps.

Modelled on the documented ``messages`` table of open-source LLM app platforms
(Dify's, for one): uuid ids, naive ``timestamp(0)`` times in UTC, and a row
inserted when the question arrives (``message_tokens`` and ``answer_tokens`` 0,
``total_price`` NULL) and completed by an UPDATE when the answer ends, seconds
later: tokens, price and latency are only final then. A message is billed in
credits: one credit per cent of ``total_price``.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE apps (
    id          uuid PRIMARY KEY,
    tenant      text NOT NULL,                      -- the workspace: an organization
    name        text NOT NULL
);
CREATE TABLE messages (
    id                         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id                     uuid NOT NULL REFERENCES apps (id),
    conversation_id            uuid NOT NULL,
    model_id                   varchar(255) NOT NULL,
    query                      text NOT NULL,
    answer                     text NOT NULL DEFAULT '',
    message_tokens             integer NOT NULL DEFAULT 0,
    answer_tokens              integer NOT NULL DEFAULT 0,
    total_price                numeric(10, 7),           -- NULL until the answer ends
    currency                   varchar(255) NOT NULL DEFAULT 'USD',
    provider_response_latency  double precision NOT NULL DEFAULT 0,
    status                     varchar(255) NOT NULL DEFAULT 'normal',  -- normal, error
    from_source                varchar(255) NOT NULL,                   -- api, console
    created_at                 timestamp(0) NOT NULL,                   -- naive, UTC
    updated_at                 timestamp(0) NOT NULL
);
CREATE INDEX message_created_at_idx ON messages (created_at);
"""

MESSAGES_SQL = """
SELECT m.created_at,
       a.tenant AS organization,
       a.name AS agent,
       m.from_source AS channel,
       m.model_id AS model,
       coalesce(m.total_price, 0) * 100 AS credits,
       m.message_tokens,
       m.answer_tokens,
       CASE WHEN m.status = 'error' THEN 'failure' ELSE 'success' END AS outcome,
       'other' AS task_category,
       nullif(m.provider_response_latency, 0) AS latency_seconds
FROM messages m
JOIN apps a ON a.id = m.app_id
""".strip()


def messages_stream(changes_within: str = "5m", **settings: Any) -> dict[str, Any]:
    """The messages as a stream (the mapping under ``streams:``), for a database named
    ``chatbot``. Ordered by ``created_at`` (uuid ids are in no order); a message's
    tokens, price and latency are final ``changes_within`` after it was asked."""
    return {
        "database": "chatbot",
        "time": "created_at",
        "arrives_within": "30s",
        "changes_within": changes_within,
        "sql": MESSAGES_SQL + "\n",
        "metrics": [
            {"metric": "credit_spent_by_channel_credits_total", "value": "credits",
             "labels": {"organization": "organization", "channel": "channel"}},
            {"metric": "credit_model_requests_total",
             "labels": {"organization": "organization", "gen_ai_request_model": "model",
                        "task_category": "task_category", "outcome": "outcome"}},
            {"metric": "credit_tokens_total",
             "labels": {"organization": "organization", "project": "agent",
                        "gen_ai_request_model": "model"},
             "values": {"gen_ai_token_type": {"input": "message_tokens",
                                              "output": "answer_tokens"}}},
            {"metric": "credit_response_duration_seconds", "value": "latency_seconds",
             "labels": {"organization": "organization", "gen_ai_request_model": "model"}},
        ],
        **settings,
    }  # fmt: skip


MODELS = ("gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-70b")


def create(dsn: str) -> list[uuid.UUID]:
    """Create the tables and four apps in two workspaces; returns the apps' ids."""
    apps = [(uuid.uuid4(), tenant, name) for tenant, name in
            (("acme", "support-bot"), ("acme", "sales-bot"), ("globex", "helpdesk"),
             ("globex", "faq"))]  # fmt: skip
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.cursor().executemany("INSERT INTO apps (id, tenant, name) VALUES (%s, %s, %s)", apps)
    return [app for app, _, _ in apps]


def ask(
    conn: psycopg.Connection[Any], rng: random.Random, apps: list[uuid.UUID],
    asked: datetime | None = None,
) -> uuid.UUID:  # fmt: skip
    """Step one: the question arrives (at ``asked``, naive UTC; default now). The caller
    commits."""
    at = asked or utc_now()
    message = uuid.uuid4()
    conn.execute(
        "INSERT INTO messages (id, app_id, conversation_id, model_id, query, from_source,"
        " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (message, rng.choice(apps), uuid.uuid4(), rng.choice(MODELS), "question",
         rng.choice(("api", "console")), at, at),
    )  # fmt: skip
    return message


def answer(conn: psycopg.Connection[Any], rng: random.Random, message: uuid.UUID) -> None:
    """Step two: the answer ends: tokens, price and latency are filled in. The caller
    commits."""
    failed = rng.random() < 0.05
    prompt, completion = rng.randint(20, 3000), 0 if failed else rng.randint(5, 800)
    price = round((prompt * 0.15 + completion * 0.6) / 1_000_000, 7)
    conn.execute(
        "UPDATE messages SET answer = %s, message_tokens = %s, answer_tokens = %s,"
        " total_price = %s, provider_response_latency = %s, status = %s, updated_at = %s"
        " WHERE id = %s",
        ("" if failed else "answer", prompt, completion, price, round(rng.uniform(0.3, 25), 3),
         "error" if failed else "normal", utc_now(), message),
    )  # fmt: skip


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def old(delta: timedelta) -> datetime:
    """A naive UTC time ``delta`` ago."""
    return utc_now() - delta

-- Reference billing schema for an AI platform that meters usage in credits.
--
-- Dimension tables use small integer ids and a human slug; the slug is what
-- becomes a Prometheus label value. Append-only fact tables (usage_events,
-- conversations, messages, feedback, paid_agent_transactions, topups) use
-- bigserial ids and are what the usage-event engine counts.

CREATE TABLE plans (
    id              integer PRIMARY KEY,
    slug            text NOT NULL UNIQUE,
    name            text NOT NULL,
    monthly_credits numeric(18, 6) NOT NULL CHECK (monthly_credits >= 0),
    agent_slots     integer NOT NULL CHECK (agent_slots >= 0),
    seats           integer NOT NULL CHECK (seats >= 0)
);

-- Plan-health quotas: text_queries, voice_seconds, concurrent_calls,
-- phone_numbers, human_agent_seats.
CREATE TABLE plan_quotas (
    plan_id     integer NOT NULL REFERENCES plans (id),
    quota       text NOT NULL CHECK (quota IN ('text_queries', 'voice_seconds',
                    'concurrent_calls', 'phone_numbers', 'human_agent_seats')),
    quota_limit numeric(18, 6) NOT NULL CHECK (quota_limit >= 0),
    PRIMARY KEY (plan_id, quota)
);

CREATE TABLE organizations (
    id         integer PRIMARY KEY,
    slug       text NOT NULL UNIQUE,
    name       text NOT NULL,
    plan_id    integer NOT NULL REFERENCES plans (id),
    created_at timestamptz NOT NULL
);

-- Billing periods, one row per organization and period; the current one is
-- the row with starts_at <= now() < ends_at.
CREATE TABLE billing_periods (
    organization_id integer NOT NULL REFERENCES organizations (id),
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    PRIMARY KEY (organization_id, starts_at),
    CHECK (ends_at > starts_at)
);

CREATE TABLE departments (
    id              integer PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    slug            text NOT NULL,
    name            text NOT NULL,
    UNIQUE (organization_id, slug)
);

CREATE TABLE projects (
    id              integer PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    slug            text NOT NULL,
    name            text NOT NULL,
    color           text NOT NULL,
    UNIQUE (organization_id, slug)
);

-- Team members. An active user holds a seat; human_agent users also hold a
-- human-agent seat (a plan quota).
CREATE TABLE users (
    id              integer PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    department_id   integer NOT NULL REFERENCES departments (id),
    email           text NOT NULL,
    human_agent     boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    deactivated_at  timestamptz,
    UNIQUE (organization_id, email)
);

CREATE TABLE models (
    id            integer PRIMARY KEY,
    slug          text NOT NULL UNIQUE,   -- gen_ai.request.model, e.g. gpt-4o
    provider      text NOT NULL,          -- gen_ai.provider.name, e.g. openai
    name          text NOT NULL,          -- display name, e.g. GPT-4o
    multiplier    numeric(8, 3) NOT NULL CHECK (multiplier > 0),
    tier          text NOT NULL CHECK (tier IN ('premium', 'standard', 'economy'))
);

-- An agent occupies a slot while deleted_at is null.
CREATE TABLE agents (
    id              integer PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    project_id      integer NOT NULL REFERENCES projects (id),
    slug            text NOT NULL,
    name            text NOT NULL,
    model_id        integer NOT NULL REFERENCES models (id),
    paid            boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    UNIQUE (organization_id, slug)
);

-- text_generation, speech_to_text, text_to_speech, embedding, agent,
-- tool_run, document_processing
CREATE TABLE service_types (
    id   integer PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    name text NOT NULL
);

-- How a service type turns units into credits: input_tokens, output_tokens,
-- transcription_seconds, ...
CREATE TABLE pricing_rules (
    id               integer PRIMARY KEY,
    service_type_id  integer NOT NULL REFERENCES service_types (id),
    slug             text NOT NULL UNIQUE,
    name             text NOT NULL,
    unit             text NOT NULL,
    credits_per_unit numeric(18, 9) NOT NULL
);

CREATE TABLE task_categories (
    id   integer PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    name text NOT NULL
);

-- web_chat, whatsapp, phone, sms, messenger, instagram, telegram, api
CREATE TABLE channels (
    id   integer PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    name text NOT NULL
);

-- Two pools per organization: 'plan' (the period's plan grant) and 'topup'
-- (credits bought this period). Usage draws the plan pool first. balance is
-- maintained by the billing system in the same transaction as the usage.
CREATE TABLE credit_pools (
    organization_id integer NOT NULL REFERENCES organizations (id),
    pool            text NOT NULL CHECK (pool IN ('plan', 'topup')),
    allocation      numeric(18, 6) NOT NULL CHECK (allocation >= 0),
    balance         numeric(18, 6) NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (organization_id, pool)
);

-- Monthly credit limits per scope. scope_ref_id is the id of the
-- organization, department, project or user the budget applies to.
CREATE TABLE budgets (
    id              integer PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    scope           text NOT NULL CHECK (scope IN ('organization', 'department', 'project', 'user')),
    scope_ref_id    integer NOT NULL,
    monthly_limit   numeric(18, 6) NOT NULL CHECK (monthly_limit > 0),
    UNIQUE (organization_id, scope, scope_ref_id)
);

CREATE TABLE auto_recharge (
    organization_id   integer PRIMARY KEY REFERENCES organizations (id),
    enabled           boolean NOT NULL,
    threshold_credits numeric(18, 6) NOT NULL,
    amount_credits    numeric(18, 6) NOT NULL
);

CREATE TABLE topups (
    id              bigserial PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    occurred_at     timestamptz NOT NULL,
    credits         numeric(18, 6) NOT NULL CHECK (credits > 0),
    trigger         text NOT NULL CHECK (trigger IN ('manual', 'auto')),
    price           numeric(18, 2) NOT NULL,
    currency        text NOT NULL
);

CREATE TABLE phone_numbers (
    id              integer PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    number          text NOT NULL,
    released_at     timestamptz
);

CREATE TABLE visitors (
    id              bigserial PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    agent_id        integer NOT NULL REFERENCES agents (id),
    contact         text NOT NULL,        -- name, phone number or e-mail
    first_seen_at   timestamptz NOT NULL
);

-- type: chat, call, campaign. A phone call in progress has ended_at null.
CREATE TABLE conversations (
    id              bigserial PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    agent_id        integer NOT NULL REFERENCES agents (id),
    channel_id      integer NOT NULL REFERENCES channels (id),
    visitor_id      bigint NOT NULL REFERENCES visitors (id),
    type            text NOT NULL CHECK (type IN ('chat', 'call', 'campaign')),
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    playground      boolean NOT NULL DEFAULT false
);

-- unanswered: an assistant message that said it could not answer.
CREATE TABLE messages (
    id              bigserial PRIMARY KEY,
    conversation_id bigint NOT NULL REFERENCES conversations (id),
    organization_id integer NOT NULL,
    agent_id        integer NOT NULL,
    role            text NOT NULL CHECK (role IN ('user', 'assistant')),
    created_at      timestamptz NOT NULL,
    unanswered      boolean NOT NULL DEFAULT false
);

CREATE TABLE feedback (
    id              bigserial PRIMARY KEY,
    message_id      bigint NOT NULL REFERENCES messages (id),
    organization_id integer NOT NULL,
    agent_id        integer NOT NULL,
    model_id        integer NOT NULL,
    rating          smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    created_at      timestamptz NOT NULL
);

CREATE TABLE paid_agent_subscriptions (
    id              bigserial PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    agent_id        integer NOT NULL REFERENCES agents (id),
    visitor_id      bigint NOT NULL REFERENCES visitors (id),
    started_at      timestamptz NOT NULL,
    cancelled_at    timestamptz
);

-- kind: charge or refund (refund amounts are positive and subtracted).
CREATE TABLE paid_agent_transactions (
    id              bigserial PRIMARY KEY,
    organization_id integer NOT NULL,
    agent_id        integer NOT NULL,
    subscription_id bigint NOT NULL REFERENCES paid_agent_subscriptions (id),
    occurred_at     timestamptz NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('charge', 'refund')),
    amount          numeric(18, 2) NOT NULL CHECK (amount >= 0),
    currency        text NOT NULL
);

-- The append-only usage ledger: one row per billable request. credits is
-- negative for a refund or correction. Playground rows draw no credits and
-- are never billable (the generator writes them with their would-be cost so
-- a mapping that forgets the filter is caught by the tests).
CREATE TABLE usage_events (
    id               bigserial PRIMARY KEY,
    occurred_at      timestamptz NOT NULL,
    organization_id  integer NOT NULL,
    project_id       integer NOT NULL,
    department_id    integer NOT NULL,
    user_id          integer NOT NULL,
    agent_id         integer,              -- null for direct workspace prompts
    model_id         integer NOT NULL,
    service_type_id  integer NOT NULL,
    pricing_rule_id  integer NOT NULL,
    task_category_id integer NOT NULL,
    channel_id       integer NOT NULL,
    conversation_id  bigint,
    pool             text NOT NULL CHECK (pool IN ('plan', 'topup')),
    credits          numeric(18, 6) NOT NULL,
    input_tokens     integer NOT NULL DEFAULT 0,
    output_tokens    integer NOT NULL DEFAULT 0,
    voice_seconds    numeric(12, 3) NOT NULL DEFAULT 0,
    documents        integer NOT NULL DEFAULT 0,
    tool_runs        integer NOT NULL DEFAULT 0,
    latency_seconds  numeric(10, 3) NOT NULL,
    success          boolean NOT NULL,
    playground       boolean NOT NULL DEFAULT false
);

CREATE INDEX usage_events_occurred_at ON usage_events (occurred_at);
CREATE INDEX usage_events_org_occurred_at ON usage_events (organization_id, occurred_at);
CREATE INDEX conversations_started_at ON conversations (started_at);
CREATE INDEX messages_created_at ON messages (created_at);
CREATE INDEX messages_conversation ON messages (conversation_id);

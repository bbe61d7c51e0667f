"""Deterministic, realistic demo data for the reference billing schema.

One module per stage, in the order below: reference (the fixed catalogue of
models, plans, organizations), sampling, world, sampler, timeline, stream,
dimensions, allocations, loading. This package re-exports what the demo's
commands, the live writer, the tests and the benchmarks use.

``load_demo`` fills every table of ``migrations/001_reference_schema.sql`` with
``days`` of history ending at ``now``: six organizations in the situations the
dashboards and alerts are built for (healthy; just past 75%, 90% and 100% of
the allocation; a large one with a launch spike and a runaway agent; a small
free one), weekday and hour-of-day seasonality, every channel, service type,
model tier and task category, conversations with messages and ratings, paid
agents with subscriptions and transactions, top-ups and budgets.

How it is built:

- The *world* (plans, organizations, users, agents, models, ...) is small and
  built first. The ``Sampler`` draws usage events and conversations from it;
  the live writer (``live.py``) reuses it so that live traffic looks like the
  history.
- The *timeline* gives, per hour and organization, the expected number of
  usage events (seasonality, day-to-day noise, the launch spike) and the credit
  pool that usage draws from in that hour.
- The *stream* walks the hours in order on a producer thread and renders the
  fact rows in COPY's binary format (``pgbinary``: the server reads it in
  about half the time of text), ids assigned in time order; the calling
  thread copies each batch while the next one is generated. Rendered prompts
  and conversations are kept in slots and reused (see ``Stream``).
- Keys, foreign keys and indexes of the fact tables are dropped for the copy
  and restored (validated, rebuilt) at the end, in the same transaction.
- Allocations, balances, budgets and the current period's top-ups are computed
  last, from the credits actually written, so the usage ratios hold at ``now``
  whatever ``days`` and ``scale`` are.

Where the schema has no place for something, the generator decides:

- a text request is priced by input and output tokens but a row has one
  pricing rule: the row names the rule that priced most of it, and its credits
  are the sum of both parts;
- usage driven by an agent's visitors is attributed to the agent's owner
  (``user_id`` and ``department_id`` are NOT NULL);
- refunds and corrections carry zero units, latency 0 and success true;
- a paid agent's price lives in the generator (``PaidAccess``), not in a column.

Determinism: every random draw comes from ``random.Random`` instances seeded
from ``seed`` and consumed in a fixed order on one thread; distribution tables
are built from quantiles, not draws; nothing iterates a hash-ordered set.
Credits are integer micro-credits until they are formatted.
"""

from __future__ import annotations

from credit_exporter.demo.generator.loading import ALL_TABLES, DemoSummary, demo_loaded, load_demo
from credit_exporter.demo.generator.reference import (
    DOC_SHARE,
    MS_PER_DAY,
    MS_PER_HOUR,
    PROMPT_PLAYGROUND,
    RETURNING_VISITOR,
    RUNAWAY,
    RUNAWAY_FACTOR,
    SUBSCRIBE,
)
from credit_exporter.demo.generator.sampler import ConversationPlan, Sampler
from credit_exporter.demo.generator.sampling import (
    add_months,
    format_cents,
    from_ms,
    stochastic_round,
)
from credit_exporter.demo.generator.stream import (
    POOL_FIELD,
    STREAM_COLUMNS,
    Renderer,
    visitor_contact,
)
from credit_exporter.demo.generator.timeline import hour_shape
from credit_exporter.demo.generator.world import Agent, Org, World, build_world

__all__ = [
    "ALL_TABLES",
    "DOC_SHARE",
    "MS_PER_DAY",
    "MS_PER_HOUR",
    "POOL_FIELD",
    "PROMPT_PLAYGROUND",
    "RETURNING_VISITOR",
    "RUNAWAY",
    "RUNAWAY_FACTOR",
    "STREAM_COLUMNS",
    "SUBSCRIBE",
    "Agent",
    "ConversationPlan",
    "DemoSummary",
    "Org",
    "Renderer",
    "Sampler",
    "World",
    "add_months",
    "build_world",
    "demo_loaded",
    "format_cents",
    "from_ms",
    "hour_shape",
    "load_demo",
    "stochastic_round",
    "visitor_contact",
]

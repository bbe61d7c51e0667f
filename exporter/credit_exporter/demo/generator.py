"""Deterministic, realistic demo data for the reference billing schema.

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

import gc
import math
import queue
import random
import struct
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from operator import itemgetter
from statistics import NormalDist
from typing import Generic, TypeVar

import psycopg

from credit_exporter.demo import pgbinary
from credit_exporter.demo.pgbinary import PG_EPOCH_MS
from credit_exporter.demo.schema import apply_migrations
from credit_exporter.progress import ProgressBar

T = TypeVar("T")

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000

# Average billable usage events per day at scale 1.0, all organizations together.
EVENTS_PER_DAY = 3_000
# Usage events per COPY batch; the producer thread runs at most a few batches ahead.
BATCH_EVENTS = 40_000


# --------------------------------------------------------------------------
# Reference data: models, service types, pricing rules, categories, channels
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    id: int
    slug: str  # gen_ai.request.model
    provider: str  # gen_ai.provider.name
    name: str
    multiplier_milli: int  # credit multiplier x 1000
    latency_s: float  # mean response time off-peak-to-peak average (seed 003)
    success: float
    rating: float  # mean answer rating (1-5)

    @property
    def multiplier(self) -> str:
        return f"{self.multiplier_milli // 1000}.{self.multiplier_milli % 1000:03d}"

    @property
    def tier(self) -> str:
        if self.multiplier_milli >= 2000:
            return "premium"
        return "standard" if self.multiplier_milli >= 1000 else "economy"


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(1, "gpt-4o", "openai", "GPT-4o", 2000, 3.1, 0.972, 4.7),
    ModelSpec(2, "gpt-4-turbo", "openai", "GPT-4 Turbo", 1000, 2.4, 0.968, 4.5),
    ModelSpec(3, "gpt-3.5-turbo", "openai", "GPT-3.5 Turbo", 300, 1.2, 0.955, 4.25),
    ModelSpec(4, "claude-3-7-sonnet", "anthropic", "Claude 3.7 Sonnet", 2500, 1.8, 0.985, 4.8),
    ModelSpec(5, "claude-3-5-sonnet", "anthropic", "Claude 3.5 Sonnet", 1000, 1.6, 0.976, 4.6),
    ModelSpec(6, "claude-3-haiku", "anthropic", "Claude 3 Haiku", 500, 0.8, 0.942, 4.2),
    ModelSpec(7, "llama-3.3-70b", "meta", "Llama 3.3 70B", 1000, 3.2, 0.951, 4.3),
    ModelSpec(8, "deepseek-v3", "deepseek", "DeepSeek V3", 1000, 2.9, 0.957, 4.35),
    ModelSpec(9, "o3-mini", "openai", "o3 mini", 3000, 4.1, 0.965, 4.6),
    ModelSpec(10, "gpt-4o-mini", "openai", "GPT-4o mini", 200, 0.9, 0.962, 4.3),
    ModelSpec(11, "text-embedding-3-small", "openai", "Text Embedding 3 Small", 100, 0.15,
              0.985, 4.5),
    ModelSpec(12, "whisper-1", "openai", "Whisper", 1000, 0.9, 0.975, 4.5),
    ModelSpec(13, "tts-1", "openai", "TTS 1", 1000, 0.7, 0.98, 4.5),
)  # fmt: skip
MODEL = {m.slug: m for m in MODELS}
EMBEDDING_MODEL = MODEL["text-embedding-3-small"]
STT_MODEL = MODEL["whisper-1"]
TTS_MODEL = MODEL["tts-1"]
DOC_MODEL = MODEL["gpt-4o-mini"]
# Chat models with their share of prompts (seed 003's "Model Usage", last 30 days),
# plus the economy models agents are often deployed with.
CHAT_MODEL_WEIGHTS: dict[str, float] = {
    "gpt-4o": 2450, "gpt-4-turbo": 1200, "gpt-3.5-turbo": 800, "claude-3-7-sonnet": 1100,
    "claude-3-5-sonnet": 600, "claude-3-haiku": 900, "llama-3.3-70b": 400, "deepseek-v3": 150,
    "o3-mini": 250, "gpt-4o-mini": 1100,
}  # fmt: skip

SERVICE_TYPES: tuple[tuple[int, str, str], ...] = (
    (1, "text_generation", "Text Generation"),
    (2, "speech_to_text", "Speech-to-Text"),
    (3, "text_to_speech", "Text-to-Speech"),
    (4, "embedding", "Embedding"),
    (5, "agent", "Agent"),
    (6, "tool_run", "Tool Run"),
    (7, "document_processing", "Document Processing"),
)
SVC = {slug: sid for sid, slug, _ in SERVICE_TYPES}


@dataclass(frozen=True)
class RuleSpec:
    id: int
    service: str
    slug: str
    name: str
    unit: str
    nano_per_unit: int  # credits_per_unit x 1e9 (the column is numeric(18, 9))

    @property
    def credits_per_unit(self) -> str:
        return f"{self.nano_per_unit // 10**9}.{self.nano_per_unit % 10**9:09d}"


# credits = units x credits_per_unit x model multiplier, rounded to 6 decimals.
PRICING_RULES: tuple[RuleSpec, ...] = (
    RuleSpec(1, "text_generation", "input_tokens", "Input tokens", "token", 400_000),
    RuleSpec(2, "text_generation", "output_tokens", "Output tokens", "token", 1_200_000),
    RuleSpec(3, "speech_to_text", "transcription_seconds", "Transcription", "second", 10_000_000),
    RuleSpec(4, "speech_to_text", "realtime_transcription_seconds", "Realtime transcription",
             "second", 15_000_000),
    RuleSpec(5, "text_to_speech", "synthesis_seconds", "Speech synthesis", "second", 15_000_000),
    RuleSpec(6, "text_to_speech", "hd_synthesis_seconds", "HD speech synthesis", "second",
             30_000_000),
    RuleSpec(7, "embedding", "embedding_tokens", "Embedding tokens", "token", 20_000),
    RuleSpec(8, "agent", "agent_message", "Agent message", "message", 1_000_000_000),
    RuleSpec(9, "agent", "agent_step", "Agent reasoning step", "step", 250_000_000),
    RuleSpec(10, "tool_run", "tool_run", "Tool run", "run", 50_000_000),
    RuleSpec(11, "tool_run", "web_search", "Web search", "run", 100_000_000),
    RuleSpec(12, "document_processing", "document_page", "Document ingestion", "document",
             500_000_000),
    RuleSpec(13, "document_processing", "document_ocr", "Document OCR", "document",
             1_500_000_000),
)  # fmt: skip
RULE = {r.slug: r for r in PRICING_RULES}


@dataclass(frozen=True)
class TaskSpec:
    id: int
    slug: str
    name: str
    weight: float  # share of workspace prompts (seed 003's shares are of credits)
    models: tuple[tuple[str, float], ...]


TASKS: tuple[TaskSpec, ...] = (
    # weight: share of direct prompts, chosen so that with the agents' traffic the
    # credits split roughly as seed 003 says: 28/22/18/15/12/5%.
    TaskSpec(1, "email_writing", "Email Writing & Communication", 0.21,
             (("claude-3-haiku", 25), ("gpt-3.5-turbo", 15), ("gpt-4o-mini", 15),
              ("claude-3-5-sonnet", 15), ("gpt-4-turbo", 18), ("gpt-4o", 12))),
    TaskSpec(2, "content_creation", "Content Creation & Editing", 0.31,
             (("gpt-4o", 30), ("claude-3-7-sonnet", 22), ("claude-3-5-sonnet", 23),
              ("gpt-4-turbo", 15), ("llama-3.3-70b", 10))),
    TaskSpec(3, "data_analysis", "Data Analysis & Summarization", 0.07,
             (("gpt-4-turbo", 30), ("llama-3.3-70b", 25), ("gpt-4o", 15), ("deepseek-v3", 15),
              ("claude-3-5-sonnet", 15))),
    TaskSpec(4, "code_development", "Code Development & Review", 0.34,
             (("llama-3.3-70b", 25), ("gpt-4o", 25), ("claude-3-7-sonnet", 20),
              ("deepseek-v3", 20), ("o3-mini", 10))),
    TaskSpec(5, "research", "Complex Research Tasks", 0.05,
             (("claude-3-7-sonnet", 40), ("gpt-4o", 30), ("o3-mini", 30))),
    TaskSpec(6, "other", "Other Tasks", 0.02,
             tuple((slug, 1.0) for slug in CHAT_MODEL_WEIGHTS)),
)  # fmt: skip
TASK = {t.slug: t for t in TASKS}

CHANNELS: tuple[tuple[int, str, str], ...] = (
    (1, "web_chat", "Web chat"),
    (2, "whatsapp", "WhatsApp"),
    (3, "phone", "Phone"),
    (4, "sms", "SMS"),
    (5, "messenger", "Messenger"),
    (6, "instagram", "Instagram"),
    (7, "telegram", "Telegram"),
    (8, "api", "API"),
)
CHANNEL = {slug: cid for cid, slug, _ in CHANNELS}
QUOTAS = ("text_queries", "voice_seconds", "concurrent_calls", "phone_numbers", "human_agent_seats")


@dataclass(frozen=True)
class PlanSpec:
    id: int
    slug: str
    name: str
    monthly_credits: int  # list grant at scale 1 (an organization's grant is its own)
    agent_slots: int
    seats: int
    quotas: tuple[int, int, int, int, int]  # in QUOTAS order; the first two scale with volume


PLANS: tuple[PlanSpec, ...] = (
    PlanSpec(1, "free", "Free", 1_000, 2, 3, (3_000, 0, 0, 0, 0)),
    PlanSpec(2, "pro", "Pro", 25_000, 5, 10, (6_000, 40_000, 2, 2, 2)),
    PlanSpec(3, "team", "Team", 80_000, 15, 40, (8_000, 150_000, 5, 5, 5)),
    PlanSpec(4, "enterprise", "Enterprise", 300_000, 50, 150, (20_000, 600_000, 20, 20, 20)),
)
PLAN = {p.slug: p for p in PLANS}


@dataclass(frozen=True)
class AgentTemplate:
    slug: str
    name: str
    channels: tuple[tuple[str, float], ...]
    tasks: tuple[tuple[str, float], ...]  # what its conversations are for, by weight
    traffic: float  # relative conversation volume within its organization
    campaign: bool = False  # outbound: conversations are campaigns, not chats


AGENT_TEMPLATES: dict[str, AgentTemplate] = {
    t.slug: t
    for t in (
        AgentTemplate("support-assistant", "Support Assistant",
                      (("web_chat", 60), ("whatsapp", 25), ("messenger", 15)),
                      (("email_writing", 55), ("data_analysis", 35), ("other", 10)), 3.0),
        AgentTemplate("voice-receptionist", "Voice Receptionist", (("phone", 1),),
                      (("email_writing", 80), ("other", 20)), 0.7),
        AgentTemplate("sales-outreach", "Sales Outreach", (("sms", 50), ("whatsapp", 50)),
                      (("email_writing", 70), ("content_creation", 30)), 1.0, campaign=True),
        AgentTemplate("social-concierge", "Social Concierge",
                      (("instagram", 45), ("messenger", 30), ("telegram", 25)),
                      (("content_creation", 80), ("email_writing", 20)), 1.2),
        AgentTemplate("docs-helper", "Docs Helper", (("web_chat", 70), ("api", 30)),
                      (("research", 75), ("data_analysis", 25)), 1.5),
        AgentTemplate("lead-qualifier", "Lead Qualifier",
                      (("web_chat", 50), ("telegram", 20), ("sms", 30)),
                      (("email_writing", 60), ("data_analysis", 40)), 1.2),
        AgentTemplate("billing-bot", "Billing Bot",
                      (("web_chat", 50), ("whatsapp", 30), ("sms", 20)),
                      (("data_analysis", 1),), 1.0),
        AgentTemplate("hr-helpdesk", "HR Helpdesk", (("web_chat", 80), ("telegram", 20)),
                      (("other", 60), ("email_writing", 40)), 0.6),
        AgentTemplate("onboarding-guide", "Onboarding Guide",
                      (("web_chat", 60), ("whatsapp", 20), ("instagram", 20)),
                      (("content_creation", 90), ("other", 10)), 0.8),
        AgentTemplate("order-tracker", "Order Tracker",
                      (("whatsapp", 40), ("sms", 30), ("messenger", 30)),
                      (("email_writing", 60), ("data_analysis", 30), ("other", 10)), 1.1),
        AgentTemplate("appointment-setter", "Appointment Setter", (("phone", 70), ("sms", 30)),
                      (("email_writing", 85), ("other", 15)), 0.6),
        AgentTemplate("code-reviewer", "Code Reviewer", (("api", 80), ("web_chat", 20)),
                      (("code_development", 1),), 0.7),
    )
}  # fmt: skip


@dataclass(frozen=True)
class PaidAccess:
    template: str
    price_cents: int
    currency: str


@dataclass(frozen=True)
class OrgProfile:
    """One demo organization and the situation it is in at ``now``."""

    slug: str
    name: str
    plan: str
    traffic_share: float  # of all usage events
    workspace_share: float  # of the org's events: direct prompts (no agent, channel api)
    ratio_milli: int  # current-period usage / organization budget limit, x 1000
    topup_milli: int  # topup allocation as a share of the limit (orgs without a crossing)
    crossing_milli: int | None  # plan pool exhausted after this share of the period's usage
    auto_recharge: bool
    currency: str
    period_age_days: float  # how far into its current billing period ``now`` is
    departments: int
    projects: int
    users: int
    deactivated: int
    human_agents: int
    agents: tuple[str, ...]  # templates; the last ``deleted_agents`` are deleted
    deleted_agents: int
    phone_numbers: int
    released_numbers: int
    calls_in_progress: int
    paid: tuple[PaidAccess, ...] = ()


ORGS: tuple[OrgProfile, ...] = (
    OrgProfile("northwind", "Northwind Traders", "pro", 0.15, 0.40, 450, 0, None, True, "USD",
               12.4, 4, 4, 8, 1, 1,
               ("support-assistant", "social-concierge", "docs-helper", "order-tracker",
                "onboarding-guide"), 1, 2, 1, 0,
               (PaidAccess("docs-helper", 1499, "USD"),)),
    OrgProfile("acme", "Acme Corp", "team", 0.14, 0.35, 780, 100, None, False, "USD",
               20.6, 5, 6, 18, 2, 3,
               ("support-assistant", "voice-receptionist", "sales-outreach", "docs-helper",
                "billing-bot", "hr-helpdesk", "onboarding-guide", "code-reviewer",
                "order-tracker"), 1, 4, 1, 1,
               (PaidAccess("docs-helper", 999, "USD"),)),
    OrgProfile("globex", "Globex Corporation", "team", 0.13, 0.30, 925, 0, 720, True, "EUR",
               24.3, 4, 5, 15, 1, 5,
               ("support-assistant", "voice-receptionist", "lead-qualifier", "social-concierge",
                "billing-bot", "appointment-setter", "docs-helper", "hr-helpdesk"), 1, 5, 0, 2,
               (PaidAccess("social-concierge", 499, "EUR"),)),
    OrgProfile("initech", "Initech", "pro", 0.12, 0.45, 1025, 0, 550, False, "USD",
               26.8, 3, 3, 10, 1, 2,
               ("support-assistant", "voice-receptionist", "docs-helper", "code-reviewer",
                "billing-bot", "sales-outreach"), 1, 2, 0, 1),
    OrgProfile("umbrella", "Umbrella Corporation", "enterprise", 0.40, 0.30, 600, 200, None,
               False, "EUR", 17.2, 6, 9, 60, 4, 8,
               ("support-assistant", "voice-receptionist", "sales-outreach", "social-concierge",
                "docs-helper", "lead-qualifier", "billing-bot", "order-tracker",
                "appointment-setter", "code-reviewer", "hr-helpdesk", "onboarding-guide"),
               2, 12, 3, 3,
               (PaidAccess("docs-helper", 1900, "EUR"), PaidAccess("code-reviewer", 2900, "USD"))),
    OrgProfile("hooli", "Hooli", "free", 0.06, 0.60, 300, 0, None, False, "USD",
               5.4, 3, 2, 3, 1, 0, ("support-assistant", "docs-helper", "social-concierge"), 1,
               0, 0, 0),
)  # fmt: skip
RUNAWAY = ("umbrella", "lead-qualifier")
RUNAWAY_HOURS = 6
RUNAWAY_FACTOR = 20.0  # runaway hourly events / the agent's usual hourly events
SPIKE_ORG = "umbrella"
SPIKE_FACTOR = 3.5
SPIKE_DAYS_AGO = 20

DEPARTMENTS = (("engineering", "Engineering"), ("sales", "Sales"), ("marketing", "Marketing"),
               ("support", "Customer Support"), ("finance", "Finance"),
               ("operations", "Operations"))  # fmt: skip
PROJECTS = (("customer-support", "Customer Support"), ("website-chat", "Website Chat"),
            ("sales-pipeline", "Sales Pipeline"), ("internal-tools", "Internal Tools"),
            ("knowledge-base", "Knowledge Base"), ("mobile-app", "Mobile App"),
            ("marketing-campaigns", "Marketing Campaigns"), ("data-platform", "Data Platform"),
            ("research-lab", "Research Lab"))  # fmt: skip
COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
          "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31",
          "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363", "#e6550d",
          "#969696", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#fdae6b", "#a1d99b",
          "#c6dbef", "#dadaeb")  # fmt: skip
FIRST_NAMES = (
    "sarah", "mike", "anna", "tom", "lisa", "david", "emma", "james", "olivia", "noah", "sophia",
    "liam", "mia", "lucas", "ava", "ethan", "isabella", "mason", "amelia", "logan", "harper",
    "elijah", "evelyn", "oliver", "abigail", "jacob", "emily", "henry", "ella", "jack", "grace",
    "leo", "chloe", "owen", "zoe", "ryan", "nora", "luke", "lily", "adam", "hannah", "ben",
    "ruby", "sam", "alice", "max", "julia", "dan", "kate", "nick", "eva", "paul", "laura",
    "mark", "claire", "peter", "rose", "alex", "nina", "chris", "maria", "tim", "sofia", "john",
)  # fmt: skip

# Traffic shape (seed 003): Tue-Thu highest, Friday afternoon and Monday morning
# lower, weekends ~20% of a weekday; peaks 10-12 and 14-16 (UTC stands in for
# local time).
WEEKDAY_FACTOR = (0.95, 1.15, 1.2, 1.15, 0.95, 0.21, 0.19)  # Monday first
HOUR_FACTOR = (0.12, 0.08, 0.06, 0.06, 0.08, 0.15, 0.3, 0.55, 0.9, 1.35, 1.9, 1.95, 1.4, 1.45,
               1.9, 1.95, 1.35, 0.95, 0.65, 0.5, 0.4, 0.3, 0.22, 0.16)  # fmt: skip
PEAK_HOURS = range(9, 17)
# Response time relative to a model's mean (seed 003: peak 2.8 s, off-peak 1.9 s,
# weekend 1.5 s around an average of 2.3 s).
# Chosen so that the traffic-weighted mean is the model's mean.
LATENCY_CLASS_FACTOR = (0.76, 1.12, 0.6)  # off-peak, peak, weekend
OFF_PEAK, PEAK, WEEKEND = 0, 1, 2

PROMPT_PLAYGROUND = 0.04  # share of direct prompts run in the playground
CONVERSATION_PLAYGROUND = 0.025  # share of agent conversations that are playground tests
DOC_SHARE = 0.02  # share of an org's events that are knowledge-base document ingestion
RETURNING_VISITOR = 0.3
SUBSCRIBE = 0.12  # chance a new visitor of a paid agent subscribes
UNANSWERED = 0.03
FEEDBACK = 0.15  # chance a (non-call) conversation gets a rating
REFUND_EVERY = (3_000, 11_000)  # events between two refunds or corrections
BUDGET_TARGETS = (770, 920, 1020, 600, 450, 300, 850)  # used / limit x 1000


# --------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------


class Weighted(Generic[T]):
    """Pick one of fixed items by weight in O(1): a lookup table of 2**bits slots.

    Weights are quantized to 1/4096; an item with a positive weight always
    keeps at least one slot.
    """

    __slots__ = ("bits", "items", "table")

    def __init__(self, items: Sequence[T], weights: Sequence[float], bits: int = 12) -> None:
        if not items or len(items) != len(weights):
            raise ValueError("need as many weights as items, and at least one")
        size = 1 << bits
        total = float(sum(weights))
        counts = [max(1, int(w / total * size)) if w > 0 else 0 for w in weights]
        order = sorted(range(len(items)), key=lambda i: -weights[i])
        i = 0
        while sum(counts) < size:  # hand the rounding slack to the heaviest items
            counts[order[i % len(order)]] += 1
            i += 1
        while sum(counts) > size:
            j = order[i % len(order)]
            if counts[j] > 1:
                counts[j] -= 1
            i += 1
        self.items = tuple(items)
        self.bits = bits
        self.table = tuple(item for item, n in zip(items, counts, strict=True) for _ in range(n))

    def pick(self, rng: random.Random) -> T:
        return self.table[rng.getrandbits(self.bits)]


def _quantiles(n: int, inv_cdf: Callable[[float], float]) -> list[float]:
    """n values of a distribution at evenly spaced quantiles: a draw-free sample table."""
    return [inv_cdf((i + 0.5) / n) for i in range(n)]


def _lognormal_table(mean: float, sigma: float, n: int = 1024) -> list[float]:
    """Quantiles of a lognormal with the given mean, in a deterministic shuffled order."""
    mu = math.log(mean) - sigma * sigma / 2
    unit = NormalDist()
    values = _quantiles(n, lambda q: math.exp(mu + sigma * unit.inv_cdf(q)))
    random.Random(n).shuffle(values)  # order is irrelevant; keeps neighbours independent
    return values


def _int_table(values: Sequence[float], low: int, high: int) -> tuple[int, ...]:
    return tuple(min(high, max(low, round(v))) for v in values)


def _latency_tables(model: ModelSpec) -> tuple[tuple[int, ...], ...]:
    """Per latency class, 1024 response times in ms: lognormal with a long tail to 60 s."""
    base = _lognormal_table(1.0, 0.55)
    for i in range(0, len(base), 200):  # 0.5% stragglers, 6-15x slower
        base[i] *= 6 + (i // 200) % 10
    out = []
    for factor in LATENCY_CLASS_FACTOR:
        scale = model.latency_s * factor * 1000
        out.append(_int_table([v * scale for v in base], 20, 60_000))
    return tuple(out)


def _rating_weights(mean: float) -> tuple[float, ...]:
    """Weights of ratings 1..5 with the given mean, between a 4.2 and a 4.8 profile."""
    low, high = (0.03, 0.04, 0.1, 0.35, 0.48), (0.005, 0.005, 0.03, 0.1, 0.86)
    w = min(1.0, max(0.0, (mean - 4.21) / (4.805 - 4.21)))
    return tuple(a + (b - a) * w for a, b in zip(low, high, strict=True))


def stochastic_round(x: float, rng: random.Random) -> int:
    """Stochastic rounding: an integer whose expectation is x."""
    n = int(x)
    return n + 1 if rng.random() < x - n else n


def _round_div(a: int, b: int) -> int:
    """a / b rounded half away from zero, as PostgreSQL rounds numerics."""
    if a >= 0:
        return (a + b // 2) // b
    return -((-a + b // 2) // b)


def credits_micro(units: int, rule: RuleSpec, model: ModelSpec) -> int:
    """units x credits_per_unit x multiplier in micro-credits (units in whole units)."""
    return _round_div(units * rule.nano_per_unit * model.multiplier_milli, 1_000_000)


def voice_credits_micro(voice_ms: int, rule: RuleSpec, model: ModelSpec) -> int:
    """Like credits_micro for a rule priced per second, with the seconds given in ms."""
    return _round_div(voice_ms * rule.nano_per_unit * model.multiplier_milli, 1_000_000_000)


def format_credits(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    return f"{sign}{micro // 1_000_000}.{micro % 1_000_000:06d}"


def format_cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(dt: datetime) -> int:
    """Epoch milliseconds of dt (naive means UTC), truncated."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def add_months(dt: datetime, months: int, day: int) -> datetime:
    """dt moved by whole months, on ``day`` of the month (clamped to the month's length)."""
    index = dt.year * 12 + dt.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_first = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    last_day = (next_first - timedelta(days=1)).day
    return dt.replace(year=year, month=month, day=min(day, last_day))


# Distribution tables shared by every sampler (built from quantiles, no draws).
PROMPT_INPUT_TOKENS = _int_table(_lognormal_table(900, 0.8), 8, 60_000)
PROMPT_OUTPUT_TOKENS = _int_table(_lognormal_table(420, 0.7), 4, 8_000)
AGENT_CONTEXT_TOKENS = _int_table(_lognormal_table(1_400, 0.5), 100, 30_000)
AGENT_REPLY_TOKENS = _int_table(_lognormal_table(160, 0.6), 5, 2_000)
EMBED_TOKENS = _int_table(_lognormal_table(2_500, 1.0), 20, 200_000)
QUERY_EMBED_TOKENS = _int_table(_lognormal_table(60, 0.5), 5, 800)
MEETING_AUDIO_MS = _int_table(_lognormal_table(420_000, 0.8), 10_000, 7_200_000)
SYNTH_MS = _int_table(_lognormal_table(45_000, 0.7), 2_000, 900_000)
UTTERANCE_MS = _int_table(_lognormal_table(5_500, 0.5), 700, 60_000)
REPLY_SPEECH_MS = _int_table(_lognormal_table(6_500, 0.5), 800, 60_000)
CHAT_GAP_MS = _int_table(_lognormal_table(35_000, 0.7), 3_000, 300_000)
CALL_GAP_MS = _int_table(_lognormal_table(3_000, 0.5), 500, 20_000)
CAMPAIGN_GAP_MS = _int_table(_lognormal_table(180_000, 0.8), 10_000, 900_000)
TOOL_LATENCY_MS = _int_table(_lognormal_table(1_500, 0.7), 50, 60_000)
DOC_LATENCY_MS = _int_table(_lognormal_table(9_000, 0.8), 500, 60_000)
STT_MS_PER_AUDIO_SECOND = 0.06  # batch transcription time per second of audio
# Exchanges (user message + assistant reply) per conversation.
CHAT_EXCHANGES = _int_table(
    _quantiles(1024, lambda q: 1 + math.floor(math.log(1 - q) / math.log(1 - 0.38))), 1, 12
)
CALL_EXCHANGES = _int_table(
    _quantiles(1024, lambda q: 3 + math.floor(math.log(1 - q) / math.log(1 - 0.3))), 3, 14
)
CAMPAIGN_EXCHANGES = _int_table(_quantiles(1024, lambda q: 1 + (q > 0.6) + (q > 0.85)), 1, 3)
EXCHANGES = {"call": CALL_EXCHANGES, "chat": CHAT_EXCHANGES, "campaign": CAMPAIGN_EXCHANGES}
GAPS = {"call": CALL_GAP_MS, "chat": CHAT_GAP_MS, "campaign": CAMPAIGN_GAP_MS}
LATENCY = {m.id: _latency_tables(m) for m in MODELS}
RATING = {m.id: Weighted((1, 2, 3, 4, 5), _rating_weights(m.rating)) for m in MODELS}
TASK_PICK = Weighted(TASKS, [t.weight for t in TASKS])
TASK_MODELS = {
    t.id: Weighted([MODEL[s] for s, _ in t.models], [w for _, w in t.models]) for t in TASKS
}
AGENT_MODEL_PICK = Weighted(
    [MODEL[s] for s in CHAT_MODEL_WEIGHTS], list(CHAT_MODEL_WEIGHTS.values())
)
# Extra usage events per exchange: a tool run, a knowledge look-up (embedding), an
# extra reasoning step of the agent.
TOOL_PER_EXCHANGE = 0.15
LOOKUP_PER_EXCHANGE = 0.25
STEP_PER_EXCHANGE = 0.1


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# --------------------------------------------------------------------------
# The world: dimension rows and the sampling structures built on them
# --------------------------------------------------------------------------


@dataclass
class User:
    id: int
    org_id: int
    department_id: int
    email: str
    human_agent: bool
    deactivated: bool
    weight: float
    projects: Weighted[int] | None = None


@dataclass
class Agent:
    id: int
    org_id: int
    project_id: int
    slug: str
    name: str
    template: AgentTemplate
    model: ModelSpec
    owner: User
    deleted: bool
    weight: float
    paid: PaidAccess | None
    channels: Weighted[int] = field(init=False)
    tasks: Weighted[int] = field(init=False)
    task_id: int = field(init=False)  # the main one
    message_credits: int = field(init=False)  # one agent_message with this agent's model

    def __post_init__(self) -> None:
        self.channels = Weighted(
            [CHANNEL[c] for c, _ in self.template.channels], [w for _, w in self.template.channels]
        )
        self.tasks = Weighted(
            [TASK[t].id for t, _ in self.template.tasks], [w for _, w in self.template.tasks]
        )
        self.task_id = TASK[self.template.tasks[0][0]].id
        self.message_credits = credits_micro(1, RULE["agent_message"], self.model)

    def conversation_type(self, channel_id: int) -> str:
        if channel_id == CHANNEL["phone"]:
            return "call"
        return "campaign" if self.template.campaign else "chat"

    def mean_events_per_conversation(self) -> float:
        """Expected usage events of one of this agent's conversations."""
        total = 0.0
        norm = sum(w for _, w in self.template.channels)
        for channel, weight in self.template.channels:
            kind = self.conversation_type(CHANNEL[channel])
            extra = TOOL_PER_EXCHANGE + LOOKUP_PER_EXCHANGE + STEP_PER_EXCHANGE
            per_exchange = 1 + extra + 2 * (kind == "call")
            total += weight / norm * _mean(EXCHANGES[kind]) * per_exchange
        return total


@dataclass
class Org:
    id: int
    profile: OrgProfile
    plan: PlanSpec
    created_ms: int
    churn_ms: int  # agents are deleted and users deactivated at this instant
    departments: list[tuple[int, str, str]]
    projects: list[tuple[int, str, str, str]]
    users: list[User]
    agents: list[Agent]
    phone_numbers: list[tuple[int, str, bool]]  # id, number, released
    users_before: Weighted[User] = field(init=False)
    users_after: Weighted[User] = field(init=False)
    agents_before: Weighted[Agent] = field(init=False)
    agents_after: Weighted[Agent] = field(init=False)
    conversations_per_event: float = field(init=False)

    def __post_init__(self) -> None:
        active = [u for u in self.users if not u.deactivated]
        self.users_before = Weighted(self.users, [u.weight for u in self.users])
        self.users_after = Weighted(active, [u.weight for u in active])
        live = [a for a in self.agents if not a.deleted]
        self.agents_before = Weighted(self.agents, [a.weight for a in self.agents])
        self.agents_after = Weighted(live, [a.weight for a in live])
        # Conversation starts per expected usage event of this organization.
        total = sum(a.weight for a in self.agents)
        per_conversation = sum(
            a.weight / total * a.mean_events_per_conversation() for a in self.agents
        )
        agent_share = 1.0 - self.profile.workspace_share - DOC_SHARE
        self.conversations_per_event = agent_share / per_conversation

    @property
    def slug(self) -> str:
        return self.profile.slug


@dataclass
class World:
    orgs: list[Org]

    def org(self, slug: str) -> Org:
        return next(o for o in self.orgs if o.slug == slug)

    def agent(self, org_slug: str, agent_slug: str) -> Agent:
        return next(a for a in self.org(org_slug).agents if a.slug == agent_slug)


def build_world(seed: int, range_start_ms: int, range_end_ms: int) -> World:
    """Organizations, users, agents, ... The structure depends on the seed only;
    the timestamps (creation, churn) on the range."""
    rng = random.Random(f"{seed}:world")
    orgs: list[Org] = []
    ids = defaultdict(int)

    def next_id(kind: str) -> int:
        ids[kind] += 1
        return ids[kind]

    span = range_end_ms - range_start_ms
    color_order = list(COLORS)
    rng.shuffle(color_order)
    colors = iter(color_order)
    for index, profile in enumerate(ORGS, start=1):
        churn_ms = range_start_ms + int(span * (0.25 + 0.3 * rng.random()))
        departments = [
            (next_id("department"), slug, name) for slug, name in DEPARTMENTS[: profile.departments]
        ]
        projects = [
            (next_id("project"), slug, name, next(colors))
            for slug, name in PROJECTS[: profile.projects]
        ]
        users = _build_users(profile, departments, projects, next_id, rng)
        agents = _build_agents(index, profile, projects, users, next_id, rng)
        numbers = [
            (
                next_id("phone"),
                f"+1 {rng.choice((415, 628, 646, 312, 737))} 555 {rng.randrange(100, 1000):04d}",
                n >= profile.phone_numbers - profile.released_numbers,
            )
            for n in range(profile.phone_numbers)
        ]
        created = range_start_ms - MS_PER_DAY * (120 + 40 * index)
        orgs.append(
            Org(index, profile, PLAN[profile.plan], created, churn_ms, departments, projects,
                users, agents, numbers)
        )  # fmt: skip
    return World(orgs)


def _build_users(
    profile: OrgProfile,
    departments: list[tuple[int, str, str]],
    projects: list[tuple[int, str, str, str]],
    next_id: Callable[[str], int],
    rng: random.Random,
) -> list[User]:
    names = list(FIRST_NAMES)
    rng.shuffle(names)
    names = ["sarah", *[n for n in names if n != "sarah"]]  # seed 003's top user everywhere
    activity = [1.0 / (rank + 1) ** 0.8 for rank in range(profile.users)]
    rng.shuffle(activity)
    human = set(rng.sample(range(profile.users - profile.deactivated), profile.human_agents))
    users = []
    for n in range(profile.users):
        user = User(
            id=next_id("user"),
            org_id=0,
            department_id=departments[rng.randrange(len(departments))][0],
            email=f"{names[n]}@{profile.slug}.example",
            human_agent=n in human,
            deactivated=n >= profile.users - profile.deactivated,
            weight=activity[n],
        )
        home = rng.randrange(len(projects))
        user.projects = Weighted(
            [p[0] for p in projects], [8.0 if i == home else 0.5 for i in range(len(projects))]
        )
        users.append(user)
    return users


def _build_agents(
    org_id: int,
    profile: OrgProfile,
    projects: list[tuple[int, str, str, str]],
    users: list[User],
    next_id: Callable[[str], int],
    rng: random.Random,
) -> list[Agent]:
    owners = [u for u in users if not u.deactivated]
    paid = {p.template: p for p in profile.paid}
    agents = []
    for n, slug in enumerate(profile.agents):
        template = AGENT_TEMPLATES[slug]
        model = AGENT_MODEL_PICK.pick(rng)
        if (profile.slug, slug) == RUNAWAY:
            model = MODEL["o3-mini"]  # a reasoning model stuck in a tool loop
        agents.append(
            Agent(
                id=next_id("agent"),
                org_id=org_id,
                project_id=projects[n % len(projects)][0],
                slug=slug,
                name=template.name,
                template=template,
                model=model,
                owner=owners[rng.randrange(len(owners))],
                deleted=n >= len(profile.agents) - profile.deleted_agents,
                weight=template.traffic * (0.6 + 0.8 * rng.random()),
                paid=paid.get(slug),
            )
        )
    for user in users:
        user.org_id = org_id
    return agents


# --------------------------------------------------------------------------
# The sampler: one usage event, one conversation (shared with live.py)
# --------------------------------------------------------------------------

# A usage event is a plain tuple (cheap to build, easy to render or bind):
#   (t_ms, organization, project, department, user, agent or 0, model, service type,
#    pricing rule, task category, channel, conversation or 0, credits in micro-credits,
#    input tokens, output tokens, voice ms, documents, tool runs, latency ms, success,
#    playground)
# A message: (t_ms, conversation, organization, agent, role, unanswered, feedback or None)
# where feedback is (delay_ms, model_id, rating).
API = CHANNEL["api"]
WEB_CHAT = CHANNEL["web_chat"]
PHONE = CHANNEL["phone"]
R_INPUT, R_OUTPUT = RULE["input_tokens"], RULE["output_tokens"]
R_EMBED, R_AGENT_MESSAGE = RULE["embedding_tokens"], RULE["agent_message"]
R_AGENT_STEP = RULE["agent_step"]
R_REALTIME_STT, R_STT = RULE["realtime_transcription_seconds"], RULE["transcription_seconds"]
R_TTS, R_TTS_HD = RULE["synthesis_seconds"], RULE["hd_synthesis_seconds"]
R_TOOL, R_SEARCH = RULE["tool_run"], RULE["web_search"]
R_DOC, R_OCR = RULE["document_page"], RULE["document_ocr"]
S_TEXT, S_STT, S_TTS, S_EMBED = (SVC[s] for s in ("text_generation", "speech_to_text",
                                                  "text_to_speech", "embedding"))  # fmt: skip
S_AGENT, S_TOOL, S_DOC = SVC["agent"], SVC["tool_run"], SVC["document_processing"]


@dataclass(frozen=True)
class ConversationPlan:
    org: Org
    agent: Agent
    channel_id: int
    type: str
    exchanges: int
    task_id: int
    playground: bool = False
    keep_open: bool = False  # never ended (a stuck session)


class Sampler:
    """Draws usage events and conversations from the demo's distributions.

    The bulk generator and the live writer share it, so live traffic has the
    shape of the history. Methods are written for speed (locals, table
    look-ups): the bulk load calls them millions of times.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # --- direct workspace prompts (no agent, channel api) -------------------

    def prompt(self, org: Org, t: int, lat: int, playground: bool = False) -> tuple:
        rng = self.rng
        bits, rand = rng.getrandbits, rng.random
        user = (org.users_after if t >= org.churn_ms else org.users_before).pick(rng)
        project = user.projects.pick(rng)  # type: ignore[union-attr]
        task = TASK_PICK.table[bits(12)]
        roll = rand()
        inp = out = voice = docs = 0
        if roll < 0.82:
            model = TASK_MODELS[task.id].table[bits(12)]
            ok = rand() < model.success
            inp = PROMPT_INPUT_TOKENS[bits(10)]
            out = PROMPT_OUTPUT_TOKENS[bits(10)] if ok else 0
            in_cost = inp * R_INPUT.nano_per_unit
            out_cost = out * R_OUTPUT.nano_per_unit
            # One pricing rule per row: the one that priced most of it (module docs).
            rule = R_OUTPUT if out_cost >= in_cost else R_INPUT
            credits = _round_div((in_cost + out_cost) * model.multiplier_milli, 1_000_000)
            svc = S_TEXT
            latency = LATENCY[model.id][lat][bits(10)]
            if not ok and rand() < 0.1:  # a timeout
                latency = 20_000 + rng.randrange(40_000)
        elif roll < 0.89:
            model, rule, svc = EMBEDDING_MODEL, R_EMBED, S_EMBED
            ok = rand() < model.success
            inp = EMBED_TOKENS[bits(10)]
            credits = credits_micro(inp, rule, model)
            latency = LATENCY[model.id][lat][bits(10)] + inp // 200
        elif roll < 0.95:
            model, svc = DOC_MODEL, S_DOC
            rule = R_DOC if rand() < 0.7 else R_OCR
            ok = rand() < model.success
            docs = 1 + bits(2)
            credits = credits_micro(docs, rule, model)
            latency = DOC_LATENCY_MS[bits(10)]
        elif roll < 0.98:
            model, rule, svc = STT_MODEL, R_STT, S_STT
            ok = rand() < model.success
            voice = MEETING_AUDIO_MS[bits(10)]
            credits = voice_credits_micro(voice, rule, model)
            latency = min(60_000, int(voice * STT_MS_PER_AUDIO_SECOND))
        else:
            model, svc = TTS_MODEL, S_TTS
            rule = R_TTS if rand() < 0.8 else R_TTS_HD
            ok = rand() < model.success
            voice = SYNTH_MS[bits(10)]
            credits = voice_credits_micro(voice, rule, model)
            latency = LATENCY[model.id][lat][bits(10)]
        return (t, org.id, project, user.department_id, user.id, 0, model.id, svc, rule.id,
                task.id, API, 0, credits, inp, out, voice, docs, 0, latency, ok,
                playground)  # fmt: skip

    def document_ingest(self, org: Org, t: int) -> tuple:
        """An agent's knowledge-base document upload (no conversation)."""
        rng = self.rng
        agent = (org.agents_after if t >= org.churn_ms else org.agents_before).pick(rng)
        rule = R_DOC if rng.random() < 0.75 else R_OCR
        docs = 1 + rng.getrandbits(3)
        ok = rng.random() < DOC_MODEL.success
        return (t, org.id, agent.project_id, agent.owner.department_id, agent.owner.id, agent.id,
                DOC_MODEL.id, S_DOC, rule.id, TASK["research"].id, API, 0,
                credits_micro(docs, rule, DOC_MODEL), 0, 0, 0, docs, 0,
                DOC_LATENCY_MS[rng.getrandbits(10)], ok, False)  # fmt: skip

    # --- agent conversations ------------------------------------------------

    def pick_agent(self, org: Org, t: int) -> Agent:
        """An agent of the org by traffic weight (deleted agents only before they were)."""
        return (org.agents_after if t >= org.churn_ms else org.agents_before).pick(self.rng)

    def plan_conversation(self, org: Org, agent: Agent) -> ConversationPlan:
        rng = self.rng
        task = agent.tasks.pick(rng)
        if rng.random() < CONVERSATION_PLAYGROUND:
            exchanges = CHAT_EXCHANGES[rng.getrandbits(10)]
            return ConversationPlan(org, agent, WEB_CHAT, "chat", exchanges, task, playground=True)
        channel = agent.channels.pick(rng)
        kind = agent.conversation_type(channel)
        exchanges = EXCHANGES[kind][rng.getrandbits(10)]
        return ConversationPlan(org, agent, channel, kind, exchanges, task)

    def conversation(
        self, plan: ConversationPlan, conv_id: int, start: int, lat: int, limit: int | None
    ) -> tuple[list[tuple], list[tuple], int | None]:
        """(messages, usage events, ended_at) of a conversation starting at ``start``.

        Every exchange is a user message and an assistant reply (an ``agent``
        usage event, sometimes a knowledge look-up and a tool run; on a call
        also speech-to-text and text-to-speech). Anything at or after ``limit``
        is left out and the conversation stays open (ended_at None): a call in
        progress at ``now``.
        """
        rng = self.rng
        bits, rand = rng.getrandbits, rng.random
        agent, org = plan.agent, plan.org
        o, p, a = org.id, agent.project_id, agent.id
        d, u = agent.owner.department_id, agent.owner.id
        model = agent.model
        m, success, lat_table = model.id, model.success, LATENCY[model.id][lat]
        task, ch, pg, conv = plan.task_id, plan.channel_id, plan.playground, conv_id
        is_call = plan.type == "call"
        gaps = GAPS[plan.type]
        credits = agent.message_credits
        step_credits = credits_micro(1, R_AGENT_STEP, model)
        messages: list[tuple] = []
        events: list[tuple] = []
        add_message, add_event = messages.append, events.append
        t = start
        for _ in range(plan.exchanges):
            add_message((t, conv, o, a, "user", False, None))
            if is_call:
                ms = UTTERANCE_MS[bits(10)]
                add_event((t + 150, o, p, d, u, a, STT_MODEL.id, S_STT, R_REALTIME_STT.id, task,
                           ch, conv, voice_credits_micro(ms, R_REALTIME_STT, STT_MODEL), 0, 0, ms,
                           0, 0, 150 + ms // 20, rand() < STT_MODEL.success, pg))  # fmt: skip
            latency = lat_table[bits(10)]
            ok = rand() < success
            reply = t + latency
            add_event((reply, o, p, d, u, a, m, S_AGENT, R_AGENT_MESSAGE.id, task, ch, conv,
                       credits, AGENT_CONTEXT_TOKENS[bits(10)],
                       AGENT_REPLY_TOKENS[bits(10)] if ok else 0, 0, 0, 0, latency, ok,
                       pg))  # fmt: skip
            if rand() < LOOKUP_PER_EXCHANGE:
                tokens = QUERY_EMBED_TOKENS[bits(10)]
                add_event((t + 40, o, p, d, u, a, EMBEDDING_MODEL.id, S_EMBED, R_EMBED.id, task,
                           ch, conv, credits_micro(tokens, R_EMBED, EMBEDDING_MODEL), tokens, 0,
                           0, 0, 0, LATENCY[EMBEDDING_MODEL.id][lat][bits(10)], True,
                           pg))  # fmt: skip
            if rand() < TOOL_PER_EXCHANGE:
                add_event(self._tool_run(o, p, d, u, a, model, task, ch, conv, reply - 20, pg))
            if rand() < STEP_PER_EXCHANGE:
                add_event((reply - 10, o, p, d, u, a, m, S_AGENT, R_AGENT_STEP.id, task, ch, conv,
                           step_credits, AGENT_CONTEXT_TOKENS[bits(10)], 0, 0, 0, 0,
                           lat_table[bits(10)], True, pg))  # fmt: skip
            if is_call:
                ms = REPLY_SPEECH_MS[bits(10)]
                rule = R_TTS if rand() < 0.8 else R_TTS_HD
                add_event((reply + 60, o, p, d, u, a, TTS_MODEL.id, S_TTS, rule.id, task, ch,
                           conv, voice_credits_micro(ms, rule, TTS_MODEL), 0, 0, ms, 0, 0,
                           LATENCY[TTS_MODEL.id][lat][bits(10)], rand() < TTS_MODEL.success,
                           pg))  # fmt: skip
            add_message((reply, conv, o, a, "assistant", rand() < UNANSWERED, None))
            t = reply + gaps[bits(10)]
        if not pg and not is_call and rand() < FEEDBACK:
            last = messages[-1]
            rating = RATING[m].pick(rng)
            if last[5]:  # an unanswered question is rarely rated well
                rating = min(rating, 2 + bits(1))
            messages[-1] = (*last[:6], (5_000 + rng.randrange(115_000), m, rating))
        end = messages[-1][0]
        if plan.keep_open or (limit is not None and end >= limit):
            cut = limit if limit is not None else end + 1
            messages = [x for x in messages if x[0] < cut]
            events = [x for x in events if x[0] < cut]
            return messages, events, None
        return messages, events, end

    def _tool_run(
        self, o: int, p: int, d: int, u: int, a: int, model: ModelSpec, task: int, channel: int,
        conv: int, t: int, pg: bool
    ) -> tuple:  # fmt: skip
        rng = self.rng
        rule = R_TOOL if rng.random() < 0.7 else R_SEARCH
        runs = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        return (t, o, p, d, u, a, model.id, S_TOOL, rule.id, task, channel, conv,
                credits_micro(runs, rule, model), 0, 0, 0, 0, runs,
                TOOL_LATENCY_MS[rng.getrandbits(10)], rng.random() < 0.97, pg)  # fmt: skip

    def runaway_step(self, agent: Agent, conv_id: int, t: int) -> tuple:
        """One iteration of an agent stuck in a tool loop, its context growing."""
        rng = self.rng
        o, p, a = agent.org_id, agent.project_id, agent.id
        d, u = agent.owner.department_id, agent.owner.id
        roll = rng.random()
        if roll < 0.2:
            return self._tool_run(o, p, d, u, a, agent.model, agent.task_id, WEB_CHAT, conv_id, t,
                                  False)  # fmt: skip
        rule = R_AGENT_STEP if roll < 0.4 else R_AGENT_MESSAGE
        return (t, o, p, d, u, a, agent.model.id, S_AGENT, rule.id, agent.task_id,
                WEB_CHAT, conv_id, credits_micro(1, rule, agent.model),
                AGENT_CONTEXT_TOKENS[rng.getrandbits(10)] * 4, 40, 0, 0, 0,
                LATENCY[agent.model.id][PEAK][rng.getrandbits(10)], True, False)  # fmt: skip


# --------------------------------------------------------------------------
# The timeline: expected traffic per hour and organization, pools, periods
# --------------------------------------------------------------------------


def hour_shape(hour_ms: int) -> tuple[float, int]:
    """(traffic factor, latency class) of the UTC hour starting at hour_ms."""
    day = hour_ms // MS_PER_DAY
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    hour = hour_ms // MS_PER_HOUR % 24
    factor = WEEKDAY_FACTOR[weekday] * HOUR_FACTOR[hour]
    if (weekday == 0 and hour < 12) or (weekday == 4 and hour >= 12):
        factor *= 0.8  # Monday morning, Friday afternoon
    if weekday >= 5:
        return factor, WEEKEND
    return factor, PEAK if hour in PEAK_HOURS else OFF_PEAK


def _mean_hour_factor() -> float:
    week = [hour_shape(h * MS_PER_HOUR)[0] for h in range(7 * 24)]
    return sum(week) / len(week)


EVENTS_PER_HOUR_AT_FACTOR_1 = EVENTS_PER_DAY / 24 / _mean_hour_factor()


@dataclass
class Period:
    start_ms: int
    end_ms: int
    crossing_ms: int | None = None  # from here on, usage draws the topup pool


class Timeline:
    """Hours of [range_start, now) with, per organization, the expected usage
    events, the pool drawn, and the billing periods."""

    def __init__(self, world: World, seed: int, range_start: int, now: int, scale: float) -> None:
        self.world = world
        self.range_start = range_start
        self.now = now
        self.hour0 = range_start // MS_PER_HOUR * MS_PER_HOUR
        self.n_hours = -(-(now - self.hour0) // MS_PER_HOUR)
        rng = random.Random(f"{seed}:timeline")
        self.lat_class: list[int] = []
        self.expected: list[list[float]] = []  # [hour][org index], usage events
        self.spike = self._spike_window()
        self.runaway_start = max(range_start, now - RUNAWAY_HOURS * MS_PER_HOUR)
        self._fill_expected(rng, scale)
        self.periods = [self._periods(org) for org in world.orgs]
        self.pools: list[list[str]] = [["plan"] * (len(world.orgs) + 1) for _ in self.expected]
        for oi, org in enumerate(world.orgs):
            self._place_crossings(oi, org)

    def bounds(self, k: int) -> tuple[int, int]:
        start = self.hour0 + k * MS_PER_HOUR
        return max(start, self.range_start), min(start + MS_PER_HOUR, self.now)

    def hour_of(self, t: int) -> int:
        return (t - self.hour0) // MS_PER_HOUR

    def _spike_window(self) -> tuple[int, int]:
        """The launch day: ~20 days ago, or inside a shorter range; a Tue-Thu when it can."""
        days = (self.now - self.range_start) / MS_PER_DAY
        days_ago = SPIKE_DAYS_AGO if days > SPIKE_DAYS_AGO + 1 else days * 0.55
        target = self.now - int(days_ago * MS_PER_DAY)
        first_day = -(-self.range_start // MS_PER_DAY)
        last_day = self.now // MS_PER_DAY - 1  # whole days only, never the current one
        candidates = [
            d for d in range(first_day, last_day) if (d + 3) % 7 in (1, 2, 3)
        ]  # Tuesday..Thursday
        if candidates:
            day = min(candidates, key=lambda d: (abs(d * MS_PER_DAY + MS_PER_DAY // 2 - target), d))
            return day * MS_PER_DAY, (day + 1) * MS_PER_DAY
        start = max(self.range_start, target - MS_PER_DAY // 4)
        return start, min(self.now - RUNAWAY_HOURS * MS_PER_HOUR, start + MS_PER_DAY // 2)

    def _fill_expected(self, rng: random.Random, scale: float) -> None:
        day_noise: dict[int, list[float]] = {}
        spike_org = next(i for i, o in enumerate(self.world.orgs) if o.slug == SPIKE_ORG)
        for k in range(self.n_hours):
            start, end = self.bounds(k)
            hour_start = self.hour0 + k * MS_PER_HOUR
            factor, lat = hour_shape(hour_start)
            self.lat_class.append(lat)
            day = hour_start // MS_PER_DAY
            if day not in day_noise:
                day_noise[day] = [math.exp(rng.gauss(0, 0.1)) for _ in self.world.orgs]
            base = EVENTS_PER_HOUR_AT_FACTOR_1 * scale * factor * (end - start) / MS_PER_HOUR
            row = []
            for oi, org in enumerate(self.world.orgs):
                x = base * org.profile.traffic_share * day_noise[day][oi]
                x *= math.exp(rng.gauss(0, 0.12))  # hour-to-hour noise
                if oi == spike_org and self.spike[0] <= hour_start < self.spike[1]:
                    x *= SPIKE_FACTOR
                row.append(x)
            self.expected.append(row)

    def _periods(self, org: Org) -> list[Period]:
        """Monthly periods anchored so that ``now`` is period_age_days into the current one."""
        anchor = from_ms(self.now - int(org.profile.period_age_days * MS_PER_DAY))
        anchor = anchor.replace(hour=0, minute=0, second=0, microsecond=0)
        periods = []
        n = 0
        while True:
            start = add_months(anchor, -n, anchor.day)
            end = add_months(anchor, 1 - n, anchor.day)
            periods.append(Period(to_ms(start), to_ms(end)))
            if to_ms(start) <= self.range_start:
                break
            n += 1
        return periods[::-1]

    def current_period(self, oi: int) -> Period:
        return self.periods[oi][-1]

    def _place_crossings(self, oi: int, org: Org) -> None:
        """Hour from which an org draws its topup pool, in each period it exhausts."""
        if org.profile.crossing_milli is None:
            return
        for period in self.periods[oi]:
            current = period is self.periods[oi][-1]
            share = org.profile.crossing_milli / 1000 if current else 0.85
            hours = [
                k
                for k in range(self.n_hours)
                if period.start_ms <= self.hour0 + k * MS_PER_HOUR < period.end_ms
            ]
            total = sum(self.expected[k][oi] for k in hours)
            running = 0.0
            for k in hours:
                running += self.expected[k][oi]
                if running >= share * total:  # the plan pool runs dry during hour k
                    period.crossing_ms = self.bounds(k)[1]
                    for later in hours:
                        if later > k:
                            self.pools[later][org.id] = "topup"
                    break

    def mean_agent_events_per_hour(self, org: Org, agent: Agent) -> float:
        oi = org.id - 1
        mean_org = sum(row[oi] for row in self.expected) / max(1, self.n_hours)
        share = agent.weight / sum(a.weight for a in org.agents)
        return mean_org * org.conversations_per_event * share * agent.mean_events_per_conversation()


# --------------------------------------------------------------------------
# The stream: hours -> binary COPY rows, in time order
# --------------------------------------------------------------------------

# Columns of each stream table in the order its binary rows carry them: the
# fields that vary from row to row first (packed by one struct each), then the
# fields whose bytes are cached (dimensions, rendered measures).
STREAM_COLUMNS: dict[str, str] = {
    "visitors": "id, first_seen_at, organization_id, agent_id, contact",
    "conversations": (
        "id, visitor_id, started_at, ended_at, organization_id, agent_id, channel_id, type, "
        "playground"
    ),
    "messages": "id, conversation_id, created_at, organization_id, agent_id, role, unanswered",
    "feedback": "id, message_id, created_at, organization_id, agent_id, model_id, rating",
    "paid_agent_subscriptions": (
        "id, visitor_id, started_at, cancelled_at, organization_id, agent_id"
    ),
    "paid_agent_transactions": (
        "id, subscription_id, occurred_at, organization_id, agent_id, kind, amount, currency"
    ),
    "usage_events": (
        "id, occurred_at, conversation_id, organization_id, project_id, department_id, user_id, "
        "agent_id, model_id, service_type_id, pricing_rule_id, task_category_id, channel_id, "
        "pool, credits, input_tokens, output_tokens, voice_seconds, documents, tool_runs, "
        "latency_seconds, success, playground"
    ),
}
# Copy order within a batch: every row's foreign keys point to rows copied before it.
STREAM_TABLES = tuple(STREAM_COLUMNS)
# Fields per row of each table (a binary row starts with its field count).
WIDTH = {table: columns.count(",") + 1 for table, columns in STREAM_COLUMNS.items()}

# Leading fields: the row's field count, then int8 fields (length 8, value); a
# trailing "i" is a NULL (length -1) in place of the last one.
THREE_INT8 = struct.Struct(">hiqiqiq")  # events, messages, feedback, transactions
TWO_INT8_NULL = struct.Struct(">hiqiqi")  # events without a conversation
TWO_INT8 = struct.Struct(">hiqiq")  # visitors
FOUR_INT8 = struct.Struct(">hiqiqiqiq")  # conversations, subscriptions
THREE_INT8_NULL = struct.Struct(">hiqiqiqi")  # open conversations, active subscriptions
TWO_INT4 = struct.Struct(">iiii")
POOL_FIELD = {"plan": pgbinary.text("plan"), "topup": pgbinary.text("topup")}


@dataclass
class Batch:
    """Binary rows of each stream table (a row is several consecutive parts)."""

    parts: dict[str, list[bytes]] = field(default_factory=lambda: {t: [] for t in STREAM_TABLES})
    events_done: int = 0  # usage events rendered so far, this batch included


# In the bulk stream a usage event is rendered once into binary parts
#   (organization, dims, playground, credits, tail)
# where dims holds the fields organization ... channel and tail credits ...
# playground; rows waiting in the hour buckets are (t, conversation or 0, that
# tuple), so a reused prompt or conversation shares it. A message is (t,
# conversation, rest, feedback) with rest the fields organization ... unanswered
# and feedback (delay_ms, fields organization ... rating) or None.

# Rendered prompts kept per (organization, churn side, latency class): 36 x 1024 in all;
# rendered conversations kept per (agent, latency class): 129 x 128. Fewer slots means
# less sampling on a 1M-event load (the generator took 15% less time than with 4096 and
# 256, medians of 5); more would add variety no aggregate shows.
PROMPT_SLOTS_BITS = 10
CONVERSATION_SLOTS_BITS = 7


def _seconds_field(ms: int) -> bytes:
    """A numeric(..., 3) field of seconds, from milliseconds."""
    return pgbinary.numeric(ms, 3)


def _message_fields(org: int, agent: int, role: str, unanswered: bool) -> bytes:
    return b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.text(role),
                     pgbinary.boolean(unanswered)))  # fmt: skip


def _feedback_fields(org: int, agent: int, model: int, rating: int) -> bytes:
    return b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.int4(model),
                     pgbinary.int2(rating)))  # fmt: skip


def _conversation_fields(org: int, agent: int, channel: int, kind: str, playground: bool) -> bytes:
    return b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.int4(channel),
                     pgbinary.text(kind), pgbinary.boolean(playground)))  # fmt: skip


def _owner_fields(org: int, agent: int) -> bytes:
    """The organization and agent fields of a visitor's or a subscription's row."""
    return pgbinary.int4(org) + pgbinary.int4(agent)


class Renderer:
    """Turns the sampler's value tuples into the stream's binary parts (cached where
    the same bytes recur: dimensions, seconds, message and feedback fields)."""

    def __init__(self) -> None:
        self._dims: dict[tuple, bytes] = {}
        self.scopes: dict[bytes, tuple[int, int, int, int]] = {}  # dims -> org ... user
        # per renderer, so a long-lived live writer's caches go with it
        self.seconds = cache(_seconds_field)
        self.message_fields = cache(_message_fields)
        self.feedback = cache(_feedback_fields)

    def event(self, e: tuple) -> tuple:
        """The rendered parts of the sampler's event ``e`` (its time and conversation aside)."""
        (_, org, project, dept, user, agent, model, svc, rule, task, channel, _, credits,
         inp, out, voice, docs, tools, latency, ok, pg) = e  # fmt: skip
        key = e[1:11]
        dims = self._dims.get(key)
        if dims is None:
            int4 = pgbinary.int4
            dims = b"".join((int4(org), int4(project), int4(dept), int4(user),
                             int4(agent) if agent else pgbinary.NULL, int4(model), int4(svc),
                             int4(rule), int4(task), int4(channel)))  # fmt: skip
            self._dims[key] = dims
            self.scopes[dims] = (org, project, dept, user)
        tail = b"".join((
            pgbinary.numeric(credits, 6), TWO_INT4.pack(4, inp, 4, out), self.seconds(voice),
            TWO_INT4.pack(4, docs, 4, tools), self.seconds(latency),
            pgbinary.TRUE if ok else pgbinary.FALSE, pgbinary.TRUE if pg else pgbinary.FALSE,
        ))  # fmt: skip
        return (org, dims, pg, credits, tail)

    def refund_tail(self, credits: int) -> bytes:
        """A refund's or correction's fields from credits on: zero units, latency 0, success."""
        zero, no_units = self.seconds(0), TWO_INT4.pack(4, 0, 4, 0)
        return b"".join((pgbinary.numeric(credits, 6), no_units, zero, no_units, zero,
                         pgbinary.TRUE, pgbinary.FALSE))  # fmt: skip

    def message(self, m: tuple) -> tuple:
        t, conv, org, agent, role, unanswered, feedback = m
        if feedback is not None:
            delay, model, rating = feedback
            feedback = (delay, self.feedback(org, agent, model, rating))
        return (t, conv, self.message_fields(org, agent, role, unanswered), feedback)


@dataclass(frozen=True)
class ConversationTemplate:
    """A sampled conversation rendered relative to its start (times are offsets)."""

    channel_id: int
    type: str
    playground: bool
    messages: tuple[tuple[int, bytes], ...]  # (offset, rest): each use draws its own rating
    events: tuple[tuple[int, tuple], ...]  # (offset, rendered event)
    duration: int  # offset of the last message
    last_offset: int  # offset of the last row of any kind
    rated_model: ModelSpec | None  # the model a visitor may rate (None: no rating possible)
    last_unanswered: bool


class Stream:
    """Walks the timeline hour by hour and renders every fact row for binary COPY.

    Rows that belong to a later hour (the rest of a conversation, a refund,
    next month's subscription charge) wait in per-hour buckets, so that ids
    increase with time in every table.

    Speed: sampling and rendering a row costs far more than copying it, so
    prompts and conversations are sampled into a fixed number of slots per
    (organization or agent, latency class) and a slot, once filled, is reused
    with a new time, id, visitor and conversation. A slot is picked at random,
    so this is sampling from an empirical distribution of thousands of draws:
    a small load fills few slots and reuses almost nothing, a 10M-event load
    mostly reuses. The result is as deterministic as the draws.
    """

    def __init__(self, world: World, timeline: Timeline, seed: int, emit: Callable[[Batch], None]):
        self.world = world
        self.tl = timeline
        self.rng = random.Random(f"{seed}:events")
        self.sampler = Sampler(self.rng)
        self.render = Renderer()
        self.emit = emit
        self.ids: dict[str, int] = {t: 0 for t in STREAM_TABLES}
        self.events: defaultdict[int, list[tuple]] = defaultdict(list)
        self.messages: defaultdict[int, list[tuple]] = defaultdict(list)
        self.feedback: defaultdict[int, list[tuple]] = defaultdict(list)
        self.transactions: defaultdict[int, list[tuple]] = defaultdict(list)
        self.prompt_slots: dict[tuple[int, bool, int], list[tuple | None]] = {}
        self.conversation_slots: dict[tuple[int, int], list[ConversationTemplate | None]] = {}
        self.visitors_by_agent: dict[int, list[int]] = {}
        self.testers: dict[int, int] = {}  # agent id -> playground visitor id
        self.batch = Batch()
        self.batch_from = 0  # usage events before this batch
        self.conversation_fields = cache(_conversation_fields)
        self.owner_fields = cache(_owner_fields)
        self.next_refund = self.rng.randint(*REFUND_EVERY) // 3
        # Billable credits of each org's current billing period, by (org, pool, dims),
        # summed as rows are rendered: the allocations and budgets are computed from
        # it without reading the table back.
        self.period_usage: dict[tuple[int, str, bytes], int] = {}
        self.period_start = [0] + [timeline.current_period(oi).start_ms
                                   for oi in range(len(world.orgs))]  # fmt: skip
        self.runaway_agent = world.agent(*RUNAWAY)
        self.runaway_conv = 0
        self.runaway_rate = RUNAWAY_FACTOR * timeline.mean_agent_events_per_hour(
            world.org(RUNAWAY[0]), self.runaway_agent
        )

    def next_id(self, table: str) -> int:
        self.ids[table] += 1
        return self.ids[table]

    def run(self) -> None:
        for k in range(self.tl.n_hours):
            self._hour(k)
            if self.ids["usage_events"] - self.batch_from >= BATCH_EVENTS:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        self.batch.events_done = self.batch_from = self.ids["usage_events"]
        self.emit(self.batch)
        self.batch = Batch()

    # --- one hour -------------------------------------------------------------

    def _hour(self, k: int) -> None:
        start, end = self.tl.bounds(k)
        span = end - start
        rng = self.rng
        lat = self.tl.lat_class[k]
        expected = self.tl.expected[k]
        starts: list[tuple[int, int, ConversationPlan | None]] = []
        for oi, org in enumerate(self.world.orgs):
            for _ in range(stochastic_round(expected[oi] * org.conversations_per_event, rng)):
                starts.append((start + int(rng.random() * span), oi, None))
        starts.extend(self._forced_conversations(start, end))
        starts.sort(key=itemgetter(0, 1))
        for t, oi, plan in starts:
            if plan is None:
                self._recycled_conversation(self.world.orgs[oi], t, lat)
            else:
                self._sampled_conversation(plan, t, lat)
        bucket = self.events[k]
        for oi, org in enumerate(self.world.orgs):
            for _ in range(stochastic_round(expected[oi] * org.profile.workspace_share, rng)):
                bucket.append(self._prompt(org, start + int(rng.random() * span), lat))
            for _ in range(stochastic_round(expected[oi] * DOC_SHARE, rng)):
                t = start + int(rng.random() * span)
                bucket.append((t, 0, self.render.event(self.sampler.document_ingest(org, t))))
        self._runaway(k, start, end)
        self._emit_events(k)
        self._emit_messages(k)
        self._emit_feedback(k)
        self._emit_transactions(k)

    def _prompt(self, org: Org, t: int, lat: int) -> tuple:
        key = (org.id, t >= org.churn_ms, lat)
        slots = self.prompt_slots.get(key)
        if slots is None:
            slots = self.prompt_slots[key] = [None] * (1 << PROMPT_SLOTS_BITS)
        n = self.rng.getrandbits(PROMPT_SLOTS_BITS)
        rendered = slots[n]
        if rendered is None:
            playground = self.rng.random() < PROMPT_PLAYGROUND
            rendered = self.render.event(self.sampler.prompt(org, t, lat, playground))
            slots[n] = rendered
        return (t, 0, rendered)

    def _forced_conversations(
        self, start: int, end: int
    ) -> list[tuple[int, int, ConversationPlan | None]]:
        """Calls in progress at ``now`` and the runaway agent's stuck session."""
        forced: list[tuple[int, int, ConversationPlan | None]] = []
        now = self.tl.now
        if start <= self.tl.runaway_start < end:
            agent = self.runaway_agent
            org = self.world.org(RUNAWAY[0])
            plan = ConversationPlan(org, agent, WEB_CHAT, "chat", 1, agent.task_id, keep_open=True)
            forced.append((self.tl.runaway_start, org.id - 1, plan))
        if end == now:
            for oi, org in enumerate(self.world.orgs):
                phones = [
                    a
                    for a in org.agents
                    if not a.deleted and a.template.slug == "voice-receptionist"
                ]
                for n in range(org.profile.calls_in_progress if phones else 0):
                    t = max(start, now - 20_000 - MS_PER_MINUTE * n - self.rng.randrange(40_000))
                    plan = ConversationPlan(org, phones[0], PHONE, "call", 60, phones[0].task_id)
                    forced.append((t, oi, plan))
        return forced

    def _template(self, org: Org, agent: Agent, lat: int) -> ConversationTemplate:
        key = (agent.id, lat)
        slots = self.conversation_slots.get(key)
        if slots is None:
            slots = self.conversation_slots[key] = [None] * (1 << CONVERSATION_SLOTS_BITS)
        n = self.rng.getrandbits(CONVERSATION_SLOTS_BITS)
        template = slots[n]
        if template is None:
            plan = self.sampler.plan_conversation(org, agent)
            messages, events, _ = self.sampler.conversation(plan, 0, 0, lat, None)
            rendered = tuple((e[0], self.render.event(e)) for e in events)
            rateable = not plan.playground and plan.type != "call"
            template = ConversationTemplate(
                plan.channel_id,
                plan.type,
                plan.playground,
                tuple((m[0], m[2]) for m in map(self.render.message, messages)),
                rendered,
                messages[-1][0],
                max(messages[-1][0], max((e[0] for e in events), default=0)),
                agent.model if rateable else None,
                messages[-1][5],
            )
            slots[n] = template
        return template

    def _recycled_conversation(self, org: Org, t: int, lat: int) -> None:
        agent = self.sampler.pick_agent(org, t)
        tpl = self._template(org, agent, lat)
        conv = self.next_id("conversations")
        visitor = self._visitor(agent, tpl.channel_id, tpl.playground, t)
        messages = [(t + off, conv, rest, None) for off, rest in tpl.messages]
        events = [(t + off, conv, rendered) for off, rendered in tpl.events]
        if tpl.rated_model is not None and self.rng.random() < FEEDBACK:
            model = tpl.rated_model
            rating = RATING[model.id].pick(self.rng)
            if tpl.last_unanswered:
                rating = min(rating, 2 + self.rng.getrandbits(1))
            delay = 5_000 + self.rng.randrange(115_000)
            last = messages[-1]
            feedback = (delay, self.render.feedback(org.id, agent.id, model.id, rating))
            messages[-1] = (*last[:3], feedback)
        ended: int | None = t + tpl.duration
        if t + tpl.last_offset >= self.tl.now:  # still going on at ``now``
            messages = [m for m in messages if m[0] < self.tl.now]
            events = [e for e in events if e[0] < self.tl.now]
            ended = None
        self._add_conversation(conv, org, agent, tpl.channel_id, visitor, tpl.type, t, ended,
                               tpl.playground, messages, events)  # fmt: skip

    def _sampled_conversation(self, plan: ConversationPlan, t: int, lat: int) -> None:
        conv = self.next_id("conversations")
        visitor = self._visitor(plan.agent, plan.channel_id, plan.playground, t)
        messages, events, ended = self.sampler.conversation(plan, conv, t, lat, self.tl.now)
        if plan.keep_open and plan.agent is self.runaway_agent:
            self.runaway_conv = conv
        self._add_conversation(
            conv, plan.org, plan.agent, plan.channel_id, visitor, plan.type, t, ended,
            plan.playground, [self.render.message(m) for m in messages],
            [(e[0], conv, self.render.event(e)) for e in events],
        )  # fmt: skip

    def _add_conversation(
        self, conv: int, org: Org, agent: Agent, channel: int, visitor: int, kind: str, t: int,
        ended: int | None, playground: bool, messages: list[tuple], events: list[tuple],
    ) -> None:  # fmt: skip
        fields = self.conversation_fields(org.id, agent.id, channel, kind, playground)
        started, width = (t - PG_EPOCH_MS) * 1000, WIDTH["conversations"]
        self.batch.parts["conversations"] += (
            FOUR_INT8.pack(width, 8, conv, 8, visitor, 8, started, 8, (ended - PG_EPOCH_MS) * 1000)
            if ended is not None
            else THREE_INT8_NULL.pack(width, 8, conv, 8, visitor, 8, started, -1),
            fields,
        )
        if not messages:
            return
        # Every row lies in [t, last reply + 60 ms] (the text-to-speech event comes last).
        first, last = self.tl.hour_of(t), self.tl.hour_of(messages[-1][0] + 60)
        if first == last:
            self.messages[first].extend(messages)
            self.events[first].extend(events)
            return
        hour_of = self.tl.hour_of
        for m in messages:
            self.messages[hour_of(m[0])].append(m)
        for e in events:
            self.events[hour_of(e[0])].append(e)

    def _visitor(self, agent: Agent, channel: int, playground: bool, t: int) -> int:
        if playground:
            tester = self.testers.get(agent.id)
            if tester is None:
                tester = self._new_visitor(agent, agent.owner.email, t)
                self.testers[agent.id] = tester
            return tester
        known = self.visitors_by_agent.setdefault(agent.id, [])
        rng = self.rng
        if known and rng.random() < RETURNING_VISITOR:
            return known[-1 - rng.getrandbits(8) % len(known)]
        visitor = self._new_visitor(agent, visitor_contact(channel, self.ids["visitors"] + 1), t)
        known.append(visitor)
        if len(known) > 512:
            del known[:256]
        if agent.paid and rng.random() < SUBSCRIBE:
            self._subscription(agent, visitor, t)
        return visitor

    def _new_visitor(self, agent: Agent, contact: str, t: int) -> int:
        vid = self.next_id("visitors")
        self.batch.parts["visitors"] += (
            TWO_INT8.pack(WIDTH["visitors"], 8, vid, 8, (t - PG_EPOCH_MS) * 1000),
            self.owner_fields(agent.org_id, agent.id),
            pgbinary.text(contact),
        )
        return vid

    def _subscription(self, agent: Agent, visitor: int, t: int) -> None:
        """A paid-agent subscription with its monthly charges (and the odd refund)."""
        assert agent.paid is not None
        rng, now = self.rng, self.tl.now
        started = t + 60_000 + rng.randrange(540_000)
        if started >= now:
            return
        cancelled = started + rng.randrange(5, 70) * MS_PER_DAY if rng.random() < 0.3 else None
        if cancelled is not None and cancelled >= now:
            cancelled = None
        sid = self.next_id("paid_agent_subscriptions")
        begin, width = pgbinary.timestamp_us(started), WIDTH["paid_agent_subscriptions"]
        self.batch.parts["paid_agent_subscriptions"] += (
            THREE_INT8_NULL.pack(width, 8, sid, 8, visitor, 8, begin, -1)
            if cancelled is None
            else FOUR_INT8.pack(
                width, 8, sid, 8, visitor, 8, begin, 8, pgbinary.timestamp_us(cancelled)
            ),
            self.owner_fields(agent.org_id, agent.id),
        )
        paid = agent.paid
        charge = started
        while charge < now and (cancelled is None or charge < cancelled):
            row = (charge, agent.org_id, agent.id, sid, "charge", paid.price_cents, paid.currency)
            self.transactions[self.tl.hour_of(charge)].append(row)
            if rng.random() < 0.06:
                refund = charge + MS_PER_DAY + rng.randrange(2 * MS_PER_DAY)
                if refund < now:
                    row = (refund, *row[1:4], "refund", paid.price_cents, paid.currency)
                    self.transactions[self.tl.hour_of(refund)].append(row)
            charge += 30 * MS_PER_DAY

    def _runaway(self, k: int, start: int, end: int) -> None:
        """The runaway agent's loop: many times its usual rate, flat, until ``now``."""
        begin = max(start, self.tl.runaway_start)
        if begin >= end or not self.runaway_conv:
            return
        n = stochastic_round(self.runaway_rate * (end - begin) / MS_PER_HOUR, self.rng)
        bucket = self.events[k]
        for _ in range(n):
            t = begin + int(self.rng.random() * (end - begin))
            step = self.sampler.runaway_step(self.runaway_agent, self.runaway_conv, t)
            bucket.append((t, self.runaway_conv, self.render.event(step)))

    # --- rendering ----------------------------------------------------------------

    def _emit_events(self, k: int) -> None:
        rows = self.events.pop(k, [])
        rows.sort(key=itemgetter(0))
        pools = self.tl.pools[k]
        out = self.batch.parts["usage_events"]
        head, head_without_conversation = THREE_INT8.pack, TWO_INT8_NULL.pack
        width = WIDTH["usage_events"]
        plan = POOL_FIELD["plan"]
        pool_fields = [POOL_FIELD[pool] for pool in pools]
        period_start = self.period_start
        billed: dict[bytes, int] = {}  # credits of this hour's current-period rows, by dims
        eid = self.ids["usage_events"]
        countdown = self.next_refund
        for t, conv, (org, dims, pg, credits, tail) in rows:
            eid += 1
            us = (t - PG_EPOCH_MS) * 1000
            out += (
                head(width, 8, eid, 8, us, 8, conv) if conv
                else head_without_conversation(width, 8, eid, 8, us, -1),
                dims,
                plan if pg else pool_fields[org],
                tail,
            )  # fmt: skip
            countdown -= 1
            if pg:
                continue
            if t >= period_start[org]:
                billed[dims] = billed.get(dims, 0) + credits
            if countdown <= 0 and credits > 0:
                countdown = self._schedule_refund(t, conv, org, dims, credits)
        self.next_refund = countdown
        self.ids["usage_events"] = eid
        usage, scopes = self.period_usage, self.render.scopes
        for dims, credits in billed.items():
            org = scopes[dims][0]
            key = (org, pools[org], dims)
            usage[key] = usage.get(key, 0) + credits

    def _schedule_refund(self, t: int, conv: int, org: int, dims: bytes, credits: int) -> int:
        """A refund or correction: negative credits on the same dimensions, later.

        Returns the new countdown: the next refund goes to the first billed row
        once that many more rows (of any kind) have been rendered.
        """
        rng = self.rng
        countdown = rng.randint(*REFUND_EVERY)
        t += MS_PER_HOUR + rng.randrange(35 * MS_PER_HOUR)
        if t < self.tl.now:
            credits = -credits if rng.random() < 0.7 else -(credits // 2) or -1
            refund = (org, dims, False, credits, self.render.refund_tail(credits))
            self.events[self.tl.hour_of(t)].append((t, conv, refund))
        return countdown

    def _emit_messages(self, k: int) -> None:
        rows = self.messages.pop(k, [])
        rows.sort(key=itemgetter(0))
        out = self.batch.parts["messages"]
        head, width = THREE_INT8.pack, WIDTH["messages"]
        now, hour_of = self.tl.now, self.tl.hour_of
        mid = self.ids["messages"]
        for t, conv, rest, feedback in rows:
            mid += 1
            out += (head(width, 8, mid, 8, conv, 8, (t - PG_EPOCH_MS) * 1000), rest)
            if feedback is not None:
                delay, fields = feedback
                if t + delay < now:
                    self.feedback[hour_of(t + delay)].append((t + delay, mid, fields))
        self.ids["messages"] = mid

    def _emit_feedback(self, k: int) -> None:
        rows = self.feedback.pop(k, [])
        rows.sort(key=itemgetter(0))
        out = self.batch.parts["feedback"]
        for t, mid, fields in rows:
            fid = self.next_id("feedback")
            us = (t - PG_EPOCH_MS) * 1000
            out += (THREE_INT8.pack(WIDTH["feedback"], 8, fid, 8, mid, 8, us), fields)

    def _emit_transactions(self, k: int) -> None:
        rows = self.transactions.pop(k, [])
        rows.sort(key=itemgetter(0))
        out = self.batch.parts["paid_agent_transactions"]
        for t, org, agent, sid, kind, cents, currency in rows:
            tid = self.next_id("paid_agent_transactions")
            out += (
                THREE_INT8.pack(WIDTH["paid_agent_transactions"], 8, tid, 8, sid, 8,
                                (t - PG_EPOCH_MS) * 1000),
                b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.text(kind),
                          pgbinary.numeric(cents, 2), pgbinary.text(currency))),
            )  # fmt: skip


def visitor_contact(channel_id: int, vid: int) -> str:
    """A visitor's contact as its channel knows it: phone number, handle or e-mail."""
    if channel_id in (CHANNEL["phone"], CHANNEL["sms"], CHANNEL["whatsapp"]):
        return f"+1 555 {vid * 7919 % 900 + 100:03d} {vid % 10_000:04d}"
    if channel_id in (CHANNEL["instagram"], CHANNEL["messenger"], CHANNEL["telegram"]):
        return f"@{FIRST_NAMES[vid % len(FIRST_NAMES)]}_{vid}"
    return f"{FIRST_NAMES[vid * 31 % len(FIRST_NAMES)]}.{vid}@mail.example"


# --------------------------------------------------------------------------
# Dimension rows
# --------------------------------------------------------------------------


def _dimension_rows(
    world: World, timeline: Timeline, scale: float
) -> dict[str, tuple[str, list[tuple]]]:
    """Every dimension table's (columns, rows), in foreign-key order."""
    usage_scale = max(1.0, scale)
    plans = [(p.id, p.slug, p.name, round(p.monthly_credits * usage_scale), p.agent_slots,
              p.seats) for p in PLANS]  # fmt: skip
    quotas = [
        (p.id, quota, round(limit * usage_scale) if n < 2 else limit)
        for p in PLANS
        for n, (quota, limit) in enumerate(zip(QUOTAS, p.quotas, strict=True))
    ]
    orgs, periods, departments, projects, users, agents, numbers = [], [], [], [], [], [], []
    for oi, org in enumerate(world.orgs):
        created = from_ms(org.created_ms)
        churn = from_ms(org.churn_ms)
        orgs.append((org.id, org.slug, org.profile.name, org.plan.id, created))
        periods += [(org.id, from_ms(p.start_ms), from_ms(p.end_ms)) for p in timeline.periods[oi]]
        departments += [(d, org.id, slug, name) for d, slug, name in org.departments]
        projects += [(p, org.id, slug, name, color) for p, slug, name, color in org.projects]
        for n, u in enumerate(org.users):
            joined = created + timedelta(days=3 + 5 * n, hours=n % 9)
            users.append((u.id, org.id, u.department_id, u.email, u.human_agent, joined,
                          churn if u.deactivated else None))  # fmt: skip
        for n, a in enumerate(org.agents):
            agents.append((a.id, org.id, a.project_id, a.slug, a.name, a.model.id,
                           a.paid is not None, created + timedelta(days=10 + 7 * n),
                           churn if a.deleted else None))  # fmt: skip
        numbers += [(pid, org.id, number, churn if released else None)
                    for pid, number, released in org.phone_numbers]  # fmt: skip
    return {
        "plans": ("id, slug, name, monthly_credits, agent_slots, seats", plans),
        "plan_quotas": ("plan_id, quota, quota_limit", quotas),
        "organizations": ("id, slug, name, plan_id, created_at", orgs),
        "billing_periods": ("organization_id, starts_at, ends_at", periods),
        "departments": ("id, organization_id, slug, name", departments),
        "projects": ("id, organization_id, slug, name, color", projects),
        "users": (
            "id, organization_id, department_id, email, human_agent, created_at, deactivated_at",
            users,
        ),
        "models": (
            "id, slug, provider, name, multiplier, tier",
            [(m.id, m.slug, m.provider, m.name, m.multiplier, m.tier) for m in MODELS],
        ),
        "agents": (
            "id, organization_id, project_id, slug, name, model_id, paid, created_at, deleted_at",
            agents,
        ),
        "service_types": ("id, slug, name", list(SERVICE_TYPES)),
        "pricing_rules": (
            "id, service_type_id, slug, name, unit, credits_per_unit",
            [
                (r.id, SVC[r.service], r.slug, r.name, r.unit, r.credits_per_unit)
                for r in PRICING_RULES
            ],
        ),
        "task_categories": ("id, slug, name", [(t.id, t.slug, t.name) for t in TASKS]),
        "channels": ("id, slug, name", list(CHANNELS)),
        "phone_numbers": ("id, organization_id, number, released_at", numbers),
    }


# --------------------------------------------------------------------------
# Allocations, balances, top-ups and budgets, from what was loaded
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    org: Org
    used: int  # micro-credits, non-playground, current period
    drawn_plan: int
    drawn_topup: int
    limit: int  # micro-credits: plan + topup allocation
    plan: int
    topup: int


@dataclass(frozen=True)
class PeriodUsage:
    """Billable micro-credits of each org's current period, from the stream's sums."""

    drawn: dict[tuple[int, str], int]  # (org, pool)
    by_scope: dict[tuple[int, str], list[tuple[int, int]]]  # (org, scope) -> [(ref id, used)]

    @classmethod
    def from_stream(
        cls,
        sums: dict[tuple[int, str, bytes], int],
        scopes: dict[bytes, tuple[int, int, int, int]],
    ) -> PeriodUsage:
        """``sums`` by (org, pool, dims); ``scopes`` gives dims' org, project, department,
        user."""
        drawn: dict[tuple[int, str], int] = defaultdict(int)
        scoped: dict[tuple[int, str, int], int] = defaultdict(int)
        for (org, pool, dims), credits in sums.items():
            drawn[org, pool] += credits
            _, project, department, user = scopes[dims]
            scoped[org, "department", department] += credits
            scoped[org, "project", project] += credits
            scoped[org, "user", user] += credits
        by_scope: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
        for (org, scope, ref), credits in sorted(scoped.items()):
            by_scope[org, scope].append((ref, credits))
        return cls(dict(drawn), dict(by_scope))


def _allocate(org: Org, drawn_plan: int, drawn_topup: int) -> Allocation:
    """Plan and topup allocations that put the org at its target ratio (to within a
    rounding step): the limit is rounded up to whole credits (to cents on tiny loads).

    An org that exhausted its plan pool gets a plan allocation just above what it
    drew from it (the rest of the limit is top-ups); the others get a topup share
    of the limit and never reach the end of their plan pool.
    """
    profile = org.profile
    used = drawn_plan + drawn_topup
    step = 1_000_000 if used >= 1_000 * 1_000_000 else 10_000

    def up(micro: int) -> int:
        return -(-micro // step) * step

    limit = max(step, up(-(-used * 1000 // profile.ratio_milli)))
    if profile.crossing_milli is not None:
        plan = up(drawn_plan)
        topup = limit - plan
        if topup < 0:
            raise RuntimeError(f"{org.slug}: plan pool drawn beyond its whole budget")
    else:
        topup = limit * profile.topup_milli // 1000 // step * step
        plan = limit - topup
        if drawn_topup or plan < drawn_plan:
            raise RuntimeError(f"{org.slug}: usage exceeds the plan pool")
    return Allocation(org, used, drawn_plan, drawn_topup, limit, plan, topup)


def _topups(
    world: World, timeline: Timeline, allocations: list[Allocation], rng: random.Random
) -> list[tuple]:
    """Top-up purchases, sorted by time: earlier periods' and the current period's
    (which add up to its topup allocation). Auto only where auto-recharge is on."""
    rows: list[tuple[int, int, int, str]] = []  # t, org, micro-credits, trigger
    for oi, org in enumerate(world.orgs):
        trigger = "auto" if org.profile.auto_recharge else "manual"
        rows += [(t, org.id, micro, trigger) for t, micro in _past_topups(oi, org, timeline, rng)]
        rows += [
            (t, org.id, micro, trigger)
            for t, micro in _current_topups(oi, allocations[oi], timeline, rng)
        ]
    rows.sort(key=itemgetter(0, 1))
    currency = {org.id: org.profile.currency for org in world.orgs}
    return [
        (n, org_id, from_ms(t), format_credits(micro), trigger, format_cents(_price_cents(micro)),
         currency[org_id])
        for n, (t, org_id, micro, trigger) in enumerate(rows, start=1)
    ]  # fmt: skip


def _price_cents(micro_credits: int) -> int:
    """What a top-up costs: 1 cent per 10 credits, rounded up."""
    return -(-micro_credits // 100_000)


def _past_topups(
    oi: int, org: Org, timeline: Timeline, rng: random.Random
) -> list[tuple[int, int]]:
    """(time, micro-credits) of one purchase in each earlier period that needed one."""
    mean_hour = sum(row[oi] for row in timeline.expected) / max(1, timeline.n_hours)
    typical = max(1, round(mean_hour * 24 * 30 * 1.3 * 0.2 / 500)) * 500 * 1_000_000
    out = []
    for period in timeline.periods[oi][:-1]:
        start = max(period.start_ms, timeline.range_start)
        if period.crossing_ms is not None:  # bought just before the plan pool ran dry
            t = period.crossing_ms - 20 * MS_PER_MINUTE - rng.randrange(MS_PER_HOUR)
        elif org.profile.auto_recharge or org.profile.topup_milli:
            t = start + int((period.end_ms - start) * (0.5 + 0.4 * rng.random()))
        else:
            continue
        out.append((min(max(start, t), period.end_ms - 1), typical))
    return out


def _current_topups(
    oi: int, alloc: Allocation, timeline: Timeline, rng: random.Random
) -> list[tuple[int, int]]:
    """(time, micro-credits) of this period's purchases, adding up to the allocation."""
    if alloc.topup <= 0:
        return []
    period = timeline.current_period(oi)
    window = max(period.start_ms, timeline.range_start)
    if period.crossing_ms is not None:  # one purchase, just before the plan pool ran dry
        t = period.crossing_ms - 20 * MS_PER_MINUTE - rng.randrange(10 * MS_PER_MINUTE)
        return [(max(window, t), alloc.topup)]
    first = alloc.topup // 2 // 1_000_000 * 1_000_000  # two purchases
    out = []
    for part, share in ((first, 0.25), (alloc.topup - first, 0.6)):
        if part > 0:
            at = share + 0.1 * rng.random()
            out.append((window + int((timeline.now - window) * at), part))
    return out


def _auto_recharge(world: World, allocations: list[Allocation]) -> list[tuple]:
    """Settings of every org; where a top-up was automatic, its amount is the setting."""
    rows = []
    for org, alloc in zip(world.orgs, allocations, strict=True):
        threshold = max(1, alloc.plan // 10 // 1_000_000)
        amount = max(500, round(alloc.limit * 0.2 / 1_000_000 / 500) * 500) * 1_000_000
        if org.profile.crossing_milli is not None and org.profile.auto_recharge:
            amount = alloc.topup
        rows.append((org.id, org.profile.auto_recharge, threshold, format_credits(amount)))
    return rows


def _budgets(
    world: World, usage: PeriodUsage, allocations: list[Allocation], rng: random.Random
) -> list[tuple]:
    """The organization budget (= plan + topup allocation) and a handful of
    department, project and user budgets per org, several just past a threshold."""
    rows: list[tuple] = []
    for oi, org in enumerate(world.orgs):
        rows.append((org.id, "organization", org.id, format_credits(allocations[oi].limit)))
        targets = list(BUDGET_TARGETS)
        rng.shuffle(targets)
        for scope, count in (("department", 2), ("project", 2), ("user", 3)):
            used = [(ref, c) for ref, c in usage.by_scope.get((org.id, scope), []) if c > 0]
            for ref, micro in rng.sample(used, min(count, len(used))):
                target = targets.pop()
                limit = max(1, -(-micro * 1000 // target // 1_000_000))
                rows.append((org.id, scope, ref, f"{limit}.000000"))
    return [(n, *row) for n, row in enumerate(rows, start=1)]


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

ALL_TABLES = (
    "plans", "plan_quotas", "organizations", "billing_periods", "departments", "projects",
    "users", "models", "agents", "service_types", "pricing_rules", "task_categories", "channels",
    "credit_pools", "budgets", "auto_recharge", "topups", "phone_numbers", "visitors",
    "conversations", "messages", "feedback", "paid_agent_subscriptions",
    "paid_agent_transactions", "usage_events",
)  # fmt: skip
SERIAL_TABLES = ("topups", "visitors", "conversations", "messages", "feedback",
                 "paid_agent_subscriptions", "paid_agent_transactions", "usage_events")  # fmt: skip


@dataclass(frozen=True)
class DemoSummary:
    usage_events: int
    conversations: int
    messages: int
    seconds: float
    visitors: int = 0
    feedback: int = 0
    paid_agent_subscriptions: int = 0
    paid_agent_transactions: int = 0
    topups: int = 0
    budgets: int = 0
    organizations: int = 0
    ratios: tuple[tuple[str, float], ...] = ()  # (org slug, current-period usage / limit)
    # Where the time went: generating and copying the rows; restoring foreign keys and
    # indexes; allocations, budgets and sequences; ANALYZE.
    phases: tuple[tuple[str, float], ...] = ()

    @property
    def events_per_second(self) -> float:
        return self.usage_events / self.seconds if self.seconds > 0 else 0.0


def _copy_rows(cur: psycopg.Cursor, table: str, columns: str, rows: list[tuple]) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FREEZE)") as copy:
        for row in rows:
            copy.write_row(row)


def _copy_binary(cur: psycopg.Cursor, table: str, parts: list[bytes]) -> None:
    if not parts:
        return
    statement = f"COPY {table} ({STREAM_COLUMNS[table]}) FROM STDIN WITH (FORMAT binary, FREEZE)"
    with cur.copy(statement) as copy:
        copy.write(pgbinary.SIGNATURE)
        copy.write(b"".join(parts))
        copy.write(pgbinary.TRAILER)


@contextmanager
def _bulk_mode(
    cur: psycopg.Cursor, tables: Sequence[str], maintenance_mb: int = 256
) -> Iterator[None]:
    """Drop the tables' keys, foreign keys and indexes, restore them afterwards.

    Checking a foreign key row by row and growing an index one row at a time
    cost several times what COPY itself does (the primary key alone adds half
    to a binary COPY of usage_events); validating each constraint and building
    each index once at the end, from sorted input, is far cheaper. Definitions
    are read from the catalog and restored verbatim (same names), all inside
    the load's transaction, so no other session ever sees the schema without
    them. Foreign keys of other tables that point at these go and come back
    too, since a key cannot be dropped under them.
    """
    cur.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'f' AND (conrelid = ANY(%(t)s::regclass[]) "
        "OR confrelid = ANY(%(t)s::regclass[])) ORDER BY 1, 2",
        {"t": list(tables)},
    )
    foreign_keys = cur.fetchall()
    cur.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype IN ('p', 'u') AND conrelid = ANY(%s::regclass[]) ORDER BY 1, 2",
        (list(tables),),
    )
    keys = cur.fetchall()
    cur.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1",
        (list(tables),),
    )
    indexes = cur.fetchall()
    for table, name, _ in foreign_keys + keys:
        cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cur.execute(f"DROP INDEX {name}")
    yield
    cur.execute(f"SET LOCAL maintenance_work_mem = '{maintenance_mb}MB'")
    for _, definition in indexes:
        cur.execute(definition)
    for table, name, definition in keys + foreign_keys:
        cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


class _Producer(threading.Thread):
    """Runs the stream on its own thread and hands its batches over a small queue,
    so that rows are generated while the previous batch is being copied."""

    def __init__(self, stream_factory: Callable[[Callable[[Batch], None]], Stream]) -> None:
        super().__init__(name="demo-generator", daemon=True)
        self.queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=3)
        self.cancelled = threading.Event()
        self.stream = stream_factory(self._put)

    def _put(self, item: Batch | BaseException | None) -> None:
        while not self.cancelled.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Cancelled

    def run(self) -> None:
        try:
            self.stream.run()
            self._put(None)
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            with suppress(_Cancelled):
                self._put(exc)


class _Cancelled(Exception):
    pass


def _copy_stream(
    cur: psycopg.Cursor, world: World, timeline: Timeline, seed: int, progress: bool
) -> Stream:
    """Generate the fact rows on a producer thread and COPY them as they come."""
    producer = _Producer(lambda emit: Stream(world, timeline, seed, emit))
    expected = sum(map(sum, timeline.expected))
    bar = ProgressBar(expected, label="demo data", unit="usage events", enabled=progress)
    with _quick_thread_switches(), _no_cyclic_gc():
        producer.start()
        try:
            while (item := producer.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                for table in STREAM_TABLES:
                    _copy_binary(cur, table, item.parts[table])
                bar.update(item.events_done)
        finally:
            producer.cancelled.set()
            producer.join()
            bar.close()
    return producer.stream


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while the stream runs.

    The stream allocates millions of short-lived tuples, none in a reference
    cycle (reference counting frees them), and each allocation burst triggers a
    collection that walks them; the full ones also walk every slot and template.
    Counted with callgrind at 280k events: 2.8% of the stream's instructions.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _quick_thread_switches(seconds: float = 0.0005) -> Iterator[None]:
    """Lower the interpreter's thread switch interval while the copy runs.

    The copying thread wakes up each time the socket to the server has room
    again, then waits for the GIL, which the generating thread keeps for up to
    the switch interval (5 ms by default); meanwhile the server runs out of
    input. Measured on 1M events: the copy phase takes about a quarter less.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@dataclass(frozen=True)
class _Finished:
    allocations: list[Allocation]
    topups: int
    budgets: int


def load_demo(
    dsn: str,
    *,
    days: int = 90,
    seed: int = 42,
    now: datetime | None = None,
    scale: float = 1.0,
    progress: bool = False,
) -> DemoSummary:
    """Apply the migrations and fill the reference tables with ``days`` of demo data
    ending at ``now`` (default: the current UTC time), in one transaction.

    Same (seed, days, now, scale), same table contents. Any existing rows in
    the reference tables are replaced: they are truncated in the same
    transaction (which also lets COPY write frozen rows).
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if scale <= 0:
        raise ValueError("scale must be positive")
    started = time.monotonic()
    phases: dict[str, float] = {}
    apply_migrations(dsn)
    now_ms = to_ms(now if now is not None else datetime.now(UTC))
    range_start = now_ms - days * MS_PER_DAY
    world = build_world(seed, range_start, now_ms)
    timeline = Timeline(world, seed, range_start, now_ms, scale)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute(f"TRUNCATE {', '.join(ALL_TABLES)} RESTART IDENTITY")
        for table, (columns, rows) in _dimension_rows(world, timeline, scale).items():
            _copy_rows(cur, table, columns, rows)
        # Sort memory for the index builds: enough to sort millions of rows in memory.
        expected_events = sum(map(sum, timeline.expected))
        maintenance_mb = 1024 if expected_events > 2_000_000 else 256
        with _bulk_mode(cur, STREAM_TABLES, maintenance_mb):
            stream = _copy_stream(cur, world, timeline, seed, progress)
            phases["copy"] = time.monotonic()
        phases["constraints"] = time.monotonic()
        usage = PeriodUsage.from_stream(stream.period_usage, stream.render.scopes)
        finished = _finish(cur, world, timeline, usage, seed)
        conn.commit()
        phases["finish"] = time.monotonic()
    _analyze(dsn, sorted(ALL_TABLES, key=lambda t: -stream.ids.get(t, 0)))
    phases["analyze"] = time.monotonic()
    ids = stream.ids
    return DemoSummary(
        usage_events=ids["usage_events"],
        conversations=ids["conversations"],
        messages=ids["messages"],
        seconds=time.monotonic() - started,
        visitors=ids["visitors"],
        feedback=ids["feedback"],
        paid_agent_subscriptions=ids["paid_agent_subscriptions"],
        paid_agent_transactions=ids["paid_agent_transactions"],
        topups=finished.topups,
        budgets=finished.budgets,
        organizations=len(world.orgs),
        ratios=tuple((a.org.slug, a.used / a.limit) for a in finished.allocations),
        phases=_durations(started, phases),
    )


def _analyze(dsn: str, tables: Sequence[str], sessions: int = 2) -> None:
    """ANALYZE ``tables`` (largest first) on ``sessions`` connections at once.

    Each ANALYZE is one backend's work, a few hundred milliseconds for a large
    table; two sessions take the largest tables side by side.
    """
    pending: queue.SimpleQueue[str] = queue.SimpleQueue()
    for table in tables:
        pending.put(table)

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                try:
                    table = pending.get_nowait()
                except queue.Empty:
                    return
                conn.execute(f"ANALYZE {table}")

    with ThreadPoolExecutor(sessions, thread_name_prefix="demo-analyze") as pool:
        for done in [pool.submit(work) for _ in range(sessions)]:
            done.result()


def _durations(started: float, marks: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Seconds of each phase, from the times at which each one ended."""
    out, previous = [], started
    for name, mark in marks.items():
        out.append((name, mark - previous))
        previous = mark
    return tuple(out)


def _finish(
    cur: psycopg.Cursor, world: World, timeline: Timeline, usage: PeriodUsage, seed: int
) -> _Finished:
    """Pools, top-ups, auto-recharge and budgets from the period's usage; sequences."""
    rng = random.Random(f"{seed}:finish")
    allocations = [
        _allocate(org, usage.drawn.get((org.id, "plan"), 0), usage.drawn.get((org.id, "topup"), 0))
        for org in world.orgs
    ]
    updated = from_ms(timeline.now)
    pools = []
    for a in allocations:
        pools.append((a.org.id, "plan", format_credits(a.plan),
                      format_credits(a.plan - a.drawn_plan), updated))  # fmt: skip
        pools.append((a.org.id, "topup", format_credits(a.topup),
                      format_credits(a.topup - a.drawn_topup), updated))  # fmt: skip
    topups = _topups(world, timeline, allocations, rng)
    budgets = _budgets(world, usage, allocations, rng)
    for table, columns, rows in (
        ("credit_pools", "organization_id, pool, allocation, balance, updated_at", pools),
        ("topups", "id, organization_id, occurred_at, credits, trigger, price, currency", topups),
        ("auto_recharge", "organization_id, enabled, threshold_credits, amount_credits",
         _auto_recharge(world, allocations)),
        ("budgets", "id, organization_id, scope, scope_ref_id, monthly_limit", budgets),
    ):  # fmt: skip
        _copy_rows(cur, table, columns, rows)
    for table in SERIAL_TABLES:
        cur.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"coalesce(max(id), 1), max(id) IS NOT NULL) FROM {table}"
        )
    return _Finished(allocations, len(topups), len(budgets))


def demo_loaded(dsn: str) -> bool:
    """True if the reference schema exists and holds demo data."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('public.usage_events') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return False
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM usage_events) "
            "AND EXISTS (SELECT 1 FROM organizations WHERE slug = %s)",
            (RUNAWAY[0],),
        ).fetchone()
    return bool(row and row[0])

"""The metric contract: the one list of every metric credit-exporter knows.

Every other part of the product (config validation, the exporter, dashboards,
alert rules, docs/metrics.md) reads this list; nothing else defines a metric.

Naming follows the Prometheus conventions: one namespace (``credit_``), base
units (seconds, credits), ``_total`` on counters, ``_info`` on metadata gauges.
Label names follow the OpenTelemetry GenAI semantic conventions where one
exists (``gen_ai_request_model``, ``gen_ai_provider_name``,
``gen_ai_token_type``), with dots turned into underscores as Prometheus needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

NAMESPACE = "credit_"


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    INFO = "info"


class Source(StrEnum):
    """Where a metric's samples come from."""

    STATE = "state"  # a state query: each poll replaces the whole series set
    EVENTS = "events"  # a usage event stream: exact absolute totals
    EXPORTER = "exporter"  # the exporter's own health


class Group(StrEnum):
    SPEND = "spend"
    VOLUME = "volume"
    STATE = "state"
    QUALITY = "quality"
    REVENUE = "revenue"
    EXPORTER = "exporter"


# Latency buckets for LLM responses, in seconds. They are the explicit bucket
# boundaries the OpenTelemetry GenAI conventions recommend for
# gen_ai.client.operation.duration (0.01 s doubling to 81.92 s): a cached or
# embedding call lands in the first buckets, a streamed chat completion in the
# 1-10 s range, a long agent run or reasoning model in the 20-80 s range.
LLM_LATENCY_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

# Buckets for the exporter's own query durations, in seconds.
QUERY_DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass(frozen=True)
class Metric:
    """One metric of the contract.

    ``series_budget`` is the number of series this metric may reach for one
    organization with 10k users, 1k agents, 50 projects, 20 departments and
    40 models (the sizing target in docs/metrics.md); ``budget_note`` says how
    the figure is reached.
    """

    name: str
    type: MetricType
    unit: str
    help: str
    labels: tuple[str, ...]
    source: Source
    group: Group
    series_budget: int
    budget_note: str
    buckets: tuple[float, ...] = ()

    @property
    def is_state(self) -> bool:
        return self.source is Source.STATE

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type.value,
            "unit": self.unit,
            "help": self.help,
            "labels": list(self.labels),
        }


def _m(
    name: str,
    type_: MetricType,
    unit: str,
    help_: str,
    labels: tuple[str, ...],
    source: Source,
    group: Group,
    budget: int,
    note: str,
    buckets: tuple[float, ...] = (),
) -> Metric:
    return Metric(name, type_, unit, help_, labels, source, group, budget, note, buckets)


C, G, H, INFO = MetricType.COUNTER, MetricType.GAUGE, MetricType.HISTOGRAM, MetricType.INFO
ST, EV, EX = Source.STATE, Source.EVENTS, Source.EXPORTER
ORG = "organization"
MODEL = "gen_ai_request_model"
# Values of the budget metrics' ``scope`` label: a platform's own budget scopes,
# then an LLM gateway's teams and virtual API keys. Dashboards offer each of them.
BUDGET_SCOPES: tuple[str, ...] = (
    "organization", "department", "project", "user", "team", "api_key",
)  # fmt: skip

METRICS: tuple[Metric, ...] = (
    # --- spend: credits consumed, one counter per breakdown -------------------
    _m("credit_spent_credits_total", C, "credits",
       "Credits consumed by billable usage (playground excluded), by agent and service type.",
       (ORG, "project", "agent", "service_type"), EV, Group.SPEND,
       7_000, "1k agents x ~6 service types each, plus project-level usage without an agent"),
    _m("credit_spent_by_model_credits_total", C, "credits",
       "Credits consumed, by model and task category.",
       (ORG, MODEL, "task_category"), EV, Group.SPEND,
       240, "40 models x 6 task categories"),
    _m("credit_spent_by_user_credits_total", C, "credits",
       "Credits consumed, by team member, department and model.",
       (ORG, "department", "user", MODEL), EV, Group.SPEND,
       30_000, "10k users x ~3 models each actually used; cap with limits.max_series_per_metric"),
    _m("credit_spent_by_channel_credits_total", C, "credits",
       "Credits consumed, by channel (web chat, WhatsApp, phone, SMS, Messenger, Instagram, "
       "Telegram, api).",
       (ORG, "channel"), EV, Group.SPEND,
       8, "8 channels"),
    _m("credit_spent_by_pool_credits_total", C, "credits",
       "Credits consumed, by the credit pool they were drawn from (plan or topup).",
       (ORG, "pool"), EV, Group.SPEND,
       2, "2 pools"),
    _m("credit_spent_by_pricing_rule_credits_total", C, "credits",
       "Credits consumed, by project, service type and pricing rule "
       "(input tokens, output tokens, transcription, ...).",
       (ORG, "project", "service_type", "pricing_rule"), EV, Group.SPEND,
       600, "50 projects x ~12 pricing rules in use"),
    _m("credit_refunded_credits_total", C, "credits",
       "Credits returned by refunds and corrections (negative usage rows), by agent and "
       "service type. Never subtracted from credit_spent_credits_total.",
       (ORG, "project", "agent", "service_type"), EV, Group.SPEND,
       7_000, "same label set as credit_spent_credits_total; usually far fewer"),
    _m("credit_topup_credits_total", C, "credits",
       "Credits added to the topup pool by purchases, by trigger (manual or auto).",
       (ORG, "trigger"), EV, Group.SPEND,
       2, "2 triggers"),
    _m("credit_topups_total", C, "",
       "Top-up purchases, by trigger (manual or auto).",
       (ORG, "trigger"), EV, Group.SPEND,
       2, "2 triggers"),
    # --- volume: what drove the spend -----------------------------------------
    _m("credit_requests_total", C, "",
       "Billable requests (usage events), by agent and service type.",
       (ORG, "project", "agent", "service_type"), EV, Group.VOLUME,
       7_000, "same label set as credit_spent_credits_total"),
    _m("credit_model_requests_total", C, "",
       "Requests (prompts) per model, task category and outcome (success or failure).",
       (ORG, MODEL, "task_category", "outcome"), EV, Group.VOLUME,
       480, "40 models x 6 task categories x 2 outcomes"),
    _m("credit_user_requests_total", C, "",
       "Requests (prompts) per team member and model.",
       (ORG, "department", "user", MODEL), EV, Group.VOLUME,
       30_000, "same label set as credit_spent_by_user_credits_total"),
    _m("credit_tokens_total", C, "",
       "Tokens consumed, by model and token type (input or output).",
       (ORG, "project", MODEL, "gen_ai_token_type"), EV, Group.VOLUME,
       1_000, "50 projects x ~10 models each x 2 token types"),
    _m("credit_messages_total", C, "",
       "Conversation messages, by agent, channel and role (user or assistant).",
       (ORG, "agent", "channel", "role"), EV, Group.VOLUME,
       6_000, "1k agents x ~3 channels each x 2 roles"),
    _m("credit_conversations_total", C, "",
       "Conversations started, by agent and channel.",
       (ORG, "agent", "channel"), EV, Group.VOLUME,
       3_000, "1k agents x ~3 channels each"),
    _m("credit_visitors_total", C, "",
       "Distinct visitors, counted once at their first conversation with an agent.",
       (ORG, "agent"), EV, Group.VOLUME,
       1_000, "1k agents"),
    _m("credit_documents_total", C, "",
       "Documents processed (ingested into knowledge bases), by agent.",
       (ORG, "agent"), EV, Group.VOLUME,
       1_000, "1k agents"),
    _m("credit_voice_seconds_total", C, "seconds",
       "Voice transcribed or synthesized, by agent and service type.",
       (ORG, "agent", "service_type"), EV, Group.VOLUME,
       2_000, "1k agents x 2 voice service types"),
    _m("credit_tool_runs_total", C, "",
       "Tool runs performed by agents.",
       (ORG, "agent"), EV, Group.VOLUME,
       1_000, "1k agents"),
    # --- quality ----------------------------------------------------------------
    _m("credit_response_duration_seconds", H, "seconds",
       "Response latency of model calls, by model (OpenTelemetry GenAI buckets).",
       (ORG, MODEL), EV, Group.QUALITY,
       640, "40 models x 16 series (14 buckets, +Inf, sum, count)", LLM_LATENCY_BUCKETS),
    _m("credit_ratings_total", C, "",
       "Answer ratings left by users or visitors (1 to 5), by agent and model.",
       (ORG, "agent", MODEL, "rating"), EV, Group.QUALITY,
       7_500, "1k agents x ~1.5 models each x 5 rating values"),
    _m("credit_unanswered_questions_total", C, "",
       "Questions the agent could not answer from its knowledge.",
       (ORG, "agent"), EV, Group.QUALITY,
       1_000, "1k agents"),
    # --- revenue ----------------------------------------------------------------
    _m("credit_paid_agent_transactions_total", C, "",
       "Paid-agent transactions (charges and refunds).",
       (ORG, "agent", "kind"), EV, Group.REVENUE,
       200, "~100 paid agents x 2 kinds"),
    _m("credit_paid_agent_revenue_total", C, "currency",
       "Paid-agent revenue charged, in the currency's major unit (gross; refunds are "
       "credit_paid_agent_refunds_total, net = revenue - refunds).",
       (ORG, "agent", "currency"), EV, Group.REVENUE,
       200, "~100 paid agents x ~2 currencies"),
    _m("credit_paid_agent_refunds_total", C, "currency",
       "Paid-agent revenue refunded, in the currency's major unit.",
       (ORG, "agent", "currency"), EV, Group.REVENUE,
       200, "~100 paid agents x ~2 currencies"),
    _m("credit_paid_agent_subscribers", G, "",
       "Active subscribers of a paid agent.",
       (ORG, "agent"), ST, Group.REVENUE,
       100, "~100 paid agents"),
    # --- state: allocations, balances, budgets, plan --------------------------
    _m("credit_organization_info", INFO, "",
       "Organization metadata: display name and plan. Always 1.",
       (ORG, "organization_name", "plan"), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_project_info", INFO, "",
       "Project metadata: display name and chart colour. Always 1.",
       (ORG, "project", "project_name", "color"), ST, Group.STATE,
       50, "50 projects"),
    _m("credit_agent_info", INFO, "",
       "Agent metadata: display name, project, default model and whether access is paid. "
       "Always 1.",
       (ORG, "project", "agent", "agent_name", MODEL, "paid"), ST, Group.STATE,
       1_000, "1k agents"),
    _m("credit_model_multiplier_ratio", G, "ratio",
       "Credit multiplier of a model (credits per prompt relative to a 1x model), with its tier.",
       (MODEL, "gen_ai_provider_name", "tier"), ST, Group.STATE,
       40, "40 models; not per organization"),
    _m("credit_allocation_credits", G, "credits",
       "Credits allocated to a pool for the current billing period "
       "(plan grant, or top-ups bought this period).",
       (ORG, "pool"), ST, Group.STATE,
       2, "2 pools"),
    _m("credit_balance_credits", G, "credits",
       "Credits remaining in a pool.",
       (ORG, "pool"), ST, Group.STATE,
       2, "2 pools"),
    _m("credit_billing_period_start_timestamp_seconds", G, "seconds",
       "Start of the current billing period, as a Unix timestamp.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_billing_period_end_timestamp_seconds", G, "seconds",
       "End of the current billing period (the next billing date), as a Unix timestamp.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_budget_used_credits", G, "credits",
       "Credits used in the current period by a budget scope (scope is organization, "
       "department, project, user, team or api_key: an LLM gateway's teams and virtual "
       "keys). The period is the billing period, or the scope's own budget period where "
       "it has one.",
       (ORG, "scope", "scope_id"), ST, Group.STATE,
       10_071, "1 organization + 20 departments + 50 projects + 10k users, or a gateway's "
       "teams and API keys in their place"),
    _m("credit_budget_limit_credits", G, "credits",
       "Credit limit of a budget scope (organization, department, project, user, team or "
       "api_key) for its current period; absent when the scope has no limit.",
       (ORG, "scope", "scope_id"), ST, Group.STATE,
       10_071, "same scopes as credit_budget_used_credits"),
    _m("credit_organization_budget_alert_threshold_ratio", G, "ratio",
       "An organization's alert ladder for all its budgets: the share of a budget's limit "
       "(0.5 = 50%) at which the alert of a level (UsageHigh, AlmostExhausted, Exhausted) "
       "fires; absent for a level the organization has not set (the alert rules' default "
       "applies).",
       (ORG, "level"), ST, Group.STATE,
       3, "3 levels"),
    _m("credit_budget_alert_threshold_ratio", G, "ratio",
       "One budget's own alert ladder: the share of its limit (0.5 = 50%) at which the alert "
       "of a level (UsageHigh, AlmostExhausted, Exhausted) fires, over its organization's "
       "ladder (credit_organization_budget_alert_threshold_ratio); absent for a level the "
       "budget has not set. Scopes as for credit_budget_used_credits.",
       (ORG, "scope", "scope_id", "level"), ST, Group.STATE,
       300, "3 levels x 100 budgets with a ladder of their own (the exception: a ladder for "
       "all budgets is the organization's)"),
    _m("credit_agent_slots_used", G, "",
       "Agent (chatbot) slots in use.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_agent_slots_limit", G, "",
       "Agent (chatbot) slots the plan allows.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_seats_used", G, "",
       "Team-member seats in use.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_seats_limit", G, "",
       "Team-member seats the plan allows.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_plan_quota_used", G, "",
       "Plan quota in use this period (quota: text_queries, voice_seconds, concurrent_calls, "
       "phone_numbers, human_agent_seats; voice in seconds, the rest counts).",
       (ORG, "quota"), ST, Group.STATE,
       5, "5 quotas"),
    _m("credit_plan_quota_limit", G, "",
       "Plan quota allotted for the period, in the same unit as credit_plan_quota_used.",
       (ORG, "quota"), ST, Group.STATE,
       5, "5 quotas"),
    _m("credit_auto_recharge_enabled", G, "",
       "1 when auto-recharge is on, 0 when it is off.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_auto_recharge_threshold_credits", G, "credits",
       "Balance below which auto-recharge buys a top-up.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    _m("credit_auto_recharge_amount_credits", G, "credits",
       "Credits bought by one auto-recharge.",
       (ORG,), ST, Group.STATE,
       1, "1 per organization"),
    # --- the exporter itself ----------------------------------------------------
    _m("credit_build_info", INFO, "",
       "Build information of the running exporter. Always 1.",
       ("version", "revision", "python_version"), EX, Group.EXPORTER,
       1, "1 per process"),
    _m("credit_exporter_query_up", G, "",
       "1 when the query's last run succeeded, 0 when it failed or the query is stalled.",
       ("query",), EX, Group.EXPORTER,
       50, "one per configured query"),
    _m("credit_exporter_query_stalled", G, "",
       "1 when no run of the query (or stream) has completed, successfully or not, for 3 of "
       "its intervals plus its timeout: it no longer polls. /-/ready fails while any is 1.",
       ("query",), EX, Group.EXPORTER,
       50, "one per configured query"),
    _m("credit_exporter_query_last_success_timestamp_seconds", G, "seconds",
       "Time of the query's last successful run, as a Unix timestamp.",
       ("query",), EX, Group.EXPORTER,
       50, "one per configured query"),
    _m("credit_exporter_query_duration_seconds", H, "seconds",
       "Wall time of each query run, database round trip and conversion included.",
       ("query",), EX, Group.EXPORTER,
       750, "50 queries x 15 series", QUERY_DURATION_BUCKETS),
    _m("credit_exporter_query_rows", G, "",
       "Rows returned by the query's last successful run.",
       ("query",), EX, Group.EXPORTER,
       50, "one per configured query"),
    _m("credit_exporter_query_errors_total", C, "",
       "Failed query runs, by reason (timeout, connection, sql, validation).",
       ("query", "reason"), EX, Group.EXPORTER,
       200, "50 queries x 4 reasons"),
    _m("credit_exporter_dropped_rows_total", C, "",
       "Result rows not exported as their own series because a value or label could not be "
       "exported, by reason (null_label, null_value, not_a_number, not_finite, out_of_range, "
       "duplicate_series, label_value_too_long, invalid_utf8, unsupported_type, null_time; "
       "see docs/limits.md).",
       ("query", "reason"), EX, Group.EXPORTER,
       500, "50 queries x 10 reasons"),
    _m("credit_exporter_dropped_series_total", C, "",
       "Series refused or held at their previous value, by metric and reason: series_limit "
       "(state query: rows refused by the series cap in each poll; stream: groups folded into "
       "the __overflow__ series), counter_decrease (a counter held instead of going down).",
       ("metric", "reason"), EX, Group.EXPORTER,
       120, "60 metrics x 2 reasons"),
    _m("credit_exporter_counter_excess", G, "",
       "How far a stream metric's exported values are above the database's current totals, "
       "summed over its series, because decreases are held (a counter never goes down within "
       "a process): settled rows deleted or lowered. In the metric's unit (a histogram: "
       "observations). 0 when every series equals the database.",
       ("metric",), EX, Group.EXPORTER,
       60, "one per stream metric"),
    _m("credit_exporter_reconcile_chunks_total", C, "",
       "Time chunks of settled history the reconcile compared with the database, by result "
       "(same, different).",
       ("query", "result"), EX, Group.EXPORTER,
       40, "20 streams x 2 results"),
    _m("credit_exporter_reconcile_rows_total", C, "",
       "Rows the reconcile found in settled history that the polls had not counted, by reason: "
       "late (committed after the stream's window), deleted (counted, then removed).",
       ("query", "reason"), EX, Group.EXPORTER,
       40, "20 streams x 2 reasons"),
    _m("credit_exporter_reconcile_difference_total", C, "",
       "Differences the reconcile found between a metric's settled totals and the database, "
       "in the metric's unit (a histogram: observations), by direction: up (folded into the "
       "counters), down (held; see credit_exporter_counter_excess).",
       ("query", "metric", "direction"), EX, Group.EXPORTER,
       120, "60 stream metrics x 2 directions"),
    _m("credit_exporter_stream_recomputes_total", C, "",
       "Times a stream threw its totals away and aggregated the whole table again, by reason: "
       "database_replaced (the database under its DSN is another one: its OID changed, as on "
       "a drop and restore), key_went_back (the highest key is below the one it had settled: "
       "a restore from an older backup, or the newest rows deleted). Its counters then equal "
       "the new database's totals, which may be lower: Prometheus reads that as a reset.",
       ("query", "reason"), EX, Group.EXPORTER,
       40, "20 streams x 2 reasons"),
    _m("credit_exporter_reconcile_database_seconds_total", C, "seconds",
       "Wall time of the reconcile's queries: its rate is the share of one database core the "
       "reconcile uses.",
       ("query",), EX, Group.EXPORTER,
       20, "one per stream"),
    _m("credit_exporter_reconcile_last_success_timestamp_seconds", G, "seconds",
       "Time the stream's last reconcile pass over settled history completed, as a Unix "
       "timestamp. Differences that arrived since are not counted yet.",
       ("query",), EX, Group.EXPORTER,
       20, "one per stream"),
    _m("credit_exporter_checkpoint_loads_total", C, "",
       "What became of a stream's checkpoint at start-up, by result: loaded (its settled state "
       "was used: the first poll read only newer rows), missing, corrupt (unreadable, torn or "
       "altered), mismatch (written for another stream definition, database or format), "
       "verify_failed (settled rows changed since it was written). Any result but loaded means "
       "the stream aggregated its whole history instead.",
       ("query", "result"), EX, Group.EXPORTER,
       100, "20 streams x 5 results"),
    _m("credit_exporter_checkpoint_writes_total", C, "",
       "Writes of a stream's checkpoint file, by result (ok, failed).",
       ("query", "result"), EX, Group.EXPORTER,
       40, "20 streams x 2 results"),
    _m("credit_exporter_checkpoint_last_write_timestamp_seconds", G, "seconds",
       "Time of the settled state in the stream's last checkpoint written, as a Unix timestamp.",
       ("query",), EX, Group.EXPORTER,
       20, "one per stream"),
    _m("credit_exporter_exposition_bytes", G, "bytes",
       "Size of the last rendered /metrics body, uncompressed.",
       (), EX, Group.EXPORTER,
       1, "1 per process"),
    _m("credit_exporter_exposition_series", G, "",
       "Series in the last rendered /metrics body, by metric.",
       ("metric",), EX, Group.EXPORTER,
       60, "one per catalogue metric"),
    _m("credit_exporter_config_last_reload_successful", G, "",
       "1 when the last configuration load succeeded, 0 when it failed.",
       (), EX, Group.EXPORTER,
       1, "1 per process"),
    _m("credit_exporter_config_last_reload_success_timestamp_seconds", G, "seconds",
       "Time of the last successful configuration load, as a Unix timestamp.",
       (), EX, Group.EXPORTER,
       1, "1 per process"),
)  # fmt: skip

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def get(name: str) -> Metric:
    return BY_NAME[name]


def state_metrics() -> list[Metric]:
    return [m for m in METRICS if m.source is Source.STATE]


def event_metrics() -> list[Metric]:
    return [m for m in METRICS if m.source is Source.EVENTS]


def series_names(metric: Metric) -> set[str]:
    """Sample names a metric produces in the text exposition."""
    if metric.type is MetricType.HISTOGRAM:
        return {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
    return {metric.name}


def all_series_names() -> set[str]:
    """Every sample name the catalogue allows, for query linting in dashboards and rules."""
    names: set[str] = set()
    for metric in METRICS:
        names |= series_names(metric)
    return names


def to_json() -> str:
    return json.dumps([m.as_dict() for m in METRICS], indent=2) + "\n"


_GROUP_TITLES = {
    Group.SPEND: "Spend",
    Group.VOLUME: "Volume",
    Group.STATE: "State: allocations, balances, budgets and plan",
    Group.QUALITY: "Quality",
    Group.REVENUE: "Revenue",
    Group.EXPORTER: "The exporter itself",
}


def to_markdown() -> str:
    """docs/metrics.md: generated, committed, and checked for staleness by a test."""
    out = [
        "# Metrics",
        "",
        "<!-- Generated by `credit-exporter catalog --format markdown`; do not edit. -->",
        "",
        "Every metric credit-exporter can export. The catalogue in",
        "`exporter/credit_exporter/catalog.py` is the single source of truth: the",
        "exporter, `check-config`, the dashboards and the alert rules all read it.",
        "",
        "- **Source** `state`: a state query; each poll replaces the whole series set, so a",
        "  row that disappears from the result disappears from `/metrics`.",
        "- **Source** `events`: a usage event stream; values are absolute totals since the",
        "  first row of the table, identical across restarts and replicas.",
        "- **Source** `exporter`: the exporter's own health.",
        "",
        "**Series budget** is the most series a metric reaches for one organization with",
        "10k users, 1k agents, 50 projects, 20 departments and 40 models. The sum over all",
        f"metrics is {sum(m.series_budget for m in METRICS):,} series. Label values are",
        "identifiers (slugs), not display names; display names live in the `_info`",
        "metrics and are joined in queries.",
        "",
    ]
    for group in Group:
        members = [m for m in METRICS if m.group is group]
        out += [f"## {_GROUP_TITLES[group]}", ""]
        out += [
            "| name | type | unit | labels | source | series budget | help |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in members:
            labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
            budget = f"{m.series_budget:,} ({m.budget_note})"
            out.append(
                f"| `{m.name}` | {m.type.value} | {m.unit or '-'} | {labels} | "
                f"{m.source.value} | {budget} | {m.help} |"
            )
        out.append("")
    out += [
        "## Histogram buckets",
        "",
        "- `credit_response_duration_seconds`: "
        + ", ".join(f"{b:g}" for b in LLM_LATENCY_BUCKETS)
        + " seconds: the explicit boundaries the OpenTelemetry GenAI semantic conventions",
        "  recommend for `gen_ai.client.operation.duration`. Embedding and cached calls fall",
        "  in the first buckets, streamed chat completions in 1-10 s, agent runs and reasoning",
        "  models in 20-80 s.",
        "- `credit_exporter_query_duration_seconds`: "
        + ", ".join(f"{b:g}" for b in QUERY_DURATION_BUCKETS)
        + " seconds.",
        "",
    ]
    return "\n".join(out)

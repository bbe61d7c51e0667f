"""Every view item of the seeds (issue 5's list), plus the budget scopes LLM
gateways add (team, api_key) and the reconcile of event streams, and the panels
that reproduce it.

A panel entry is a panel title on the dashboard; ``$name`` is a template
variable of that dashboard. tests/test_dashboards.py checks every entry exists,
and docs/dashboards.md renders this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboards.common import UID_AGENT, UID_BUDGETS, UID_HEALTH, UID_MODELS, UID_ORG, UID_USAGE


@dataclass(frozen=True)
class Item:
    view: str
    item: str
    uid: str
    panels: tuple[str, ...]


def _items(view: str, uid: str, *pairs: tuple[str, tuple[str, ...]]) -> list[Item]:
    return [Item(view, item, uid, panels) for item, panels in pairs]


ITEMS: tuple[Item, ...] = (
    *_items(
        "Usage (000, 001, 004)", UID_USAGE,
        ("credits used in the range", ("Credits used in range",)),
        ("credits used in the current billing period", ("Credits used this billing period",)),
        ("agent slots used of available", ("Agent slots used",)),
        ("team-member seats used of available", ("Team-member seats used",)),
        ("credit usage over time with a credits/messages switch", ("Credit usage", "$lens")),
        ("All Agents / one agent filter", ("$agent",)),
        ("date range", ("Credits used in range",)),
        ("daily burn", ("Daily burn",)),
        ("per-agent and per-team-member usage", ("Credit spend by agent", "Top team members")),
        ("top assistants linked to their Agent Analytics", ("Top assistants",)),
        ("conversations by channel", ("Conversations by channel",)),
        ("remaining balance per pool (plan vs top-up)", ("Remaining balance by pool",)),
        ("days to the next billing date", ("Next billing date in",)),
        ("recent activity table (When, Type, Assistant, Contact, Channel, Messages)",
         ("Recent activity",)),
    ),
    *_items(
        "Organization Analytics (002)", UID_ORG,
        ("KPI: total requests", ("Total requests",)),
        ("KPI: total tokens", ("Total tokens",)),
        ("KPI: unique models", ("Unique models",)),
        ("KPI: active projects as X/Y", ("Active projects",)),
        ("KPI: total conversations", ("Total conversations",)),
        ("daily cost by service type: stacked bars and doughnut sharing a legend",
         ("Daily cost by service type", "Cost by service type", "$service_type")),
        ("cost by project: top 6, Others and the total",
         ("Cost by project (top 6 and Others)", "Total cost")),
        ("project cost trends with a service-type filter",
         ("Project cost trends", "$service_type")),
        ("top 10 agents (agent linked, project, conversations, requests, cost)",
         ("Top 10 agents",)),
        ("one section per service type: cost by project, daily requests, usage by pricing rule",
         ("Cost ($service_type)", "Cost by project ($service_type)",
          "Daily requests ($service_type)", "Usage by pricing rule ($service_type)")),
        ("usage requests and usage items tables with a Project column",
         ("Usage requests", "Usage items")),
    ),
    *_items(
        "Agent Analytics (000)", UID_AGENT,
        ("one agent via a variable", ("$agent",)),
        ("conversations", ("Conversations", "Conversations by channel")),
        ("messages", ("Messages", "Messages by role")),
        ("visitors", ("Visitors", "New visitors")),
        ("messages per conversation", ("Messages per conversation",)),
        ("answer quality: ratings", ("Average rating", "Ratings by score")),
        ("answer quality: unanswered questions",
         ("Unanswered questions", "Unanswered rate", "Unanswered questions over time")),
        ("paid agents: subscribers", ("Paid access", "Subscribers")),
        ("paid agents: transactions", ("Transactions",)),
        ("paid agents: revenue", ("Revenue", "Refunds", "Net revenue", "Revenue over time")),
    ),
    *_items(
        "Models, Users and Performance (003)", UID_MODELS,
        ("usage by model with its multiplier", ("Usage by model", "Credits by model")),
        ("by tier (premium/standard/economy)", ("Credits by multiplier tier",)),
        ("per-user table (prompts, top model, credits, average credits per prompt)",
         ("Usage by user",)),
        ("timeline with an hour/day/week/month granularity",
         ("Credit usage timeline", "$granularity")),
        ("peak hours and weekdays", ("Peak hours", "Peak weekdays")),
        ("plan versus additional credits", ("Plan versus additional credits",)),
        ("response time per model", ("Average response time by model", "Model comparison",
                                     "Response time over time")),
        ("response time by time of day", ("Response time by time of day",)),
        ("success rate per model", ("Success rate by model", "Model comparison")),
        ("user rating per model", ("User rating by model", "Model comparison")),
        ("credits by task category", ("Credits by task category",)),
        ("credits per prompt (efficiency) by model",
         ("Credits per prompt by model", "Most credit-efficient task and model pairs",
          "Average credits per prompt")),
        ("credits per prompt (efficiency) by user", ("Credits per prompt by user",)),
    ),
    *_items(
        "Budgets and Plan Health (003, 004)", UID_BUDGETS,
        ("per-scope budget used vs limit with 75/90/100 thresholds",
         ("Organization budget used", "Budget used by scope", "Budgets by scope", "$scope",
          "$scope_id")),
        ("budgets of an LLM gateway's teams and virtual API keys (scope team, api_key)",
         ("Budget used by scope", "Budgets by scope", "Firing budget alerts", "$scope")),
        ("projected end-of-period spend", ("Projected end-of-period spend",)),
        ("hours until exhaustion at the current burn",
         ("Hours until credits run out", "Hours until budget limit by scope", "Budgets by scope")),
        ("plan-health tile: text queries", ("Text queries",)),
        ("plan-health tile: voice minutes", ("Voice minutes",)),
        ("plan-health tile: concurrent calls", ("Concurrent calls",)),
        ("plan-health tile: phone numbers", ("Phone numbers",)),
        ("plan-health tile: human-agent seats", ("Human-agent seats",)),
        ("auto-recharge state", ("Auto-recharge", "Auto-recharge settings")),
        ("top-ups", ("Top-ups in range", "Top-up credits in range",
                     "Balance and allocation by pool")),
        ("the alerts currently firing", ("Firing budget alerts",)),
    ),
    *_items(
        "Exporter health", UID_HEALTH,
        ("per-query up", ("Query status", "Exporter up")),
        ("last success age", ("Time since last success by query",)),
        ("durations", ("Query duration (p95)",)),
        ("errors by reason", ("Query errors by reason",)),
        ("rows", ("Rows returned by query",)),
        ("dropped series", ("Dropped rows and series", "Dropped in range")),
        ("scrape size", ("Exposition size", "Exported series", "Samples per scrape",
                         "Series by metric")),
        ("late data and reconcile: corrections, late and deleted rows, held excess, pass "
         "age, database share",
         ("Reconcile corrections in range", "Late and deleted rows in range",
          "Held above the database", "Time since last reconcile by stream",
          "Reconcile database share")),
    ),
)  # fmt: skip

"""Agent analytics: how one agent performs (seed 000).

Conversations, messages, visitors and conversation depth; answer quality
(ratings, unanswered questions); and, for paid agents, subscribers,
transactions and revenue.
"""

from __future__ import annotations

from dashboards.common import (
    CHANNEL_NAMES,
    COUNT,
    CREDITS,
    NONE,
    RATIO,
    SPENT_BY_AGENT,
    UID_AGENT,
    UID_USAGE,
    average_rating,
    bargauge,
    dashboard,
    display_names,
    growth_between_boundaries,
    link,
    organization_variable,
    override,
    prom,
    prometheus_variable,
    query_variable,
    row,
    stat,
    steps,
    timeseries,
    value_map,
)

UID = UID_AGENT
TITLE = "Agent analytics"
AG = 'organization="$organization", agent="$agent"'
CURRENCIES = ("USD", "EUR", "GBP", "JPY")
CURRENCY_UNITS = [override("byName", c, unit=f"currency{c}") for c in CURRENCIES]
NOT_PAID = "not a paid agent"


def daily(counter: str) -> str:
    """A counter's growth over each daily bar of the selected agent."""
    return growth_between_boundaries(f"{counter}{{{AG}}}")


AGENTS = 'label_values(credit_agent_info{organization="$organization"}, agent)'


def variables() -> list[dict]:
    return [
        prometheus_variable(),
        organization_variable(),
        query_variable(
            "agent", "Agent", AGENTS,
            description="The agent to analyse (active agents of the organization).",
        ),
    ]  # fmt: skip


def items() -> list:
    usage_link = [link("Credit usage of this agent", UID_USAGE,
                       "var-organization=${organization}&var-agent=${agent}")]  # fmt: skip
    return [
        row("Engagement"),
        stat(
            "Conversations",
            "Conversations the agent had in the range (playground tests excluded).",
            [prom(f"sum(increase(credit_conversations_total{{{AG}}}[$__range]))",
                  "conversations")],
            COUNT, seeds="000 Conversations", width=5,
        ),
        stat(
            "Messages",
            "Messages exchanged in the agent's conversations, both visitor and assistant.",
            [prom(f"sum(increase(credit_messages_total{{{AG}}}[$__range]))", "messages")],
            COUNT, seeds="000 Messages", width=5,
        ),
        stat(
            "Visitors",
            "New visitors: people whose first conversation with this agent was in the range.",
            [prom(f"sum(increase(credit_visitors_total{{{AG}}}[$__range]))", "visitors")],
            COUNT, seeds="000 Visitors", width=5,
        ),
        stat(
            "Messages per conversation",
            "How deep conversations go: messages divided by conversations in the range.",
            [prom(f"sum(increase(credit_messages_total{{{AG}}}[$__range])) / "
                  f"sum(increase(credit_conversations_total{{{AG}}}[$__range]))", "depth")],
            NONE, decimals=1, seeds="000 how deep the conversations go", width=4,
        ),
        stat(
            "Credits used by this agent",
            "Credits the agent consumed in the range. Click through to the Usage dashboard "
            "filtered on this agent.",
            [prom(f"sum(sum_over_time({SPENT_BY_AGENT}{{{AG}}}[$__range]))", "credits")],
            CREDITS, links=usage_link, seeds="000 Usage vs Analytics", width=5,
        ),
        timeseries(
            "Conversations by channel",
            "Conversations started per day, by channel.",
            [prom(f"sum by (channel) ({daily('credit_conversations_total')})",
                  "{{channel}}")],
            COUNT, bars=True, stacked=True, interval="1d", width=8,
            overrides=display_names(CHANNEL_NAMES), seeds="000 how many people are chatting",
        ),
        timeseries(
            "Messages by role",
            "Messages per day from visitors (user) and from the agent (assistant).",
            [prom(f"sum by (role) ({daily('credit_messages_total')})",
                  "{{role}}")],
            COUNT, interval="1d", width=8, seeds="000 Messages",
        ),
        timeseries(
            "New visitors",
            "Visitors per day whose first conversation with this agent was that day.",
            [prom(f"sum({daily('credit_visitors_total')})", "visitors")],
            COUNT, bars=True, interval="1d", width=8, seeds="000 Visitors",
        ),
        row("Answer quality"),
        stat(
            "Average rating",
            "Mean answer rating (1 to 5 stars) visitors gave in the range.",
            [prom(average_rating(AG), "rating")],
            "suffix: / 5", decimals=2,
            thresholds=steps(("red", None), ("yellow", 3.5), ("green", 4.2)),
            seeds="000 answer quality (ratings)", width=5,
        ),
        bargauge(
            "Ratings by score",
            "How many ratings of each score (1 to 5 stars) the agent received in the range.",
            [prom(f"sum by (rating) (increase(credit_ratings_total{{{AG}}}[$__range]))",
                  "{{rating}} stars")],
            COUNT, width=7, height=8, seeds="000 answer quality (ratings)",
        ),
        stat(
            "Unanswered questions",
            "Questions the agent could not answer from its knowledge in the range: where it "
            "struggles.",
            [prom(f"sum(increase(credit_unanswered_questions_total{{{AG}}}[$__range]))",
                  "unanswered")],
            COUNT, thresholds=steps(("green", None), ("yellow", 1)),
            seeds="000 where the agent struggles to answer", width=4,
        ),
        stat(
            "Unanswered rate",
            "Share of the agent's answers that said it could not answer (unanswered "
            "questions / assistant messages). Yellow above 5%, red above 10%.",
            [prom(f"sum(increase(credit_unanswered_questions_total{{{AG}}}[$__range])) / "
                  f'sum(increase(credit_messages_total{{{AG}, role="assistant"}}[$__range]))',
                  "unanswered rate")],
            RATIO, thresholds=steps(("green", None), ("yellow", 0.05), ("red", 0.1)),
            seeds="000 answer quality (unanswered questions)", width=4,
        ),
        timeseries(
            "Unanswered questions over time",
            "Unanswered questions per day.",
            [prom(f"sum({daily('credit_unanswered_questions_total')})",
                  "unanswered")],
            COUNT, bars=True, interval="1d", width=4, height=8,
            seeds="000 where the agent struggles to answer",
        ),
        row("Paid access and revenue"),
        stat(
            "Paid access",
            "Whether visitors pay to use this agent (Paid Agents). The revenue panels are "
            "empty for free agents.",
            [prom(f'sum(credit_agent_info{{{AG}, paid="true"}}) or on () '
                  f"(0 * sum(credit_agent_info{{{AG}}}))", "paid access")],
            NONE, mappings=value_map({"1": ("Paid", "green"), "0": ("Free", "text")}),
            seeds="000 paid agents", width=4,
        ),
        stat(
            "Subscribers",
            "Active subscribers of this paid agent.",
            [prom(f"sum(credit_paid_agent_subscribers{{{AG}}})", "subscribers")],
            COUNT, no_value=NOT_PAID, seeds="000 Subscriptions: subscribers", width=4,
            paid_only=True,
        ),
        stat(
            "Revenue",
            "Paid-access revenue charged in the range, per currency (gross).",
            [prom("sum by (currency) (increase(credit_paid_agent_revenue_total"
                  f"{{{AG}}}[$__range]))", "{{currency}}")],
            COUNT, overrides=CURRENCY_UNITS, no_value=NOT_PAID, text_mode="value_and_name",
            seeds="000 Subscriptions: revenue", width=5, paid_only=True,
        ),
        stat(
            "Refunds",
            "Paid-access revenue refunded in the range, per currency.",
            [prom("sum by (currency) (increase(credit_paid_agent_refunds_total"
                  f"{{{AG}}}[$__range]))", "{{currency}}")],
            COUNT, overrides=CURRENCY_UNITS, no_value=NOT_PAID, text_mode="value_and_name",
            seeds="000 Subscriptions: revenue", width=5, paid_only=True,
        ),
        stat(
            "Net revenue",
            "Revenue minus refunds in the range, per currency.",
            [prom("sum by (currency) (increase(credit_paid_agent_revenue_total"
                  f"{{{AG}}}[$__range])) - sum by (currency) (increase("
                  f"credit_paid_agent_refunds_total{{{AG}}}[$__range]))", "{{currency}}")],
            COUNT, overrides=CURRENCY_UNITS, no_value=NOT_PAID, text_mode="value_and_name",
            seeds="000 Subscriptions: revenue", width=6, paid_only=True,
        ),
        timeseries(
            "Transactions",
            "Paid-access transactions per day: charges and refunds.",
            [prom(f"sum by (kind) ({daily('credit_paid_agent_transactions_total')})", "{{kind}}")],
            COUNT, bars=True, stacked=True, interval="1d", width=12,
            seeds="000 Subscriptions: transactions", paid_only=True,
        ),
        timeseries(
            "Revenue over time",
            "Paid-access revenue charged per day, per currency.",
            [prom(f"sum by (currency) ({daily('credit_paid_agent_revenue_total')})",
                  "{{currency}}")],
            COUNT, bars=True, interval="1d", width=12, overrides=CURRENCY_UNITS,
            seeds="000 Subscriptions: revenue", paid_only=True,
        ),
    ]  # fmt: skip


def build() -> dict:
    return dashboard(
        uid=UID,
        title=TITLE,
        description="How a single agent performs: conversations, messages, visitors, answer "
        "quality and, for paid agents, subscribers, transactions and revenue.",
        items=items(),
        variables=variables(),
        time_from="now-30d",
        refresh="5m",
    )

"""Credit usage: organization-wide spend (seeds 000, 001, 004).

"Where is my account spending?": credits used in the range and in the billing
period, slots and seats, the credit usage chart with its credits/messages
lens, the daily burn, the top assistants (linked to Agent analytics), channels,
team members, balances, the next billing date and the recent activity feed.
"""

from __future__ import annotations

from dashboards.common import (
    AGENT_SELECTOR,
    CHANNEL_NAMES,
    COUNT,
    CREDITS,
    DURATION,
    MESSAGES_BY_AGENT,
    NEUTRAL,
    ORG,
    SPENT_BY_AGENT,
    SPENT_BY_USER,
    UID_AGENT,
    UID_USAGE,
    bargauge,
    custom_variable,
    dashboard,
    display_names,
    growth_between_boundaries,
    link,
    organization_variable,
    override,
    piechart,
    postgres_variable,
    prom,
    prometheus_variable,
    query_variable,
    row,
    sql,
    stat,
    steps,
    table,
    timeseries,
    workspace,
)

UID = UID_USAGE
TITLE = "Credit usage"
SEL = f"{ORG}, {AGENT_SELECTOR}"

RECENT_ACTIVITY_SQL = """
SELECT c.started_at AS "When",
       initcap(c.type) AS "Type",
       a.name AS "Assistant",
       v.contact AS "Contact",
       ch.name AS "Channel",
       (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS "Messages"
FROM conversations c
JOIN organizations o ON o.id = c.organization_id
JOIN agents a ON a.id = c.agent_id
JOIN visitors v ON v.id = c.visitor_id
JOIN channels ch ON ch.id = c.channel_id
WHERE o.slug = '$organization'
  AND a.slug ~ '^${agent:regex}$'
  AND $__timeFilter(c.started_at)
  AND NOT c.playground
ORDER BY c.started_at DESC
LIMIT 100
"""


AGENTS = 'label_values(credit_agent_info{organization="$organization"}, agent)'


def variables() -> list[dict]:
    return [
        prometheus_variable(),
        postgres_variable(),
        organization_variable(),
        query_variable(
            "agent", "Agent", AGENTS,
            multi=True, include_all=True, all_value=".*",
            description="All Agents by default; pick one (Select Agent) to isolate its spend.",
        ),
        custom_variable(
            "lens", "Chart shows",
            [("credits", SPENT_BY_AGENT), ("messages", MESSAGES_BY_AGENT)],
            default=[SPENT_BY_AGENT, MESSAGES_BY_AGENT], multi=True,
            description="The credit usage chart's lens: credits consumed, the message volume "
            "behind them, or both.",
        ),
    ]  # fmt: skip


def items() -> list:
    per_agent = f"{SPENT_BY_AGENT}{{{SEL}}}"
    return [
        row("Summary"),
        stat(
            "Credits used in range",
            "Credits consumed in the selected time range by the selected agents (All Agents: "
            "the whole organization, direct workspace prompts included). This is spend, not "
            "the remaining balance; playground tests never draw credits and never show here.",
            [prom(f"sum(sum_over_time({per_agent}[$__range]))", "credits")],
            CREDITS, seeds="001 Credits used; 000 credit spend", width=4,
        ),
        stat(
            "Credits used this billing period",
            "Credits the organization used in its current billing period, net of refunds "
            "(the organization budget's used figure, the one the 75/90/100% alerts read). "
            "Organization-wide: the agent filter does not apply.",
            [prom(f'sum(credit_budget_used_credits{{{ORG}, scope="organization"}})', "credits")],
            CREDITS, seeds="001 Credits used this period", width=4,
        ),
        stat(
            "Agent slots used",
            "Agent (chatbot) slots in use, next to the slots the plan makes available.",
            [prom(f"sum(credit_agent_slots_used{{{ORG}}})", "used"),
             prom(f"sum(credit_agent_slots_limit{{{ORG}}})", "available")],
            COUNT, text_mode="value_and_name", seeds="001 Chatbots used", width=4,
        ),
        stat(
            "Team-member seats used",
            "Team-member seats in use, next to the seats the plan makes available.",
            [prom(f"sum(credit_seats_used{{{ORG}}})", "used"),
             prom(f"sum(credit_seats_limit{{{ORG}}})", "available")],
            COUNT, text_mode="value_and_name", seeds="001 Team members used", width=4,
        ),
        stat(
            "Remaining balance by pool",
            "Credits left in each pool: the plan grant of this period and the top-up credits "
            "bought. Red when a pool is exhausted.",
            [prom(f"sum by (pool) (credit_balance_credits{{{ORG}}})", "{{pool}}")],
            CREDITS, text_mode="value_and_name", thresholds=steps(("red", None), ("green", 0.001)),
            overrides=display_names({"plan": "Plan credits", "topup": "Top-up credits"}),
            seeds="001 Message Credits vs Top-up Credits (Billing)", width=4,
        ),
        stat(
            "Next billing date in",
            "Time until the current billing period ends and the plan credits refill.",
            [prom(f"max(credit_billing_period_end_timestamp_seconds{{{ORG}}}) - time()",
                  "next billing")],
            DURATION, thresholds=NEUTRAL, seeds="001 Next Billing Date and days remaining",
            width=4,
        ),
        row("Credit usage"),
        timeseries(
            "Credit usage",
            "Credits consumed per interval (left axis) and the messages behind them (right "
            "axis). The 'Chart shows' switch picks credits, messages or both: a spike in "
            "credits without more messages came from a pricier model, not more conversations.",
            [prom(f'sum(sum_over_time({{__name__="{SPENT_BY_AGENT}", __name__=~"$lens", {SEL}}}'
                  "[$__interval]))", "Credits"),
             prom(f'sum(sum_over_time({{__name__="{MESSAGES_BY_AGENT}", __name__=~"$lens", {SEL}}}'
                  "[$__interval]))", "Messages")],
            CREDITS, bars=False, interval="1h", width=24, height=9,
            overrides=[override("byFrameRefID", "B", unit=COUNT,
                                **{"custom.axisPlacement": "right"})],
            seeds="001 Credit usage chart and its credits/messages toggle",
        ),
        timeseries(
            "Daily burn",
            "Credits consumed per day: spot a Monday campaign spike or a week nobody used "
            "the widget.",
            [prom("sum(" + growth_between_boundaries(f"credit_spent_credits_total{{{SEL}}}") + ")",
                  "credits per day")],
            CREDITS, bars=True, interval="1d", width=12,
            seeds="004 Daily burn trend",
        ),
        timeseries(
            "Credit spend by agent",
            "Credits per hour by agent, stacked: which agent is responsible for a spike. "
            "(workspace) is direct prompts without an agent.",
            [prom("sum by (agent) (" + workspace(f"sum_over_time({per_agent}[$__interval])") + ")",
                  "{{agent}}")],
            CREDITS, bars=True, stacked=True, interval="1h", width=12, legend="table",
            legend_calcs=("sum",), seeds="000 per-agent usage; 001 broken down by agent",
        ),
        row("Where the credits go"),
        bargauge(
            "Top assistants",
            "The ten assistants that used the most credits in the range. Click a bar to open "
            "its Agent analytics.",
            [prom(f'topk(10, sum by (agent) (sum_over_time({SPENT_BY_AGENT}{{{SEL}, agent!=""}}'
                  "[$__range])))", "{{agent}}")],
            CREDITS, width=8, height=9,
            links=[link("Agent analytics: ${__field.labels.agent}", UID_AGENT,
                        "var-organization=${organization}&var-agent=${__field.labels.agent}")],
            seeds="004 Top assistants",
        ),
        piechart(
            "Conversations by channel",
            "Share of conversations started on each channel (web chat, WhatsApp, phone, SMS, "
            "Messenger, Instagram, Telegram, API) in the range.",
            [prom("sum by (channel) (increase(credit_conversations_total"
                  f"{{{SEL}}}[$__range]))", "{{channel}}")],
            COUNT, overrides=display_names(CHANNEL_NAMES), width=8, height=9,
            seeds="004 By channel donut",
        ),
        bargauge(
            "Top team members",
            "The ten team members who used the most credits in the range (direct prompts "
            "and their agents' usage attributed to them). Organization-wide: the agent filter "
            "does not apply.",
            [prom(f"topk(10, sum by (user) (sum_over_time({SPENT_BY_USER}{{{ORG}}}[$__range])))",
                  "{{user}}")],
            CREDITS, width=8, height=9, seeds="000 per-team-member usage",
        ),
        row("Recent activity"),
        table(
            "Recent activity",
            "The 100 most recent conversations in the range across the workspace (the agent "
            "filter applies), from the billing database. No cost column: credits are in the "
            "panels above.",
            [sql(RECENT_ACTIVITY_SQL)], width=24, height=10,
            seeds="004 Recent activity table (When, Type, Assistant, Contact, Channel, "
            "Messages)",
        ),
    ]  # fmt: skip


def build() -> dict:
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Monitor credit usage across your agents and team: spend over time, by "
        "agent, channel and team member. Spend only; playground tests never draw credits.",
        items=items(),
        variables=variables(),
        time_from="now-30d",
        refresh="5m",
    )

"""Organization analytics: cross-project strategic view (seed 002).

KPI cards, daily cost by service type (stacked bars and a doughnut that the
service-type variable filters together), cost by project (top 6 + Others and
the total), project cost trends, the top 10 agents, one repeated section per
service type, and the usage request/item tables with a Project column.
"""

from __future__ import annotations

from dashboards.common import (
    COUNT,
    CREDITS,
    ORG,
    REQUESTS_BY_AGENT,
    REQUESTS_BY_PROJECT_SERVICE,
    SERVICE_TYPE_COLORS,
    SERVICE_TYPE_SELECTOR,
    SPENT_BY_AGENT,
    SPENT_BY_PROJECT_SERVICE,
    UID_AGENT,
    UID_ORG,
    dashboard,
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
    series_colors,
    sql,
    stat,
    table,
    table_columns,
    timeseries,
)

UID = UID_ORG
TITLE = "Organization analytics"
ST = SERVICE_TYPE_SELECTOR
COST = f"{SPENT_BY_PROJECT_SERVICE}{{{ORG}, {ST}}}"
DAILY_COST = growth_between_boundaries(f"credit_spent_credits_total{{{ORG}, {ST}}}")
AGENT_NAMES = f"group by (agent, agent_name, project) (credit_agent_info{{{ORG}}})"
TOP10 = f'topk(10, sum by (agent) (sum_over_time({SPENT_BY_AGENT}{{{ORG}, agent!=""}}[$__range])))'

USAGE_REQUESTS_SQL = """
SELECT e.occurred_at AS "Time",
       p.name AS "Project",
       coalesce(a.name, '(workspace)') AS "Agent",
       u.email AS "User",
       st.name AS "Service type",
       m.name AS "Model",
       r.name AS "Pricing rule",
       e.input_tokens AS "Input tokens",
       e.output_tokens AS "Output tokens",
       e.credits AS "Credits",
       e.latency_seconds AS "Latency",
       CASE WHEN e.success THEN 'success' ELSE 'failure' END AS "Status"
FROM usage_events e
JOIN organizations o ON o.id = e.organization_id
JOIN projects p ON p.id = e.project_id
JOIN users u ON u.id = e.user_id
LEFT JOIN agents a ON a.id = e.agent_id
JOIN service_types st ON st.id = e.service_type_id
JOIN models m ON m.id = e.model_id
JOIN pricing_rules r ON r.id = e.pricing_rule_id
WHERE o.slug = '$organization'
  AND st.slug ~ '^${service_type:regex}$'
  AND $__timeFilter(e.occurred_at)
  AND NOT e.playground
ORDER BY e.occurred_at DESC
LIMIT 500
"""

USAGE_ITEMS_SQL = """
SELECT p.name AS "Project",
       st.name AS "Service type",
       r.name AS "Pricing rule",
       m.name AS "Model",
       r.unit AS "Unit",
       count(*) FILTER (WHERE e.credits >= 0) AS "Requests",
       coalesce(sum(CASE r.unit
                      WHEN 'token' THEN e.input_tokens + e.output_tokens
                      WHEN 'second' THEN e.voice_seconds
                      WHEN 'document' THEN e.documents
                      WHEN 'run' THEN e.tool_runs
                      ELSE 1
                    END) FILTER (WHERE e.credits >= 0), 0) AS "Quantity",
       sum(e.credits) AS "Credits"
FROM usage_events e
JOIN organizations o ON o.id = e.organization_id
JOIN projects p ON p.id = e.project_id
JOIN service_types st ON st.id = e.service_type_id
JOIN pricing_rules r ON r.id = e.pricing_rule_id
JOIN models m ON m.id = e.model_id
WHERE o.slug = '$organization'
  AND st.slug ~ '^${service_type:regex}$'
  AND $__timeFilter(e.occurred_at)
  AND NOT e.playground
GROUP BY p.name, st.name, r.name, m.name, r.unit
ORDER BY "Credits" DESC
"""


def variables() -> list[dict]:
    return [
        prometheus_variable(),
        postgres_variable(),
        organization_variable(),
        query_variable(
            "service_type", "Service type",
            'label_values(credit_spent_credits_total{organization="$organization"}, '
            "service_type)",
            multi=True, include_all=True, all_value=".*",
            description="Filters the cost charts together (the seed's shared legend) and "
            "repeats the service-type section once per selected type.",
        ),
    ]  # fmt: skip


def items() -> list:
    colors = series_colors(SERVICE_TYPE_COLORS)
    return [
        row("Key figures"),
        stat(
            "Total requests",
            "Billable requests (usage events) across all projects in the range.",
            [prom(f"sum(sum_over_time({REQUESTS_BY_PROJECT_SERVICE}{{{ORG}}}[$__range]))",
                  "requests")],
            COUNT, seeds="002 KPI Total Requests", width=5,
        ),
        stat(
            "Total tokens",
            "Tokens consumed across all projects in the range, input plus output.",
            [prom(f"sum(increase(credit_tokens_total{{{ORG}}}[$__range]))", "tokens")],
            COUNT, seeds="002 KPI Total Tokens", width=5,
        ),
        stat(
            "Unique models",
            "Distinct AI models that consumed credits in the range.",
            [prom("count(sum by (gen_ai_request_model) (increase("
                  f"credit_spent_by_model_credits_total{{{ORG}}}[$__range])) > 0) or vector(0)",
                  "models")],
            COUNT, seeds="002 KPI Unique Models", width=4,
        ),
        stat(
            "Active projects",
            "Projects with usage in the range, next to all projects of the organization "
            "(X of Y).",
            [prom(f"count(sum by (project) (sum_over_time({SPENT_BY_PROJECT_SERVICE}{{{ORG}}}"
                  "[$__range])) > 0) or vector(0)", "active"),
             prom(f"count(credit_project_info{{{ORG}}})", "of total")],
            COUNT, text_mode="value_and_name", seeds="002 KPI Active Projects (X/Y)", width=5,
        ),
        stat(
            "Total conversations",
            "Agent conversations started across all projects in the range.",
            [prom(f"sum(increase(credit_conversations_total{{{ORG}}}[$__range]))",
                  "conversations")],
            COUNT, seeds="002 KPI Total Conversations", width=5,
        ),
        row("Cost overview"),
        timeseries(
            "Daily cost by service type",
            "Credits per day, stacked by service type. The service-type variable filters this "
            "chart and the doughnut together (Grafana legends are per panel; the colours match).",
            [prom(f"sum by (service_type) ({DAILY_COST})", "{{service_type}}")],
            CREDITS, bars=True, stacked=True, interval="1d", width=16, height=9,
            overrides=colors, seeds="002 Cost overview stacked bars",
        ),
        piechart(
            "Cost by service type",
            "Total credits of the range by service type.",
            [prom(f"sum by (service_type) (sum_over_time({COST}[$__range]))", "{{service_type}}")],
            CREDITS, overrides=colors, width=8, height=9,
            seeds="002 Cost overview doughnut",
        ),
        row("Projects"),
        piechart(
            "Cost by project (top 6 and Others)",
            "Credits of the range by project: the six most expensive projects, the rest "
            "grouped as Others. The total is the 'Total cost' figure beside it.",
            [prom(f"topk(6, sum by (project) (sum_over_time({COST}[$__range])))", "{{project}}"),
             prom(f"clamp_min(sum(sum_over_time({COST}[$__range])) - sum(topk(6, sum by (project) "
                  f"(sum_over_time({COST}[$__range])))), 0)", "Others")],
            CREDITS, width=8, height=9, seeds="002 Cost by Project doughnut (top 6 + Others)",
        ),
        stat(
            "Total cost",
            "Credits consumed by all projects in the range (the doughnut's centre figure).",
            [prom(f"sum(sum_over_time({COST}[$__range]))", "total")],
            CREDITS, width=4, height=9, seeds="002 Cost by Project total",
        ),
        timeseries(
            "Project cost trends",
            "Credits per day by project; narrow to one service type with the variable.",
            [prom(f"sum by (project) ({DAILY_COST})", "{{project}}")],
            CREDITS, interval="1d", width=12, height=9,
            seeds="002 Project Usage Trends with service-type filter",
        ),
        row("Agents"),
        table(
            "Top 10 agents",
            "The ten agents with the highest cost in the range, with their project, "
            "conversations and requests. Click an agent to open its Agent analytics.",
            [prom(f"({TOP10} * on (agent) group_left (agent_name, project) {AGENT_NAMES}) "
                  f"or on (agent) {TOP10}", ref="A"),
             prom(f"sum by (agent) (increase(credit_conversations_total{{{ORG}}}[$__range])) "
                  f"and on (agent) {TOP10}", ref="B"),
             prom(f"sum by (agent) (sum_over_time({REQUESTS_BY_AGENT}{{{ORG}}}[$__range])) "
                  f"and on (agent) {TOP10}", ref="C")],
            COUNT,
            transformations=[
                *table_columns({"agent_name": "Agent", "project": "Project",
                                "Value #B": "Conversations", "Value #C": "Requests",
                                "Value #A": "Total cost", "agent": "Agent id"}),
                {"id": "sortBy", "options": {"sort": [{"field": "Total cost", "desc": True}]}},
            ],
            overrides=[
                override("byName", "Total cost", unit=CREDITS),
                # increase() extrapolates to the range's edges: whole conversations
                override("byName", "Conversations", decimals=0),
                override("byName", "Agent", links=[link(
                    "Agent analytics", UID_AGENT,
                    "var-organization=${organization}&var-agent=${__data.fields.agent}")]),
            ],
            sort_by="Total cost", width=24, height=9, seeds="002 Top Agents table",
        ),
        row("Service type: $service_type", repeat="service_type"),
        stat(
            "Cost ($service_type)",
            "Credits this service type consumed in the range (the card header's total).",
            [prom(f"sum(sum_over_time({COST}[$__range]))", "$service_type")],
            CREDITS, width=4, height=8, seeds="002 Service Type Breakdown card total",
        ),
        timeseries(
            "Cost by project ($service_type)",
            "Credits per day of this service type, stacked by project (the card's Costs view).",
            [prom(f"sum by (project) ({DAILY_COST})", "{{project}}")],
            CREDITS, bars=True, stacked=True, interval="1d", width=7, height=8,
            seeds="002 Service Type Breakdown: Costs by project",
        ),
        timeseries(
            "Daily requests ($service_type)",
            "Requests per day of this service type (the card's Requests view).",
            [prom("sum(" + growth_between_boundaries(f"credit_requests_total{{{ORG}, {ST}}}") + ")",
                  "requests")],
            COUNT, interval="1d", fill=30, width=6, height=8,
            seeds="002 Service Type Breakdown: Requests area chart",
        ),
        timeseries(
            "Usage by pricing rule ($service_type)",
            "Credits per day of this service type, stacked by pricing rule (input tokens, "
            "output tokens, transcription seconds...): the card's Usage view.",
            [prom("sum by (pricing_rule) (" + growth_between_boundaries(
                "credit_spent_by_pricing_rule_credits_total" f"{{{ORG}, {ST}}}") + ")",
                  "{{pricing_rule}}")],
            CREDITS, bars=True, stacked=True, interval="1d", width=7, height=8,
            seeds="002 Service Type Breakdown: Usage by pricing rule",
        ),
        row("Usage tables"),
        table(
            "Usage requests",
            "The 500 most recent billable requests in the range, all projects (Project "
            "column), from the billing database. Inspect > Data exports CSV.",
            [sql(USAGE_REQUESTS_SQL)], width=24, height=10,
            seeds="002 Usage Requests table with Project column",
        ),
        table(
            "Usage items",
            "Usage in the range by project, service type, pricing rule and model: requests, "
            "billed quantity in the rule's unit, and credits (refunds net).",
            [sql(USAGE_ITEMS_SQL)], width=24, height=10,
            seeds="002 Usage Items table with Project column",
        ),
    ]  # fmt: skip


def build() -> dict:
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Organization-wide strategic view: cost distribution by service type "
        "and project, project trends and the top agents. Month navigation: the time "
        "picker (defaults to this month).",
        items=items(),
        variables=variables(),
        time_from="now/M",
        time_to="now",
        refresh="",
    )

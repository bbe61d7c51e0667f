"""Budgets and plan health (seeds 003, 004).

Budget used against its limit per scope (organization, department, project,
user, and an LLM gateway's team and API key) with the 75/90/100% colours the
alerts use, the projected end-of-period spend, hours until exhaustion at the
current burn, plan-health tiles, slots and seats, auto-recharge, top-ups and the
budget alerts firing now.
"""

from __future__ import annotations

from dashboards.common import (
    BUDGET_PERCENT,
    COUNT,
    CREDITS,
    HOURS,
    MINUTES,
    NEUTRAL,
    NONE,
    ORG,
    PERCENT,
    UID_BUDGETS,
    UID_USAGE,
    bargauge,
    custom_variable,
    dashboard,
    gauge,
    link,
    organization_variable,
    override,
    prom,
    prometheus_variable,
    query_variable,
    row,
    stat,
    steps,
    table,
    table_columns,
    timeseries,
    value_map,
)
from monitoring import config

UID = UID_BUDGETS
TITLE = "Budgets and plan health"
BSEL = f'{ORG}, scope=~"$scope", scope_id=~"$scope_id"'
SCOPE = "organization, scope, scope_id"
USED_RAW = f"credit_budget_used_credits{{{BSEL}}}"
# One series per budget, without __name__/instance/job: table rows merge on the labels.
USED = f"max by ({SCOPE}) ({USED_RAW})"
LIMIT = f"max by ({SCOPE}) (credit_budget_limit_credits{{{BSEL}}})"
ORG_USED = f'sum by (organization) (credit_budget_used_credits{{{ORG}, scope="organization"}})'
ORG_LIMIT = f'sum by (organization) (credit_budget_limit_credits{{{ORG}, scope="organization"}})'
START = f"max by (organization) (credit_billing_period_start_timestamp_seconds{{{ORG}}})"
END = f"max by (organization) (credit_billing_period_end_timestamp_seconds{{{ORG}}})"
ELAPSED = f"clamp_min(time() - {START}, 3600)"
LENGTH = f"({END} - {START})"
ORG_PROJECTED = f"{ORG_USED} / {ELAPSED} * {LENGTH}"
SCOPE_PROJECTED = (
    f"{USED} / on (organization) group_left () {ELAPSED} * on (organization) group_left () {LENGTH}"
)
# Time to exhaustion: the series the alert rules record (alert_rules/rules_budgets.py,
# rules_pools.py), so that the dashboard, the alerts' "Runs out" and `credit-exporter
# report --prometheus` show one number. Its `burn` label says which burn it assumes.
RULES = config.rule_names()
BURN = RULES.BURN_LABEL
WINDOW = config.settings()["projection"]["window"]
BASES = (
    f"{BURN}={WINDOW}: at the burn of the last {WINDOW}; "
    f"{BURN}={RULES.PERIOD_AVERAGE}: at the billing period's average pace, while less "
    f"than {WINDOW} of the period is known (a young period, or a Prometheus younger than "
    f"{WINDOW})"
)
HOURS_TO_LIMIT = f"max by ({SCOPE}, {BURN}) ({RULES.BUDGET_EXHAUSTION}{{{BSEL}}}) / 3600"
HOURS_TO_EMPTY = f"max by (pool, {BURN}) ({RULES.POOL_EXHAUSTION}{{{ORG}}}) / 3600"
HOURS_STEPS = steps(("red", None), ("orange", 24), ("yellow", 72), ("green", 168))


def alert_thresholds() -> str:
    """The threshold (in %) of each firing budget or pool level alert: a budget's is
    its recorded level (its ladder from the billing database, else the default,
    so its alerts carry no threshold label), a pool's its configured level."""
    settings = config.settings()

    def firing(alertname: str) -> str:
        return f'ALERTS{{alertstate="firing", {ORG}, alertname=~"{alertname}"}}'

    levels = "|".join(settings["budget_levels"])
    named = f"CreditBudget({levels})"
    budget = (
        f'max without (level) (\n    label_replace({firing(named)}, "level", "$1", '
        f'"alertname", "CreditBudget(.+)") * 0\n  + on (organization, scope, scope_id, level) '
        f"group_left () (100 * {RULES.BUDGET_THRESHOLD})\n)"
    )
    pools = [f"{firing(f'CreditPool{level}')} * 0 + {spec['threshold']:g}"
             for level, spec in settings["pool_levels"].items()]  # fmt: skip
    return "\n  or\n  ".join([budget, *pools])


# Budget scopes of the contract (catalog.BUDGET_SCOPES, in its order; a test
# compares them), as (shown, label value): a scope whose value is not a word is
# spelt out in the variable and in the tables' Scope column.
SCOPES = (("organization", "organization"), ("department", "department"),
          ("project", "project"), ("user", "user"), ("team", "team"),
          ("API key", "api_key"))  # fmt: skip
SPELT_OUT = [(text, value) for text, value in SCOPES if text != value]
SCOPE_NAMES = [{"type": "value", "options": {value: {"text": text, "index": i}
                for i, (text, value) in enumerate(SPELT_OUT)}}]  # fmt: skip
QUOTAS = (
    ("text_queries", "Text queries", COUNT, 1),
    ("voice_seconds", "Voice minutes", MINUTES, 60),
    ("concurrent_calls", "Concurrent calls", COUNT, 1),
    ("phone_numbers", "Phone numbers", COUNT, 1),
    ("human_agent_seats", "Human-agent seats", COUNT, 1),
)


def variables() -> list[dict]:
    return [
        prometheus_variable(),
        organization_variable(),
        custom_variable(
            "scope", "Budget scope", SCOPES, default=[value for _, value in SCOPES],
            multi=True, include_all=True, all_value=".*",
            description="Budget scopes to show: organization, department, project, user, "
            "and an LLM gateway's team and API key (virtual key).",
        ),
        query_variable(
            "scope_id", "Scope",
            'label_values(credit_budget_used_credits{organization="$organization", '
            'scope=~"$scope"}, scope_id)',
            multi=True, include_all=True, all_value=".*",
            description="Department, project slug or user e-mail of a budget; for a gateway, "
            "the team alias (else its id) or the API key alias (else the start of its hash).",
        ),
    ]  # fmt: skip


def quota_tile(quota: str, title: str, unit: str, divisor: int) -> object:
    sel = f'{ORG}, quota="{quota}"'
    scale = f" / {divisor}" if divisor != 1 else ""
    return stat(
        title,
        f"Plan health: {title.lower()} used this period against the plan's allotment. "
        "Yellow from 75%, orange from 90%, red at 100%. Empty when the plan has no such "
        "quota.",
        [prom(f"100 * sum(credit_plan_quota_used{{{sel}}}) / "
              f"sum(credit_plan_quota_limit{{{sel}}} > 0)", "% used"),
         prom(f"sum(credit_plan_quota_used{{{sel}}}){scale}", "used"),
         prom(f"sum(credit_plan_quota_limit{{{sel}}} > 0){scale}", "allotted")],
        PERCENT, thresholds=BUDGET_PERCENT, color_mode="background",
        text_mode="value_and_name", no_value="not in plan", orientation="horizontal",
        overrides=[override("byFrameRefID", ref, unit=unit,
                            color={"mode": "fixed", "fixedColor": "transparent"})
                   for ref in ("B", "C")],
        width=4, height=6, seeds=f"004 Plan-health tile: {title}",
    )  # fmt: skip


def capacity_tile(metric: str, title: str, seeds: str) -> object:
    return stat(
        title,
        f"{title} in use against what the plan allows. Yellow from 75%, orange from 90%, "
        "red at 100%.",
        [prom(f"100 * sum(credit_{metric}_used{{{ORG}}}) / "
              f"sum(credit_{metric}_limit{{{ORG}}} > 0)", "% used"),
         prom(f"sum(credit_{metric}_used{{{ORG}}})", "used"),
         prom(f"sum(credit_{metric}_limit{{{ORG}}})", "allowed")],
        PERCENT, thresholds=BUDGET_PERCENT, color_mode="background",
        text_mode="value_and_name", orientation="horizontal",
        overrides=[override("byFrameRefID", ref, unit=COUNT,
                            color={"mode": "fixed", "fixedColor": "transparent"})
                   for ref in ("B", "C")],
        width=4, height=6, seeds=seeds,
    )  # fmt: skip


def items() -> list:
    usage = link("Credit usage of ${__field.labels.organization}", UID_USAGE,
                 "var-organization=${organization}")  # fmt: skip
    return [
        row("Organization budget"),
        gauge(
            "Organization budget used",
            "Credits used this billing period as a share of the organization's monthly "
            "limit. The 75/90/100% colours are the alert thresholds.",
            [prom(f"100 * {ORG_USED} / {ORG_LIMIT}", "budget used")],
            PERCENT, thresholds=BUDGET_PERCENT, max_value=120, width=4, height=7,
            links=[usage], seeds="003 Track consumption against allocation",
        ),
        stat(
            "Budget status",
            "The organization budget this period: credits used, the limit and what remains "
            "(negative once the limit is passed).",
            [prom(ORG_USED, "used"), prom(ORG_LIMIT, "limit"),
             prom(f"{ORG_LIMIT} - {ORG_USED}", "remaining")],
            CREDITS, text_mode="value_and_name", orientation="horizontal", width=5, height=7,
            seeds="003 Budget Dashboard (total, used, remaining)",
        ),
        stat(
            "Projected end-of-period spend",
            "Credits the organization will have used when the billing period ends if it "
            "keeps the period's average pace, and that figure as a share of the limit.",
            [prom(ORG_PROJECTED, "projected"),
             prom(f"100 * {ORG_PROJECTED} / {ORG_LIMIT}", "of limit")],
            CREDITS, text_mode="value_and_name", orientation="horizontal",
            overrides=[override("byFrameRefID", "B", unit=PERCENT, thresholds=BUDGET_PERCENT,
                                color={"mode": "thresholds"})],
            width=5, height=7, seeds="003 Projected End-of-Month",
        ),
        stat(
            "Hours until credits run out",
            "Per credit pool, the hours until its balance is 0 at its spend rate: the "
            f"time to exhaustion the alert rules record ({RULES.POOL_EXHAUSTION}), the "
            "one the pool alerts' 'Runs out' and the report show. The name says the rate "
            f"it assumes: {BURN}={WINDOW} over the last {WINDOW}, "
            f"{BURN}={RULES.PARTIAL_WINDOW} over the less than {WINDOW} Prometheus holds. "
            "A pool that is not spending or is empty is not listed. Red under a day.",
            [prom(HOURS_TO_EMPTY, f"{{{{pool}}}} ({{{{{BURN}}}}})")],
            HOURS, thresholds=HOURS_STEPS, decimals=0, width=5, height=7,
            seeds="004 forecasting when you'll need to top up",
        ),
        stat(
            "Billing period elapsed",
            "How far into the billing period the organization is: compare with the budget "
            "used.",
            [prom(f"100 * (time() - {START}) / {LENGTH}", "elapsed")],
            PERCENT, thresholds=NEUTRAL, decimals=0, width=5, height=7,
            seeds="001 Next Billing Date",
        ),
        row("Budgets by scope"),
        bargauge(
            "Budget used by scope",
            "Credits used this period as a share of each budget's limit: one bar per budget "
            "that has a limit, named <scope>: <budget>, the scope being organization, "
            "department, project, user, team or api_key. Click a bar for the Usage dashboard.",
            [prom(f"sort_desc(100 * {USED} / {LIMIT})", "{{scope}}: {{scope_id}}")],
            PERCENT, thresholds=BUDGET_PERCENT, max_value=120, links=[usage], width=12,
            height=12, seeds="003 Budgets by department/user/project with 75/90/100%",
        ),
        bargauge(
            "Hours until budget limit by scope",
            "Hours until each budget reaches its limit: the time to exhaustion the alert "
            f"rules record ({RULES.BUDGET_EXHAUSTION}), the one the budget alerts' 'Runs "
            f"out' and the report show. The name ends with the burn it assumes: {BASES}. "
            "Budgets that are not spending or are already over their limit are not listed.",
            [prom(f"sort({HOURS_TO_LIMIT})", f"{{{{scope}}}}: {{{{scope_id}}}} ({{{{{BURN}}}}})")],
            HOURS, thresholds=HOURS_STEPS, max_value=None, decimals=0, width=12, height=12,
            seeds="003 hours until exhaustion per budget",
        ),
        table(
            "Budgets by scope",
            "Every budget of every scope (organization, department, project, user, team, "
            "API key): credits used this period, the limit (empty when it has none), the "
            "share used (coloured 75/90/100%), the projected end-of-period use and the "
            "hours until the limit of 'Hours until budget limit by scope' (which names "
            "the burn each assumes).",
            [prom(USED, ref="A"), prom(LIMIT, ref="B"),
             prom(f"100 * {USED} / {LIMIT}", ref="C"), prom(SCOPE_PROJECTED, ref="D"),
             prom(f"max without ({BURN}) ({HOURS_TO_LIMIT})", ref="E")],
            CREDITS,
            transformations=table_columns(
                {"scope": "Scope", "scope_id": "Budget", "Value #A": "Used",
                 "Value #B": "Limit", "Value #C": "Used %", "Value #D": "Projected",
                 "Value #E": "Hours to limit"},
                hide=("organization",)),
            overrides=[
                override("byName", "Scope", mappings=SCOPE_NAMES),
                override("byName", "Used %", unit=PERCENT, thresholds=BUDGET_PERCENT,
                         **{"custom.cellOptions": {"type": "color-background"}}),
                override("byName", "Hours to limit", unit=HOURS, decimals=0),
            ],
            sort_by="Used %", width=24, height=10, seeds="003 Monthly credit budget tracking",
        ),
        row("Plan health"),
        *[quota_tile(*q) for q in QUOTAS],
        capacity_tile("agent_slots", "Agent slots", "001 Chatbots used (plan health)"),
        row("Seats, auto-recharge and top-ups"),
        capacity_tile("seats", "Team-member seats", "001 Team members used (plan health)"),
        stat(
            "Auto-recharge",
            "Whether auto-recharge buys top-up credits when the balance falls below the "
            "threshold.",
            [prom(f"max(credit_auto_recharge_enabled{{{ORG}}})", "auto-recharge")],
            COUNT, mappings=value_map({"1": ("On", "green"), "0": ("Off", "orange")}),
            no_value="not configured", width=4, seeds="001 Auto-recharge",
        ),
        stat(
            "Auto-recharge settings",
            "Balance below which auto-recharge buys a top-up, and how many credits it buys.",
            [prom(f"max(credit_auto_recharge_threshold_credits{{{ORG}}})", "below"),
             prom(f"max(credit_auto_recharge_amount_credits{{{ORG}}})", "buys")],
            CREDITS, text_mode="value_and_name", width=5, seeds="001 Auto-recharge",
        ),
        stat(
            "Top-ups in range",
            "Top-up purchases in the range, manual and automatic.",
            [prom(f"sum by (trigger) (increase(credit_topups_total{{{ORG}}}[$__range]))",
                  "{{trigger}}")],
            COUNT, text_mode="value_and_name", no_value="0", decimals=0, width=5,
            seeds="001 top-ups",
        ),
        stat(
            "Top-up credits in range",
            "Credits added to the top-up pool by purchases in the range.",
            [prom("sum by (trigger) (increase(credit_topup_credits_total"
                  f"{{{ORG}}}[$__range]))", "{{trigger}}")],
            CREDITS, text_mode="value_and_name", no_value="0", width=5, seeds="001 top-ups",
        ),
        timeseries(
            "Balance and allocation by pool",
            "Credits left in each pool over time (solid) against its allocation this period "
            "(dashed): top-ups show as steps up, the period refill as a reset.",
            [prom(f"sum by (pool) (credit_balance_credits{{{ORG}}})", "{{pool}} balance"),
             prom(f"sum by (pool) (credit_allocation_credits{{{ORG}}})",
                  "{{pool}} allocation")],
            CREDITS, interval="1m", width=24, height=8,
            overrides=[override("byFrameRefID", "B", **{
                "custom.lineStyle": {"fill": "dash", "dash": [10, 10]}})],
            seeds="000 watch your balance and plan top-ups",
        ),
        row("Alerts"),
        table(
            "Firing budget alerts",
            "Alerts firing now for this organization (Prometheus ALERTS series of the rules "
            "in alert_rules/: budgets, pools, quotas, runaway agents): which scope and which "
            "threshold: a budget's level from its ladder in the billing database, or the "
            "default. Pending alerts (still in their for: window) are not listed.",
            [prom(f'ALERTS{{alertstate="firing", {ORG}}}', ref="A"),
             prom(alert_thresholds(), ref="B")],
            NONE,
            transformations=table_columns(
                {"alertname": "Alert", "severity": "Severity", "Value #B": "Threshold",
                 "scope": "Scope", "scope_id": "Budget", "pool": "Pool", "quota": "Quota",
                 "project": "Project", "agent": "Agent"},
                hide=("__name__", "alertstate", "Value #A", "instance", "job", "organization",
                      "threshold")),
            overrides=[override("byName", "Scope", mappings=SCOPE_NAMES),
                       override("byName", "Threshold", unit=PERCENT, decimals=0)],
            width=24, height=7, seeds="003 Usage alerts at 75%, 90% and 100%",
        ),
    ]  # fmt: skip


def build() -> dict:
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Budgets against their limits per scope with the 75/90/100% alert "
        "colours, projections, plan-health tiles, auto-recharge, top-ups and firing alerts.",
        items=items(),
        variables=variables(),
        time_from="now-30d",
        refresh="1m",
    )

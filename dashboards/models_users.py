"""Models, users and performance (seed 003).

Usage by model with its credit multiplier and tier, plan versus additional
credits, the timeline at an hour/day/week/month granularity, peak hours and
weekdays, the per-user table and credit efficiency, response times and success
rates per model, user ratings, and credits by task category.
"""

from __future__ import annotations

from dashboards.common import (
    COUNT,
    CREDITS,
    CREDITS_PER_PROMPT,
    ORG,
    RATIO,
    REQUESTS_BY_USER,
    SECONDS,
    SPENT_BY_USER,
    UID_MODELS,
    average_rating,
    bargauge,
    dashboard,
    display_names,
    interval_variable,
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
    table_columns,
    textbox_variable,
    timeseries,
)

UID = UID_MODELS
TITLE = "Models, users and performance"
M = "gen_ai_request_model"
MSEL = f'{ORG}, {M}=~"$model"'
SPENT = f"credit_spent_by_model_credits_total{{{MSEL}}}"
PROMPTS = f"credit_model_requests_total{{{MSEL}}}"
TIER = f"group by ({M}, tier) (credit_model_multiplier_ratio)"
TOP_USERS = (
    f"topk(50, sum by (user, department) (sum_over_time({SPENT_BY_USER}{{{ORG}}}[$__range])))"
)
USER_CREDITS = f"sum by (user) (sum_over_time({SPENT_BY_USER}{{{ORG}}}[$__range]))"
USER_PROMPTS = f"sum by (user) (sum_over_time({REQUESTS_BY_USER}{{{ORG}}}[$__range]))"
USER_EFFICIENCY = f"{USER_CREDITS} / ({USER_PROMPTS} > 0)"
RATING_STEPS = steps(("red", None), ("yellow", 4.0), ("green", 4.5))


def by_model(expr: str) -> str:
    return f"sum by ({M}) (increase({expr}[$__range]))"


MODEL_CREDITS = by_model(SPENT)
MODEL_PROMPTS = by_model(PROMPTS)
MODEL_EFFICIENCY = f"{MODEL_CREDITS} / ({MODEL_PROMPTS} > 0)"
MODEL_LATENCY = (
    f"{by_model(f'credit_response_duration_seconds_sum{{{MSEL}}}')} / "
    f"({by_model(f'credit_response_duration_seconds_count{{{MSEL}}}')} > 0)"
)
MODEL_SUCCESS = (
    f'sum by ({M}) (increase(credit_model_requests_total{{{MSEL}, outcome="success"}}'
    f"[$__range])) / ({MODEL_PROMPTS} > 0)"
)

# The organization's billed usage events of the selected models in the time range,
# shared by the peak-hour and weekday queries (indented for their subqueries).
MODEL_USAGE_IN_RANGE = """\
  FROM usage_events e
  JOIN organizations o ON o.id = e.organization_id
  JOIN models m ON m.id = e.model_id
  WHERE o.slug = '$organization'
    AND m.slug ~ '^${model:regex}$'
    AND $__timeFilter(e.occurred_at)
    AND NOT e.playground"""

PEAK_HOURS_SQL = f"""
SELECT lpad(h::text, 2, '0') || ':00' AS "Hour",
       coalesce(s.credits, 0)
         / greatest(extract(epoch FROM ($__timeTo()::timestamptz - $__timeFrom()::timestamptz))
                    / 86400, 1) AS "Credits per day at this hour"
FROM generate_series(0, 23) AS h
LEFT JOIN (
  SELECT extract(hour FROM e.occurred_at AT TIME ZONE '$timezone')::int AS hour,
         sum(e.credits) AS credits
{MODEL_USAGE_IN_RANGE}
  GROUP BY 1
) s ON s.hour = h
ORDER BY h
"""

PEAK_WEEKDAYS_SQL = f"""
WITH days AS (
  SELECT extract(isodow FROM d)::int AS dow, count(*) AS n
  FROM generate_series(date_trunc('day', $__timeFrom()::timestamptz AT TIME ZONE '$timezone'),
                       $__timeTo()::timestamptz AT TIME ZONE '$timezone',
                       interval '1 day') AS d
  GROUP BY 1
),
usage AS (
  SELECT extract(isodow FROM e.occurred_at AT TIME ZONE '$timezone')::int AS dow,
         sum(e.credits) AS credits
{MODEL_USAGE_IN_RANGE}
  GROUP BY 1
)
SELECT (ARRAY['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday',
              'Sunday'])[w] AS "Weekday",
       coalesce(u.credits, 0) / greatest(coalesce(d.n, 0), 1) AS "Credits per day"
FROM generate_series(1, 7) AS w
LEFT JOIN days d ON d.dow = w
LEFT JOIN usage u ON u.dow = w
ORDER BY w
"""

RESPONSE_BY_TIME_OF_DAY_SQL = """
SELECT CASE p WHEN 1 THEN 'Peak hours (Mon-Fri 9-17)'
              WHEN 2 THEN 'Off-peak hours (Mon-Fri)'
              ELSE 'Weekend' END AS "Period",
       avg_latency AS "Average response time"
FROM (
  SELECT CASE WHEN extract(isodow FROM t) >= 6 THEN 3
              WHEN extract(hour FROM t) BETWEEN 9 AND 16 THEN 1
              ELSE 2 END AS p,
         avg(latency_seconds) AS avg_latency
  FROM (
    SELECT e.occurred_at AT TIME ZONE '$timezone' AS t, e.latency_seconds
    FROM usage_events e
    JOIN organizations o ON o.id = e.organization_id
    JOIN models m ON m.id = e.model_id
    WHERE o.slug = '$organization'
      AND m.slug ~ '^${model:regex}$'
      AND $__timeFilter(e.occurred_at)
      AND NOT e.playground
      AND e.credits >= 0
  ) AS events
  GROUP BY 1
) AS periods
ORDER BY p
"""


def variables() -> list[dict]:
    return [
        prometheus_variable(),
        postgres_variable(),
        organization_variable(),
        query_variable(
            "model", "Model",
            f'label_values(credit_spent_by_model_credits_total{{organization="$organization"}}, '
            f"{M})",
            multi=True, include_all=True, all_value=".*",
            description="Filter by AI model (gen_ai_request_model).",
        ),
        interval_variable(
            "granularity", "Granularity", ["1h", "1d", "1w", "30d"], "1d",
            description="Timeline buckets: by hour, day, week or month (30 days).",
        ),
        textbox_variable(
            "timezone", "Time zone", "UTC",
            description="Time zone (PostgreSQL name, e.g. Europe/Berlin) for peak hours, "
            "weekdays and time-of-day response times.",
        ),
    ]  # fmt: skip


def items() -> list:
    tier_names = display_names({"premium": "Premium (2x-5x)", "standard": "Standard (1x)",
                                "economy": "Economy (0.1x-0.5x)"})  # fmt: skip
    return [
        row("Usage by model"),
        table(
            "Usage by model",
            "Prompts and credits per model in the range, with the model's credit multiplier "
            "(credits per prompt relative to a 1x model) and tier.",
            [prom(MODEL_PROMPTS, ref="A"),
             prom(MODEL_CREDITS, ref="B"),
             prom(f"max by ({M}, gen_ai_provider_name, tier) (credit_model_multiplier_ratio"
                  f'{{{M}=~"$model"}}) and on ({M}) {MODEL_CREDITS}', ref="C"),
             prom(MODEL_EFFICIENCY, ref="D")],
            COUNT,
            transformations=table_columns({
                M: "Model", "gen_ai_provider_name": "Provider", "tier": "Tier",
                "Value #C": "Multiplier", "Value #A": "Prompts", "Value #B": "Credits",
                "Value #D": "Credits per prompt"}),
            overrides=[override("byName", "Multiplier", unit="suffix:x", decimals=2),
                       override("byName", "Credits", unit=CREDITS),
                       override("byName", "Credits per prompt", unit=CREDITS_PER_PROMPT,
                                decimals=2)],
            sort_by="Credits", width=14, height=9,
            seeds="003 Usage by Model with multipliers (Model Usage tree)",
        ),
        bargauge(
            "Credits by model",
            "Credits each model consumed in the range, with its multiplier tier.",
            [prom(f"sort_desc({MODEL_CREDITS} * on ({M}) group_left (tier) {TIER})",
                  "{{gen_ai_request_model}} ({{tier}})")],
            CREDITS, width=10, height=9, seeds="003 Usage by Model",
        ),
        piechart(
            "Credits by multiplier tier",
            "Credits of the range by model tier: premium (2x-5x), standard (1x), economy "
            "(0.1x-0.5x).",
            [prom(f"sum by (tier) ({MODEL_CREDITS} * on ({M}) group_left (tier) {TIER})",
                  "{{tier}}")],
            CREDITS, overrides=tier_names, width=8, height=8,
            seeds="003 Breakdown by Model Multiplier",
        ),
        piechart(
            "Plan versus additional credits",
            "Credits drawn from the plan grant versus additional (top-up) credits in the "
            "range.",
            [prom("sum by (pool) (increase(credit_spent_by_pool_credits_total"
                  f"{{{ORG}}}[$__range]))", "{{pool}}")],
            CREDITS, overrides=display_names({"plan": "Plan credits",
                                              "topup": "Additional credits (top-up)"}),
            width=8, height=8, seeds="003 Plan Credits Used vs Additional Credits Used",
        ),
        stat(
            "Average credits per prompt",
            "Credits per prompt over the range, all selected models.",
            [prom(f"sum(increase({SPENT}[$__range])) / sum(increase({PROMPTS}[$__range]))",
                  "credits per prompt")],
            CREDITS_PER_PROMPT, decimals=2, width=8, height=8,
            seeds="003 Average Credits per Prompt",
        ),
        row("Timeline"),
        timeseries(
            "Credit usage timeline",
            "Credits per bucket by model; the Granularity variable sets the bucket (hour, "
            "day, week, month).",
            [prom(f"sum by ({M}) (increase({SPENT}[$__interval]))", "{{gen_ai_request_model}}")],
            CREDITS, bars=True, stacked=True, interval="$granularity", width=24, height=9,
            legend="table", legend_calcs=("sum", "max"),
            seeds="003 Timeline with hour/day/week/month granularity",
        ),
        bargauge(
            "Peak hours",
            "Average credits per day spent in each hour of the day over the range (time zone "
            "from the variable), from the billing database: when your team uses credits "
            "most.",
            [sql(PEAK_HOURS_SQL)], CREDITS, values=True, width=12, height=12,
            seeds="003 Peak hours",
        ),
        bargauge(
            "Peak weekdays",
            "Average credits per day on each weekday over the range, from the billing "
            "database.",
            [sql(PEAK_WEEKDAYS_SQL)], CREDITS, values=True, width=12, height=12,
            seeds="003 Most active days / weekly patterns",
        ),
        row("Users"),
        table(
            "Usage by user",
            "The 50 team members with the most credits in the range: prompts, the model "
            "they spent most on, credits and average credits per prompt.",
            [prom(TOP_USERS, ref="A"),
             prom(f"{USER_PROMPTS} and on (user) {TOP_USERS}", ref="B"),
             prom(f"topk by (user) (1, sum by (user, {M}) (increase("
                  f"credit_spent_by_user_credits_total{{{ORG}}}[$__range]))) "
                  f"and on (user) {TOP_USERS}", ref="C"),
             prom(f"{USER_EFFICIENCY} and on (user) {TOP_USERS}", ref="D")],
            COUNT,
            transformations=table_columns(
                {"user": "User", "department": "Department", "Value #B": "Prompts",
                 M: "Top model", "Value #A": "Credits used",
                 "Value #D": "Avg credits per prompt"}, hide=("Value #C",)),
            overrides=[override("byName", "Credits used", unit=CREDITS),
                       override("byName", "Avg credits per prompt", unit=CREDITS_PER_PROMPT,
                                decimals=2)],
            sort_by="Credits used", width=14, height=10,
            seeds="003 Usage by User table (prompts, top model, credits, avg per prompt)",
        ),
        bargauge(
            "Credits per prompt by user",
            "Credit efficiency: the five team members with the highest and the five with the "
            "lowest credits per prompt in the range.",
            [prom(f"sort_desc(topk(5, {USER_EFFICIENCY}) or bottomk(5, {USER_EFFICIENCY}))",
                  "{{user}}")],
            CREDITS_PER_PROMPT, decimals=2, width=10, height=10,
            seeds="003 Users with highest/lowest credit efficiency",
        ),
        row("Performance"),
        table(
            "Model comparison",
            "Per model over the range: average and p95 response time, success rate, credits "
            "per prompt, user rating and multiplier.",
            [prom(MODEL_LATENCY, ref="A"),
             prom(f"histogram_quantile(0.95, sum by ({M}, le) (increase("
                  f"credit_response_duration_seconds_bucket{{{MSEL}}}[$__range])))", ref="B"),
             prom(MODEL_SUCCESS, ref="C"),
             prom(MODEL_EFFICIENCY, ref="D"),
             prom(average_rating(MSEL, by=M), ref="E"),
             prom(f'max by ({M}) (credit_model_multiplier_ratio{{{M}=~"$model"}}) '
                  f"and on ({M}) {MODEL_PROMPTS}", ref="F")],
            SECONDS,
            transformations=table_columns({
                M: "Model", "Value #A": "Avg response time", "Value #B": "p95 response time",
                "Value #C": "Success rate", "Value #D": "Credits per prompt",
                "Value #E": "User rating", "Value #F": "Multiplier"}),
            overrides=[override("byName", "Success rate", unit=RATIO, decimals=1),
                       override("byName", "Credits per prompt", unit=CREDITS_PER_PROMPT,
                                decimals=2),
                       override("byName", "User rating", unit="suffix: / 5", decimals=2),
                       override("byName", "Multiplier", unit="suffix:x", decimals=2)],
            sort_by="Multiplier", width=24, height=9,
            seeds="003 Model comparison table (response time, success rate, credits per "
            "prompt, user rating)",
        ),
        bargauge(
            "Average response time by model",
            "Mean response time per model over the range, fastest first.",
            [prom(f"sort({MODEL_LATENCY})", "{{gen_ai_request_model}}")],
            SECONDS, thresholds=steps(("green", None), ("yellow", 3), ("red", 5)),
            width=8, height=9, seeds="003 Response times per model (fastest/slowest)",
        ),
        timeseries(
            "Response time over time",
            "Median, 95th percentile and mean response time of the selected models: "
            "historical trends and time-of-day patterns.",
            [prom("histogram_quantile(0.5, sum by (le) (rate("
                  f"credit_response_duration_seconds_bucket{{{MSEL}}}[$__rate_interval])))",
                  "p50"),
             prom("histogram_quantile(0.95, sum by (le) (rate("
                  f"credit_response_duration_seconds_bucket{{{MSEL}}}[$__rate_interval])))",
                  "p95"),
             prom(f"sum(rate(credit_response_duration_seconds_sum{{{MSEL}}}[$__rate_interval]))"
                  f" / sum(rate(credit_response_duration_seconds_count{{{MSEL}}}"
                  "[$__rate_interval]))", "mean")],
            SECONDS, interval="5m", width=8, height=9,
            seeds="003 Historical response time trends",
        ),
        bargauge(
            "Response time by time of day",
            "Mean response time at peak hours (Mon-Fri 9-17), off-peak and at weekends over "
            "the range (time zone from the variable), from the billing database.",
            [sql(RESPONSE_BY_TIME_OF_DAY_SQL)], SECONDS, values=True, width=8, height=9,
            thresholds=steps(("green", None), ("yellow", 3), ("red", 5)),
            seeds="003 Performance by time (peak, off-peak, weekend)",
        ),
        bargauge(
            "Success rate by model",
            "Share of prompts that succeeded per model over the range.",
            [prom(f"sort({MODEL_SUCCESS})", "{{gen_ai_request_model}}")],
            RATIO, min_value=0.8, max_value=1, decimals=1,
            thresholds=steps(("red", None), ("yellow", 0.95), ("green", 0.97)),
            width=8, height=9, seeds="003 Success rates per model",
        ),
        bargauge(
            "User rating by model",
            "Mean answer rating (1-5) per model over the range.",
            [prom(f"sort_desc({average_rating(MSEL, by=M)})", "{{gen_ai_request_model}}")],
            "suffix: / 5", min_value=1, max_value=5, decimals=2, thresholds=RATING_STEPS,
            width=8, height=9, seeds="003 User Rating per model",
        ),
        row("Tasks and efficiency"),
        piechart(
            "Credits by task category",
            "What the team spends credits on: credits of the range by task category.",
            [prom(f"sum by (task_category) (increase({SPENT}[$__range]))",
                  "{{task_category}}")],
            CREDITS, width=8, height=9, seeds="003 Task categories (share of credits)",
        ),
        bargauge(
            "Credits per prompt by model",
            "Model efficiency: credits per prompt over the range, cheapest first.",
            [prom(f"sort({MODEL_EFFICIENCY})", "{{gen_ai_request_model}}")],
            CREDITS_PER_PROMPT, decimals=2, width=8, height=9,
            seeds="003 Model efficiency analysis",
        ),
        bargauge(
            "Most credit-efficient task and model pairs",
            "The ten task/model pairs with the fewest credits per prompt over the range (the "
            "seed's efficiency leaderboard).",
            [prom(f"sort(bottomk(10, sum by (task_category, {M}) (increase({SPENT}[$__range]))"
                  f" / (sum by (task_category, {M}) (increase({PROMPTS}[$__range])) > 0)))",
                  "{{task_category}} ({{gen_ai_request_model}})")],
            CREDITS_PER_PROMPT, decimals=2, width=8, height=9,
            seeds="003 Credit Efficiency Leaderboard",
        ),
    ]  # fmt: skip


def build() -> dict:
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Which models and team members use the credits, how fast and how well "
        "the models answer, and when the team works. Export any panel with Inspect > Data "
        "(CSV) or the dashboard JSON.",
        items=items(),
        variables=variables(),
        time_from="now-30d",
        refresh="",
    )

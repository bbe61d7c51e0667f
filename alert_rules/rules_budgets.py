"""The credit-budgets group: 75/90/100% of every budget scope, and its projection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules_settings import (
    BUDGET_EXHAUSTION,
    BUDGET_KEY,
    BUDGET_RATIO,
    PERIOD_AVERAGE,
    RESET_GUARD,
    seconds,
)
from rules_templates import Links, level_rules, percent, q, runs_out, scope_noun, selector, when


def budget_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    projection = settings["projection"]
    window = projection["window"]
    window_s = seconds(window)
    burn = f"organization_scope_scope_id:credit_budget_used_credits:rate{window}"
    key = ", ".join(BUDGET_KEY)
    sel = selector(BUDGET_KEY)
    used = q(f"max(credit_budget_used_credits{sel})", BUDGET_KEY)
    limit = q(f"max(credit_budget_limit_credits{sel})", BUDGET_KEY)
    period_start = "max(credit_billing_period_start_timestamp_seconds{organization=%q})"
    # a period younger than the window: the burn since it began, and said so
    burn_since_start = q(
        f"3600 * max(credit_budget_used_credits{sel}) / (time() - {period_start})",
        [*BUDGET_KEY, "organization"],
        unit=(
            " credits/hour since the billing period began "
            + q(f"time() - {period_start}", ["organization"], fmt="humanizeDuration")
            + f" ago (less than {window} of data)"
        ),
        missing="unknown (no usage or billing period data)",
    )
    burn_h = q(
        f"3600 * {burn}{sel}",
        BUDGET_KEY,
        unit=f" credits/hour over the last {window}",
        missing=burn_since_start,
    )
    burn_per_hour = q(f"3600 * {burn}{sel}", BUDGET_KEY, unit=" credits/hour")
    period_left = q(
        "max(credit_billing_period_end_timestamp_seconds{organization=%q}) - time()",
        ["organization"], fmt="humanizeDuration",
    )  # fmt: skip
    # "the organization budget of acme", "the team budget ml-research of acme",
    # "the API key budget ci-bot of acme"
    noun = scope_noun()
    who = (
        '{{ if eq $labels.scope "organization" }}the organization budget of '
        f"{{{{ $labels.organization }}}}{{{{ else }}}}the {noun} budget "
        "{{ $labels.scope_id }} of {{ $labels.organization }}{{ end }}"
    )
    who_capital = who.replace("}}the ", "}}The ")
    who_short = f"{{{{ $labels.organization }}}} {noun} {{{{ $labels.scope_id }}}}"
    dashboard = links.dashboard("budgets", "organization", "scope", "scope_id")
    runs_out_text = runs_out(
        f"{BUDGET_EXHAUSTION}{sel}",
        BUDGET_KEY,
        missing=when(
            f"{BUDGET_RATIO}{sel} >= 1",
            BUDGET_KEY,
            "never: already at or over its limit",
            when(
                f"{burn}{sel}",
                BUDGET_KEY,
                f"never: not burning (no spend in the last {window})",
                when(
                    f"max(credit_budget_used_credits{sel}) <= 0",
                    BUDGET_KEY,
                    "never: not burning (nothing used this billing period)",
                    "unknown (no usage or billing period data)",
                ),
            ),
        ),
        bases={
            window: f"at the burn of the last {window}",
            PERIOD_AVERAGE: "at the billing period's average pace (less than "
            f"{window} of this period's usage is known)",
        },
    )
    used_now = f"max by ({key}) (credit_budget_used_credits)"
    start_now = "max by (organization) (credit_billing_period_start_timestamp_seconds)"
    remaining = f"((max by ({key}) (credit_budget_limit_credits > 0) - {used_now}) > 0)"
    # the period's average pace, credits/second
    pace = f"{used_now} / on (organization) group_left () (time() - {start_now})"
    # the burn of the window cannot be known: Prometheus holds no sample from a
    # window ago, or the period is younger than the window
    used_then = f"max by ({key}) (credit_budget_used_credits offset {window})"
    window_unknown = (
        f"{used_now} unless on ({key}) {used_then}\n"
        f"    or on ({key})\n"
        f"    {used_now} and on (organization) ({start_now} > time() - {window_s})"
    )
    # a new period's timestamps came before its usage reset (two queries, two
    # scrapes): the old period's usage over the new period's seconds is no pace.
    # Over RESET_GUARD, not the window: a scrape or two apart, and resets() reads
    # every sample of every budget in its range at every evaluation.
    not_reset_yet = (
        f"max by ({key}) (resets(credit_budget_used_credits[{RESET_GUARD}])) == 0\n"
        "    and on (organization)\n"
        "    max by (organization) "
        f"(changes(credit_billing_period_start_timestamp_seconds[{RESET_GUARD}])) > 0"
    )
    rules: list[dict[str, Any]] = [
        {
            "record": BUDGET_RATIO,
            "expr": (
                f"max by ({key}) (credit_budget_used_credits)\n"
                "  /\n"
                f"max by ({key}) (credit_budget_limit_credits > 0)\n"
            ),
        },
        {
            # Growth of the period's usage over the window, per second. Only when
            # the whole window lies in the current billing period: across a
            # period start the difference would be meaningless (negative). Never
            # negative either when the usage resets a scrape before the period's
            # timestamps move: no value then.
            "record": burn,
            "expr": (
                "(\n"
                "  (\n"
                f"      max by ({key}) (credit_budget_used_credits)\n"
                f"    -\n"
                f"      max by ({key}) (credit_budget_used_credits offset {window})\n"
                "  ) >= 0\n"
                f") / {window_s}\n"
                "and on (organization)\n"
                "  (max by (organization) (credit_billing_period_start_timestamp_seconds)"
                f" <= time() - {window_s})\n"
            ),
        },
        {
            # Seconds until the limit, labelled with the burn it assumes: `burn` =
            # the window when the whole window lies in the period and Prometheus
            # holds it, else PERIOD_AVERAGE. None for a budget that is not burning
            # or is already at or over its limit, and none in the scrape where a new
            # period's timestamps or usage came alone (not_reset_yet, the burn's >= 0).
            "record": BUDGET_EXHAUSTION,
            "expr": (
                f"label_replace(\n  {remaining}\n  / ({burn} > 0),\n"
                f'  "burn", "{window}", "", ""\n)\n'
                "or\n"
                f"label_replace(\n  {remaining}\n  / ({pace} > 0)\n"
                f"  and on ({key}) ({window_unknown})\n"
                f"  unless on ({key}) ({not_reset_yet}),\n"
                f'  "burn", "{PERIOD_AVERAGE}", "", ""\n)\n'
            ),
        },
    ]
    summaries = {
        "UsageHigh": "Credit budget past {t}%: {who} at {{{{ $value | humanizePercentage }}}}",
        "AlmostExhausted": (
            "Credit budget almost exhausted: {who} at {{{{ $value | humanizePercentage }}}}"
        ),
        "Exhausted": "Credit budget exhausted: {who} at {{{{ $value | humanizePercentage }}}}",
    }

    def description(threshold: float) -> str:
        return (
            f"{who_capital} has used {used} of {limit} credits this billing "
            f"period ({{{{ $value | humanizePercentage }}}}; alert threshold "
            f"{percent(threshold)}%). Burn: {burn_h}. Runs out: {runs_out_text}. "
            f"Time left in the billing period: {period_left}."
        )

    # Scopes with levels of their own get their own rules (same alert names); the
    # default levels cover every other scope.
    own_levels = settings["budget_levels_by_scope"]
    ratio = BUDGET_RATIO
    if own_levels:
        ratio = f'{BUDGET_RATIO}{{scope!~"{"|".join(sorted(own_levels))}"}}'
    rules += level_rules("CreditBudget", ratio, settings["budget_levels"], summaries, who_short,
                         description, dashboard, links)  # fmt: skip
    for scope, levels in sorted(own_levels.items()):
        rules += level_rules("CreditBudget", f'{BUDGET_RATIO}{{scope="{scope}"}}', levels,
                             summaries, who_short, description, dashboard, links)  # fmt: skip
    name = "CreditBudgetProjectedExhaustion"
    rules.append(
        {
            "alert": name,
            # Value: hours until the limit at the burn of the last window. Only that
            # basis pages: the period's average pace over a young period's first
            # hours is a guess, and a label that changed with the basis would
            # restart the alert's `for`.
            "expr": (
                "(\n"
                f'    max without (burn) ({BUDGET_EXHAUSTION}{{burn="{window}"}})\n'
                "  < on (organization) group_left ()\n"
                "    (max by (organization) (credit_billing_period_end_timestamp_seconds)"
                " - time())\n"
                ") / 3600\n"
            ),
            "for": projection["for"],
            "labels": {"severity": projection["severity"]},
            "annotations": {
                "summary": (
                    f"Credit budget will run out before the period ends: {who_short} "
                    'in {{ $value | printf "%.1f" }} hours'
                ),
                "description": (
                    f"At the burn of the last {window} ({burn_per_hour}), "
                    f'{who} runs out in {{{{ $value | printf "%.1f" }}}} hours, before its '
                    f"billing period ends in {period_left}: {used} of {limit} credits used "
                    f"so far ({q(f'{BUDGET_RATIO}{sel}', BUDGET_KEY, 'humanizePercentage')})."
                ),
                "runbook_url": links.runbook(name),
                "dashboard_url": dashboard,
            },
        }
    )
    return rules

"""The credit-budgets group: 75/90/100% of every budget scope (or the levels of its
ladder in the billing database), and its projection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules_settings import (
    BUDGET_EXHAUSTION,
    BUDGET_KEY,
    BUDGET_LADDER,
    BUDGET_RATIO,
    BUDGET_THRESHOLD,
    LEVELS,
    ORGANIZATION_LADDER,
    PERIOD_AVERAGE,
    RESET_GUARD,
    seconds,
)
from rules_templates import (
    Links,
    level_rules,
    q,
    ratio_literal,
    runs_out,
    scope_noun,
    selector,
    when,
)

KEY = ", ".join(BUDGET_KEY)


def threshold_rules(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """BUDGET_THRESHOLD for each budget with a ratio and each level, highest level
    first: the budget's own ladder, else its organization's, else the settings'
    default of its scope (a level at or below 0 counts as unset); then no higher
    than the next level's threshold, so that the ladder never decreases and a
    higher level is never reached before a lower one."""
    rules: list[dict[str, Any]] = []
    higher = None
    for level in reversed(LEVELS):
        terms = [
            f'max by ({KEY}) ({BUDGET_LADDER}{{level="{level}"}} > 0)',
            "(\n"
            f'    max by (organization) ({ORGANIZATION_LADDER}{{level="{level}"}} > 0)\n'
            "  * on (organization) group_right ()\n"
            f"    group by ({KEY}) ({BUDGET_RATIO})\n"
            ")",
        ]
        terms += [
            f"{ratio_literal(levels[level]['threshold'])} * group by ({KEY}) "
            f"({BUDGET_RATIO}{scopes})"
            for scopes, levels in scoped_levels(settings)
        ]
        own = "\nor\n".join(terms)
        if higher is None:
            expr = f"{own}\n"
        else:
            above = f'{BUDGET_THRESHOLD}{{level="{higher}"}}'
            expr = (
                f"(\n{own}\n)\n<= on ({KEY}) group_left () {above}\nor\nmax by ({KEY}) ({above})\n"
            )
        rules.append({"record": BUDGET_THRESHOLD, "expr": expr, "labels": {"level": level}})
        higher = level
    return rules


def scoped_levels(settings: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(selector of budget scopes, their levels): budget_levels for every scope
    without levels of its own, then each scope of budget_levels_by_scope."""
    own = settings["budget_levels_by_scope"]
    others = f'{{scope!~"{"|".join(sorted(own))}"}}' if own else ""
    return [(others, settings["budget_levels"])] + [
        (f'{{scope="{scope}"}}', levels) for scope, levels in sorted(own.items())
    ]


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
    # every sample of every budget in its range at every evaluation. The start moved
    # when its highest and lowest value in the range differ: changes() would say the
    # same in Prometheus, but MetricsQL counts a series' first sample as a change
    # (a fresh series would hide every young budget's time to exhaustion in vmalert).
    start = "credit_billing_period_start_timestamp_seconds"
    not_reset_yet = (
        f"max by ({key}) (resets(credit_budget_used_credits[{RESET_GUARD}])) == 0\n"
        "    and on (organization)\n"
        f"    max by (organization) (max_over_time({start}[{RESET_GUARD}])"
        f" - min_over_time({start}[{RESET_GUARD}])) > 0"
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
        "UsageHigh": "Credit budget past {t}: {who} at {{{{ $value | humanizePercentage }}}}",
        "AlmostExhausted": (
            "Credit budget almost exhausted: {who} at {{{{ $value | humanizePercentage }}}}"
        ),
        "Exhausted": "Credit budget exhausted: {who} at {{{{ $value | humanizePercentage }}}}",
    }

    def description(level: str, threshold: str, default: float) -> str:
        return (
            f"{who_capital} has used {used} of {limit} credits this billing "
            f"period ({{{{ $value | humanizePercentage }}}}; alert threshold "
            f"{threshold}, {threshold_source(level)}{lowered(level, default)}). "
            f"Burn: {burn_h}. Runs out: {runs_out_text}. "
            f"Time left in the billing period: {period_left}."
        )

    def threshold_of(level: str) -> tuple[str, str]:
        """What the ratio is compared with for ``level``, and template text printing
        the alerting budget's threshold."""
        bound = f'on ({KEY}) group_left () {BUDGET_THRESHOLD}{{level="{level}"}}'
        shown = q(
            f"{BUDGET_THRESHOLD}{{organization=%q,scope=%q,scope_id=%q,level=%q}}",
            [*BUDGET_KEY, f'"{level}"'],
            fmt="humanizePercentage",
        )
        return bound, shown

    def lowered(level: str, default: float) -> str:
        """ ", lowered to the next level's" where the recorded threshold is below what
        its source says (threshold_rules keeps the ladder from decreasing)."""
        literal = f'"{level}"'
        stated = (
            f"max({BUDGET_LADDER}{{organization=%q,scope=%q,scope_id=%q,level=%q}} > 0)"
            f" or max({ORGANIZATION_LADDER}{{organization=%q,level=%q}} > 0)"
            f" or vector({ratio_literal(default)})"
        )
        return when(
            f"max({BUDGET_THRESHOLD}{{organization=%q,scope=%q,scope_id=%q,level=%q}})"
            f" < ({stated})",
            [*BUDGET_KEY, literal, *BUDGET_KEY, literal, "organization", literal],
            ", lowered to the next level's",
            "",
        )

    def threshold_source(level: str) -> str:
        literal = f'"{level}"'
        return when(
            f"{BUDGET_LADDER}{{organization=%q,scope=%q,scope_id=%q,level=%q}} > 0",
            [*BUDGET_KEY, literal],
            "its own ladder in the billing database",
            when(
                f"{ORGANIZATION_LADDER}{{organization=%q,level=%q}} > 0",
                ["organization", literal],
                "its organization's ladder in the billing database",
                "the default level",
            ),
        )

    # Scopes with levels of their own get their own rules (same alert names, their
    # own severities and `for`); the default levels cover every other scope. The
    # thresholds come from BUDGET_THRESHOLD, which has resolved the scope's default
    # and the ladders of the billing database.
    rules += threshold_rules(settings)
    for scopes, levels in scoped_levels(settings):

        def described(level: str, threshold: str, levels: Mapping[str, Any] = levels) -> str:
            return description(level, threshold, levels[level]["threshold"])

        rules += level_rules("CreditBudget", f"{BUDGET_RATIO}{scopes}", levels,
                             summaries, who_short, described, dashboard, links,
                             threshold_of=threshold_of)  # fmt: skip
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

"""The credit-usage group: runaway agents, organization spend anomalies, low
balance and plan quotas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules_settings import AGENT_KEY, PARTIAL_WINDOW, POOL_EXHAUSTION
from rules_templates import Links, q, selector, spend_per_hour, when


def first_pool_out() -> str:
    """Template text: the organization's pool with the least recorded time to
    exhaustion (POOL_EXHAUSTION), when and at which burn."""
    series = f"bottomk(1, {POOL_EXHAUSTION}{{organization=%q}})"
    return (
        f'{{{{ range printf "{series}" $labels.organization | query }}}}'
        "its {{ .Labels.pool }} pool in {{ .Value | humanizeDuration }}"
        '{{ if eq .Labels.burn "' + PARTIAL_WINDOW + '" }} (at the spend rate since '
        "Prometheus has data){{ end }}"
        "{{ else }}no pool with credits left is being spent{{ end }}"
    )


def at_this_pace(window: str) -> str:
    """Template text: when the alert's organization runs out of its organization
    budget and of its pools' balance if it keeps the spend rate of the last
    ``window`` (the anomaly's recorded organization rate), each as a duration and
    a time, or why there is no such time."""
    rate = f"max(organization:credit_spent_credits:rate{window}{{organization=%q}})"
    org = ["organization", '"organization"']
    budget = (
        "(max(credit_budget_limit_credits{organization=%q,scope=%q})"
        f" - max(credit_budget_used_credits{{organization=%q,scope=%q}})) / {rate} > 0"
    )
    balance = f"sum(max by (pool) (credit_balance_credits{{organization=%q}})) / {rate} > 0"

    def runs_out_in(expr: str, labels: list[str], otherwise: str) -> str:
        at = q(f"time() + ({expr})", labels, fmt="humanizeTimestamp")
        duration = q(expr, labels, fmt="humanizeDuration", unit=f" (at {at})")
        return when(expr, labels, f"runs out in {duration}", otherwise)

    budget_text = runs_out_in(
        budget, [*org, *org, "organization"], "has no credits left or no limit"
    )
    balance_text = runs_out_in(
        balance, ["organization", "organization"], "has no credits left (or none is exported)"
    )
    return (
        f"At the organization's spend of the last {window}, its organization budget "
        f"{budget_text} and the balance of its pools {balance_text}."
    )


def organization_anomaly_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    """An organization spending far above its own recent baseline, whatever spends it
    (agents, workspace prompts, voice): the sum of its series' rates, so a series that
    appears or ends never reads as a jump."""
    anomaly = settings["organization_spend_anomaly"]
    window, baseline = anomaly["window"], anomaly["baseline"]
    rate = f"organization:credit_spent_credits:rate{window}"
    usual = f"avg_over_time({rate}[{baseline}:{window}])"
    sel = "{organization=%q}"
    return [
        {
            # replicas exporting the same counter count once (max by its labels first)
            "record": rate,
            "expr": (
                "sum by (organization) (\n"
                "  max by (organization, project, agent, service_type) (\n"
                f"    rate(credit_spent_credits_total[{window}])\n"
                "  )\n"
                ")\n"
            ),
        },
        {
            "alert": "CreditOrganizationSpendAnomaly",
            # Value: how many times its usual rate the organization spends now.
            "expr": (
                f"{rate}\n"
                "  /\n"
                f"{usual}\n"
                f"  > {anomaly['factor']:g}\n"
                "and\n"
                f"{rate} > ({anomaly['min_credits_per_hour']:g} / 3600)\n"
            ),
            "for": anomaly["for"],
            "labels": {"severity": anomaly["severity"]},
            "annotations": {
                "summary": (
                    "Spend anomaly: {{ $labels.organization }} spends "
                    '{{ $value | printf "%.1f" }}x its usual rate'
                ),
                "description": (
                    "{{ $labels.organization }} has spent "
                    f"{q(f'3600 * {rate}{sel}', ['organization'])} credits/hour over the last "
                    f'{window}, {{{{ $value | printf "%.1f" }}}} times its {baseline} average of '
                    f"{q(f'3600 * {usual.replace(rate, rate + sel)}', ['organization'])} "
                    f"credits/hour (alert at {anomaly['factor']:g}x and "
                    f"{anomaly['min_credits_per_hour']:g} credits/hour). "
                    + at_this_pace(window)
                    + " Its top agents and users are on the Organization Analytics dashboard."
                ),
                "runbook_url": links.runbook("CreditOrganizationSpendAnomaly"),
                "dashboard_url": links.dashboard("org_analytics", "organization"),
            },
        },
    ]


def usage_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    runaway = settings["runaway_agent"]
    window, baseline = runaway["window"], runaway["baseline"]
    rate = f"organization_project_agent:credit_spent_credits:rate{window}"
    key = ", ".join(AGENT_KEY)
    sel = selector(AGENT_KEY)
    usual = f"avg_over_time({rate}[{baseline}:{window}])"
    rules: list[dict[str, Any]] = [
        {
            # Per-agent spend rate; max by service_type first so that replicas
            # exporting the same counter are not summed twice.
            "record": rate,
            "expr": (
                f"sum by ({key}) (\n"
                f"  max by ({key}, service_type) (\n"
                f'    rate(credit_spent_credits_total{{agent!=""}}[{window}])\n'
                "  )\n"
                ")\n"
            ),
        },
        {
            "alert": "CreditAgentRunaway",
            # Value: how many times its usual rate the agent spends now.
            "expr": (
                f"{rate}\n"
                "  /\n"
                f"{usual}\n"
                f"  > {runaway['factor']:g}\n"
                "and\n"
                f"{rate} > ({runaway['min_credits_per_hour']:g} / 3600)\n"
            ),
            "for": runaway["for"],
            "labels": {"severity": runaway["severity"]},
            "annotations": {
                "summary": (
                    "Runaway agent: {{ $labels.agent }} of {{ $labels.organization }} spends "
                    '{{ $value | printf "%.1f" }}x its usual rate'
                ),
                "description": (
                    "Agent {{ $labels.agent }} (project {{ $labels.project }}) of "
                    "{{ $labels.organization }} has spent "
                    f"{q(f'3600 * {rate}{sel}', AGENT_KEY)} credits/hour over the last {window}, "
                    f'{{{{ $value | printf "%.1f" }}}} times its {baseline} average of '
                    f"{q(f'3600 * {usual.replace(rate, rate + sel)}', AGENT_KEY)} credits/hour"
                    " (alert at "
                    f"{runaway['factor']:g}x and {runaway['min_credits_per_hour']:g} "
                    "credits/hour). "
                    + at_this_pace(settings["organization_spend_anomaly"]["window"])
                ),
                "runbook_url": links.runbook("CreditAgentRunaway"),
                "dashboard_url": links.dashboard("agent_analytics", "organization", "agent"),
            },
        },
    ]
    rules += organization_anomaly_rules(settings, links)
    low = settings["low_balance"]
    balance = "sum by (organization) (max by (organization, pool) (credit_balance_credits))"
    allocation = "sum by (organization) (max by (organization, pool) (credit_allocation_credits))"
    floor = (
        "max by (organization) (credit_auto_recharge_threshold_credits)\n"
        f"  or {low['fallback_ratio']:g} * {allocation}"
    )
    org_sel = "{organization=%q}"
    rules.append(
        {
            "alert": "CreditBalanceLowAutoRechargeOff",
            # Value: credits left in all pools together.
            "expr": (
                f"{balance}\n"
                "  < on (organization)\n"
                "(\n"
                f"  {floor}\n"
                ")\n"
                "unless on (organization)\n"
                "(max by (organization) (credit_auto_recharge_enabled) == 1)\n"
            ),
            "for": low["for"],
            "labels": {"severity": low["severity"]},
            "annotations": {
                "summary": (
                    "Low credit balance, auto-recharge off: {{ $labels.organization }} has "
                    "{{ $value | humanize }} credits left"
                ),
                "description": (
                    "{{ $labels.organization }} has {{ $value | humanize }} credits left in its "
                    "pools, below "
                    + q(
                        "max(credit_auto_recharge_threshold_credits{organization=%q}) or "
                        f"{low['fallback_ratio']:g} * sum(max by (pool) "
                        f"(credit_allocation_credits{org_sel}))",
                        ["organization", "organization"],
                    )
                    + " (its auto-recharge threshold, else "
                    + f"{low['fallback_ratio']:.0%} of its allocation), and auto-recharge is "
                    "off: nothing tops it up before usage stops. Spend: "
                    + spend_per_hour(
                        "credit_spent_by_pool_credits_total{organization=%q}",
                        ["organization"],
                        settings["projection"]["window"],
                        lambda series: f"sum(max by (pool) ({series}))",
                    )
                    + ". First to run out: "
                    + first_pool_out()
                    + "."
                ),
                "runbook_url": links.runbook("CreditBalanceLowAutoRechargeOff"),
                "dashboard_url": links.dashboard("budgets", "organization"),
            },
        }
    )
    quota = settings["plan_quota"]
    quota_key = ("organization", "quota")
    rules.append(
        {
            "alert": "CreditPlanQuotaExceeded",
            # Value: quota used.
            "expr": (
                "max by (organization, quota) (credit_plan_quota_used)\n"
                "  >\n"
                "max by (organization, quota) (credit_plan_quota_limit)\n"
            ),
            "for": quota["for"],
            "labels": {"severity": quota["severity"]},
            "annotations": {
                "summary": (
                    "Plan quota exceeded: {{ $labels.organization }} {{ $labels.quota }} at "
                    "{{ $value | humanize }} of "
                    + q(f"max(credit_plan_quota_limit{selector(quota_key)})", quota_key)
                ),
                "description": (
                    "{{ $labels.organization }} is at {{ $value | humanize }} "
                    "{{ $labels.quota }}, beyond the "
                    + q(f"max(credit_plan_quota_limit{selector(quota_key)})", quota_key)
                    + " its plan allows"
                    '{{ if eq $labels.quota "voice_seconds" }} (seconds of voice this billing '
                    'period){{ else if eq $labels.quota "text_queries" }} (this billing period)'
                    "{{ else }} (in use now){{ end }}."
                ),
                "runbook_url": links.runbook("CreditPlanQuotaExceeded"),
                "dashboard_url": links.dashboard("budgets", "organization"),
            },
        }
    )
    return rules

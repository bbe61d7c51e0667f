#!/usr/bin/env python3
"""Generate credit-exporter's Prometheus recording and alerting rules.

Input: ``alert_rules/settings.yml`` (thresholds, severities, ``for:`` durations,
windows, links). Output: ``alert_rules/credit-exporter.rules.yml``, committed; a
test fails when it is stale. Every alert is written from one place here, so the
thresholds, selectors, labels and annotations of the 75/90/100% alerts of budget
scopes and credit pools can never drift apart.

    python alert_rules/generate.py                  # rewrite the rules file
    python alert_rules/generate.py --check          # exit 1 when it is stale
    python alert_rules/generate.py --settings my.yml --output my.rules.yml

Expressions read only metric names of the catalogue (docs/metrics.md), ``up`` and
the recording rules defined here (tests/test_alert_rules.py checks it).
Deduplication: budget, pool and usage rules aggregate with ``max by`` over the
identifying labels, so several exporter replicas exporting identical values (HA)
give one alert, not one per replica; exporter-health rules stay per instance.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SETTINGS = HERE / "settings.yml"
OUTPUT = HERE / "credit-exporter.rules.yml"

SEVERITIES = ("critical", "high", "warning", "info")
LEVELS = ("UsageHigh", "AlmostExhausted", "Exhausted")  # lowest first

# Dashboards: each alert's link points at one by its key in the settings'
# `dashboards` mapping (the uids the dashboard generators read too).
DASHBOARD_KEYS = ("usage", "org_analytics", "agent_analytics", "models_users", "budgets",
                  "exporter_health")  # fmt: skip

# Recording rules: level:metric:operations.
BUDGET_RATIO = "organization_scope_scope_id:credit_budget_usage:ratio"
POOL_RATIO = "organization_pool:credit_pool_usage:ratio"
BUDGET_KEY = ("organization", "scope", "scope_id")
# How a budget scope reads in a sentence where its label value does not read as
# a word ("the API key budget ci-bot of acme"); other scopes (department,
# project, user, team, or any a configuration invents) read as they are.
SCOPE_NOUNS = {"api_key": "API key"}
POOL_KEY = ("organization", "pool")
AGENT_KEY = ("organization", "project", "agent")

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (604800, 86400, 3600, 60, 1)

SCHEMA: dict[str, Any] = {
    "links": {"dashboards": str, "runbooks": str},
    "dashboards": dict.fromkeys(DASHBOARD_KEYS, str),
    "budget_levels": "levels",
    "pool_levels": "levels",
    "projection": {"window": "duration", "for": "duration", "severity": "severity"},
    "runaway_agent": {
        "window": "duration", "baseline": "duration", "factor": "number",
        "min_credits_per_hour": "number", "for": "duration", "severity": "severity",
    },
    "organization_spend_anomaly": {
        "window": "duration", "baseline": "duration", "factor": "number",
        "min_credits_per_hour": "number", "for": "duration", "severity": "severity",
    },
    "low_balance": {"fallback_ratio": "number", "for": "duration", "severity": "severity"},
    "plan_quota": {"for": "duration", "severity": "severity"},
    "exporter": {
        "job": str,
        "down": {"for": "duration", "severity": "severity"},
        "query_failing": {"for": "duration", "severity": "severity"},
        "source_stalled": {"for": "duration", "severity": "severity"},
        "data_stale": {"after": "duration", "for": "duration", "severity": "severity"},
        "dropped": {"window": "duration", "for": "duration", "severity": "severity"},
        "late_data": {"window": "duration", "for": "duration", "severity": "severity"},
        "counters_held": {"for": "duration", "severity": "severity"},
        "reconcile_stale": {"after": "duration", "for": "duration", "severity": "severity"},
        "stream_recomputed": {"window": "duration", "for": "duration", "severity": "severity"},
    },
}  # fmt: skip


class SettingsError(ValueError):
    pass


def seconds(duration: str) -> int:
    """Seconds in a Prometheus duration such as ``1h30m`` (no ms, no y)."""
    match = _DURATION.match(str(duration))
    if not duration or match is None or not any(match.groups()):
        raise SettingsError(f"not a duration: {duration!r}")
    return sum(int(part or 0) * unit for part, unit in zip(match.groups(), _UNITS, strict=True))


def _check(value: Any, kind: Any, path: str) -> list[str]:
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        problems = [f"{path}.{key}: unknown key" for key in value if key not in kind]
        problems += [f"{path}.{key}: missing" for key in kind if key not in value]
        for key, sub in kind.items():
            if key in value:
                problems += _check(value[key], sub, f"{path}.{key}")
        return problems
    if kind == "levels":
        return _check_levels(value, path)
    if kind == "duration":
        try:
            seconds(value)
        except SettingsError as error:
            return [f"{path}: {error}"]
        return [] if seconds(value) > 0 else [f"{path}: must be positive"]
    if kind == "severity":
        return [] if value in SEVERITIES else [f"{path}: one of {', '.join(SEVERITIES)}"]
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return [] if ok else [f"{path}: a positive number"]
    return [] if isinstance(value, kind) and value else [f"{path}: a non-empty string"]


def _check_levels(value: Any, path: str) -> list[str]:
    level = {"threshold": "number", "severity": "severity", "for": "duration"}
    if not isinstance(value, dict) or list(value) != list(LEVELS):
        return [f"{path}: exactly the levels {', '.join(LEVELS)}, in this order"]
    problems = [p for name in LEVELS for p in _check(value[name], level, f"{path}.{name}")]
    if problems:
        return problems
    thresholds = [value[name]["threshold"] for name in LEVELS]
    if thresholds != sorted(set(thresholds)):
        problems.append(f"{path}: thresholds must increase strictly with the level")
    fors = [seconds(value[name]["for"]) for name in LEVELS]
    if fors != sorted(fors, reverse=True):
        problems.append(
            f"{path}: `for` must not increase with the level (a jump past several "
            "thresholds would otherwise notify a lower level before the inhibiting one)"
        )
    return problems


def _problems(settings: Any, path: str) -> list[str]:
    """Every problem of a settings document: its shape, then what relates two keys."""
    problems = _check(settings, SCHEMA, path)
    if problems:
        return problems
    late = settings["exporter"]["late_data"]
    if seconds(late["for"]) >= seconds(late["window"]):
        # a correction keeps the expression true for `window`: a longer `for` never fires
        problems.append(f"{path}.exporter.late_data: `for` must be shorter than `window`")
    return problems


def load_settings(path: Path = SETTINGS) -> dict[str, Any]:
    settings = yaml.safe_load(path.read_text())
    problems = _problems(settings, path.name)
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


# --------------------------------------------------------------------------
# Template helpers (Prometheus alert templates: Go text/template)
# --------------------------------------------------------------------------


def q(
    expr: str,
    labels: Sequence[str],
    fmt: str = "humanize",
    unit: str = "",
    missing: str = "unknown",
) -> str:
    """Template text that runs the instant query ``expr`` (``%q`` placeholders, or
    ``%[n]q`` for the n-th, are filled, Go-quoted, from the alert's labels, or from
    a literal given as ``'"late"'``) and prints its first value and ``unit``, or
    ``missing`` when the query returns nothing."""
    assert '"' not in expr and "{{" not in expr and "}}" not in expr, expr
    args = "".join(f" {arg}" if arg.startswith('"') else f" $labels.{arg}" for arg in labels)
    return (
        f'{{{{ with printf "{expr}"{args} | query }}}}'
        f"{{{{ . | first | value | {fmt} }}}}{unit}{{{{ else }}}}{missing}{{{{ end }}}}"
    )


def scope_noun() -> str:
    """Template text naming the alert's budget scope in a sentence (SCOPE_NOUNS)."""
    branches = [f'if eq $labels.scope "{value}" }}}}{noun}' for value, noun in SCOPE_NOUNS.items()]
    return "{{ " + "{{ else ".join(branches) + "{{ else }}{{ $labels.scope }}{{ end }}"


def selector(labels: Sequence[str]) -> str:
    return "{" + ",".join(f"{label}=%q" for label in labels) + "}"


class Links:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.dashboards = settings["links"]["dashboards"].rstrip("/")
        self.runbooks = settings["links"]["runbooks"]
        self.uids = settings["dashboards"]

    def runbook(self, alert: str) -> str:
        return f"{self.runbooks}#{alert.lower()}"

    def dashboard(self, key: str, *variables: str) -> str:
        """A link to our dashboard ``key`` (settings `dashboards`) with variables set."""
        uid = self.uids[key]
        query = "&".join(f"var-{name}={{{{ $labels.{name} | urlquery }}}}" for name in variables)
        return f"{self.dashboards}/d/{uid}" + (f"?{query}" if query else "")


def percent(value: float) -> str:
    return f"{value:g}"


def ratio_literal(threshold: float) -> str:
    """``75`` -> ``0.75`` with no float noise (``0.7500000000000001``)."""
    text = repr(round(threshold / 100, 10))
    return text.removesuffix(".0")


# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------


def level_rules(
    prefix: str,
    ratio: str,
    levels: Mapping[str, Any],
    summaries: Mapping[str, str],
    who: str,
    description: Callable[[float], str],
    dashboard: str,
    links: Links,
) -> list[dict[str, Any]]:
    """One alert per threshold level (UsageHigh, AlmostExhausted, Exhausted) on a ratio."""
    rules = []
    for level, spec in levels.items():
        threshold = spec["threshold"]
        name = f"{prefix}{level}"
        rules.append(
            {
                "alert": name,
                "expr": f"{ratio} >= {ratio_literal(threshold)}\n",
                "for": spec["for"],
                "labels": {"severity": spec["severity"], "threshold": percent(threshold)},
                "annotations": {
                    "summary": summaries[level].format(t=percent(threshold), who=who),
                    "description": description(threshold),
                    "runbook_url": links.runbook(name),
                    "dashboard_url": dashboard,
                },
            }
        )
    return rules


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
            # period start the difference would be meaningless (negative).
            "record": burn,
            "expr": (
                "(\n"
                f"    max by ({key}) (credit_budget_used_credits)\n"
                f"  -\n"
                f"    max by ({key}) (credit_budget_used_credits offset {window})\n"
                f") / {window_s}\n"
                "and on (organization)\n"
                "  (max by (organization) (credit_billing_period_start_timestamp_seconds)"
                f" <= time() - {window_s})\n"
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
    rules += level_rules(
        "CreditBudget", BUDGET_RATIO, settings["budget_levels"], summaries, who_short,
        lambda threshold: (
            f"{who_capital} has used {used} of {limit} credits this billing "
            f"period ({{{{ $value | humanizePercentage }}}}; alert threshold "
            f"{percent(threshold)}%). Burn: {burn_h}. "
            f"Time left in the billing period: {period_left}."
        ),
        dashboard, links,
    )  # fmt: skip
    name = "CreditBudgetProjectedExhaustion"
    rules.append(
        {
            "alert": name,
            # Value: hours until the limit at the burn of the last window.
            "expr": (
                "(\n"
                f"      (max by ({key}) (credit_budget_limit_credits)"
                f" - max by ({key}) (credit_budget_used_credits))\n"
                f"    / ({burn} > 0)\n"
                "  < on (organization) group_left ()\n"
                "    (max by (organization) (credit_billing_period_end_timestamp_seconds)"
                " - time())\n"
                f"  and on ({key})\n"
                f"    ({BUDGET_RATIO} < 1)\n"
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


def pool_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    key = ", ".join(POOL_KEY)
    sel = selector(POOL_KEY)
    balance = q(f"max(credit_balance_credits{sel})", POOL_KEY)
    allocation = q(f"max(credit_allocation_credits{sel})", POOL_KEY)
    spend = q(
        f"3600 * sum(max by (pool) (rate(credit_spent_by_pool_credits_total{sel}[1d])))",
        POOL_KEY,
        unit=" credits/hour",
        missing="unknown (no credit_spent_by_pool_credits_total)",
    )
    recharge = (
        '{{ with printf "max(credit_auto_recharge_enabled{organization=%q})" '
        "$labels.organization | query }}{{ if eq (. | first | value) 1.0 }}on"
        "{{ else }}off{{ end }}{{ else }}not configured{{ end }}"
    )
    who = "the {{ $labels.pool }} pool of {{ $labels.organization }}"
    who_capital = "The" + who.removeprefix("the")
    rules: list[dict[str, Any]] = [
        {
            "record": POOL_RATIO,
            "expr": (
                "(\n"
                f"    max by ({key}) (credit_allocation_credits)\n"
                f"  -\n"
                f"    max by ({key}) (credit_balance_credits)\n"
                ")\n"
                f"/\n"
                f"  max by ({key}) (credit_allocation_credits > 0)\n"
            ),
        }
    ]
    summaries = {
        "UsageHigh": "Credit pool past {t}% used: {who} at {{{{ $value | humanizePercentage }}}}",
        "AlmostExhausted": (
            "Credit pool almost exhausted: {who} at {{{{ $value | humanizePercentage }}}} used"
        ),
        "Exhausted": "Credit pool exhausted: {who} at {{{{ $value | humanizePercentage }}}} used",
    }
    rules += level_rules(
        "CreditPool", POOL_RATIO, settings["pool_levels"], summaries, who,
        lambda threshold: (
            f"{who_capital} has {balance} of its {allocation} credits left "
            f"({{{{ $value | humanizePercentage }}}} used; alert threshold "
            f"{percent(threshold)}%). Spend from this pool over the last day: "
            f"{spend}. Auto-recharge is {recharge}."
        ),
        links.dashboard("budgets", "organization"), links,
    )  # fmt: skip
    return rules


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
                    f"{anomaly['min_credits_per_hour']:g} credits/hour). Its top agents and "
                    "users are on the Organization Analytics dashboard."
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
                    f"{runaway['factor']:g}x and {runaway['min_credits_per_hour']:g} credits/hour)."
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
                    "off: nothing tops it up before usage stops. Spend over the last day: "
                    + q(
                        "3600 * sum(max by (pool) "
                        f"(rate(credit_spent_by_pool_credits_total{org_sel}[1d])))",
                        ["organization"],
                        unit=" credits/hour",
                        missing="unknown (no credit_spent_by_pool_credits_total)",
                    )
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


def grew_expr(metric: str, labels: str, window: str) -> str:
    """A counter of the exporter grew in the last ``window``, per instance and ``labels``."""
    # increase() cannot see a counter's first value: a series born with a count
    # already in it is caught by the second branch (absent `window` ago), which
    # also covers a freshly started Prometheus.
    return (
        f"sum by (job, instance, {labels}) (increase({metric}[{window}])) > 0\n"
        f"or\n"
        f"sum by (job, instance, {labels}) ({metric} unless {metric} offset {window}) > 0\n"
    )


def exporter_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    exporter = settings["exporter"]
    job = exporter["job"]
    health = links.dashboard("exporter_health")
    stale, dropped = exporter["data_stale"], exporter["dropped"]
    window = dropped["window"]
    iq = ("instance", "query")

    return [
        {
            "alert": "CreditExporterDown",
            "expr": f'up{{job="{job}"}} == 0\nor\nabsent(up{{job="{job}"}})\n',
            "for": exporter["down"]["for"],
            "labels": {"severity": exporter["down"]["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter down: {{ with $labels.instance }}{{ . }}{{ else }}"
                    "no target of job {{ $labels.job }}{{ end }}"
                ),
                "description": (
                    "{{ with $labels.instance }}Prometheus cannot scrape credit-exporter "
                    "{{ . }} (job {{ $labels.job }}){{ else }}Prometheus has no target in "
                    "job {{ $labels.job }}{{ end }}. While it lasts, budget and balance "
                    "series go stale and their alerts resolve: on-call is blind to credit "
                    "usage."
                ),
                "runbook_url": links.runbook("CreditExporterDown"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterQueryFailing",
            "expr": "credit_exporter_query_up == 0\n",
            "for": exporter["query_failing"]["for"],
            "labels": {"severity": exporter["query_failing"]["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter query {{ $labels.query }} failing on {{ $labels.instance }}"
                ),
                "description": (
                    "Query {{ $labels.query }} of credit-exporter {{ $labels.instance }} has "
                    "failed for at least "
                    f"{exporter['query_failing']['for']}; its metrics keep their last good "
                    "values. Errors in the last 15m by reason: "
                    '{{ range printf "sum by (reason) (increase('
                    'credit_exporter_query_errors_total{instance=%q,query=%q}[15m])) > 0" '
                    "$labels.instance $labels.query | query }}{{ .Labels.reason }}="
                    "{{ .Value | humanize }} {{ end }}(see the exporter's landing page "
                    "for the last error). Last success: "
                    + q(
                        "time() - max(credit_exporter_query_last_success_timestamp_seconds"
                        f"{selector(iq)})",
                        iq,
                        fmt="humanizeDuration",
                        missing="never",
                    )
                    + " ago."
                ),
                "runbook_url": links.runbook("CreditExporterQueryFailing"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterSourceStalled",
            # The exporter's watchdog: no run of the source completed, successfully or
            # not, for 3 of its intervals plus its timeout, while the process is scraped.
            "expr": "credit_exporter_query_stalled == 1\n",
            "for": exporter["source_stalled"]["for"],
            "labels": {"severity": exporter["source_stalled"]["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter source {{ $labels.query }} stopped polling on "
                    "{{ $labels.instance }}"
                ),
                "description": (
                    "No run of query or stream {{ $labels.query }} of credit-exporter "
                    "{{ $labels.instance }} has completed, successfully or not, for 3 of its "
                    "intervals plus its timeout, for at least "
                    f"{exporter['source_stalled']['for']}, while the exporter is up: its "
                    "values are frozen, /-/ready answers 503 and the exporter logs "
                    '"source {{ $labels.query }} stalled".'
                ),
                "runbook_url": links.runbook("CreditExporterSourceStalled"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterDataStale",
            # Value: seconds since the last successful run.
            "expr": (
                "time() - credit_exporter_query_last_success_timestamp_seconds"
                f" > {seconds(stale['after'])}\n"
            ),
            "for": stale["for"],
            "labels": {"severity": stale["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter data stale: query {{ $labels.query }} last succeeded "
                    "{{ $value | humanizeDuration }} ago"
                ),
                "description": (
                    "Query {{ $labels.query }} of credit-exporter {{ $labels.instance }} last "
                    "succeeded {{ $value | humanizeDuration }} ago (alert after "
                    f"{stale['after']}): the values it exports, and the alerts computed from "
                    "them, describe the past."
                ),
                "runbook_url": links.runbook("CreditExporterDataStale"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterSeriesDropped",
            "expr": grew_expr("credit_exporter_dropped_series_total", "metric, reason", window),
            "for": dropped["for"],
            "labels": {"severity": dropped["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter drops {{ $labels.metric }} series ({{ $labels.reason }})"
                ),
                "description": (
                    "credit-exporter {{ $labels.instance }} dropped {{ $value | humanize }} "
                    "series of {{ $labels.metric }} for reason {{ $labels.reason }} in the "
                    f"last {window}: those series are missing from /metrics (or held at "
                    "their previous value), so dashboards and alerts undercount."
                ),
                "runbook_url": links.runbook("CreditExporterSeriesDropped"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterRowsDropped",
            "expr": grew_expr("credit_exporter_dropped_rows_total", "query, reason", window),
            "for": dropped["for"],
            "labels": {"severity": dropped["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter skips rows of query {{ $labels.query }} ({{ $labels.reason }})"
                ),
                "description": (
                    "credit-exporter {{ $labels.instance }} skipped {{ $value | humanize }} "
                    "result rows of query {{ $labels.query }} for reason {{ $labels.reason }} "
                    f"in the last {window}: their values are not exported."
                ),
                "runbook_url": links.runbook("CreditExporterRowsDropped"),
                "dashboard_url": health,
            },
        },
        *reconcile_rules(exporter, links),
    ]


def reconcile_rules(exporter: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    """What the background reconcile of event streams finds (docs/event-engine.md):
    corrections of settled history, counters held above the database, and passes
    that no longer complete."""
    health = links.dashboard("exporter_health")
    late, held = exporter["late_data"], exporter["counters_held"]
    stale, recomputed = exporter["reconcile_stale"], exporter["stream_recomputed"]
    window = late["window"]
    down = 'if eq $labels.direction "down" }}'
    sign = f"{{{{ {down}-{{{{ else }}}}+{{{{ end }}}}"
    # Go's printf: %[n]q is the n-th argument, so each one is given once
    rows = "credit_exporter_reconcile_rows_total{instance=%[1]q,query=%[2]q,reason=%[3]q}"

    def found_rows(reason: str) -> str:
        # like the alert's own expression: a series born inside the window counts whole
        grown = f"sum(({rows} unless {rows} offset {window}) or increase({rows}[{window}]))"
        return q(grown, ["instance", "query", f'"{reason}"'], fmt='printf "%.0f"')

    excess = q("max(credit_exporter_counter_excess{instance=%q,metric=%q})", ["instance", "metric"])
    return [
        {
            "alert": "CreditExporterLateData",
            # Value: the correction in the window, in the metric's unit.
            "expr": grew_expr(
                "credit_exporter_reconcile_difference_total", "query, metric, direction", window
            ),
            "for": late["for"],
            "labels": {"severity": late["severity"]},
            "annotations": {
                "summary": (
                    "Late data in stream {{ $labels.query }}: {{ $labels.metric }} "
                    f"{sign}{{{{ $value | humanize }}}} {{{{ {down}held{{{{ else }}}}folded in"
                    "{{ end }}"
                ),
                "description": (
                    "The reconcile of stream {{ $labels.query }} on credit-exporter "
                    "{{ $labels.instance }} found settled history that differs from what its "
                    "polls had counted, and corrected {{ $labels.metric }} by "
                    f"{sign}{{{{ $value | humanize }}}} (in the metric's unit) in the last "
                    f"{window}. {{{{ {down}The decrease is held: settled rows were deleted, "
                    "lowered or moved to other labels, and a counter never goes down within a "
                    "process, so the metric's counters stay above the database's totals (by "
                    f"{excess} now) until new usage catches up.{{{{ else }}}}The increase is "
                    "folded in: the counters jumped by it when the reconcile found it, and "
                    "until then dashboards and alerts showed that much less.{{ end }} Rows the "
                    f"reconcile found in this stream in the same window: {found_rows('late')} "
                    f"committed after the stream's window, {found_rows('deleted')} deleted (a "
                    "correction with neither comes from settled rows updated). If rows commit "
                    "this late by design, raise the stream's arrives_within (streams without a "
                    "key); if rows are updated or deleted this late by design, raise its "
                    "changes_within."
                ),
                "runbook_url": links.runbook("CreditExporterLateData"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterCountersHeld",
            # Value: how far the metric's counters are above the database, summed over series.
            "expr": "credit_exporter_counter_excess > 0\n",
            "for": held["for"],
            "labels": {"severity": held["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter holds {{ $labels.metric }} {{ $value | humanize }} above "
                    "the database"
                ),
                "description": (
                    "The counters of {{ $labels.metric }} on credit-exporter "
                    "{{ $labels.instance }} have been above the database's totals for at least "
                    f"{held['for']}, by {{{{ $value | humanize }}}} now (summed over its series, "
                    "in the metric's unit): rows already counted were deleted or lowered, and "
                    "a counter never goes down within a process, so the series concerned hold "
                    "their last values and their new usage does not show. They resume when "
                    "usage catches up with the held values. A restart of the exporter would "
                    "export the database's lower totals at once: Prometheus reads that as a "
                    "counter reset, and increase() and rate() across it count those series' "
                    "whole totals again."
                ),
                "runbook_url": links.runbook("CreditExporterCountersHeld"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterReconcileStale",
            # Value: seconds since the stream's last completed reconcile pass.
            "expr": (
                "time() - credit_exporter_reconcile_last_success_timestamp_seconds"
                f" > {seconds(stale['after'])}\n"
            ),
            "for": stale["for"],
            "labels": {"severity": stale["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter stream {{ $labels.query }} not reconciled for "
                    "{{ $value | humanizeDuration }}"
                ),
                "description": (
                    "The reconcile of stream {{ $labels.query }} on credit-exporter "
                    "{{ $labels.instance }} last completed a pass {{ $value | humanizeDuration }} "
                    f"ago (alert after {stale['after']}): rows committed after the stream's "
                    "window, and settled rows updated or deleted since, are not counted. The "
                    'exporter logs "stream {{ $labels.query }}: reconcile pass failed" with the '
                    "error for every pass that fails."
                ),
                "runbook_url": links.runbook("CreditExporterReconcileStale"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterStreamRecomputed",
            # Value: how many times the stream started over in the window.
            "expr": grew_expr(
                "credit_exporter_stream_recomputes_total", "query, reason", recomputed["window"]
            ),
            "for": recomputed["for"],
            "labels": {"severity": recomputed["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter stream {{ $labels.query }} recomputed from scratch "
                    "({{ $labels.reason }})"
                ),
                "description": (
                    "Stream {{ $labels.query }} on credit-exporter {{ $labels.instance }} threw "
                    "its totals away and aggregated the whole table again in the last "
                    f"{recomputed['window']} ({{{{ $labels.reason }}}}: database_replaced means "
                    "the database under its DSN is another one, dropped and restored or "
                    "re-created; key_went_back means its highest key fell below the one already "
                    "counted, as after a restore from an older backup). Its counters now equal "
                    "the new database's totals and may have dropped: rate() and increase() "
                    "across that moment read the drop as a reset and count the new totals "
                    "again. Check that the DSN points at the right database, and read "
                    "dashboards across the restore with that in mind."
                ),
                "runbook_url": links.runbook("CreditExporterStreamRecomputed"),
                "dashboard_url": health,
            },
        },
    ]


def build(settings: Mapping[str, Any]) -> dict[str, Any]:
    links = Links(settings)
    return {
        "groups": [
            {"name": "credit-budgets", "rules": budget_rules(settings, links)},
            {"name": "credit-pools", "rules": pool_rules(settings, links)},
            {"name": "credit-usage", "rules": usage_rules(settings, links)},
            {"name": "credit-exporter", "rules": exporter_rules(settings, links)},
        ]
    }


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

HEADER = """\
# Generated by alert_rules/generate.py from alert_rules/settings.yml: do not edit.
# Change the settings and run `python alert_rules/generate.py`. Alerts, labels,
# inhibition and routing: docs/alerts.md; one runbook per alert: docs/runbooks.md.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(settings: Mapping[str, Any]) -> str:
    body = yaml.dump(
        build(settings), Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True
    )
    return HEADER + body


def with_overrides(settings: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``settings`` with ``overrides`` merged in (nested mappings merge)."""
    merged = copy.deepcopy(dict(settings))

    def merge(into: dict[str, Any], source: Mapping[str, Any]) -> None:
        for key, value in source.items():
            if isinstance(value, Mapping) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)

    merge(merged, overrides)
    problems = _problems(merged, "overrides")
    if problems:
        raise SettingsError("\n".join(problems))
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", type=Path, default=SETTINGS)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="exit 1 when the output is stale")
    args = parser.parse_args(argv)
    try:
        text = render(load_settings(args.settings))
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The rule generator's settings: schema, validation, loading and overrides."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
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
# Seconds until a budget reaches its limit / a pool's balance reaches 0; no series
# when not burning or already exhausted. The one time-to-exhaustion series that the
# alerts, the Budgets dashboard and `credit-exporter report --prometheus` read.
# Its `burn` label names the burn it assumes: the projection window (e.g. "1d")
# when Prometheus holds the whole window of the current period, else
# PERIOD_AVERAGE (budgets: used / time since the period began) or PARTIAL_WINDOW
# (pools: the spend rate over the part of the window Prometheus holds).
BUDGET_EXHAUSTION = "organization_scope_scope_id:credit_budget_exhaustion:seconds"
POOL_EXHAUSTION = "organization_pool:credit_pool_exhaustion:seconds"
BURN_LABEL = "burn"
PERIOD_AVERAGE = "period_average"
PARTIAL_WINDOW = "partial_window"
# How long after a new period's timestamps a budget's usage may still be the old
# period's (the exporter reports them from two queries, a scrape or two apart).
RESET_GUARD = "30m"
BUDGET_KEY = ("organization", "scope", "scope_id")
# The effective alert threshold of each budget and level (label ``level``: the
# alert level name), as a share of the limit: the budget's ladder in the billing
# database, else its organization's, else budget_levels(_by_scope).
BUDGET_THRESHOLD = "organization_scope_scope_id_level:credit_budget_alert_threshold:ratio"
BUDGET_LADDER = "credit_budget_alert_threshold_ratio"
ORGANIZATION_LADDER = "credit_organization_budget_alert_threshold_ratio"
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
    "budget_levels_by_scope": "levels by scope",
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
        "checkpoint_fallback": {"window": "duration", "for": "duration", "severity": "severity"},
        "checkpoint_write_failing": {
            "window": "duration", "for": "duration", "severity": "severity"
        },
        "checkpoint_stale": {"after": "duration", "for": "duration", "severity": "severity"},
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
    if kind == "levels by scope":
        if not isinstance(value, dict):
            return [f"{path}: a mapping of budget scope to levels"]
        return [
            p for scope, levels in value.items() for p in _check_levels(levels, f"{path}.{scope}")
        ]
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

"""The one monitoring configuration: ``alert_rules/settings.yml``, plus a platform
team's overrides file.

The settings hold the alert levels (75/90/100% by default), which the dashboards'
budget colours follow, the exporter's scrape job, the dashboard uids that alert
links and dashboard links point at, the Grafana root URL and the runbook base URL.
``alert_rules/generate.py`` validates them (its ``SCHEMA``); this module loads them
once for every generator, merged with the overrides file named by
``CREDIT_EXPORTER_MONITORING_OVERRIDES`` (``python -m monitoring.generate
--overrides FILE`` sets it). Why one YAML file read by Python rather than a second
config: the alert settings already were the per-installation input, and a second
file would be a second place for the same levels.

Overrides file (docs/extending.md has a worked example)::

    settings: {...}          # merged into alert_rules/settings.yml, key by key
    dashboards:
      remove_panels: {<uid>: [<panel title>, ...]}
      extra_panels: {<uid>: [{title, description, expr, unit, legend}, ...]}
    alerts:
      extra_rules: {<group name>: [<a Prometheus rule>, ...]}
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SETTINGS = REPO / "alert_rules" / "settings.yml"
RULE_GENERATOR = REPO / "alert_rules" / "generate.py"
OVERRIDES_VARIABLE = "CREDIT_EXPORTER_MONITORING_OVERRIDES"
OVERRIDE_SECTIONS = {"settings", "dashboards", "alerts"}
LEVEL_COLOURS = {"UsageHigh": "yellow", "AlmostExhausted": "orange", "Exhausted": "red"}


@functools.cache
def rule_generator() -> ModuleType:
    """``alert_rules/generate.py`` as a module (alert_rules is not a package)."""
    spec = importlib.util.spec_from_file_location("alert_rules_generate", RULE_GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rule_names() -> ModuleType:
    """``alert_rules/rules_settings``: the recording rules' names (the time to
    exhaustion the dashboards read) and their ``burn`` label values."""
    rule_generator()  # puts alert_rules/ on sys.path
    return importlib.import_module("rules_settings")


def overrides_path() -> Path | None:
    value = os.environ.get(OVERRIDES_VARIABLE, "")
    return Path(value) if value else None


@functools.cache
def overrides() -> dict[str, Any]:
    """The platform team's overrides file, or nothing."""
    path = overrides_path()
    if path is None:
        return {}
    document = yaml.safe_load(path.read_text()) or {}
    unknown = set(document) - OVERRIDE_SECTIONS
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    return document


@functools.cache
def settings() -> dict[str, Any]:
    """The validated settings with the overrides' ``settings`` merged in."""
    generator = rule_generator()
    base = generator.load_settings(SETTINGS)
    return generator.with_overrides(base, overrides().get("settings", {}))


def dashboard_uid(key: str) -> str:
    """The uid of one of our dashboards by its settings key (usage, budgets, ...)."""
    return settings()["dashboards"][key]


def budget_thresholds(scale: float = 1.0) -> dict[str, Any]:
    """Grafana threshold steps at the budget alert levels: green below the first,
    then one colour per level (``scale`` 0.01 for panels showing a 0-1 ratio)."""
    levels = settings()["budget_levels"]
    steps = [{"color": "green", "value": None}]
    for name, spec in levels.items():
        value = round(spec["threshold"] * scale, 10)
        steps.append(
            {"color": LEVEL_COLOURS[name], "value": int(value) if value.is_integer() else value}
        )
    return {"mode": "absolute", "steps": steps}


def removed_panels(uid: str) -> set[str]:
    return set(overrides().get("dashboards", {}).get("remove_panels", {}).get(uid, []))


def extra_panels(uid: str) -> list[dict[str, Any]]:
    return list(overrides().get("dashboards", {}).get("extra_panels", {}).get(uid, []))


def extra_rules() -> dict[str, list[dict[str, Any]]]:
    return dict(overrides().get("alerts", {}).get("extra_rules", {}))

"""The alert rules as code: generated file up to date, promtool check and unit
tests, catalogue-only metric names, labels, annotations, links, runbooks, and
the example Alertmanager configuration (amtool check-config and routing)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from alerting_support import (
    ALERT_RULES,
    ALERTMANAGER_EXAMPLE,
    E2E_OVERRIDES,
    RULES_FILE,
    RUNBOOKS,
    alerts,
    load_generator,
    parsed_metric_names,
    promql_metric_names,
    rules,
    template_queries,
    threshold_record,
)
from conftest import require_binary
from dashboard_support import REPO  # noqa: F401 (puts the repository on sys.path)

from credit_exporter import catalog
from monitoring import generate as monitoring_generate

generate = load_generator()
BUDGET_RATIO = "organization_scope_scope_id:credit_budget_usage:ratio"
DOCUMENT = yaml.safe_load(RULES_FILE.read_text())
SETTINGS = generate.load_settings()
DASHBOARD_UIDS = set(SETTINGS["dashboards"].values())
DASHBOARD_VARIABLES = {"organization", "agent", "scope", "scope_id"}
SEVERITIES = {"critical", "high", "warning", "info"}
# Every alert the generator writes (the docs' alert table lists the same set).
ALERT_NAMES = monitoring_generate.alert_names()


# --------------------------------------------------------------------------
# The generated file
# --------------------------------------------------------------------------


def test_committed_rules_are_generated_from_the_settings() -> None:
    expected = generate.render(SETTINGS)
    assert RULES_FILE.read_text() == expected, (
        "alert_rules/credit-exporter.rules.yml is stale: run python alert_rules/generate.py"
    )


def test_generator_check_mode_agrees() -> None:
    assert generate.main(["--check"]) == 0


def test_every_budget_and_pool_level_has_an_alert() -> None:
    names = {rule["alert"] for rule in alerts(DOCUMENT)}
    assert names == ALERT_NAMES
    for prefix, levels in (("CreditBudget", "budget_levels"), ("CreditPool", "pool_levels")):
        assert {f"{prefix}{level}" for level in SETTINGS[levels]} <= names


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"budget_levels": {"AlmostExhausted": {"threshold": 70}}}, "increase strictly"),
        ({"pool_levels": {"Exhausted": {"for": "1h"}}}, "must not increase"),
        ({"projection": {"window": "one day"}}, "not a duration"),
        ({"plan_quota": {"severity": "page"}}, "one of critical"),
        ({"exporter": {"down": {"fore": "5m"}}}, "unknown key"),
        ({"runaway_agent": {"factor": 0}}, "positive number"),
        ({"exporter": {"late_data": {"window": "5m", "for": "5m"}}}, "shorter than `window`"),
    ],
)
def test_settings_are_validated(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(generate.SettingsError, match=problem):
        generate.with_overrides(SETTINGS, overrides)


def test_thresholds_and_severities_come_from_the_settings(tmp_path: Path) -> None:
    settings = generate.with_overrides(
        SETTINGS,
        {"budget_levels": {"UsageHigh": {"threshold": 80, "severity": "info"},
                           "AlmostExhausted": {"threshold": 95}}},
    )  # fmt: skip
    document = yaml.safe_load(generate.render(settings))
    by_name = {rule["alert"]: rule for rule in alerts(document)}
    # the default of a budget without a ladder in the billing database
    assert f"0.8 * group by (organization, scope, scope_id) ({BUDGET_RATIO})" in (
        threshold_record(document, "UsageHigh")
    )
    assert f"0.95 * group by (organization, scope, scope_id) ({BUDGET_RATIO})" in (
        threshold_record(document, "AlmostExhausted")
    )
    assert by_name["CreditBudgetUsageHigh"]["labels"] == {"severity": "info"}
    # pools keep their own settings
    assert by_name["CreditPoolUsageHigh"]["expr"].strip().endswith(">= 0.75")
    assert by_name["CreditPoolUsageHigh"]["labels"] == {"severity": "warning", "threshold": "75"}


def _scope_levels_test() -> dict[str, Any]:
    """A department budget of acme and one of globex at 65%; globex's ladder in the
    billing database says 70% for UsageHigh."""
    budgets = [("acme", "eng"), ("globex", "ops")]
    series = [
        {
            "series": "credit_organization_budget_alert_threshold_ratio"
            '{organization="globex",level="UsageHigh"}',
            "values": "0.7x20",
        }
    ]
    series += [
        {
            "series": f'credit_budget_{kind}_credits{{organization="{org}",'
            f'scope="department",scope_id="{scope_id}"}}',
            "values": f"{value}x20",
        }
        for org, scope_id in budgets
        for kind, value in (("used", 650), ("limit", 1000))
    ]
    acme = 'organization="acme",scope="department",scope_id="eng",severity="info"'
    return {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": 'ALERTS{alertname=~"CreditBudget.*"}', "eval_time": f"{minute}m",
             "exp_samples": [{"value": 1, "labels": (
                 f'ALERTS{{alertname="CreditBudgetUsageHigh",alertstate="{state}",{acme}}}')}]}
            for minute, state in ((4, "pending"), (5, "firing"))
        ]}]}  # fmt: skip


def test_scope_levels_apply_where_the_billing_database_has_no_ladder(tmp_path: Path) -> None:
    """The scope's levels (60/85/100, for 5m) page acme's department at 65%; the
    organization's ladder (70%) beats them for globex's."""
    levels = {
        "UsageHigh": {"threshold": 60, "severity": "info", "for": "5m"},
        "AlmostExhausted": {"threshold": 85, "severity": "high", "for": "5m"},
        "Exhausted": {"threshold": 100, "severity": "critical", "for": "5m"},
    }
    settings = generate.with_overrides(SETTINGS, {"budget_levels_by_scope": {"department": levels}})
    (tmp_path / "rules.yml").write_text(generate.render(settings))
    (tmp_path / "test.yml").write_text(yaml.safe_dump(_scope_levels_test()))
    result = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules(DOCUMENT))} rules found" in result.stdout


def test_promtool_check_rules_with_the_end_to_end_settings(tmp_path: Path) -> None:
    path = tmp_path / "e2e.rules.yml"
    path.write_text(generate.render(generate.with_overrides(SETTINGS, E2E_OVERRIDES)))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


UNIT_TESTS = sorted((ALERT_RULES / "tests").glob("*.yml"))


def test_every_alert_has_promtool_unit_tests() -> None:
    tested: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert tested == ALERT_NAMES, f"alerts never seen firing in a unit test: {ALERT_NAMES - tested}"


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests(path: Path) -> None:
    result = _promtool("test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------
# Names, labels, annotations, links
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (a, b) (rate(x_total{job="j",c=~"d|e"}[5m])) / on (a) group_left () y',
            {"x_total", "y"},
        ),
        ("max(foo offset 1d) > bool 3 and on (org) bar unless baz == 1e3", {"foo", "bar", "baz"}),
        ('avg_over_time(a:b:rate5m{x="}"}[7d:30m]) or vector(0)', {"a:b:rate5m"}),
        ('{__name__="credit_seats_used"} * -inf', {"credit_seats_used"}),
        ("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
        ('absent(up{job="x"}) or time() - m > 900', {"up", "m"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_rules_read_only_catalogue_metrics() -> None:
    """Every metric name in an expression or an annotation query is in the
    catalogue, is `up`, or is a recording rule of this file."""
    recorded = {rule["record"] for rule in rules(DOCUMENT) if "record" in rule}
    allowed = catalog.all_series_names() | {"up"} | recorded
    for rule in rules(DOCUMENT):
        name = rule.get("alert") or rule["record"]
        queries = [rule["expr"]]
        for text in rule.get("annotations", {}).values():
            queries += template_queries(text)
        for query in queries:
            unknown = promql_metric_names(query) - allowed
            assert not unknown, f"{name}: not in the catalogue: {sorted(unknown)} in {query}"


def test_metric_name_extraction_agrees_with_a_promql_parser() -> None:
    """Cross-check of the lexical extraction on every query of the rules; the
    parse also proves that each annotation query is valid PromQL."""
    pytest.importorskip("promql_parser")
    checked = 0
    for rule in rules(DOCUMENT):
        queries = [rule["expr"]]
        for text in rule.get("annotations", {}).values():
            queries += template_queries(text)
        for query in queries:
            parsed = parsed_metric_names(re.sub(r"%(?:\[\d+\])?q", '"x"', query))
            assert parsed == promql_metric_names(query), query
            checked += 1
    assert checked > len(rules(DOCUMENT))


def test_recording_rules_follow_level_metric_operations() -> None:
    for rule in rules(DOCUMENT):
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and operations, rule["record"]
            assert metric.startswith("credit_"), rule["record"]


def test_alert_names_labels_and_annotations() -> None:
    for rule in alerts(DOCUMENT):
        name = rule["alert"]
        assert re.fullmatch(r"Credit(?:[A-Z][a-z0-9]*)+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["for"], f"{name} has no for:"
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
        if name.startswith(("CreditBudget", "CreditPool")) and "Projected" not in name:
            assert "{{ $value | humanizePercentage }}" in annotations["description"], name
        if name.startswith("CreditPool") and "Projected" not in name:
            assert re.fullmatch(r"\d+(\.\d+)?", rule["labels"]["threshold"]), name
        if name.startswith("CreditBudget"):
            # a budget's threshold may come from the billing database: no static label
            assert "threshold" not in rule["labels"], name


def test_dashboard_links_use_known_uids_and_variables() -> None:
    base = SETTINGS["links"]["dashboards"]
    for rule in alerts(DOCUMENT):
        url = rule["annotations"]["dashboard_url"]
        match = re.fullmatch(re.escape(base) + r"/d/([a-z-]+)(?:\?(.*))?", url)
        assert match, url
        assert match.group(1) in DASHBOARD_UIDS, url
        for part in filter(None, (match.group(2) or "").split("&")):
            variable, value = part.split("=", 1)
            assert variable.removeprefix("var-") in DASHBOARD_VARIABLES, url
            # the value is the alert's own label, URL-encoded
            label = variable.removeprefix("var-")
            assert value == f"{{{{ $labels.{label} | urlquery }}}}", url
            assert label in _output_labels(rule), f"{rule['alert']}: no label {label}"


def _output_labels(rule: dict[str, Any]) -> set[str]:
    """Labels an alert's expression keeps (from its by (...) clauses or recording name)."""
    expr = rule["expr"]
    found = set()
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        found |= {label.strip() for label in group.split(",")}
    for record in re.findall(r"\b(\w+):credit_\w+:\w+", expr):
        found |= set(record.split("_scope_id")[0].split("_")) | (
            {"scope_id"} if "scope_id" in record else set()
        )
    return found


def _github_anchor(heading: str) -> str:
    anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return anchor.replace(" ", "-")


def test_runbook_urls_point_at_existing_sections() -> None:
    text = RUNBOOKS.read_text()
    anchors = {_github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    base = SETTINGS["links"]["runbooks"]
    for rule in alerts(DOCUMENT):
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(base + "#"), url
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no section {url}"
    sections = set(re.findall(r"^## (Credit\w+)$", text, re.MULTILINE))
    assert sections == ALERT_NAMES, f"runbook sections without an alert: {sections - ALERT_NAMES}"


# --------------------------------------------------------------------------
# The example Alertmanager configuration
# --------------------------------------------------------------------------


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("amtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config() -> None:
    result = _amtool("check-config", str(ALERTMANAGER_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "6 inhibit rules" in result.stdout


ROUTES = [
    ({"alertname": "CreditBudgetExhausted", "severity": "critical", "organization": "initech",
      "scope": "organization", "scope_id": "initech", "threshold": "100"}, "pager-critical"),
    ({"alertname": "CreditPoolExhausted", "severity": "critical", "organization": "initech",
      "pool": "topup", "threshold": "100"}, "pager-critical"),
    ({"alertname": "CreditExporterDown", "severity": "critical", "job": "credit-exporter"},
     "pager-critical"),
    ({"alertname": "CreditBudgetAlmostExhausted", "severity": "high", "organization": "globex",
      "scope": "organization", "scope_id": "globex", "threshold": "90"}, "pager-high"),
    ({"alertname": "CreditBalanceLowAutoRechargeOff", "severity": "high",
      "organization": "initech"}, "pager-high"),
    ({"alertname": "CreditBudgetUsageHigh", "severity": "warning", "organization": "acme",
      "scope": "user", "scope_id": "max@acme.example", "threshold": "75"}, "team-channel"),
    ({"alertname": "CreditAgentRunaway", "severity": "warning", "organization": "umbrella",
      "agent": "lead-qualifier"}, "team-channel"),
    ({"alertname": "CreditExporterLateData", "severity": "warning", "job": "credit-exporter",
      "instance": "exporter:9187", "query": "usage_events",
      "metric": "credit_spent_credits_total", "direction": "up"}, "team-channel"),
    ({"alertname": "CreditBudgetUsageHigh", "severity": "info"}, "team-channel"),
    ({"alertname": "SomethingElse"}, "team-channel"),
]  # fmt: skip


@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=[r for _, r in ROUTES])
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    args = [f"{name}={value}" for name, value in labels.items()]
    result = _amtool(
        "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}",
        f"--verify.receivers={receiver}", *args,
    )  # fmt: skip
    assert result.returncode == 0, (labels, result.stdout, result.stderr)
    assert result.stdout.strip() == receiver


def test_every_alert_severity_has_a_route() -> None:
    """Each severity the rules can produce reaches the receiver the severity scheme names."""
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    routed = {
        re.fullmatch(r'severity="(\w+)"', route["matchers"][0]).group(1): route["receiver"]
        for route in config["route"]["routes"]
    }
    for rule in alerts(DOCUMENT):
        assert rule["labels"]["severity"] in routed, rule["alert"]


def test_inhibition_rules_cover_each_level_pair_and_guard_the_equal_trap() -> None:
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    for rule in config["inhibit_rules"]:
        for side in ("source_matchers", "target_matchers"):
            matchers = rule[side]
            assert any(m.startswith("alertname") for m in matchers), rule
            # every label compared by `equal` must be present on both sides
            for label in rule["equal"]:
                assert f'{label}=~".+"' in matchers, (label, side, rule)

"""Dashboards as code: the generated JSON, its structure and lint rules, and every
query run for real: PromQL against a Prometheus that scrapes the exporter on demo
data (with the dashboards' recording rules loaded), SQL against the demo database.

No Grafana server runs here; tests/dashboard_support.py reproduces how Grafana
interpolates variables for the forms the dashboards use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from alerting_support import recorded_names, recording_rules_only
from conftest import require_binary, skip_or_fail
from dashboard_support import (
    ALL,
    REPO,
    RULES,
    SENTINEL_SECONDS,
    Panel,
    builtins,
    for_panel,
    interpolate,
    is_prometheus,
    load_dashboards,
    offline_expr,
    panels,
    parse,
    resolve_defaults,
    selectors,
    sql_macros,
    variables,
    write_fresh_usage,
)
from support import (
    PrometheusProcess,
    http_get,
    select,
    start_exporter,
    start_prometheus,
    wait_until,
)

from credit_exporter import catalog
from credit_exporter.catalog import MetricType
from credit_exporter.demo.shapes import gateway
from dashboards import recording
from monitoring import config

DASHBOARDS = load_dashboards()
PANELS = [p for d in DASHBOARDS.values() for p in panels(d)]
PROM_TARGETS = [(p, t) for p in PANELS for t in p.targets if is_prometheus(t)]
SQL_TARGETS = [(p, t) for p in PANELS for t in p.targets if not is_prometheus(t)]
EXAMPLE = REPO / "config.example.yaml"

UIDS = set(config.settings()["dashboards"].values())
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "piechart", "table", "text", "row"}
# Series Prometheus itself writes (scrape health, alert state): not catalogue metrics.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}
# green, then yellow/orange/red at the budget alert levels (75/90/100 by default)
BUDGET_STEPS = [(step["color"], step["value"]) for step in config.budget_thresholds()["steps"]]
RATE_FUNCTIONS = {"rate", "irate", "increase"}
# Which Grafana interval a range function may use (no literal windows anywhere).
ALLOWED_RANGES = {
    "rate": {"$__rate_interval"},
    "irate": {"$__rate_interval"},
    "increase": {"$__range", "$__interval", "$__rate_interval"},
    "sum_over_time": {"$__range", "$__interval"},
}
# A counter's growth between the samples at a bucket's two ends (daily bars):
# linted like the increase() it stands for.
BOUNDARY_GROWTH = re.compile(r"clamp_min\((\w+\{[^}]*\}) - \1 offset (\$\w+), 0\)")
# Columns the seeds name for the row-level tables.
SQL_COLUMNS = {
    ("credit-usage", "Recent activity"):
        ["When", "Type", "Assistant", "Contact", "Channel", "Messages"],
    ("credit-org-analytics", "Usage requests"):
        ["Time", "Project", "Agent", "User", "Service type", "Model", "Pricing rule",
         "Input tokens", "Output tokens", "Credits", "Latency", "Status"],
    ("credit-org-analytics", "Usage items"):
        ["Project", "Service type", "Pricing rule", "Model", "Unit", "Requests", "Quantity",
         "Credits"],
    ("credit-models-users", "Peak hours"): ["Hour", "Credits per day at this hour"],
    ("credit-models-users", "Peak weekdays"): ["Weekday", "Credits per day"],
    ("credit-models-users", "Response time by time of day"):
        ["Period", "Average response time"],
}  # fmt: skip


def _grafanalib() -> None:
    try:
        import grafanalib  # noqa: F401
    except ImportError:
        skip_or_fail("grafanalib is not installed (pip install grafanalib)")


def _promql_parser() -> None:
    try:
        import promql_parser  # noqa: F401
    except ImportError:
        skip_or_fail("promql-parser is not installed (pip install promql-parser)")


def _paid_only() -> set[tuple[str, str]]:
    _grafanalib()
    from dashboards import agent_analytics
    from dashboards.common import panel_notes

    return {(agent_analytics.UID, t) for t, _, _, paid in panel_notes(agent_analytics.items())
            if paid}  # fmt: skip


def _known_names() -> set[str]:
    return catalog.all_series_names() | _rule_names() | recorded_names()


def _rule_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"]}


def _counter_names() -> set[str]:
    names = set()
    for metric in catalog.METRICS:
        if metric.type is MetricType.COUNTER:
            names.add(metric.name)
        elif metric.type is MetricType.HISTOGRAM:
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
    return names


def _gauge_names() -> set[str]:
    return {m.name for m in catalog.METRICS if m.type in (MetricType.GAUGE, MetricType.INFO)}


def _offline_selectors(panel: Panel, target: dict[str, Any]) -> list[Any]:
    expr = BOUNDARY_GROWTH.sub(r"increase(\1[\2])", target["expr"])
    return list(selectors(parse(offline_expr(expr, DASHBOARDS[panel.dashboard]))))


# --------------------------------------------------------------------------
# Generated files
# --------------------------------------------------------------------------


def test_committed_dashboard_json_equals_the_generators_output() -> None:
    _grafanalib()
    from dashboards import build

    stale = [p.name for p, text in build.outputs().items() if p.read_text() != text]
    assert not stale, f"run `python -m dashboards.build`: stale {stale}"


def test_docs_panel_reference_equals_the_generators_output() -> None:
    _grafanalib()
    from dashboards import build

    current = build.DOCS.read_text()
    assert current == build.docs_with_reference(current), "run `python -m dashboards.build`"


def test_build_check_mode_reports_no_stale_file() -> None:
    _grafanalib()
    result = subprocess.run([sys.executable, "-m", "dashboards.build", "--check"], cwd=REPO,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------


def test_the_six_dashboards_keep_their_uids() -> None:
    assert set(DASHBOARDS) == UIDS


def test_dashboards_are_current_grafana_json() -> None:
    legacy = {"rows", "style", "sharedCrosshair", "hideControls", "gnetId", "__inputs"}
    for uid, dashboard in DASHBOARDS.items():
        assert dashboard["schemaVersion"] >= 39, uid
        assert not legacy & set(dashboard), (uid, legacy & set(dashboard))
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), uid
        for panel in dashboard["panels"]:
            assert panel["type"] in PANEL_TYPES, (uid, panel["title"], panel["type"])
            assert not {"span", "maxDataPoints", "minSpan", "error", "height"} & set(panel)
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (uid, panel["title"])


def test_every_panel_has_a_title_a_description_and_a_datasource_variable() -> None:
    for panel in PANELS:
        data = panel.panel
        assert data["title"].strip(), panel
        assert data.get("description", "").strip(), panel
        if data["type"] == "text":
            continue
        uid = data["datasource"]["uid"]
        assert uid in ("${datasource}", "${billing}"), (panel, uid)
        assert panel.targets, panel
        for target in panel.targets:
            assert target["datasource"] == data["datasource"], panel


def test_every_numeric_panel_has_a_unit() -> None:
    for panel in PANELS:
        if panel.panel["type"] == "text":
            continue
        unit = panel.panel["fieldConfig"]["defaults"].get("unit")
        assert unit, f"{panel} has no unit"


def test_budget_and_plan_health_panels_colour_at_the_budget_alert_levels() -> None:
    budgets = DASHBOARDS["credit-budgets"]
    percent = [p for p in panels(budgets) if p.panel["fieldConfig"]["defaults"]["unit"]
               == "percent" and p.title != "Billing period elapsed"]  # fmt: skip
    titles = {p.title for p in percent}
    assert {"Organization budget used", "Budget used by scope", "Text queries",
            "Voice minutes", "Concurrent calls", "Phone numbers",
            "Human-agent seats"} <= titles  # fmt: skip
    for panel in percent:
        thresholds = panel.panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [(s["color"], s["value"]) for s in thresholds] == BUDGET_STEPS, panel
    overrides = [o for p in panels(budgets) for o in p.panel["fieldConfig"]["overrides"]
                 for prop in o["properties"] if prop["id"] == "thresholds"]  # fmt: skip
    assert len(overrides) >= 2  # the budget table's Used % and the projection
    for found in overrides:
        steps = next(p["value"] for p in found["properties"] if p["id"] == "thresholds")
        assert [(s["color"], s["value"]) for s in steps["steps"]] == BUDGET_STEPS


def test_dashboards_have_the_required_variables() -> None:
    required = {
        "credit-usage": {"datasource", "billing", "organization", "agent", "lens"},
        "credit-org-analytics": {"datasource", "billing", "organization", "service_type"},
        "credit-agent-analytics": {"datasource", "organization", "agent"},
        "credit-models-users": {"datasource", "billing", "organization", "granularity"},
        "credit-budgets": {"datasource", "organization", "scope", "scope_id"},
        "credit-exporter-health": {"datasource", "job", "instance"},
    }
    for uid, names in required.items():
        assert names <= set(variables(DASHBOARDS[uid])), (uid, names - set(variables(
            DASHBOARDS[uid])))  # fmt: skip
    usage_agent = variables(DASHBOARDS["credit-usage"])["agent"]
    assert usage_agent["includeAll"] and usage_agent["current"]["value"] == ["$__all"]
    assert not variables(DASHBOARDS["credit-agent-analytics"])["agent"]["multi"]


def test_health_job_variable_all_means_the_jobs_of_credit_exporter_not_every_target() -> None:
    """Panels read `up{job=~"$job"}`: a catch-all All value (".*") would list every
    target of a shared Prometheus. Without one, Grafana's All is the regex of the
    jobs that export credit_build_info."""
    job = variables(DASHBOARDS["credit-exporter-health"])["job"]
    assert job["includeAll"] and "allValue" not in job
    assert job["query"] == "label_values(credit_build_info, job)"


def test_every_variable_is_used_by_a_panel_or_another_variable() -> None:
    for uid, dashboard in DASHBOARDS.items():
        text = json.dumps([dashboard["panels"], [v.get("query") for v in variables(
            dashboard).values()]])  # fmt: skip
        for name in variables(dashboard):
            assert re.search(rf"\$\{{?{name}\b", text), f"{uid}: ${name} is unused"


def test_scope_variable_offers_every_budget_scope_of_the_catalogue() -> None:
    scope = variables(DASHBOARDS["credit-budgets"])["scope"]
    assert [o["value"] for o in scope["options"]] == list(catalog.BUDGET_SCOPES)
    assert scope["current"]["value"] == ["$__all"]


def test_default_time_ranges() -> None:
    assert DASHBOARDS["credit-usage"]["time"] == {"from": "now-30d", "to": "now"}
    assert DASHBOARDS["credit-org-analytics"]["time"] == {"from": "now/M", "to": "now"}


def test_every_seed_item_is_reproduced_by_existing_panels() -> None:
    _grafanalib()
    from dashboards import checklist

    views = {item.view for item in checklist.ITEMS}
    assert len(views) == 6
    for item in checklist.ITEMS:
        dashboard = DASHBOARDS[item.uid]
        titles = {p.title for p in panels(dashboard)}
        for entry in item.panels:
            if entry.startswith("$"):
                assert entry[1:] in variables(dashboard), (item.item, entry)
            else:
                assert entry in titles, (item.item, entry)


def test_agent_panels_link_to_agent_analytics_with_the_agent_set() -> None:
    found = []
    for panel in PANELS:
        links = list(panel.panel["fieldConfig"]["defaults"].get("links", []))
        for override in panel.panel["fieldConfig"]["overrides"]:
            links += [link for prop in override["properties"] if prop["id"] == "links"
                      for link in prop["value"]]  # fmt: skip
        for link in links:
            if "/d/credit-agent-analytics/" in link["url"]:
                assert re.search(r"var-agent=\$\{__(field\.labels|data\.fields)\.agent\}",
                                 link["url"]), panel  # fmt: skip
                assert "var-organization=" in link["url"]
                found.append(panel.title)
    assert {"Top assistants", "Top 10 agents"} <= set(found)


def test_budget_panels_link_to_usage() -> None:
    budgets = {p.title: p for p in panels(DASHBOARDS["credit-budgets"])}
    for title in ("Budget used by scope", "Organization budget used"):
        urls = [link["url"] for link in budgets[title].panel["fieldConfig"]["defaults"]["links"]]
        assert any(u.startswith("/d/credit-usage/") for u in urls), title


# --------------------------------------------------------------------------
# PromQL lint (offline syntax trees)
# --------------------------------------------------------------------------


def test_every_metric_name_is_in_the_catalogue_or_a_recording_rule() -> None:
    _promql_parser()
    known = _known_names() | PROMETHEUS_SERIES
    unknown = set()
    for panel, target in PROM_TARGETS:
        for selector in _offline_selectors(panel, target):
            unknown |= {(str(panel), n) for n in selector.names if n not in known}
        for var in re.findall(r'__name__=~"\$(\w+)"', target["expr"]):
            options = variables(DASHBOARDS[panel.dashboard])[var]["options"]
            unknown |= {(str(panel), o["value"]) for o in options if o["value"] not in known}
    for uid, dashboard in DASHBOARDS.items():
        for var in variables(dashboard).values():
            match = re.match(r"label_values\((\w+)", str(var.get("query")))
            if match and match.group(1) not in known:
                unknown.add((uid, match.group(1)))
    assert not unknown, sorted(unknown)


def test_counters_are_only_read_through_rate_or_increase() -> None:
    _promql_parser()
    counters = _counter_names()
    raw = [(str(p), s.names) for p, t in PROM_TARGETS for s in _offline_selectors(p, t)
           if set(s.names) & counters and s.function not in RATE_FUNCTIONS]  # fmt: skip
    assert not raw, raw


def test_recorded_increases_are_only_added_up_with_sum_over_time() -> None:
    """A recorded increase is already a difference: rate() or increase() of it would
    read every quiet minute as a counter reset."""
    _promql_parser()
    recorded = _rule_names()
    wrong = [(str(p), s.names, s.function) for p, t in PROM_TARGETS
             for s in _offline_selectors(p, t)
             if set(s.names) & recorded and s.function != "sum_over_time"]  # fmt: skip
    assert not wrong, wrong
    chosen = [t["expr"] for _, t in PROM_TARGETS if re.search(r'__name__=~"\$\w+"', t["expr"])]
    assert chosen and all("sum_over_time(" in expr for expr in chosen), chosen


def test_daily_bars_read_counters_at_the_day_boundaries() -> None:
    """Daily bars on backfilled hourly samples: a range selector's start sample is
    included by Prometheus 2 and excluded by Prometheus 3, so increase() over a day
    would be exact on one and an estimate on the other; instant lookups at both ends
    of the bucket read the same samples on both."""
    daily = [(p, t) for p, t in PROM_TARGETS if p.panel.get("interval") == "1d"]
    assert len(daily) >= 10, len(daily)
    ranged = [(str(p), t["expr"]) for p, t in daily if "[$__interval]" in t["expr"]]
    assert not ranged, ranged
    assert all(BOUNDARY_GROWTH.search(t["expr"]) for _, t in daily)


def test_gauges_are_never_rated() -> None:
    _promql_parser()
    gauges = _gauge_names()
    rated = [(str(p), s.names) for p, t in PROM_TARGETS for s in _offline_selectors(p, t)
             if set(s.names) & gauges and s.function in RATE_FUNCTIONS]  # fmt: skip
    assert not rated, rated


def test_range_selectors_use_grafana_intervals() -> None:
    """rate() over $__rate_interval, increase() over $__range or $__interval: never a
    literal window, which would be wrong at some zoom level or scrape interval."""
    _promql_parser()
    bad = []
    for panel, target in PROM_TARGETS:
        for selector in _offline_selectors(panel, target):
            if selector.range_seconds is None:
                continue
            used = SENTINEL_SECONDS.get(int(selector.range_seconds), "a literal window")
            if used not in ALLOWED_RANGES.get(selector.function or "", set()):
                bad.append((str(panel), selector.function, used))
    assert not bad, bad
    rates = [t["expr"] for _, t in PROM_TARGETS if "rate(" in t["expr"]]
    assert rates and all("$__rate_interval" in e for e in rates)


def test_recording_rules_pass_promtool_and_use_catalogue_metrics() -> None:
    _promql_parser()
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    counters = _counter_names()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names = {n for s in selectors(parse(rule["expr"])) for n in s.names}
            assert names and names <= catalog.all_series_names(), rule
            assert names <= counters, rule  # each pre-aggregates an absolute counter


def test_recording_rules_are_named_level_metric_operations() -> None:
    for name in _rule_names():
        level, metric, operations = name.split(":")
        assert level and operations, name
        assert metric in {m.name.removesuffix("_total") for m in catalog.METRICS} | {
            m.name for m in catalog.METRICS}, name  # fmt: skip
        rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
                    if r["record"] == name)  # fmt: skip
        kept = re.search(r"by \(([^)]*)\)", rule["expr"]).group(1)  # type: ignore[union-attr]
        assert level == "_".join(label.strip() for label in kept.split(",")), name


def test_provisioning_defines_both_datasources_and_the_dashboards_folder() -> None:
    folder = REPO / "dashboards" / "provisioning"
    sources = yaml.safe_load((folder / "datasources.yml").read_text())["datasources"]
    kinds = {s["uid"]: s["type"] for s in sources}
    assert kinds == {"prometheus": "prometheus",
                     "billing-postgres": "grafana-postgresql-datasource"}  # fmt: skip
    providers = yaml.safe_load((folder / "dashboards.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]


# --------------------------------------------------------------------------
# PostgreSQL panels on the demo database
# --------------------------------------------------------------------------


def _time_range(dashboard: dict[str, Any], now: datetime) -> tuple[datetime, datetime]:
    start = dashboard["time"]["from"]
    if start == "now/M":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), now
    match = re.fullmatch(r"now-(\d+)([dh])", start)
    assert match, start
    unit = {"d": "days", "h": "hours"}[match.group(2)]
    return now - timedelta(**{unit: int(match.group(1))}), now


def _sql_defaults(dashboard: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, var in variables(dashboard).items():
        if var.get("multi") or var.get("includeAll"):
            values[name] = ALL
        elif name == "organization":
            values[name] = "acme"  # the first organization, as Grafana's sorted default
        else:
            values[name] = var["current"].get("value", "")
    return values


def test_every_postgres_panel_query_runs_on_the_demo_database(demo_db: str) -> None:
    assert len(SQL_TARGETS) >= 6
    now = datetime.now(UTC)
    for panel, target in SQL_TARGETS:
        dashboard = DASHBOARDS[panel.dashboard]
        start, end = _time_range(dashboard, now)
        query = interpolate(target["rawSql"], dashboard, _sql_defaults(dashboard), {}, sql=True)
        query = sql_macros(query, start, end)
        assert not re.search(r"\$(\w|\{)", query), (panel, query)
        with psycopg.connect(demo_db) as conn:
            conn.execute("SET TRANSACTION READ ONLY")
            cursor = conn.execute(query)
            columns = [c.name for c in cursor.description or []]
            rows = cursor.fetchall()
        assert rows, f"{panel}: no rows"
        expected = SQL_COLUMNS.get((panel.dashboard, panel.title))
        assert expected is not None, f"{panel}: add its columns to SQL_COLUMNS"
        assert columns == expected, (panel, columns)


def test_recent_activity_has_no_cost_column_and_newest_first(demo_db: str) -> None:
    dashboard = DASHBOARDS["credit-usage"]
    panel = next(p for p in panels(dashboard) if p.title == "Recent activity")
    now = datetime.now(UTC)
    query = interpolate(panel.targets[0]["rawSql"], dashboard, _sql_defaults(dashboard), {},
                        sql=True)  # fmt: skip
    with psycopg.connect(demo_db) as conn:
        cursor = conn.execute(sql_macros(query, now - timedelta(days=30), now))
        rows = cursor.fetchall()
    assert not any("cost" in c.name.lower() or "credit" in c.name.lower()
                   for c in cursor.description or [])  # fmt: skip
    times = [r[0] for r in rows]
    assert times == sorted(times, reverse=True) and len(rows) == 100


# --------------------------------------------------------------------------
# PromQL against a real Prometheus scraping the exporter on demo data
# --------------------------------------------------------------------------

# The generated rules' budget and pool level alerts, firing without their `for`, so
# that the alert panels have ALERTS to show and join with the recorded levels.
LEVEL_ALERTS = "Credit(Budget|Pool)(UsageHigh|AlmostExhausted|Exhausted)"
# The recorded time to exhaustion that the Budgets dashboard reads (alert_rules/).
EXHAUSTION = [config.rule_names().BUDGET_EXHAUSTION, config.rule_names().POOL_EXHAUSTION]
# After new usage is written every counter must have moved before queries run.
MOVED = ["organization_agent:credit_spent_credits:increase1m", "credit_conversations_total",
         "credit_messages_total", "credit_visitors_total", "credit_ratings_total",
         "credit_paid_agent_transactions_total", "credit_topups_total",
         "organization_department_user:credit_user_requests:increase1m",
         "credit_response_duration_seconds_count"]  # fmt: skip


# An LLM gateway's budgets in acme (the default organization), exported by a second
# exporter on the gateway's tables: a metric is fed by one query per configuration, so
# a gateway's budgets and the billing schema's come from two exporters, as they would
# in production. (scope, scope_id, used, limit or None)
GATEWAY_TEAM = ("team", "ml-research", 800.0, 1000.0)
GATEWAY_KEY = ("api_key", "ci-bot", 52.5, 50.0)  # past its limit: the test alert fires
GATEWAY_UNLIMITED_KEY = ("api_key", hashlib.sha256(b"sk-free").hexdigest()[:12], 7.25, None)


def load_gateway_budgets(dsn: str) -> None:
    gateway.create(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO gateway_teams (team_id, team_alias, organization_id, max_budget, spend)"
            " VALUES ('team-1', %s, 'acme', %s, %s)",
            (GATEWAY_TEAM[1], GATEWAY_TEAM[3], GATEWAY_TEAM[2]),
        )
        conn.execute(
            "INSERT INTO gateway_keys (token, key_alias, team_id, max_budget, spend) VALUES"
            " (%s, %s, 'team-1', %s, %s), (%s, NULL, 'team-1', NULL, %s)",
            (hashlib.sha256(b"sk-ci").hexdigest(), GATEWAY_KEY[1], GATEWAY_KEY[3],
             GATEWAY_KEY[2], hashlib.sha256(b"sk-free").hexdigest(), GATEWAY_UNLIMITED_KEY[2]),
        )  # fmt: skip


# History loaded into Prometheus by `credit-exporter backfill` before it starts; backfill
# writes samples on multiples of the step, so a query at a step's time finds one
HISTORY = timedelta(hours=30)
HISTORY_STEP = timedelta(minutes=10)


@dataclass
class Stack:
    prometheus: PrometheusProcess
    dsn: str
    added: dict[str, float]
    history_from: datetime
    history_to: datetime
    live_from: float  # when the live scrapes had begun, before the new usage was written


def backfill_history(
    config: Path, dsn: str, data_dir: Path, instance: str
) -> tuple[datetime, datetime]:
    """Write the demo's last ``HISTORY`` into TSDB blocks where Prometheus will start,
    labelled like the live scrapes so that they continue the same series (two series
    for one counter would double every sum() until the backfilled one went stale)."""
    now = datetime.now(UTC)
    to = datetime.fromtimestamp(now.timestamp() // 600 * 600, UTC)  # steps land on :00, :10
    start = to - HISTORY
    done = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "backfill", "--quiet", "--config", str(config),
         "--from", start.isoformat(), "--to", to.isoformat(),
         "--step", f"{int(HISTORY_STEP.total_seconds())}s", "--output", str(data_dir),
         "--label", "job=credit-exporter", "--label", f"instance={instance}"],
        env={**os.environ, "CREDIT_EXPORTER_DSN": dsn}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return start, to


@pytest.fixture(scope="module")
def stack(make_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Exporter on config.example.yaml over a fresh week of demo data, the last 30 hours
    of it backfilled into Prometheus's storage, Prometheus with the recording rules
    scraping the exporter every second, then new usage written live."""
    require_binary("prometheus")
    from credit_exporter.demo.generator import load_demo

    dsn = make_database()
    load_demo(dsn, days=7, seed=42)
    load_gateway_budgets(dsn)
    config = yaml.safe_load(EXAMPLE.read_text())
    for query in config["queries"].values():
        query.update(interval="2s", timeout="2s")
    for stream in config["streams"].values():
        # write_fresh_usage adds a week of rows at once: one poll must take them all
        # within its timeout (about 1 s here on a loaded machine)
        stream.update(interval="2s", timeout="2s", settle="1s")
    work = tmp_path_factory.mktemp("dashboards")
    # the checkpoint panels read what its writes and start-up load report
    config["checkpoint"] = {"directory": str(work / "checkpoints")}
    exporter = start_exporter(config, work / "exporter", env={"CREDIT_EXPORTER_DSN": dsn})
    started = [exporter]
    try:
        budgets = {name: {**query, "interval": "2s", "timeout": "2s"}
                   for name, query in gateway.BUDGET_QUERIES.items()}  # fmt: skip
        gateway_exporter = start_exporter(
            {"databases": {"gateway": {"dsn_env": "CREDIT_EXPORTER_DSN"}}, "queries": budgets},
            work / "gateway-exporter", env={"CREDIT_EXPORTER_DSN": dsn},
        )  # fmt: skip
        started.append(gateway_exporter)
        for process in started:
            wait_until(lambda p=process: http_get(p.url + "/-/ready")[0] == 200, 60,
                       "exporter ready")  # fmt: skip
        # the recorded increases evaluated every second, like the scrapes here, and the
        # alert rules' records (time to exhaustion, levels) that the Budgets dashboard
        # reads, with the level alerts
        recording_rules = work / "recording_rules.yml"
        recording_rules.write_text(recording.render(interval="1s"))
        alert_records = work / "alert_records.yml"
        alert_records.write_text(recording_rules_only(interval="1s", alerts=LEVEL_ALERTS))
        target = exporter.url.removeprefix("http://")
        history = backfill_history(exporter.config_path, dsn, work / "prometheus" / "data", target)
        prometheus = start_prometheus(
            work / "prometheus", [target, gateway_exporter.url.removeprefix("http://")],
            rule_files=[recording_rules, alert_records],
            extra_args=["--storage.tsdb.retention.time=3650d"],
        )  # fmt: skip
        try:
            # the rules see the backfilled samples at once: wait for scrapes, then for two
            # evaluations over them, so the new usage below lands after a scraped total
            wait_until(
                lambda: prometheus.query('count_over_time(up{job="credit-exporter"}[1m]) >= 3'),
                60,
                "three scrapes",
            )
            live_from = time.time()
            time.sleep(2.5)
            added = write_fresh_usage(dsn)
            # the time to exhaustion of budgets and pools: recorded by a rule evaluation
            # after the scrapes above; and a level alert firing on them (an over-limit
            # budget of acme's)
            others = [f"count({name})" for name in EXHAUSTION]
            others.append(f'count(ALERTS{{alertstate="firing", alertname=~"{LEVEL_ALERTS}"}})')

            def probes() -> list[str]:
                # over the time since the live scrapes began (all after the backfilled
                # history), not a fixed minute: on a loaded machine the last probe may
                # pass more than a minute after the first
                since = f"{int(time.time() - live_from) + 1}s"
                moved = [f"sum({'sum_over_time' if ':' in m else 'increase'}({m}[{since}])) > 0"
                         for m in MOVED]  # fmt: skip
                return [*moved, f"max(deriv(credit_budget_used_credits[{since}])) > 0", *others]

            try:
                wait_until(lambda: all(prometheus.query(p) for p in probes()), 90,
                           "the new usage in every counter")  # fmt: skip
            except AssertionError as exc:
                still = [p for p in probes() if not prometheus.query(p)]
                scraped = prometheus.query(
                    'sum(credit_conversations_total{job="credit-exporter"})[120s:5s]'
                )
                served = sum(select(exporter.samples(), "credit_conversations_total").values())
                raise AssertionError(
                    f"{exc}; no data yet for {still}; conversations scraped {scraped},"
                    f" served now {served}"
                ) from None
            time.sleep(2)  # a couple more samples after the jump
            yield Stack(prometheus, dsn, added, *history, live_from)
        finally:
            prometheus.stop()
    finally:
        for process in started:
            process.stop()


def _series(prometheus: PrometheusProcess, selector: str) -> list[dict[str, str]]:
    return prometheus.api("/api/v1/series?" + urllib.parse.urlencode({"match[]": selector}))


def defaults(prometheus: PrometheusProcess, dashboard: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, list[str]]]:  # fmt: skip
    """The dashboard's default variable values, resolved against this Prometheus."""
    values, options = resolve_defaults(dashboard, lambda sel: _series(prometheus, sel))
    for name, var in variables(dashboard).items():
        assert var["type"] != "query" or options[name], f"{dashboard['uid']}: ${name} is empty"
    return values, options


def run_target(prometheus: PrometheusProcess, panel: Panel, target: dict[str, Any],
               values: dict[str, Any], options: dict[str, list[str]],
               at: float | None = None, rate_interval: str = "1m",
               range_seconds: int = 3600) -> dict[str, Any]:  # fmt: skip
    """Run one panel query as Grafana would (instant or range); the API's answer."""
    values = for_panel(panel, values, options)  # a repeated row sees one value
    dashboard = DASHBOARDS[panel.dashboard]
    expr = interpolate(target["expr"], dashboard, values,
                       builtins(panel, values, range_seconds, rate_interval))  # fmt: skip
    now = at or time.time()
    if target["instant"]:
        params = {"query": expr, "time": f"{now:.3f}"}
        path = "/api/v1/query"
    else:
        params = {"query": expr, "start": f"{now - 600:.3f}", "end": f"{now:.3f}",
                  "step": "15"}  # fmt: skip
        path = "/api/v1/query_range"
    status, body, _ = http_get(f"{prometheus.url}{path}?{urllib.parse.urlencode(params)}")
    answer = json.loads(body)
    answer["expr"] = expr
    answer["http_status"] = status
    return answer


@pytest.fixture(scope="module")
def answers(stack: Stack) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every panel's every query, with the dashboards' default variables."""
    out = {}
    resolved = {uid: defaults(stack.prometheus, d) for uid, d in DASHBOARDS.items()}
    for panel, target in PROM_TARGETS:
        values, options = resolved[panel.dashboard]
        out[(panel.dashboard, panel.title, target["refId"])] = run_target(
            stack.prometheus, panel, target, values, options)  # fmt: skip
    return out


def test_every_promql_query_is_accepted_by_prometheus(answers: dict) -> None:
    assert len(answers) == len(PROM_TARGETS) >= 140
    failed = {k: (a.get("error"), a["expr"]) for k, a in answers.items()
              if a["http_status"] != 200 or a.get("status") != "success"}  # fmt: skip
    assert not failed, failed


def test_every_promql_query_returns_data_with_the_default_variables(answers: dict) -> None:
    """No exceptions but the paid-agent panels, which are empty by design for a free agent
    (the default agent); test_paid_agent_panels_return_data_for_a_paid_agent covers them."""
    paid = _paid_only()
    empty = [k for k, a in answers.items()
             if not a["data"]["result"] and (k[0], k[1]) not in paid]  # fmt: skip
    assert not empty, [(k, answers[k]["expr"]) for k in empty]


def test_table_queries_merge_into_one_row_per_key(answers: dict) -> None:
    """Grafana's merge joins a table's queries on the fields all of them share: each
    multi-query table must share a key label, and rows must join on it."""
    ignored = {"__name__", "instance", "job"}
    tables = [p for p in PANELS if p.panel["type"] == "table" and len(p.targets) > 1
              and all(is_prometheus(t) for t in p.targets)]  # fmt: skip
    assert len(tables) >= 5
    for panel in tables:
        results = [answers[(panel.dashboard, panel.title, t["refId"])]["data"]["result"]
                   for t in panel.targets]  # fmt: skip
        keys = set.intersection(*[set(r["metric"]) - ignored for res in results for r in res])
        assert keys, f"{panel}: its queries share no label"
        rows = {tuple(r["metric"].get(k) for k in sorted(keys)) for res in results for r in res}
        assert len(rows) <= max(len(res) for res in results), panel


def test_paid_agent_panels_return_data_for_a_paid_agent(stack: Stack) -> None:
    paid = _paid_only()
    assert len(paid) >= 5
    dashboard = DASHBOARDS["credit-agent-analytics"]
    values, options = defaults(stack.prometheus, dashboard)
    agents = _series(
        stack.prometheus,
        f'credit_agent_info{{organization="{values["organization"]}", paid="true"}}',
    )
    values["agent"] = sorted(s["agent"] for s in agents)[0]
    for panel in panels(dashboard):
        for target in panel.targets:
            # increase() needs two scrapes of the agent's series inside the range
            wait_until(
                lambda panel=panel, target=target: run_target(
                    stack.prometheus, panel, target, values, options
                )["data"]["result"],
                30,
                f"data in {panel.dashboard}/{panel.title} for paid agent {values['agent']}",
            )


def _instant(prometheus: PrometheusProcess, panel: Panel, ref: str = "A",
             at: float | None = None, range_seconds: int = 3600) -> list[dict]:  # fmt: skip
    values, options = defaults(prometheus, DASHBOARDS[panel.dashboard])
    target = next(t for t in panel.targets if t["refId"] == ref)
    return run_target(prometheus, panel, target, values, options, at,
                      range_seconds=range_seconds)["data"]["result"]  # fmt: skip


def _panel(uid: str, title: str) -> Panel:
    return next(p for p in panels(DASHBOARDS[uid]) if p.title == title)


def test_panels_show_the_backfilled_history(stack: Stack) -> None:
    """Every query that reads only usage-event metrics returns data at a past instant, six
    hours before Prometheus started: what a new install shows once `credit-exporter
    backfill` has loaded its history. State gauges have no history in the billing schema
    and are not backfilled (docs/backfill.md), recording rules start with the live
    scrapes, and the exporter's own metrics describe the running process."""
    steps = (stack.history_to - stack.history_from) // HISTORY_STEP
    past = stack.history_from + (steps - 36) * HISTORY_STEP  # on a backfilled step
    assert past < stack.history_to - timedelta(hours=5)
    paid = _paid_only()
    suffixes = ("", "_bucket", "_sum", "_count")
    events = {m.name + suffix for m in catalog.METRICS if m.source is catalog.Source.EVENTS
              for suffix in suffixes}  # fmt: skip
    values_of = {uid: defaults(stack.prometheus, d) for uid, d in DASHBOARDS.items()}
    checked, empty = 0, []
    for panel, target in PROM_TARGETS:
        expr = target["expr"]
        if (panel.dashboard, panel.title) in paid or "ALERTS" in expr:
            continue
        parsed = parse(offline_expr(expr, DASHBOARDS[panel.dashboard]))
        names = {name for selector in selectors(parsed) for name in selector.names}
        if not names or not names <= events:
            continue
        values, options = values_of[panel.dashboard]
        # the dashboard's range ($__range) is the day before `past`, inside the history
        answer = run_target(stack.prometheus, panel, target, values, options,
                            at=past.timestamp(), rate_interval="30m",
                            range_seconds=24 * 3600)  # fmt: skip
        checked += 1
        if not answer["data"]["result"]:
            empty.append((panel.dashboard, panel.title, answer["expr"]))
    assert checked >= 35, checked  # 39 when written
    assert not empty, empty


def test_credits_used_in_range_counts_the_credits_written(stack: Stack) -> None:
    """The Usage headline over a range that starts after the backfilled history and
    before the new usage adds up the recorded increases: exactly the credits the
    billing database gained (per-series differences telescope, nothing extrapolates)."""
    panel = _panel("credit-usage", "Credits used in range")
    at = time.time()
    window = int(at - stack.live_from)  # whole seconds: $__range as Grafana sends it
    shown = float(_instant(stack.prometheus, panel, at=at, range_seconds=window)[0]["value"][1])
    assert shown == pytest.approx(stack.added["acme"], rel=1e-9)


def test_agent_slots_panel_shows_used_and_available_from_the_database(stack: Stack) -> None:
    panel = _panel("credit-usage", "Agent slots used")
    used = float(_instant(stack.prometheus, panel, "A")[0]["value"][1])
    available = float(_instant(stack.prometheus, panel, "B")[0]["value"][1])
    assert (used, available) == (8, 15)  # acme: 9 agents, one deleted; the team plan's 15


def test_firing_alerts_panel_lists_budget_alerts_of_the_organization(stack: Stack) -> None:
    rows = _instant(stack.prometheus, _panel("credit-budgets", "Firing budget alerts"))
    assert rows and {r["metric"]["organization"] for r in rows} == {"acme"}
    assert all(r["metric"]["alertstate"] == "firing" for r in rows)


def test_firing_alerts_panel_shows_each_level_alerts_threshold(stack: Stack) -> None:
    """Budget alerts carry no threshold label (a ladder in the billing database may
    set it): query B gives it, joined to the alert's row, for budgets and pools."""
    panel = _panel("credit-budgets", "Firing budget alerts")
    alerts = _instant(stack.prometheus, panel, "A")
    thresholds = {_row_key(r): float(r["value"][1]) for r in _instant(stack.prometheus, panel, "B")}
    settings = config.settings()
    levels = {**settings["budget_levels"], **settings["pool_levels"]}
    level_alerts = [r for r in alerts
                    if re.fullmatch(r"Credit(Budget|Pool)(\w+)", r["metric"]["alertname"])
                    and r["metric"]["alertname"].removeprefix("CreditBudget")
                    .removeprefix("CreditPool") in levels]  # fmt: skip
    assert any(r["metric"]["alertname"].startswith("CreditBudget") for r in level_alerts)
    for row in level_alerts:
        level = row["metric"]["alertname"].removeprefix("CreditBudget").removeprefix("CreditPool")
        # the demo's acme has no ladder: its budgets alert at the default levels
        assert thresholds[_row_key(row)] == levels[level]["threshold"], row["metric"]
    assert len(thresholds) == len(level_alerts)


def _row_key(row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The labels Grafana's merge joins a table's queries on."""
    return tuple(sorted((k, v) for k, v in row["metric"].items() if k != "__name__"))


def _by_scope(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(r["metric"]["scope"], r["metric"]["scope_id"]): float(r["value"][1]) for r in rows}


def test_budget_table_lists_team_and_api_key_budgets_with_their_limits(stack: Stack) -> None:
    """The gateway's team and keys in the Budgets by scope table: used, limit, share used;
    a key without a budget has its used credits and empty limit and share columns."""
    table = _panel("credit-budgets", "Budgets by scope")
    used, limit, share = (_by_scope(_instant(stack.prometheus, table, ref)) for ref in "ABC")
    for scope, scope_id, spent, budget in (GATEWAY_TEAM, GATEWAY_KEY):
        assert used[scope, scope_id] == spent
        assert limit[scope, scope_id] == budget
        assert share[scope, scope_id] == pytest.approx(100 * spent / budget, rel=1e-12)
    scope, scope_id, spent, _ = GATEWAY_UNLIMITED_KEY
    assert used[scope, scope_id] == spent
    assert (scope, scope_id) not in limit and (scope, scope_id) not in share


def _recorded_at(prometheus: PrometheusProcess, query: str, at: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    return list(prometheus.api(f"/api/v1/query?{params}")["result"])


def test_hours_until_exhaustion_panels_are_the_recorded_series_the_alerts_read(
    stack: Stack,
) -> None:
    """The bars, the table column and the pools stat show the alert rules' time to
    exhaustion in hours, basis included, for the same instant: one number everywhere."""
    at = time.time()
    org = '{organization="acme"}'

    def hours(rows: list[dict[str, Any]], *key: str) -> dict[tuple[str, ...], float]:
        return {tuple(r["metric"].get(k, "") for k in key): float(r["value"][1]) for r in rows}

    key = ("scope", "scope_id", "burn")
    budgets = hours(_recorded_at(stack.prometheus, EXHAUSTION[0] + org, at), *key)
    assert budgets
    expected = {k: v / 3600 for k, v in budgets.items()}
    bars = _panel("credit-budgets", "Hours until budget limit by scope")
    assert hours(_instant(stack.prometheus, bars, "A", at), *key) == pytest.approx(expected)
    table = _panel("credit-budgets", "Budgets by scope")
    column = hours(_instant(stack.prometheus, table, "E", at), "scope", "scope_id")
    assert column == pytest.approx({k[:2]: v for k, v in expected.items()})
    pools = hours(_recorded_at(stack.prometheus, EXHAUSTION[1] + org, at), "pool", "burn")
    assert pools
    stat = _panel("credit-budgets", "Hours until credits run out")
    assert hours(_instant(stack.prometheus, stat, "A", at), "pool", "burn") == pytest.approx(
        {k: v / 3600 for k, v in pools.items()}
    )


def test_scope_variable_narrows_the_budget_panels_to_one_gateway_scope(stack: Stack) -> None:
    dashboard = DASHBOARDS["credit-budgets"]
    panel = _panel("credit-budgets", "Budget used by scope")
    values, options = defaults(stack.prometheus, dashboard)
    for scope, shown in (("team", {GATEWAY_TEAM[1]}), ("api_key", {GATEWAY_KEY[1]})):
        values["scope"] = [scope]
        answer = run_target(stack.prometheus, panel, panel.targets[0], values, options)
        bars = _by_scope(answer["data"]["result"])
        assert {s for s, _ in bars} == {scope}, answer["expr"]
        assert {i for _, i in bars} == shown
    selector = interpolate(
        re.fullmatch(r"label_values\((.*), scope_id\)", variables(dashboard)["scope_id"]["query"])
        .group(1), dashboard, values, {},  # type: ignore[union-attr]
    )  # fmt: skip
    ids = {series["scope_id"] for series in _series(stack.prometheus, selector)}
    assert ids == {GATEWAY_KEY[1], GATEWAY_UNLIMITED_KEY[1]}, selector


def test_firing_alerts_panel_lists_an_exhausted_api_key_budget(stack: Stack) -> None:
    rows = _instant(stack.prometheus, _panel("credit-budgets", "Firing budget alerts"))
    keys = {r["metric"]["scope_id"] for r in rows if r["metric"].get("scope") == "api_key"}
    assert keys == {GATEWAY_KEY[1]}


def test_variable_queries_return_options(stack: Stack) -> None:
    for dashboard in DASHBOARDS.values():
        _, options = defaults(stack.prometheus, dashboard)
        for name, var in variables(dashboard).items():
            if var["type"] == "query":
                assert options[name], (dashboard["uid"], name)


def test_top_lists_hold_at_most_ten_named_agents(stack: Stack) -> None:
    assistants = _instant(stack.prometheus, _panel("credit-usage", "Top assistants"))
    assert 1 <= len(assistants) <= 10 and all(r["metric"]["agent"] for r in assistants)
    table = _panel("credit-org-analytics", "Top 10 agents")
    for ref in "ABC":
        rows = _instant(stack.prometheus, table, ref)
        assert 1 <= len(rows) <= 10, ref


def test_cost_by_project_top_six_and_others_add_up_to_the_total(stack: Stack) -> None:
    panel = _panel("credit-org-analytics", "Cost by project (top 6 and Others)")
    at = time.time()
    top = _instant(stack.prometheus, panel, "A", at)
    others = _instant(stack.prometheus, panel, "B", at)
    total = _instant(stack.prometheus, _panel("credit-org-analytics", "Total cost"), at=at)
    shown = sum(float(r["value"][1]) for r in top) + float(others[0]["value"][1])
    assert len(top) <= 6
    assert shown == pytest.approx(float(total[0]["value"][1]), rel=1e-9)


def test_preview_renders_every_dashboard_png_without_panel_errors(stack: Stack, tmp_path: Path
                                                                  ) -> None:  # fmt: skip
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        skip_or_fail("matplotlib is not installed (pip install matplotlib)")
    from dashboards import preview

    # each dashboard over its own default range, as the committed previews are drawn
    # (30 days at a panel's 1m min interval once asked Prometheus for too many points)
    code = preview.main(["--prometheus", stack.prometheus.url, "--postgres", stack.dsn,
                         "--output", str(tmp_path)])  # fmt: skip
    assert code == 0
    for uid in DASHBOARDS:
        png = tmp_path / f"{uid}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000, uid


def test_every_dashboard_has_a_committed_preview_linked_from_the_docs_and_readme() -> None:
    docs = (REPO / "docs" / "dashboards.md").read_text()
    readme = (REPO / "README.md").read_text()
    for uid in DASHBOARDS:
        png = REPO / "dashboards" / "preview" / f"{uid}.png"
        assert png.is_file() and png.stat().st_size < 600_000, uid
        assert f"../dashboards/preview/{uid}.png" in docs, uid
        assert f"dashboards/preview/{uid}.png" in readme, uid


def test_preview_title_shows_each_variable_as_its_picker_text_not_a_dict() -> None:
    from dashboards import preview
    from dashboards.grafana import ALL

    dashboard = DASHBOARDS["credit-usage"]
    values = {"datasource": "prometheus", "billing": "billing-postgres",
              "organization": "acme", "agent": ALL,
              "lens": [recording.SPENT_BY_AGENT.name,
                       recording.MESSAGES_BY_AGENT.name]}  # fmt: skip
    title = preview.title_text(dashboard, values)
    assert title == ("Credit usage  (credit-usage)   organization = acme   agent = All"
                     "   lens = credits + messages")  # fmt: skip


def test_preview_sql_table_cells_show_times_to_the_second_and_numbers_plainly() -> None:
    from decimal import Decimal

    from dashboards import preview

    started = datetime(2026, 11, 23, 5, 30, 7, 313123, tzinfo=UTC)
    row = (started, "Chat", 14, Decimal("2.50"), None)
    assert [preview.sql_cell(c) for c in row] == ["2026-11-23 05:30:07", "Chat", "14", "2.5", ""]


def test_preview_formats_a_field_with_its_decimals_as_grafana_does() -> None:
    """The Top 10 agents' conversations come from increase(), which extrapolates to
    the range's edges (8.01): the column shows whole conversations."""
    from dashboards import preview

    assert preview.fmt(8.0137, "", decimals=0) == "8"
    assert preview.fmt(90.0, "percent", decimals=0) == "90%"
    assert preview.fmt(8.0137, "") == "8.01"
    top = next(p for p in panels(DASHBOARDS["credit-org-analytics"]) if p.title == "Top 10 agents")
    conversations = preview.field_config(top.panel, "", "Conversations")
    assert conversations.get("decimals") == 0


def test_preview_default_range_is_each_dashboards_own_time_from() -> None:
    from dashboards import preview

    now = datetime(2026, 12, 4, 6, 0, tzinfo=UTC).timestamp()
    assert preview.default_range(DASHBOARDS["credit-usage"], now) == 30 * 86400
    assert preview.default_range(DASHBOARDS["credit-exporter-health"], now) == 6 * 3600
    # now/M: from the start of the month (UTC), 3 days and 6 hours here
    assert preview.default_range(DASHBOARDS["credit-org-analytics"], now) == 3 * 86400 + 6 * 3600


def test_preview_variable_override_replaces_the_default_and_refuses_an_unknown_value() -> None:
    from dashboards import preview

    values = {"organization": "acme", "agent": "billing-bot"}
    options = {"organization": ["acme"], "agent": ["billing-bot", "sales-outreach"]}
    assert preview.override(values, options, ["agent=sales-outreach"]) == {
        "organization": "acme", "agent": "sales-outreach"}  # fmt: skip
    # uid:name=value: that dashboard's variable only
    assert preview.override(values, options, ["credit-usage:agent=sales-outreach"],
                            "credit-agent-analytics")["agent"] == "billing-bot"  # fmt: skip
    with pytest.raises(ValueError, match="no-such-agent"):
        preview.override(values, options, ["agent=no-such-agent"])


def test_preview_title_puts_the_note_on_a_second_line() -> None:
    from dashboards import preview

    values = {"datasource": "prometheus", "organization": "acme", "job": ALL, "instance": ALL}
    title = preview.title_text(DASHBOARDS["credit-exporter-health"], values, "7 days of history")
    assert title.splitlines()[1] == "7 days of history"


def test_bars_of_growth_between_boundaries_say_a_series_first_bar_reads_low() -> None:
    from dashboards.common import FIRST_BAR_NOTE, GROWTH_MARK

    found = 0
    for dashboard in DASHBOARDS.values():
        for panel in panels(dashboard):
            if any(GROWTH_MARK in t.get("expr", "") for t in panel.targets):
                found += 1
                assert FIRST_BAR_NOTE in panel.panel["description"], panel
    assert found >= 12

"""Alerting end to end, with real components on loopback: the exporter on a fresh
demo database (config.example.yaml), Prometheus evaluating the generated rules,
the example Alertmanager configuration (receivers swapped for a webhook in the
test), and a webhook receiver recording what on-call would get; and the exporter
on a small table whose settled history changes under it, until the reconcile's
correction fires CreditExporterLateData."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from alerting_support import (
    ALERTMANAGER_EXAMPLE,
    E2E_OVERRIDES,
    AlertKey,
    AlertmanagerProcess,
    WebhookReceiver,
    alertmanager_binary,
    expected_alerts,
    for_test,
    key,
    load_generator,
    of_organizations,
    settle,
    start_alertmanager,
    wait_for_notifications,
)
from conftest import require_binary
from stream_support import SPEND_TABLE
from support import http_get, select, start_exporter, start_prometheus, wait_until

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "config.example.yaml"
ORGS = ("acme", "globex", "initech")
DEMO_DAYS, DEMO_SEED = 7, 42  # the demo the shared demo_db fixture loads
ROUTE = {"critical": "pager-critical", "high": "pager-high", "warning": "team-channel"}

generate = load_generator()


def _alertmanager_binary() -> str:
    binary = alertmanager_binary()
    return binary or require_binary("prometheus-alertmanager")


# --------------------------------------------------------------------------
# Inhibition, alert by alert, against a real Alertmanager
# --------------------------------------------------------------------------

NOW = datetime.now(UTC)


def _alert(alertname: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": alertname, **labels},
        "startsAt": NOW.isoformat(),
        "endsAt": (NOW + timedelta(hours=1)).isoformat(),
    }


BUDGET = "CreditBudget"
POOL = "CreditPool"
# (alert, muted by the example configuration, muted by a naive configuration)
CASES = [
    (_alert(f"{BUDGET}Exhausted", organization="acme", scope="user", scope_id="u1@acme",
            severity="critical"), False, False),
    (_alert(f"{BUDGET}UsageHigh", organization="acme", scope="user", scope_id="u1@acme",
            severity="warning"), True, True),
    (_alert(f"{BUDGET}AlmostExhausted", organization="acme", scope="user", scope_id="u1@acme",
            severity="high"), True, True),
    # another user, another organization, another scope with the same id: not muted
    (_alert(f"{BUDGET}UsageHigh", organization="acme", scope="user", scope_id="u2@acme",
            severity="warning"), False, False),
    (_alert(f"{BUDGET}UsageHigh", organization="globex", scope="user", scope_id="u1@acme",
            severity="warning"), False, False),
    (_alert(f"{BUDGET}UsageHigh", organization="acme", scope="project", scope_id="u1@acme",
            severity="warning"), False, False),
    # a gateway's team and virtual key: the exhausted team mutes its own 75%,
    # not the 75% of a key that happens to share its id
    (_alert(f"{BUDGET}Exhausted", organization="acme", scope="team", scope_id="ml-research",
            severity="critical"), False, False),
    (_alert(f"{BUDGET}UsageHigh", organization="acme", scope="team", scope_id="ml-research",
            severity="warning"), True, True),
    (_alert(f"{BUDGET}UsageHigh", organization="acme", scope="api_key", scope_id="ml-research",
            severity="warning"), False, False),
    # 90% mutes 75% of the organization budget
    (_alert(f"{BUDGET}AlmostExhausted", organization="acme", scope="organization",
            scope_id="acme", severity="high"), False, False),
    (_alert(f"{BUDGET}UsageHigh", organization="acme", scope="organization", scope_id="acme",
            severity="warning"), True, True),
    # pools: the exhausted plan pool mutes its own lower levels only
    (_alert(f"{POOL}Exhausted", organization="acme", pool="plan", severity="critical",
            threshold="100"), False, False),
    (_alert(f"{POOL}AlmostExhausted", organization="acme", pool="plan", severity="high",
            threshold="90"), True, True),
    # the trap: neither side has scope/scope_id, so a naive `equal` matches
    (_alert(f"{POOL}UsageHigh", organization="acme", pool="topup", severity="warning",
            threshold="75"), False, True),
    (_alert("CreditBalanceLowAutoRechargeOff", organization="acme", severity="high"),
     False, True),
    # a budget query mapped without scope_id: both sides empty, not "the same scope"
    (_alert(f"{BUDGET}Exhausted", organization="initech", scope="organization",
            severity="critical"), False, False),
    (_alert(f"{BUDGET}UsageHigh", organization="initech", scope="organization",
            severity="warning"), False, True),
    # the exporter: a failing query mutes its own staleness (the naive rules
    # mute the cause by its symptom, and by any other organization-less alert)
    (_alert("CreditExporterQueryFailing", instance="exporter:9187", query="budgets",
            severity="warning"), False, True),
    (_alert("CreditExporterDataStale", instance="exporter:9187", query="budgets",
            severity="high"), True, False),
    (_alert("CreditExporterDataStale", instance="exporter:9187", query="organizations",
            severity="high"), False, False),
    # a failing stream mutes the staleness of its own reconcile, not another's (the
    # naive rules mute both by any high exporter alert)
    (_alert("CreditExporterQueryFailing", instance="exporter:9187", query="usage_events",
            severity="warning"), False, True),
    (_alert("CreditExporterReconcileStale", instance="exporter:9187", query="usage_events",
            severity="warning"), True, True),
    (_alert("CreditExporterReconcileStale", instance="exporter:9187", query="messages",
            severity="warning"), False, True),
    # a stalled source mutes its own failing and staleness alerts (the stall is the
    # cause), not another source's
    (_alert("CreditExporterSourceStalled", instance="exporter:9187", query="credit_pools",
            severity="high"), False, False),
    (_alert("CreditExporterQueryFailing", instance="exporter:9187", query="credit_pools",
            severity="warning"), True, True),
    (_alert("CreditExporterDataStale", instance="exporter:9187", query="credit_pools",
            severity="high"), True, False),
    (_alert("CreditExporterDataStale", instance="exporter:9188", query="credit_pools",
            severity="high"), False, False),
]  # fmt: skip

# The rule most configurations start from: by severity, equal on the scope.
NAIVE_INHIBITION = [
    {"source_matchers": ['severity="critical"'], "target_matchers": ['severity=~"high|warning"'],
     "equal": ["organization", "scope", "scope_id"]},
    {"source_matchers": ['severity="high"'], "target_matchers": ['severity="warning"'],
     "equal": ["organization", "scope", "scope_id"]},
]  # fmt: skip


def _muted(manager: AlertmanagerProcess) -> dict[AlertKey, bool] | None:
    states = {key(a["labels"]): a["status"]["state"] for a in manager.alerts()}
    if len(states) < len(CASES) or "unprocessed" in states.values():
        return None
    return {alert: state == "suppressed" for alert, state in states.items()}


def test_inhibition_mutes_lower_levels_of_the_same_scope_only(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    binary = _alertmanager_binary()
    example = for_test(yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text()), receiver.url)
    naive = {**example, "inhibit_rules": NAIVE_INHIBITION}
    managers = {
        "example": start_alertmanager(binary, example, tmp_path / "example"),
        "naive": start_alertmanager(binary, naive, tmp_path / "naive"),
    }
    try:
        for manager in managers.values():
            manager.post_alerts([alert for alert, _, _ in CASES])
        results: dict[str, dict[AlertKey, bool]] = {}
        for name, manager in managers.items():

            def settled(manager: AlertmanagerProcess = manager, name: str = name) -> bool:
                found = _muted(manager)
                if found is None:
                    return False
                results[name] = found
                expected = {key(a["labels"]): muted for a, muted, _ in CASES}
                # the inhibitor learns about sources asynchronously: wait for them
                return name != "example" or found == expected

            wait_until(settled, 15, f"{name} alertmanager to process the alerts", step=0.2)
        for alert, muted, naive_muted in CASES:
            labels = key(alert["labels"])
            assert results["example"][labels] is muted, (dict(labels), "example config")
            assert results["naive"][labels] is naive_muted, (dict(labels), "naive config")
    finally:
        for manager in managers.values():
            manager.stop()


# --------------------------------------------------------------------------
# The whole chain on the demo data
# --------------------------------------------------------------------------


def _budgets_fast(config: dict[str, Any]) -> dict[str, Any]:
    """config.example.yaml, with the budgets and pools polled every 2s (30s as
    shipped) so that a limit raised in the database shows within the test."""
    for name in ("budgets", "credit_pools"):
        config["queries"][name]["interval"] = "2s"
        config["queries"][name]["timeout"] = "2s"
    return config


def _humanize(value: float) -> str:
    """Prometheus' ``humanize`` template function, for values of 1 and more."""
    prefix = ""
    for unit in ("k", "M", "G", "T"):
        if abs(value) < 1000:
            break
        prefix, value = unit, value / 1000
    return f"{value:.4g}{prefix}"


def _firing_in_prometheus(prometheus: Any) -> set[AlertKey]:
    return {
        key({k: v for k, v in alert["labels"].items()})
        for alert in prometheus.api("/api/v1/alerts")["alerts"]
        if alert["state"] == "firing"
    }


@pytest.mark.slow
def test_demo_alerts_reach_on_call_once_per_scope_and_resolve(
    make_database: Callable[[], str], tmp_path: Path, receiver: WebhookReceiver
) -> None:
    from credit_exporter.demo.generator import load_demo

    started = time.monotonic()
    binary = _alertmanager_binary()
    require_binary("prometheus")
    dsn = make_database()  # never the shared demo_db: this test writes to it
    load_demo(dsn, days=DEMO_DAYS, seed=DEMO_SEED)

    settings = generate.with_overrides(generate.load_settings(), E2E_OVERRIDES)
    rules_path = tmp_path / "credit-exporter.rules.yml"
    rules_path.write_text(generate.render(settings))
    example = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())

    exporter = start_exporter(
        _budgets_fast(yaml.safe_load(EXAMPLE_CONFIG.read_text())),
        tmp_path / "exporter",
        env={"CREDIT_EXPORTER_DSN": dsn},
    )
    stack: list[Any] = [exporter]
    try:
        wait_until(lambda: http_get(f"{exporter.url}/-/ready")[0] == 200, 60, "exporter ready")
        expected = expected_alerts(exporter.samples(), settings)
        manager = start_alertmanager(binary, for_test(example, receiver.url), tmp_path / "am")
        stack.append(manager)
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            [exporter.url.removeprefix("http://")],
            rule_files=[rules_path],
            alertmanager=manager.url.removeprefix("http://"),
            interval="1s",
        )
        stack.append(prometheus)

        # The demo puts the three organizations' budgets past 75, 90 and 100%.
        organization_scope = {
            org: {dict(a)["alertname"] for a in expected.delivered
                  if dict(a).get("scope") == "organization" and dict(a)["organization"] == org}
            for org in ORGS
        }  # fmt: skip
        assert organization_scope == {
            "acme": {"CreditBudgetUsageHigh"},
            "globex": {"CreditBudgetAlmostExhausted"},
            "initech": {"CreditBudgetExhausted"},
        }, organization_scope

        # 1. Firing: every expected alert arrives, at the receiver of its severity.
        wait_for_notifications(receiver, "firing", expected.delivered, timeout=45)
        settle(3)  # group_interval is 1s: anything inhibited would have arrived by now
        firing = receiver.alerts("firing")
        received = {key(alert["labels"]) for _, alert in firing}
        assert of_organizations(received, ORGS) == of_organizations(expected.delivered, ORGS)
        assert received == expected.delivered, (
            f"unexpected: {sorted(map(dict, received - expected.delivered))[:5]}"
        )
        for path, alert in firing:
            assert path == ROUTE[alert["labels"]["severity"]], (path, alert["labels"])
            annotations = alert["annotations"]
            assert annotations["runbook_url"].startswith(settings["links"]["runbooks"] + "#")
            assert annotations["dashboard_url"].startswith(settings["links"]["dashboards"])
            assert "unknown" not in annotations["summary"], annotations
        # The inhibited levels do fire in Prometheus: Alertmanager muted them.
        inhibited = expected.firing - expected.delivered
        assert inhibited, "the demo must exercise inhibition"
        assert inhibited <= _firing_in_prometheus(prometheus)
        assert not inhibited & {key(a["labels"]) for _, a in receiver.alerts()}
        initech = next(
            alert for _, alert in firing
            if alert["labels"]["alertname"] == "CreditBudgetExhausted"
            and alert["labels"]["scope"] == "organization"
            and alert["labels"]["organization"] == "initech"
        )  # fmt: skip
        used = exporter.value("credit_budget_used_credits", scope_id="initech")
        limit = exporter.value("credit_budget_limit_credits", scope_id="initech")
        assert used is not None and limit is not None
        text = (
            f"The organization budget of initech has used {_humanize(used)} of {_humanize(limit)}"
        )
        assert text in initech["annotations"]["description"], initech["annotations"]

        # Ladders of the billing database: umbrella's organization budget (about 60%,
        # under the default 75%) is paged at its organization's 50%; the umbrella
        # budget with a ladder of its own (60/90/100, at about 85%) is at UsageHigh
        # where its organization's ladder would say AlmostExhausted (80%).
        umbrella = _delivered(firing, organization="umbrella", scope="organization")
        ratio = _ratio(exporter, organization="umbrella", scope="organization")
        assert 0.5 <= ratio < 0.75, ratio
        assert umbrella["labels"]["alertname"] == "CreditBudgetUsageHigh", umbrella["labels"]
        assert umbrella["annotations"]["summary"].startswith("Credit budget past 50%:")
        assert (
            "alert threshold 50%, its organization's ladder in the billing database"
            in umbrella["annotations"]["description"]
        ), umbrella["annotations"]
        own_ladder = {
            name: value
            for name, value in next(iter(select(
                exporter.samples(), "credit_budget_alert_threshold_ratio", organization="umbrella"
            )))
            if name != "level"
        }  # fmt: skip
        assert own_ladder["scope"] != "organization", own_ladder
        own = _delivered(firing, **own_ladder)
        assert 0.8 <= _ratio(exporter, **own_ladder) < 0.9
        assert own["labels"]["alertname"] == "CreditBudgetUsageHigh", own["labels"]
        assert (
            "alert threshold 60%, its own ladder in the billing database"
            in own["annotations"]["description"]
        ), own["annotations"]

        # 2. Resolved: raise every budget limit of the three organizations.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE budgets SET monthly_limit = monthly_limit * 100 WHERE organization_id IN"
                " (SELECT id FROM organizations WHERE slug = ANY(%s))",
                (list(ORGS),),
            )
        budget_alerts = {
            alert for alert in of_organizations(expected.delivered, ORGS)
            if dict(alert)["alertname"].startswith("CreditBudget")
        }  # fmt: skip
        assert budget_alerts
        wait_for_notifications(receiver, "resolved", budget_alerts, timeout=30)
        settle(2)
        resolved = {key(alert["labels"]) for _, alert in receiver.alerts("resolved")}
        assert resolved == budget_alerts, sorted(map(dict, resolved ^ budget_alerts))[:5]
        assert not inhibited & {key(a["labels"]) for _, a in receiver.alerts()}
        # pools, balances and the other organizations are untouched: still firing
        still = _firing_in_prometheus(prometheus)
        assert expected.firing - of_organizations(expected.firing, ORGS) <= still
        assert {
            a for a in expected.firing if dict(a)["alertname"].startswith("CreditPool")
        } <= still

        # 3. One page per crossing: umbrella's organization budget moves past the
        # 80% of its ladder. AlmostExhausted pages; the UsageHigh notified in step 1
        # is muted from then on: neither a second notification nor a resolution.
        used = exporter.value(
            "credit_budget_used_credits", organization="umbrella", scope="organization"
        )
        assert used is not None
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE budgets SET monthly_limit = round(%s / 0.85, 6) WHERE scope ="
                " 'organization' AND organization_id = (SELECT id FROM organizations"
                " WHERE slug = 'umbrella')",
                (Decimal(repr(used)),),
            )
        scope = {"organization": "umbrella", "scope": "organization", "scope_id": "umbrella"}
        almost = key({**scope, "alertname": "CreditBudgetAlmostExhausted", "severity": "high"})
        usage_high = key({**scope, "alertname": "CreditBudgetUsageHigh", "severity": "warning"})
        wait_for_notifications(receiver, "firing", {almost}, timeout=30)

        def muted() -> bool:
            states = {key(a["labels"]): a["status"] for a in manager.alerts()}
            return usage_high in states and states[usage_high]["state"] == "suppressed"

        wait_until(muted, 15, "Alertmanager to mute umbrella's UsageHigh", step=0.2)
        settle(3)
        assert usage_high in _firing_in_prometheus(prometheus)
        pages = [(path, alert["status"]) for path, alert in receiver.alerts()
                 if key(alert["labels"]) in (almost, usage_high)]  # fmt: skip
        assert sorted(pages) == [("pager-high", "firing"), ("team-channel", "firing")], pages
        assert time.monotonic() - started < 90
    finally:
        for process in reversed(stack):
            process.stop()


def _delivered(firing: list[tuple[str, dict[str, Any]]], **labels: str) -> dict[str, Any]:
    """The one budget alert on-call got for a budget."""
    found = [
        alert
        for _, alert in firing
        if alert["labels"]["alertname"].startswith("CreditBudget")
        and all(alert["labels"].get(name) == value for name, value in labels.items())
    ]
    assert len(found) == 1, found
    return found[0]


def _ratio(exporter: Any, **labels: str) -> float:
    used = exporter.value("credit_budget_used_credits", **labels)
    limit = exporter.value("credit_budget_limit_credits", **labels)
    assert used is not None and limit, labels
    return used / limit


# --------------------------------------------------------------------------
# Late data: the reconcile corrects settled history, Prometheus alerts
# --------------------------------------------------------------------------

USAGE_TABLE = (
    SPEND_TABLE
    + """
INSERT INTO ev (occurred_at, org, credits) VALUES
    (now() - interval '2 hours', 'acme', 4),
    (now() - interval '1 hour', 'globex', 1);
"""
)
STREAM_LABELS = {"organization": "org", "project": "p", "agent": "a", "service_type": "st"}


def _late_data_config() -> dict[str, Any]:
    """One stream, polled every second and reconciled every second."""
    return {
        "databases": {"billing": {"dsn_env": "CREDIT_EXPORTER_DSN"}},
        "streams": {
            "usage": {
                "database": "billing",
                "time": "occurred_at",
                "key": "id",
                "settle": "1s",
                "interval": "1s",
                "timeout": "1s",
                "sql": "SELECT id, occurred_at, org, 'p' AS p, 'a' AS a, 'chat' AS st, credits"
                " FROM ev",
                "reconcile": {"interval": "1s", "chunk": "1h", "max_db_share": 1.0},
                "metrics": [
                    {"metric": "credit_spent_credits_total", "value": "credits",
                     "labels": STREAM_LABELS},
                    {"metric": "credit_requests_total", "labels": STREAM_LABELS},
                ],
            }
        },
    }  # fmt: skip


def test_a_settled_row_raised_in_the_database_fires_late_data_and_reaches_the_counter(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    started = time.monotonic()
    dsn = make_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(USAGE_TABLE)
    settings = generate.with_overrides(
        generate.load_settings(), {**E2E_OVERRIDES, "exporter": {"late_data": {"for": "1s"}}}
    )
    rules_path = tmp_path / "credit-exporter.rules.yml"
    rules_path.write_text(generate.render(settings))
    exporter = start_exporter(
        _late_data_config(), tmp_path / "exporter", env={"CREDIT_EXPORTER_DSN": dsn}
    )
    stack: list[Any] = [exporter]
    try:
        wait_until(lambda: http_get(f"{exporter.url}/-/ready")[0] == 200, 20, "exporter ready")
        target = exporter.url.removeprefix("http://")
        prometheus = start_prometheus(
            tmp_path / "prometheus", [target], rule_files=[rules_path], interval="1s"
        )
        stack.append(prometheus)
        # Prometheus must hold the correction counters at 0 before they move
        wait_until(
            lambda: prometheus.query(
                "count_over_time(credit_exporter_reconcile_difference_total"
                '{direction="up", metric="credit_spent_credits_total"}[1m]) >= 3'
            ),
            20,
            "three scrapes of the correction counter",
        )

        # acme's row settled at start-up; raising it is invisible to the polls
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE ev SET credits = 9 WHERE org = 'acme'")

        def late_data() -> list[dict[str, Any]]:
            return [
                alert for alert in prometheus.api("/api/v1/alerts")["alerts"]
                if alert["labels"]["alertname"] == "CreditExporterLateData"
                and alert["state"] == "firing"
            ]  # fmt: skip

        wait_until(late_data, 20, "CreditExporterLateData firing", step=0.2)
        (alert,) = late_data()  # credit_requests_total did not change: no alert for it
        assert alert["labels"] == {
            "alertname": "CreditExporterLateData", "job": "credit-exporter",
            "instance": target, "query": "usage", "metric": "credit_spent_credits_total",
            "direction": "up", "severity": settings["exporter"]["late_data"]["severity"],
        }  # fmt: skip
        annotations = alert["annotations"]
        summary, description = annotations["summary"], annotations["description"]
        assert summary.startswith("Late data in stream usage: credit_spent_credits_total +")
        assert summary.endswith(" folded in"), summary
        assert "The increase is folded in" in description, description
        assert "0 committed after the stream's window, 0 deleted" in description, description
        corrected = {
            sample["metric"]["organization"]: float(sample["value"][1])
            for sample in prometheus.query(
                'credit_spent_credits_total{job="credit-exporter"}'
            )
        }  # fmt: skip
        assert corrected == {"acme": 9.0, "globex": 1.0}
        assert time.monotonic() - started < 30
    finally:
        for process in reversed(stack):
            process.stop()

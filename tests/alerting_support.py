"""Support for the alerting tests: the rules generator, a PromQL metric-name
extractor (usable by any test that lints queries against the catalogue), a real
Alertmanager on loopback, a webhook receiver, and an independent oracle of which
alerts the demo data must raise."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from support import Samples, Service, http_get, launch, select, wait_until

from credit_exporter.demo.embedded import free_port

REPO = Path(__file__).resolve().parent.parent
ALERT_RULES = REPO / "alert_rules"
RULES_FILE = ALERT_RULES / "credit-exporter.rules.yml"
ALERTMANAGER_EXAMPLE = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"


LEVELS = ("UsageHigh", "AlmostExhausted", "Exhausted")
# Settings of the end-to-end test: short `for:` and windows; thresholds,
# severities, expressions and annotations as in alert_rules/settings.yml.
E2E_OVERRIDES: dict[str, Any] = {
    "budget_levels": {level: {"for": "1s"} for level in LEVELS},
    "pool_levels": {level: {"for": "1s"} for level in LEVELS},
    "projection": {"window": "10s", "for": "1s"},
    "runaway_agent": {"window": "10s", "baseline": "1m", "for": "1s"},
    "low_balance": {"for": "1s"},
    "plan_quota": {"for": "1s"},
}


def load_generator() -> ModuleType:
    """``alert_rules/generate.py`` as a module (alert_rules is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "alert_rules_generate", ALERT_RULES / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recording_rules_only(interval: str, alerts: str = "") -> str:
    """The generated rules file's recording rules, each group evaluated every
    ``interval``: the series (time to exhaustion, burn, levels) that the dashboards
    and ``credit-exporter report --prometheus`` read. Of its alerts only those whose
    name fully matches the regex ``alerts``, firing without their ``for``."""
    groups = []
    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        rules = [rule for rule in group["rules"] if "record" in rule
                 or (alerts and re.fullmatch(alerts, rule["alert"]))]  # fmt: skip
        rules = [{k: v for k, v in rule.items() if k != "for"} for rule in rules]
        if rules:
            groups.append({"name": group["name"], "interval": interval, "rules": rules})
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


def recorded_names() -> set[str]:
    """Every series name the generated rules file records."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


# --------------------------------------------------------------------------
# PromQL metric names
# --------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]*)"')


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (bare selectors and ``__name__="..."``).

    A lexical extraction, enough for linting: string literals, label matchers,
    ranges and grouping label lists are removed first; what remains of the
    identifiers, minus function calls and keywords, are metric names.
    """
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    while _BRACKETS.search(text):
        text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


_TEMPLATE_QUERY = re.compile(r'printf\s+"((?:[^"\\]|\\.)*)"[^}]*?\|\s*query\b')


def template_queries(text: str) -> list[str]:
    """PromQL run by ``{{ ... printf "<query>" ... | query }}`` in an alert template."""
    return [json.loads(f'"{found}"') for found in _TEMPLATE_QUERY.findall(text)]


def parsed_metric_names(expr: str) -> set[str]:
    """The same as ``promql_metric_names``, from a real parser's syntax tree
    (the ``promql_parser`` package, when installed)."""
    import promql_parser as p

    def walk(node: Any) -> set[str]:
        if isinstance(node, p.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, p.VectorSelector):
            names = {node.name} if node.name else set()
            return names | {
                m.value for m in node.matchers.matchers
                if m.name == "__name__" and m.op == p.MatchOp.Equal
            }  # fmt: skip
        if isinstance(node, p.BinaryExpr):
            children = [node.lhs, node.rhs]
        elif isinstance(node, p.AggregateExpr):
            children = [node.expr] + ([node.param] if node.param is not None else [])
        elif isinstance(node, p.Call):
            children = list(node.args)
        elif isinstance(node, p.ParenExpr | p.UnaryExpr | p.SubqueryExpr):
            children = [node.expr]
        else:
            children = []
        return set().union(*(walk(child) for child in children))

    return walk(p.parse(expr))


def rules(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for rule in rules(document) if "alert" in rule]


BUDGET_THRESHOLD = "organization_scope_scope_id_level:credit_budget_alert_threshold:ratio"


def threshold_record(document: Mapping[str, Any], level: str) -> str:
    """The expression recording a budget level's effective threshold (ladders of
    the billing database, else the settings' default)."""
    return next(
        rule["expr"]
        for rule in rules(document)
        if rule.get("record") == BUDGET_THRESHOLD and rule["labels"] == {"level": level}
    )


# --------------------------------------------------------------------------
# Alertmanager and a webhook receiver
# --------------------------------------------------------------------------


def alertmanager_binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@dataclass
class AlertmanagerProcess(Service):
    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        import urllib.request

        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200, response.status

    def alerts(self) -> list[dict[str, Any]]:
        status, body, _ = http_get(f"{self.url}/api/v2/alerts")
        assert status == 200, body[:300]
        return json.loads(body)


def start_alertmanager(
    binary: str, config: Mapping[str, Any], workdir: Path
) -> AlertmanagerProcess:
    """Alertmanager on a free loopback port, clustering off; waits until ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    process, url, log_path = launch(
        "alertmanager",
        lambda port: [binary, f"--config.file={config_path}",
                      f"--storage.path={workdir / 'data'}",
                      f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        workdir, "/-/ready", timeout=20,
    )  # fmt: skip
    return AlertmanagerProcess(process, url, log_path)


def for_test(example: Mapping[str, Any], webhook_url: str, wait: str = "1s") -> dict[str, Any]:
    """The example configuration with every receiver replaced by a webhook to
    ``<webhook_url>/<receiver name>`` and the route timings shortened; the
    routing tree, grouping and inhibition rules are kept as they are."""
    config = json.loads(json.dumps(example))
    config["receivers"] = [
        {"name": receiver["name"],
         "webhook_configs": [{"url": f"{webhook_url}/{receiver['name']}", "send_resolved": True}]}
        for receiver in config["receivers"]
    ]  # fmt: skip

    def shorten(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = wait
        if "repeat_interval" in route or route is config["route"]:
            route["repeat_interval"] = "1h"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return config


@dataclass
class Notification:
    receiver: str  # the URL path: which receiver Alertmanager chose
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """A tiny HTTP server that records every Alertmanager webhook notification."""

    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.notifications.append(Notification(self.path.strip("/"), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, status: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(receiver, alert) for every alert of every notification, optionally by status."""
        with self.lock:
            found = [(n.receiver, alert) for n in self.notifications for alert in n.body["alerts"]]
        return [(r, a) for r, a in found if status is None or a["status"] == status]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------
# The oracle: which alerts the exporter's values must raise
# --------------------------------------------------------------------------

AlertKey = tuple[tuple[str, str], ...]  # sorted label pairs, alertname included


def key(labels: Mapping[str, str]) -> AlertKey:
    return tuple(sorted(labels.items()))


@dataclass
class Expected:
    firing: set[AlertKey]  # what Prometheus fires
    delivered: set[AlertKey]  # what survives inhibition in Alertmanager


def _levels(levels: Mapping[str, Any], ratio: float) -> list[tuple[str, Mapping[str, Any]]]:
    return [(name, spec) for name, spec in levels.items() if ratio >= spec["threshold"] / 100]


def budget_thresholds(
    samples: Samples, settings: Mapping[str, Any], labels: Mapping[str, str]
) -> dict[str, float]:
    """The thresholds (shares of the limit) a budget alerts at, computed here apart
    from PromQL: level by level the budget's ladder in the billing database, else
    its organization's, else the settings' level of its scope (a value at or below
    0 is no level); then each no higher than the next level's."""
    org = labels["organization"]
    own = {
        dict(key)["level"]: value
        for key, value in select(samples, "credit_budget_alert_threshold_ratio", **labels).items()
        if value > 0
    }
    organization = {
        dict(key)["level"]: value
        for key, value in select(
            samples, "credit_organization_budget_alert_threshold_ratio", organization=org
        ).items()
        if value > 0
    }
    defaults = settings["budget_levels_by_scope"].get(labels["scope"], settings["budget_levels"])
    thresholds: dict[str, float] = {}
    higher = float("inf")
    for level in reversed(LEVELS):
        found = own.get(level, organization.get(level, defaults[level]["threshold"] / 100))
        thresholds[level] = higher = min(found, higher)
    return thresholds


def expected_alerts(samples: Samples, settings: Mapping[str, Any]) -> Expected:
    """Independent of PromQL: the threshold, balance and quota alerts the exported
    values must raise (counters are flat in a static database, so no runaway and
    no projection), and those left once lower levels are inhibited."""
    firing: set[AlertKey] = set()
    delivered: set[AlertKey] = set()

    def add(kind: str, crossed: list[tuple[str, Mapping[str, Any]]], labels: dict[str, str]):
        for index, (level, spec) in enumerate(crossed):
            extra = {} if kind == "CreditBudget" else {"threshold": f"{spec['threshold']:g}"}
            alert = key({**labels, **extra, "alertname": f"{kind}{level}",
                         "severity": spec["severity"]})  # fmt: skip
            firing.add(alert)
            if index == len(crossed) - 1:
                delivered.add(alert)

    for labels_key, used in select(samples, "credit_budget_used_credits").items():
        labels = dict(labels_key)
        limit = next(iter(select(samples, "credit_budget_limit_credits", **labels).values()))
        if limit > 0:
            levels = settings["budget_levels_by_scope"].get(
                labels["scope"], settings["budget_levels"]
            )
            thresholds = budget_thresholds(samples, settings, labels)
            crossed = [(name, spec) for name, spec in levels.items()
                       if used / limit >= thresholds[name]]  # fmt: skip
            add("CreditBudget", crossed, labels)
    balances: dict[str, float] = {}
    allocations: dict[str, float] = {}
    for labels_key, allocation in select(samples, "credit_allocation_credits").items():
        labels = dict(labels_key)
        balance = next(iter(select(samples, "credit_balance_credits", **labels).values()))
        org = labels["organization"]
        balances[org] = balances.get(org, 0.0) + balance
        allocations[org] = allocations.get(org, 0.0) + allocation
        if allocation > 0:
            ratio = (allocation - balance) / allocation
            add("CreditPool", _levels(settings["pool_levels"], ratio), labels)
    low = settings["low_balance"]
    for org, balance in balances.items():
        enabled = select(samples, "credit_auto_recharge_enabled", organization=org)
        threshold = select(samples, "credit_auto_recharge_threshold_credits", organization=org)
        floor = (
            next(iter(threshold.values()))
            if threshold
            else low["fallback_ratio"] * allocations[org]
        )
        if balance < floor and 1.0 not in enabled.values():
            alert = key({"alertname": "CreditBalanceLowAutoRechargeOff", "organization": org,
                         "severity": low["severity"]})  # fmt: skip
            firing.add(alert)
            delivered.add(alert)
    for labels_key, used in select(samples, "credit_plan_quota_used").items():
        labels = dict(labels_key)
        limit = next(iter(select(samples, "credit_plan_quota_limit", **labels).values()))
        if used > limit:
            alert = key({**labels, "alertname": "CreditPlanQuotaExceeded",
                         "severity": settings["plan_quota"]["severity"]})  # fmt: skip
            firing.add(alert)
            delivered.add(alert)
    return Expected(firing, delivered)


def of_organizations(alerts: Iterable[AlertKey], organizations: Iterable[str]) -> set[AlertKey]:
    wanted = set(organizations)
    return {alert for alert in alerts if dict(alert).get("organization") in wanted}


def wait_for_notifications(
    receiver: WebhookReceiver, status: str, wanted: set[AlertKey], timeout: float
) -> None:
    def arrived() -> bool:
        return wanted <= {key(alert["labels"]) for _, alert in receiver.alerts(status)}

    try:
        wait_until(arrived, timeout, f"{len(wanted)} {status} notifications", step=0.2)
    except AssertionError:
        got = {key(alert["labels"]) for _, alert in receiver.alerts(status)}
        missing = sorted(dict(alert) for alert in wanted - got)
        raise AssertionError(f"missing {status} notifications: {missing[:10]}") from None


def settle(seconds: float) -> None:
    """Let stragglers arrive before asserting that something did *not* happen."""
    time.sleep(seconds)

"""deploy/native_stack.py end to end: the docker-compose.yml topology (demo database,
backfilled history, exporter, live traffic, Prometheus with the rules, Alertmanager
with the example routing, webhook receiver) on loopback, from Debian packages and
the embedded PostgreSQL, checked against SQL written here."""

from __future__ import annotations

import itertools
import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alerting_support import alertmanager_binary
from conftest import require_binary
from support import http_get, wait_until

from credit_exporter.demo.embedded import free_port

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "native_stack.py"
DAYS = 3
HOUR = 3600
SERIES_LABELS = ("organization", "project", "agent", "service_type")
# The credit_spent_credits_total definition of the reference schema, written again
# here: credits of non-playground events, refunds (negative credits) excluded.
SPENT_SQL = """
SELECT o.slug, pr.slug, coalesce(a.slug, ''), st.slug, sum(greatest(e.credits, 0))
FROM usage_events e
JOIN organizations o ON o.id = e.organization_id
JOIN projects pr ON pr.id = e.project_id
LEFT JOIN agents a ON a.id = e.agent_id
JOIN service_types st ON st.id = e.service_type_id
WHERE NOT e.playground AND e.occurred_at <= %(t)s
GROUP BY 1, 2, 3, 4
"""


@dataclass
class NativeStack:
    process: subprocess.Popen[str]
    workdir: Path
    prometheus: str
    exporter: str
    dsn: str
    output: list[str]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql, **({"time": str(at)} if at is not None else {})}
        status, body, _ = http_get(
            f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode(params)}"
        )
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", (promql, data)
        return list(data["data"]["result"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeStack]:
    for binary in ("prometheus", "promtool"):
        require_binary(binary)
    if alertmanager_binary() is None:
        require_binary("prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("native") / "stack"
    ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager", "webhook")}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--days", str(DAYS), "--workdir", str(workdir),
         *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))),
         # at most the 5m lookback, or the recorded rules can miss every sample (test_compose)
         "--backfill-step", "1h", "--backfill-recent-step", "5m",
         "--scrape-interval", "2s", "--fast-alerts", "--state-history"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    assert process.stdout is not None
    watchdog = threading.Timer(240, process.kill)  # a start that hangs fails, not blocks
    watchdog.start()
    dsn = None
    for line in process.stdout:
        output.append(line)
        if match := re.match(r"\s+database\s+(\S+)", line):
            dsn = match.group(1)
        if line.startswith("Ctrl-C stops everything"):
            break
    watchdog.cancel()
    if dsn is None or process.poll() is not None:
        process.kill()
        pytest.fail("native stack did not start:\n" + "".join(output))
    stack = NativeStack(process, workdir, f"http://127.0.0.1:{ports['prometheus']}",
                        f"http://127.0.0.1:{ports['exporter']}", dsn, output)  # fmt: skip
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                rest, _ = process.communicate(timeout=60)
                output.append(rest)
            except subprocess.TimeoutExpired:
                process.kill()


def _key(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in SERIES_LABELS)


def _sql_spent(dsn: str, at: datetime) -> dict[tuple[str, ...], Decimal]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(SPENT_SQL, {"t": at}).fetchall()
    return {tuple(row[:4]): row[4] for row in rows}


@pytest.mark.slow
def test_backfilled_value_two_days_ago_equals_the_sql_total_up_to_then(
    stack: NativeStack,
) -> None:
    at = (int(time.time()) - 2 * 86400) // HOUR * HOUR  # a backfill step (1h)
    result = stack.query("credit_spent_credits_total", at=at)
    exported = {_key(r["metric"]): float(r["value"][1]) for r in result}
    expected = _sql_spent(stack.dsn, datetime.fromtimestamp(at, UTC))
    assert len(expected) > 50
    assert exported == {key: float(value) for key, value in expected.items()}
    assert {r["metric"]["job"] for r in result} == {"credit-exporter"}


@pytest.mark.slow
def test_state_history_budget_used_half_a_day_ago_is_the_periods_usage_up_to_then(
    stack: NativeStack,
) -> None:
    """--state-history: the organization budgets' used credits at a past 5m step, as
    Prometheus serves them, equal the SQL sum of the period's rows up to that time,
    and carry the labels of the live series (which continue them)."""
    at = (int(time.time()) - 43200) // 300 * 300
    past = {r["metric"]["scope_id"]: Decimal(r["value"][1]) for r in stack.query(
        'credit_budget_used_credits{scope="organization"}', at=at)}  # fmt: skip
    with psycopg.connect(stack.dsn) as conn:
        expected = dict(conn.execute(
            "SELECT o.slug, coalesce(sum(ue.credits), 0) FROM organizations o "
            "JOIN billing_periods bp ON bp.organization_id = o.id "
            " AND bp.starts_at <= %(t)s AND %(t)s < bp.ends_at "
            "JOIN budgets b ON b.organization_id = o.id AND b.scope = 'organization' "
            "LEFT JOIN usage_events ue ON ue.organization_id = o.id AND NOT ue.playground "
            " AND ue.occurred_at >= bp.starts_at AND ue.occurred_at <= %(t)s GROUP BY o.slug",
            {"t": datetime.fromtimestamp(at, UTC)}).fetchall())  # fmt: skip
    assert expected and past == expected
    labels = [frozenset(r["metric"].items()) for r in stack.query(
        'credit_budget_used_credits{scope="organization"}', at=at)]  # fmt: skip
    live = {frozenset(r["metric"].items()) for r in stack.query(
        'credit_budget_used_credits{scope="organization"}')}  # fmt: skip
    assert set(labels) <= live


@pytest.mark.slow
def test_live_samples_continue_the_backfilled_series_without_a_jump(stack: NativeStack) -> None:
    live_scrape = 'up{job="credit-exporter"} == 1'
    wait_until(lambda: bool(stack.query(live_scrape)), 30, "a live scrape")
    busiest = max(stack.query("credit_spent_credits_total"), key=lambda r: float(r["value"][1]))
    metric = busiest["metric"]
    selector = "credit_spent_credits_total{" + ",".join(
        f'{k}="{v}"' for k, v in metric.items() if k != "__name__"
    ) + "}"  # fmt: skip
    (up,) = stack.query(f'up{{job="credit-exporter"}}[{DAYS + 1}d]')
    started = float(up["values"][0][0])  # the first live scrape
    wait_until(lambda: len(_samples(stack, selector, started)[1]) >= 2, 30, "live samples")
    backfilled, live = _samples(stack, selector, started)
    assert backfilled and live, "backfilled and live samples in one series"
    (last_t, last_v), (_, first_live) = backfilled[-1], live[0]
    with psycopg.connect(stack.dsn) as conn:
        (after,) = conn.execute(
            "SELECT coalesce(sum(greatest(e.credits, 0)), 0) FROM usage_events e"
            " JOIN organizations o ON o.id = e.organization_id"
            " WHERE NOT e.playground AND o.slug = %s AND e.occurred_at > %s",
            (metric["organization"], datetime.fromtimestamp(last_t, UTC)),
        ).fetchone()  # the whole organization: an upper bound for one of its series
    assert 0 <= first_live - last_v <= float(after)
    values = [v for _, v in backfilled + live]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert stack.query(f"resets({selector}[4d])")[0]["value"][1] == "0"


def _samples(
    stack: NativeStack, selector: str, live_since: float
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    (series,) = stack.query(f"{selector}[{DAYS + 1}d]")
    values = [(float(t), float(v)) for t, v in series["values"]]
    return ([s for s in values if s[0] < live_since],
            [s for s in values if s[0] >= live_since])  # fmt: skip


@pytest.mark.slow
def test_prometheus_loaded_the_recording_and_alerting_rules(stack: NativeStack) -> None:
    status, body, _ = http_get(f"{stack.prometheus}/api/v1/rules")
    assert status == 200
    groups = json.loads(body)["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = {group["name"] for group in groups}
    assert {"credit-exporter-dashboards", "credit-budgets"} <= names
    assert {rule["type"] for rule in rules} == {"recording", "alerting"}
    # the dashboards' group evaluates once a minute, its first time at an offset
    # Prometheus hashes from the group: up to a minute after start
    wait_until(lambda: _healthy_rules(stack) == len(rules), 90, "every rule evaluated ok")


def _healthy_rules(stack: NativeStack) -> int:
    _, body, _ = http_get(f"{stack.prometheus}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    return sum(rule["health"] == "ok" for group in groups for rule in group["rules"])


@pytest.mark.slow
def test_the_webhook_receiver_got_alertmanager_notifications(stack: NativeStack) -> None:
    record = stack.workdir / "notifications.jsonl"

    def received() -> list[dict[str, Any]]:
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    wait_until(lambda: bool(received()), 90, "an Alertmanager notification", step=1)
    first = received()[0]
    assert first["receiver"] in {"pager-critical", "pager-high", "team-channel"}
    assert first["body"]["status"] == "firing"
    assert first["body"]["alerts"][0]["labels"]["alertname"].startswith("Credit")
    assert "notification receiver=" in (stack.workdir / "logs" / "webhook.log").read_text()


@pytest.mark.slow
def test_recording_rules_are_backfilled_over_the_last_day(stack: NativeStack) -> None:
    """The dashboards read recorded increases: half a day back (before Prometheus
    started) there are recorded samples, each the sum of the backfilled series' growth
    over one evaluation interval at its evaluation time (float sums: equal to 1e-9
    relative)."""
    record = "organization_agent:credit_spent_credits:increase1m"
    half_day_ago = time.time() - 12 * HOUR

    def recorded() -> list[dict[str, Any]]:
        return stack.query(f"{record}[1h]", at=half_day_ago)

    # Prometheus picks up new blocks at its once-a-minute reload; give a loaded machine two
    wait_until(lambda: bool(recorded()), 180, "Prometheus to load the recorded blocks", step=1)
    evaluated_at = float(recorded()[0]["values"][-1][0])
    sums = {(r["metric"]["organization"], r["metric"].get("agent", "")): float(r["value"][1])
            for r in stack.query(record, at=evaluated_at)}  # fmt: skip
    raw: dict[tuple[str, str], list[float]] = {}
    growth = "clamp_min(credit_spent_credits_total - credit_spent_credits_total offset 1m, 0)"
    for r in stack.query(growth, at=evaluated_at):
        key = (r["metric"]["organization"], r["metric"].get("agent", ""))
        raw.setdefault(key, []).append(float(r["value"][1]))
    assert len(sums) > 5
    assert sums == pytest.approx({key: math.fsum(v) for key, v in raw.items()}, rel=1e-9)


@pytest.mark.slow
def test_promtool_logs_go_to_a_file_not_the_console(stack: NativeStack) -> None:
    log = (stack.workdir / "logs" / "backfill-rules.log").read_text()
    assert "level=" in log  # promtool's own lines, one per rule group and block
    assert not [line for line in stack.output if "level=" in line and "promtool" in line.lower()]
    assert not [line for line in stack.output if line.startswith("ts=") or " level=info " in line]


@pytest.mark.slow
def test_sigint_stops_every_process_and_the_database(stack: NativeStack) -> None:
    stack.process.send_signal(signal.SIGINT)
    rest, _ = stack.process.communicate(timeout=60)
    assert stack.process.returncode == 0, rest
    for url in (stack.prometheus, stack.exporter):
        with pytest.raises(OSError):
            http_get(f"{url}/-/healthy")
    assert not (stack.workdir / "postgres" / "pgdata" / "postmaster.pid").exists()


def test_a_non_empty_workdir_it_did_not_create_is_refused_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    done = subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert f"--workdir {tmp_path}: not empty and not a native stack's" in done.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _native_stack_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("native_stack", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fast_alerts_set_every_alert_for_to_one_second(tmp_path: Path) -> None:
    import yaml

    alerts, _ = _native_stack_module().rule_files(tmp_path, fast_alerts=True)
    rules = [r for g in yaml.safe_load(Path(alerts).read_text())["groups"] for r in g["rules"]]
    waits = {rule["alert"]: rule.get("for") for rule in rules if "alert" in rule}
    assert len(waits) >= 15
    assert {name: wait for name, wait in waits.items() if wait != "1s"} == {}


def test_native_stack_help_says_its_first_paragraph_whole() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "from Debian packages and the embedded PostgreSQL:" in text, text

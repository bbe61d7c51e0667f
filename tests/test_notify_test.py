"""credit-exporter notify-test through a real Alertmanager (the example routing, receivers
swapped for a webhook) and a real Prometheus with the repository's rules."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from alerting_support import (
    ALERTMANAGER_EXAMPLE,
    WebhookReceiver,
    alertmanager_binary,
    for_test,
    start_alertmanager,
)
from conftest import require_binary
from support import start_prometheus, wait_until

from credit_exporter import cli

REPO = Path(__file__).resolve().parent.parent
BUDGETS = """\
credit_budget_used_credits{organization="acme",scope="project",scope_id="support"} 750
credit_budget_limit_credits{organization="acme",scope="project",scope_id="support"} 1000
credit_budget_used_credits{organization="globex",scope="organization",scope_id="globex"} 10
credit_budget_limit_credits{organization="globex",scope="organization",scope_id="globex"} 1000
"""


@pytest.fixture
def alertmanager_url(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[str]:
    binary = alertmanager_binary() or require_binary("prometheus-alertmanager")
    example = for_test(yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text()), receiver.url)
    manager = start_alertmanager(binary, example, tmp_path / "alertmanager")
    try:
        yield manager.url
    finally:
        manager.stop()


@pytest.fixture
def prometheus_url(tmp_path: Path) -> Iterator[str]:
    """A Prometheus scraping fixed budget gauges, with the recording rules."""

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(BUDGETS.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prometheus = start_prometheus(
        tmp_path / "prometheus", [f"127.0.0.1:{server.server_port}"],
        rule_files=[REPO / "alert_rules" / "credit-exporter.rules.yml"],
    )  # fmt: skip
    try:
        wait_until(
            lambda: prometheus.query("organization_scope_scope_id:credit_budget_usage:ratio"),
            30, "the budget ratio recording rule",
        )  # fmt: skip
        yield prometheus.url
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()


def test_a_test_alert_carries_the_figures_of_the_budget_nearest_its_limit(
    alertmanager_url: str, prometheus_url: str, receiver: WebhookReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    code = cli.main(["notify-test", "--alertmanager", alertmanager_url,
                     "--prometheus", prometheus_url, "--severity", "high"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Alertmanager routed it to: pager-high" in out
    wait_until(lambda: receiver.alerts("firing"), 30, "the test notification")
    ((route, alert),) = receiver.alerts("firing")
    assert route == "pager-high"  # the route a real severity=high budget alert takes
    assert alert["labels"] == {
        "alertname": "CreditTestNotification", "severity": "high", "test": "true",
        "organization": "acme", "scope": "project", "scope_id": "support",
    }  # fmt: skip
    assert "acme project support: 750.00 of 1,000.00 credits" in alert["annotations"]["description"]
    assert (
        alert["annotations"]["summary"]
        == "Test notification: acme project support at 75% of its budget"
    )


def test_without_prometheus_the_test_alert_still_tests_the_route(
    alertmanager_url: str, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["notify-test", "--alertmanager", alertmanager_url,
                     "--severity", "critical"]) == 0  # fmt: skip
    assert "Alertmanager routed it to: pager-critical" in capsys.readouterr().out
    wait_until(lambda: receiver.alerts("firing"), 30, "the test notification")
    assert [route for route, _ in receiver.alerts("firing")] == ["pager-critical"]


def test_an_unreachable_alertmanager_is_one_plain_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from credit_exporter.demo.embedded import free_port

    port = free_port()
    assert cli.main(["notify-test", "--alertmanager", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"credit-exporter notify-test: 127.0.0.1:{port}: ") and "\n" not in err

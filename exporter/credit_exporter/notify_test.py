"""``credit-exporter notify-test``: one test alert, with real figures, through Alertmanager.

On-call checks the routing before the first real page: the alert carries the
labels a budget alert of the chosen severity carries (the example Alertmanager
configuration routes on ``severity``), the figures of the budget nearest its
limit when a Prometheus is given, and it resolves on its own after
``--duration``. Its name, ``CreditTestNotification``, is one no inhibition rule
names, so nothing real mutes it and it mutes nothing real.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

ALERT_NAME = "CreditTestNotification"
SEVERITIES = ("critical", "high", "warning", "info")
RATIO = "organization_scope_scope_id:credit_budget_usage:ratio"  # alert_rules' recording rule
BUDGET_KEY = ("organization", "scope", "scope_id")


class NotifyError(Exception):
    """Something the on-call must fix before a test can be sent (said in one line)."""


@dataclass(frozen=True)
class BudgetFigures:
    labels: dict[str, str]  # organization, scope, scope_id
    used: float
    limit: float

    @property
    def ratio(self) -> float:
        return self.used / self.limit


def _get_json(url: str, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, ValueError) as error:
        host = urllib.parse.urlsplit(url).netloc
        raise NotifyError(f"{host}: {getattr(error, 'reason', error)}") from None


def _instant(prometheus: str, promql: str, timeout: float) -> list[dict[str, Any]]:
    url = f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    data = _get_json(url, timeout)
    if data.get("status") != "success":
        raise NotifyError(f"Prometheus: {data.get('error', 'query failed')}")
    return list(data["data"]["result"])


def budget_nearest_its_limit(prometheus: str, timeout: float = 10.0) -> BudgetFigures | None:
    """The budget scope with the highest share of its limit used, or None without data."""
    top = _instant(prometheus, f"topk(1, {RATIO})", timeout)
    if not top:
        return None
    labels = {key: top[0]["metric"].get(key, "") for key in BUDGET_KEY}
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    figures = []
    for metric in ("credit_budget_used_credits", "credit_budget_limit_credits"):
        found = _instant(prometheus, f"max({metric}{{{selector}}})", timeout)
        if not found:
            return None
        figures.append(float(found[0]["value"][1]))
    return BudgetFigures(labels, figures[0], figures[1])


def build_alert(
    severity: str, figures: BudgetFigures | None, duration: timedelta, now: datetime
) -> dict[str, Any]:
    """The alert as Alertmanager's v2 API takes it."""
    labels = {"alertname": ALERT_NAME, "severity": severity, "test": "true"}
    if figures is not None:
        labels |= figures.labels
        who = " ".join(figures.labels.values())
        summary = f"Test notification: {who} at {figures.ratio:.0%} of its budget"
        figures_text = (
            f"The budget nearest its limit is {who}: {figures.used:,.2f} of "
            f"{figures.limit:,.2f} credits used this billing period ({figures.ratio:.1%})."
        )
    else:
        summary = "Test notification from credit-exporter"
        figures_text = "No budget figures were read (no --prometheus, or it has no budget data)."
    return {
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": (
                f"A test sent by `credit-exporter notify-test` to check where a {severity} "
                f"budget alert is delivered; nothing is wrong. {figures_text} It resolves by "
                f"itself at {(now + duration).strftime('%H:%M UTC')}."
            ),
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + duration).isoformat(),
    }


def send(alertmanager: str, alert: dict[str, Any], timeout: float = 10.0) -> list[str]:
    """Post the alert; return the receivers Alertmanager routed it to."""
    base = alertmanager.rstrip("/")
    request = urllib.request.Request(
        f"{base}/api/v2/alerts", data=json.dumps([alert]).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        body = error.read()[:200]
        raise NotifyError(f"Alertmanager answered HTTP {error.code}: {body!r}") from None
    except (urllib.error.URLError, TimeoutError) as error:
        host = urllib.parse.urlsplit(base).netloc
        raise NotifyError(f"{host}: {getattr(error, 'reason', error)}") from None
    query = urllib.parse.urlencode({"filter": f'alertname="{ALERT_NAME}"'})
    listed = _get_json(f"{base}/api/v2/alerts?{query}", timeout)
    wanted = alert["labels"]
    return sorted(
        {receiver["name"] for found in listed if found["labels"] == wanted
         for receiver in found.get("receivers", [])}
    )  # fmt: skip


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "notify-test",
        help="send one test alert with real figures through Alertmanager",
        description=(
            "Send one alert named CreditTestNotification to Alertmanager, with the labels a "
            "budget alert of --severity has and, with --prometheus, the figures of the budget "
            "nearest its limit. Prints the receivers Alertmanager routed it to. It resolves "
            "by itself after --duration."
        ),
    )
    parser.add_argument("--alertmanager", required=True, metavar="URL", help="Alertmanager URL")
    parser.add_argument("--prometheus", metavar="URL", help="read real figures from it")
    parser.add_argument("--severity", choices=SEVERITIES, default="warning",
                        help="the route to test (default %(default)s)")  # fmt: skip
    parser.add_argument("--duration", type=int, default=5, metavar="MINUTES",
                        help="minutes until it resolves (default %(default)s)")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        figures = budget_nearest_its_limit(args.prometheus) if args.prometheus else None
        alert = build_alert(
            args.severity, figures, timedelta(minutes=args.duration), datetime.now(UTC)
        )
        receivers = send(args.alertmanager, alert)
    except NotifyError as error:
        print(f"credit-exporter notify-test: {error}", file=sys.stderr)
        return 1
    print(alert["annotations"]["summary"])
    print(alert["annotations"]["description"])
    if receivers:
        print(f"Alertmanager routed it to: {', '.join(receivers)}")
    else:
        print("Alertmanager accepted it but lists no receiver for it yet (is it silenced?)")
    return 0

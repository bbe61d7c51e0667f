"""Time to exhaustion for the report, read from Prometheus at report time.

The billing database keeps no history of budgets or balances, so it cannot say
how fast they move; the alert rules (alert_rules/) record that as one series per
budget and pool, which the Budgets dashboard and the alerts' "Runs out" read too.
``--prometheus URL`` reads the same series, so the report shows the same number.
Its ``burn`` label says which burn a figure assumes (docs/alerts.md).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from credit_exporter.report.model import BalanceRow, BudgetRow, ExhaustionSource, Report

# The alert rules' records (alert_rules/rules_settings.py; a test compares them).
BUDGET_SERIES = "organization_scope_scope_id:credit_budget_exhaustion:seconds"
POOL_SERIES = "organization_pool:credit_pool_exhaustion:seconds"
# What Prometheus must scrape for an absent series to mean "not burning" rather
# than "unknown": the rule's inputs.
BUDGET_INPUTS = (
    "max by (organization, scope, scope_id) (credit_budget_used_credits{sel})"
    " and on (organization) "
    "max by (organization) (credit_billing_period_start_timestamp_seconds{sel})"
)
# (a pool that never spent has no spend series of its own: its organization's count)
POOL_INPUTS = (
    "max by (organization, pool) (credit_balance_credits{sel})"
    " and on (organization) max by (organization) (credit_spent_by_pool_credits_total{sel})"
)
TIMEOUT_SECONDS = 10

# runs_out_status values
RUNS_OUT = "runs_out"
NOT_BURNING = "not_burning"
ALREADY_OVER = "already_over"  # a budget at or over its limit, a pool with nothing left
UNKNOWN = "unknown"  # Prometheus does not scrape this budget or pool
NOT_CURRENT_PERIOD = "not_current_period"
PER_ORGANIZATION = "per_organization"  # a pool row adds up every organization's pool
STATUSES = (RUNS_OUT, NOT_BURNING, ALREADY_OVER, UNKNOWN, NOT_CURRENT_PERIOD, PER_ORGANIZATION)


class PrometheusError(Exception):
    """Prometheus could not be read (unreachable, an error answer, not a vector)."""


@dataclass(frozen=True)
class Recorded:
    """What Prometheus held at ``read_at``: seconds and burn basis per key, and the
    keys whose inputs it scrapes."""

    read_at: datetime
    budgets: dict[tuple[str, str, str], tuple[float, str]]
    pools: dict[tuple[str, str], tuple[float, str]]
    budget_inputs: set[tuple[str, str, str]]
    pool_inputs: set[tuple[str, str]]


def _selector(organization: str | None) -> str:
    return "" if organization is None else "{organization=" + json.dumps(organization) + "}"


def _vector(url: str, query: str, at: datetime) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": query, "time": f"{at.timestamp():.3f}"})
    try:
        with urllib.request.urlopen(
            f"{url.rstrip('/')}/api/v1/query?{params}", timeout=TIMEOUT_SECONDS
        ) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:200]
        raise PrometheusError(f"{url}: HTTP {error.code} {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise PrometheusError(f"{url}: {getattr(error, 'reason', error)}") from None
    data = body.get("data", {}) if isinstance(body, dict) else {}
    if body.get("status") != "success" or data.get("resultType") != "vector":
        raise PrometheusError(f"{url}: unexpected answer to {query!r}")
    return list(data["result"])


def read(url: str, organization: str | None, at: datetime) -> Recorded:
    """The recorded time to exhaustion of every budget and pool at ``at``."""
    sel = _selector(organization)
    budgets = {
        (m["organization"], m["scope"], m["scope_id"]): (float(v), m.get("burn", ""))
        for m, (_, v) in ((r["metric"], r["value"]) for r in _vector(url, BUDGET_SERIES + sel, at))
    }
    pools = {
        (m["organization"], m["pool"]): (float(v), m.get("burn", ""))
        for m, (_, v) in ((r["metric"], r["value"]) for r in _vector(url, POOL_SERIES + sel, at))
    }
    budget_inputs = {
        (r["metric"]["organization"], r["metric"]["scope"], r["metric"]["scope_id"])
        for r in _vector(url, BUDGET_INPUTS.replace("{sel}", sel), at)
    }
    pool_inputs = {
        (r["metric"]["organization"], r["metric"]["pool"])
        for r in _vector(url, POOL_INPUTS.replace("{sel}", sel), at)
    }
    return Recorded(at, budgets, pools, budget_inputs, pool_inputs)


def _runs_out(row: Any, seconds: float, basis: str, at: datetime) -> Any:
    return replace(
        row, runs_out_status=RUNS_OUT, runs_out_in_seconds=seconds,
        runs_out_at=at + timedelta(seconds=seconds), runs_out_basis=basis,
    )  # fmt: skip


def _budget(row: BudgetRow, recorded: Recorded) -> BudgetRow:
    key = (row.organization, row.scope, row.scope_id)
    if key in recorded.budgets:
        return _runs_out(row, *recorded.budgets[key], recorded.read_at)
    if row.used_credits >= row.limit_credits:
        return replace(row, runs_out_status=ALREADY_OVER)
    status = NOT_BURNING if key in recorded.budget_inputs else UNKNOWN
    return replace(row, runs_out_status=status)


def _pool(row: BalanceRow, organization: str | None, recorded: Recorded) -> BalanceRow:
    if organization is None:
        return replace(row, runs_out_status=PER_ORGANIZATION)
    key = (organization, row.pool)
    if key in recorded.pools:
        return _runs_out(row, *recorded.pools[key], recorded.read_at)
    if row.balance_credits <= 0:
        return replace(row, runs_out_status=ALREADY_OVER)
    return replace(row, runs_out_status=NOT_BURNING if key in recorded.pool_inputs else UNKNOWN)


def is_current(report: Report) -> bool:
    """The report's period contains the moment it is made (``--to now`` included)."""
    return report.period_start <= report.generated_at <= report.period_end


def attach(report: Report, url: str, recorded: Recorded | None) -> None:
    """Fill the budgets' and pools' Runs out from ``recorded`` (read when the report
    covers the current period; ``None`` otherwise)."""
    tables = report.tables
    if recorded is None or not is_current(report):
        tables["budgets"] = [
            replace(b, runs_out_status=NOT_CURRENT_PERIOD) for b in tables["budgets"]
        ]
        tables["balances"] = [
            replace(b, runs_out_status=NOT_CURRENT_PERIOD) for b in tables["balances"]
        ]
        report.time_to_exhaustion = ExhaustionSource(
            url, None,
            "Runs out does not apply: a time to exhaustion is a projection from now, and the "
            "report's period is not the current one.",
        )  # fmt: skip
        return
    tables["budgets"] = [_budget(b, recorded) for b in tables["budgets"]]
    tables["balances"] = [_pool(b, report.organization, recorded) for b in tables["balances"]]
    report.time_to_exhaustion = ExhaustionSource(
        url, recorded.read_at,
        f"Runs out: read from {url} at report time ({BUDGET_SERIES}, {POOL_SERIES}), the "
        "series the alerts and the Budgets dashboard read. Basis (burn): the projection "
        "window's burn (e.g. 1d), or while less than that is known the billing period's "
        "average pace (period_average) or a pool's spend rate over the data held "
        "(partial_window).",
    )  # fmt: skip


BASIS_TEXT = {"period_average": "period avg.", "partial_window": "data held"}
STATUS_TEXT = {
    NOT_BURNING: "not burning",
    UNKNOWN: "unknown (not in Prometheus)",
    NOT_CURRENT_PERIOD: "does not apply (not the current period)",
    PER_ORGANIZATION: "per organization (--organization)",
}


def duration_text(seconds: float) -> str:
    """``2d 3h``, ``5h 20m``, ``12m``: two units at most, rounded down."""
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def runs_out_text(row: BudgetRow | BalanceRow) -> str:
    """How the PDF prints a row's Runs out: ``06 Dec 14:00, in 2d 3h (1d burn)`` (the
    year is the report's)."""
    status = row.runs_out_status
    if status == RUNS_OUT and row.runs_out_at is not None and row.runs_out_in_seconds is not None:
        basis = row.runs_out_basis or ""
        basis = BASIS_TEXT.get(basis, f"{basis} burn")
        return (
            f"{row.runs_out_at:%d %b %H:%M}, in {duration_text(row.runs_out_in_seconds)} ({basis})"
        )
    if status == ALREADY_OVER:
        return "already over" if isinstance(row, BudgetRow) else "already empty"
    return STATUS_TEXT.get(status or "", "-")

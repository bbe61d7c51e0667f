"""Helpers for tests/test_dashboards.py: read the generated dashboards, walk
PromQL syntax trees, write fresh usage. How Grafana interpolates variables is
reproduced by dashboards/grafana.py (no Grafana server runs in the tests).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboards.grafana import (  # noqa: E402
    ALL,
    Panel,
    builtins,
    for_panel,
    interpolate,
    panels,
    resolve_defaults,
    sql_macros,
    variables,
)

__all__ = ["ALL", "Panel", "builtins", "for_panel", "interpolate", "panels", "resolve_defaults",
           "sql_macros", "variables"]  # fmt: skip

GENERATED = REPO / "dashboards" / "generated"
RULES = REPO / "dashboards" / "recording_rules.yml"

# Durations that stand for Grafana's interval variables when a query is parsed
# offline: distinct values, so the syntax tree tells which variable a range used.
SENTINELS = {
    "$__rate_interval": "7001s",
    "$__interval": "7002s",
    "$__range": "7003s",
}
SENTINEL_SECONDS = {int(v[:-1]): k for k, v in SENTINELS.items()}


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {
        data["uid"]: data
        for data in (json.loads(p.read_text()) for p in sorted(GENERATED.glob("*.json")))
    }


def is_prometheus(target: dict[str, Any]) -> bool:
    return "expr" in target


def offline_values(dashboard: dict[str, Any]) -> dict[str, Any]:
    """Placeholder variable values for parsing without a Prometheus."""
    out: dict[str, Any] = {}
    for name, variable in variables(dashboard).items():
        if variable.get("multi") or variable.get("includeAll"):
            out[name] = ALL
        else:
            current = variable.get("current", {}).get("value")
            out[name] = current if isinstance(current, str) and current else "placeholder"
    return out


def offline_expr(expr: str, dashboard: dict[str, Any]) -> str:
    """The expression with sentinel durations, ready for an offline parser."""
    builtins = {**SENTINELS, "$__range_s": "7003", "$__interval_ms": "7002000"}
    values = offline_values(dashboard)
    return interpolate(expr, dashboard, values, builtins)


# --------------------------------------------------------------------------
# PromQL syntax trees (promql-parser)
# --------------------------------------------------------------------------


@dataclass
class Selector:
    names: list[str]  # metric names it can select (__name__ = or the bare name)
    regex_names: list[str]  # values of __name__=~ matchers
    function: str | None  # the function whose argument it is (rate, increase, ...)
    range_seconds: float | None  # the range of a range selector


def parse(expr: str) -> Any:
    import promql_parser

    return promql_parser.parse(expr)


def _children(node: Any) -> list[Any]:
    import promql_parser as p

    if isinstance(node, p.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, p.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, p.Call):
        return list(node.args)
    if isinstance(node, p.ParenExpr | p.UnaryExpr | p.SubqueryExpr):
        return [node.expr]
    return []


def selectors(node: Any, function: str | None = None) -> Iterator[Selector]:
    """Every vector or range selector, with the function it is passed to."""
    import promql_parser as p

    if isinstance(node, p.MatrixSelector):
        yield _selector(node.vector_selector, function, node.range.total_seconds())
        return
    if isinstance(node, p.VectorSelector):
        yield _selector(node, function, None)
        return
    if isinstance(node, p.Call):
        for arg in node.args:
            yield from selectors(arg, node.func.name)
        return
    if isinstance(node, p.SubqueryExpr):
        yield from selectors(node.expr, None)
        return
    for child in _children(node):
        yield from selectors(child, None)


def functions(node: Any) -> Iterator[tuple[str, float | None]]:
    """(function name, range of its range-selector argument) for every call."""
    import promql_parser as p

    if isinstance(node, p.Call):
        ranges = [a.range.total_seconds() for a in node.args if isinstance(a, p.MatrixSelector)]
        yield node.func.name, ranges[0] if ranges else None
    for child in _children(node):
        yield from functions(child)


def _selector(vs: Any, function: str | None, range_seconds: float | None) -> Selector:
    names = [vs.name] if vs.name else []
    regex: list[str] = []
    import promql_parser as p

    for matcher in vs.matchers.matchers:
        if matcher.name == "__name__":
            (names if matcher.op == p.MatchOp.Equal else regex).append(matcher.value)
    return Selector(names, regex, function, range_seconds)


# --------------------------------------------------------------------------
# Fresh usage for a database the test owns (never the shared demo_db)
# --------------------------------------------------------------------------

COPY_SQL = [
    # every usage event once more, now
    """INSERT INTO usage_events (occurred_at, organization_id, project_id, department_id,
         user_id, agent_id, model_id, service_type_id, pricing_rule_id, task_category_id,
         channel_id, conversation_id, pool, credits, input_tokens, output_tokens,
         voice_seconds, documents, tool_runs, latency_seconds, success, playground)
       SELECT now(), organization_id, project_id, department_id, user_id, agent_id, model_id,
         service_type_id, pricing_rule_id, task_category_id, channel_id, conversation_id, pool,
         credits, input_tokens, output_tokens, voice_seconds, documents, tool_runs,
         latency_seconds, success, playground
       FROM usage_events""",
    """INSERT INTO visitors (organization_id, agent_id, contact, first_seen_at)
       SELECT organization_id, agent_id, contact, now() FROM visitors""",
    """INSERT INTO conversations (id, organization_id, agent_id, channel_id, visitor_id, type,
         started_at, ended_at, playground)
       SELECT id + %(c)s, organization_id, agent_id, channel_id, visitor_id, type, now(),
         CASE WHEN ended_at IS NULL THEN NULL ELSE now() END, playground
       FROM conversations""",
    """INSERT INTO messages (id, conversation_id, organization_id, agent_id, role, created_at,
         unanswered)
       SELECT id + %(m)s, conversation_id + %(c)s, organization_id, agent_id, role, now(),
         unanswered
       FROM messages""",
    """INSERT INTO feedback (message_id, organization_id, agent_id, model_id, rating, created_at)
       SELECT message_id + %(m)s, organization_id, agent_id, model_id, rating, now()
       FROM feedback""",
    """INSERT INTO paid_agent_transactions (organization_id, agent_id, subscription_id,
         occurred_at, kind, amount, currency)
       SELECT organization_id, agent_id, subscription_id, now(), kind, amount, currency
       FROM paid_agent_transactions""",
    """INSERT INTO topups (organization_id, occurred_at, credits, trigger, price, currency)
       SELECT organization_id, now(), credits, trigger, price, currency FROM topups""",
]


def write_fresh_usage(dsn: str) -> dict[str, float]:
    """Copy every fact row once more with the current time, as a live writer would.

    Returns the credits added per organization (non-playground usage, refunds net).
    """
    with psycopg.connect(dsn) as conn:
        offsets = conn.execute(
            "SELECT (SELECT max(id) FROM conversations), (SELECT max(id) FROM messages)"
        ).fetchone()
        assert offsets is not None
        params = {"c": offsets[0], "m": offsets[1]}
        for statement in COPY_SQL:
            conn.execute(statement, params if "%(" in statement else None)
        for table in ("conversations", "messages"):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
            )
        rows = conn.execute(
            "SELECT o.slug, sum(greatest(e.credits, 0)) FROM usage_events e"
            " JOIN organizations o ON o.id = e.organization_id"
            " WHERE NOT e.playground AND e.occurred_at = now() GROUP BY o.slug"
        ).fetchall()
    return {slug: float(total) for slug, total in rows}

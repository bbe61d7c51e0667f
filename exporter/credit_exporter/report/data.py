"""Read the report's raw figures from the billing database, through the configured SQL.

Each statement wraps a configured stream or state query as a subquery and
aggregates it; no SQL here knows the billing tables. All statements run in one
READ ONLY, REPEATABLE READ transaction, so every figure of a report comes from
the same snapshot. Values are bound as literals (never as placeholders): a
``%`` in a configured SQL must stay a ``%``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from credit_exporter.config import Config
from credit_exporter.report.period import Period, ReportInputError
from credit_exporter.report.roles import (
    RatingRoles,
    StateRoles,
    UsageRoles,
    rating_roles,
    state_roles,
    usage_roles,
)

ZERO = Decimal(0)


@dataclass(frozen=True)
class CategoryModelRow:
    task_category: str
    service_type: str | None
    model: str
    prompts: int
    successes: int
    credits: Decimal
    latency_sum: Decimal
    latency_count: int


@dataclass(frozen=True)
class UserModelRow:
    user: str
    model: str
    prompts: int
    credits: Decimal


@dataclass(frozen=True)
class HourRow:
    hour: datetime  # UTC, start of the hour
    prompts: int
    credits: Decimal
    plan_credits: Decimal
    refunded: Decimal
    latency_sum: Decimal
    latency_count: int


@dataclass(frozen=True)
class Budget:
    organization: str
    scope: str
    scope_id: str
    used: Decimal
    limit: Decimal
    period_start: datetime | None
    period_end: datetime | None


@dataclass
class RawReport:
    """Everything read from the database, before any derivation."""

    organization: str | None
    categories: list[CategoryModelRow]
    users: list[UserModelRow]
    hours: list[HourRow]
    multipliers: dict[str, tuple[str, Decimal]]  # model -> (tier, multiplier)
    ratings: dict[str, tuple[int, Decimal]]  # model -> (ratings, sum of ratings)
    balances: dict[str, Decimal] | None  # pool -> balance, None when not configured
    budgets: list[Budget] | None


def _ident(name: str) -> sql.Composable:
    return sql.SQL("e.") + sql.Identifier(name)


def _window(
    source: str, time: str, org_column: str, period: Period, org: str | None
) -> sql.Composed:
    """``FROM (<configured sql>) AS e WHERE time in [start, end) [AND organization = org]``."""
    where = sql.SQL("{t} >= {start} AND {t} < {end}").format(
        t=_ident(time), start=sql.Literal(period.start), end=sql.Literal(period.end)
    )
    if org is not None:
        where = where + sql.SQL(" AND {} = {}").format(_ident(org_column), sql.Literal(org))
    return sql.SQL("FROM (\n{source}\n) AS e WHERE {where}").format(
        source=sql.SQL(source.strip().rstrip(";")),  # type: ignore[arg-type]
        where=where,
    )


def _numeric(name: str) -> sql.Composable:
    """A credit column as numeric: a double precision column is summed exactly, as the
    exporter sums it, and its values keep the digits they were written with."""
    return sql.SQL("({})::numeric").format(_ident(name))


def _state(source: str) -> sql.Composed:
    return sql.SQL("FROM (\n{}\n) AS e").format(sql.SQL(source.strip().rstrip(";")))  # type: ignore[arg-type]


def _sum(column: str | None) -> sql.Composable:
    return sql.SQL("count(*)") if column is None else sql.SQL("sum({})").format(_ident(column))


def _rows(cur: psycopg.Cursor[Any], statement: sql.Composable) -> Sequence[tuple[Any, ...]]:
    cur.execute(statement)
    return cur.fetchall()


def _usage_statements(
    u: UsageRoles, period: Period, org: str | None, plan_pool: str, success: str
) -> dict[str, sql.Composed]:
    frm = _window(u.sql, u.time, u.organization, period, org)
    prompts = sql.SQL("coalesce({}, 0)").format(_sum(u.prompts))
    ok = sql.SQL("{} = {}").format(_ident(u.outcome), sql.Literal(success))
    successes = (
        sql.SQL("count(*) FILTER (WHERE {})").format(ok)
        if u.prompts is None
        else sql.SQL("coalesce(sum({}) FILTER (WHERE {}), 0)").format(_ident(u.prompts), ok)
    )
    spent = sql.SQL("coalesce(sum({}), 0)").format(_numeric(u.spent))
    plan = sql.SQL("coalesce(sum({}) FILTER (WHERE {} = {}), 0)").format(
        _numeric(u.spent), _ident(u.pool), sql.Literal(plan_pool)
    )
    latency = (
        sql.SQL("coalesce(sum({l}), 0), count({l})").format(l=_ident(u.latency))
        if u.latency
        else sql.SQL("0, 0")
    )
    refunded = (
        sql.SQL("coalesce(sum({}), 0)").format(_numeric(u.refunded)) if u.refunded else sql.SQL("0")
    )
    return {
        "categories": sql.SQL(
            "SELECT {c}::text, {st}, {m}::text, {p}, {s}, {v}, {lat} {frm} GROUP BY 1, 2, 3"
        ).format(
            c=_ident(u.task_category), m=_ident(u.model), p=prompts, s=successes, v=spent,
            st=(sql.SQL("{}::text").format(_ident(u.service_type)) if u.service_type
                else sql.SQL("NULL::text")),
            lat=latency, frm=frm,
        ),
        "users": sql.SQL("SELECT {user}::text, {m}::text, {p}, {v} {frm} GROUP BY 1, 2").format(
            user=_ident(u.user), m=_ident(u.model), p=prompts, v=spent, frm=frm
        ),
        "hours": sql.SQL(
            "SELECT date_trunc('hour', {t} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', {p}, {v}, "
            "{plan}, {refunded}, {lat} {frm} GROUP BY 1 ORDER BY 1"
        ).format(
            t=_ident(u.time), p=prompts, v=spent, plan=plan, refunded=refunded, lat=latency,
            frm=frm,
        ),
    }  # fmt: skip


def _ratings_statement(r: RatingRoles, period: Period, org: str | None) -> sql.Composed:
    count = _sum(r.count)
    rating = sql.SQL("({})::numeric").format(_ident(r.rating))
    total = (
        sql.SQL("sum({})").format(rating)
        if r.count is None
        else sql.SQL("sum({} * {})").format(rating, _ident(r.count))
    )
    return sql.SQL("SELECT {m}::text, {n}, {total} {frm} GROUP BY 1").format(
        m=_ident(r.model), n=count, total=total,
        frm=_window(r.sql, r.time, r.organization, period, org),
    )  # fmt: skip


def _org_filter(column: str, org: str | None) -> sql.Composable:
    if org is None:
        return sql.SQL("")
    return sql.SQL(" WHERE {} = {}").format(_ident(column), sql.Literal(org))


def _state_figures(
    cur: psycopg.Cursor[Any], s: StateRoles, org: str | None
) -> tuple[dict[str, tuple[str, Decimal]], dict[str, Decimal] | None, list[Budget] | None]:
    multipliers: dict[str, tuple[str, Decimal]] = {}
    if s.multipliers:
        source, model, tier, value = s.multipliers
        statement = sql.SQL("SELECT {}::text, {}::text, {} {}").format(
            _ident(model), _ident(tier), _numeric(value), _state(source)
        )
        multipliers = {m: (t, Decimal(v)) for m, t, v in _rows(cur, statement)}
    balances = None
    if s.balances:
        source, organization, pool, value = s.balances
        statement = sql.SQL("SELECT {}::text, sum({}) {}{} GROUP BY 1 ORDER BY 1").format(
            _ident(pool), _numeric(value), _state(source), _org_filter(organization, org)
        )
        balances = {p: Decimal(v) for p, v in _rows(cur, statement)}
    budgets = None
    if s.budgets:
        source, labels, used, limit = s.budgets
        periods: dict[str, tuple[datetime, datetime]] = {}
        if s.periods:
            psource, porg, pstart, pend = s.periods
            statement = sql.SQL("SELECT {}::text, to_timestamp({}), to_timestamp({}) {}").format(
                _ident(porg), _ident(pstart), _ident(pend), _state(psource)
            )
            periods = {o: (a, b) for o, a, b in _rows(cur, statement)}
        select = "SELECT {}::text, {}::text, {}::text, {}, {} {}{} ORDER BY 1, 2, 3"
        statement = sql.SQL(select).format(
            _ident(labels["organization"]), _ident(labels["scope"]), _ident(labels["scope_id"]),
            _numeric(used), _numeric(limit), _state(source),
            _org_filter(labels["organization"], org),
        )  # fmt: skip
        budgets = [
            Budget(o, scope, sid, Decimal(u), Decimal(lim), *periods.get(o, (None, None)))
            for o, scope, sid, u, lim in _rows(cur, statement)
        ]
    return multipliers, balances, budgets


def read_report(
    config: Config, period: Period, organization: str | None, dsn: str | None = None
) -> RawReport:
    """Run every statement in one read-only snapshot; raises ReportInputError for bad input."""
    usage = usage_roles(config)
    ratings_roles = rating_roles(config)
    states = state_roles(config)
    database = config.databases[config.streams[usage.stream].database]
    timeout_ms = int(database.statement_timeout * 1000)
    with psycopg.connect(
        dsn or database.resolve_dsn(),
        connect_timeout=max(1, int(database.connect_timeout)),
        application_name=f"{database.application_name}-report",
    ) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(timeout_ms)))
            if organization is not None and not _org_known(cur, usage, organization):
                raise ReportInputError(
                    f"--organization: unknown organization {organization!r} "
                    f"(no row of stream {usage.stream} has it)"
                )
            statements = _usage_statements(
                usage, period, organization, config.report.plan_pool,
                config.report.success_outcome,
            )  # fmt: skip
            categories = [
                CategoryModelRow(c, st, m, int(p), int(s), Decimal(v), Decimal(ls), int(lc))
                for c, st, m, p, s, v, ls, lc in _rows(cur, statements["categories"])
            ]
            users = [
                UserModelRow(user, m, int(p), Decimal(v))
                for user, m, p, v in _rows(cur, statements["users"])
            ]
            hours = [
                HourRow(h, int(p), Decimal(v), Decimal(pl), Decimal(r), Decimal(ls), int(lc))
                for h, p, v, pl, r, ls, lc in _rows(cur, statements["hours"])
            ]
            ratings: dict[str, tuple[int, Decimal]] = {}
            if ratings_roles is not None:
                statement = _ratings_statement(ratings_roles, period, organization)
                ratings = {m: (int(n), Decimal(t)) for m, n, t in _rows(cur, statement)}
            multipliers, balances, budgets = _state_figures(cur, states, organization)
    return RawReport(
        organization, categories, users, hours, multipliers, ratings, balances, budgets
    )


def _org_known(cur: psycopg.Cursor[Any], u: UsageRoles, org: str) -> bool:
    statement = sql.SQL("SELECT 1 {} WHERE {} = {} LIMIT 1").format(
        _state(u.sql), _ident(u.organization), sql.Literal(org)
    )
    return bool(_rows(cur, statement))

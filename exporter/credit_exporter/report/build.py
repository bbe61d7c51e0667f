"""Derive the report's tables from the raw figures (no database access here)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

from credit_exporter.config import ReportConfig
from credit_exporter.report import recommend
from credit_exporter.report.data import CategoryModelRow, RawReport
from credit_exporter.report.model import (
    BalanceRow,
    BudgetRow,
    CategoryRow,
    EfficiencyRow,
    HourOfDayRow,
    ModelRow,
    Report,
    Summary,
    TierRow,
    TimelineRow,
    UserRow,
    WeekdayRow,
)
from credit_exporter.report.period import Period, bucket_start

ZERO = Decimal(0)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
UNKNOWN_TIER = "unknown"


def _share(part: Decimal, whole: Decimal) -> float:
    return float(part / whole) if whole else 0.0


def _per(credits: Decimal, prompts: int) -> float | None:
    return float(credits / prompts) if prompts else None


def _avg(total: Decimal, count: int) -> float | None:
    return float(total) / count if count else None


def build(
    raw: RawReport,
    period: Period,
    granularity: str,
    settings: ReportConfig,
    now: datetime | None = None,
) -> Report:
    now = now or datetime.now(UTC)
    hours = raw.hours
    spent = sum((h.credits for h in hours), ZERO)
    prompts = sum(h.prompts for h in hours)
    plan = sum((h.plan_credits for h in hours), ZERO)
    refunded = sum((h.refunded for h in hours), ZERO)

    models = _models(raw, spent)
    tiers: dict[str, list[Decimal | int]] = defaultdict(lambda: [0, ZERO])
    for row in models:
        tier = tiers[row.tier or UNKNOWN_TIER]
        tier[0] += row.prompts
        tier[1] += row.credits
    tier_rows = [
        TierRow(t, int(p), Decimal(c), _share(Decimal(c), spent))
        for t, (p, c) in sorted(tiers.items(), key=lambda kv: -Decimal(kv[1][1]))
    ]

    timeline: dict[datetime, list[Decimal | int]] = defaultdict(lambda: [0, ZERO])
    by_day: dict[date, Decimal] = defaultdict(Decimal)
    by_hour: dict[int, list[Decimal | int]] = defaultdict(lambda: [0, ZERO, ZERO, 0])
    by_weekday: dict[int, list[Decimal | int]] = defaultdict(lambda: [0, ZERO])
    for h in hours:
        bucket = timeline[bucket_start(h.hour, granularity)]
        bucket[0] += h.prompts
        bucket[1] += h.credits
        by_day[h.hour.date()] += h.credits
        hod = by_hour[h.hour.hour]
        hod[0] += h.prompts
        hod[1] += h.credits
        hod[2] += h.latency_sum
        hod[3] += h.latency_count
        wd = by_weekday[h.hour.weekday()]
        wd[0] += h.prompts
        wd[1] += h.credits
    days_with_data = len(by_day)
    hour_rows = [
        HourOfDayRow(
            hour, int(v[0]), Decimal(v[1]), float(Decimal(v[1]) / days_with_data),
            _avg(Decimal(v[2]), int(v[3])),
        )
        for hour, v in sorted(by_hour.items())
    ]  # fmt: skip
    weekday_rows = [
        WeekdayRow(WEEKDAYS[d], int(v[0]), Decimal(v[1])) for d, v in sorted(by_weekday.items())
    ]
    peak_day = max(by_day.items(), key=lambda kv: (kv[1], kv[0]), default=None)
    peak_hour = max(hour_rows, key=lambda r: (r.credits, -r.hour), default=None)
    active = sorted(weekday_rows, key=lambda r: -r.credits)[:3]

    switches = recommend.model_switches(raw.categories, raw.ratings, settings)
    saving = sum((s.saving_credits for s in switches), ZERO)
    balances = (
        [BalanceRow(pool, value) for pool, value in sorted(raw.balances.items())]
        if raw.balances is not None
        else []
    )
    summary = Summary(
        credits_used=spent,
        credits_refunded=refunded,
        credits_net=spent - refunded,
        prompts=prompts,
        average_credits_per_prompt=_per(spent, prompts),
        plan_credits_used=plan,
        additional_credits_used=spent - plan,
        credits_remaining=(sum(raw.balances.values(), ZERO) if raw.balances is not None else None),
        potential_saving_credits=saving,
        peak_day=peak_day[0] if peak_day else None,
        peak_day_credits=peak_day[1] if peak_day else None,
        peak_hour=peak_hour.hour if peak_hour else None,
        peak_hour_average_credits=peak_hour.average_credits_per_day if peak_hour else None,
        most_active_weekdays=[r.weekday for r in active],
    )
    report = Report(
        generated_at=now,
        period_start=period.start,
        period_end=period.end,
        period_label=period.label,
        granularity=granularity,
        organization=raw.organization,
        source="database",
        summary=summary,
    )
    report.tables = {
        "tiers": tier_rows,
        "models": models,
        "users": _users(raw),
        "timeline": [TimelineRow(b, int(v[0]), Decimal(v[1])) for b, v in sorted(timeline.items())],
        "hours_of_day": hour_rows,
        "weekdays": weekday_rows,
        "task_categories": _categories(raw, spent),
        "budgets": _budgets(raw, now),
        "balances": balances,
        "efficiency": _efficiency(raw, settings),
        "model_switches": switches,
        "off_peak": recommend.off_peak(hours, settings),
    }
    return report


def _models(raw: RawReport, spent: Decimal) -> list[ModelRow]:
    totals: dict[str, list[Decimal | int]] = defaultdict(lambda: [0, 0, ZERO, ZERO, 0])
    for row in raw.categories:
        t = totals[row.model]
        t[0] += row.prompts
        t[1] += row.successes
        t[2] += row.credits
        t[3] += row.latency_sum
        t[4] += row.latency_count
    rows = []
    for model, (p, s, c, ls, lc) in totals.items():
        tier, multiplier = raw.multipliers.get(model, (None, None))
        n_ratings, rating_total = raw.ratings.get(model, (0, ZERO))
        rows.append(
            ModelRow(
                model=model, tier=tier, multiplier=multiplier, prompts=int(p),
                credits=Decimal(c), share=_share(Decimal(c), spent),
                average_credits_per_prompt=_per(Decimal(c), int(p)),
                average_response_seconds=_avg(Decimal(ls), int(lc)),
                success_rate=int(s) / int(p) if p else None,
                ratings=n_ratings, average_rating=_avg(rating_total, n_ratings),
            )
        )  # fmt: skip
    return sorted(rows, key=lambda r: (-r.credits, r.model))


def _users(raw: RawReport) -> list[UserRow]:
    per_user: dict[str, list[tuple[Decimal, str, int]]] = defaultdict(list)
    for row in raw.users:
        per_user[row.user].append((row.credits, row.model, row.prompts))
    rows = []
    for user, items in per_user.items():
        credits = sum((c for c, _, _ in items), ZERO)
        prompts = sum(p for _, _, p in items)
        top = max(items, key=lambda i: (i[0], i[1]))[1]
        rows.append(UserRow(user, prompts, top, credits, _per(credits, prompts)))
    return sorted(rows, key=lambda r: (-r.credits, r.user))


def _by_category_and_model(rows: list[CategoryModelRow]) -> list[CategoryModelRow]:
    """The rows summed over service types (one row per task category and model)."""
    merged: dict[tuple[str, str], CategoryModelRow] = {}
    for r in rows:
        key = (r.task_category, r.model)
        if (m := merged.get(key)) is None:
            merged[key] = replace(r, service_type=None)
        else:
            merged[key] = replace(
                m, prompts=m.prompts + r.prompts, successes=m.successes + r.successes,
                credits=m.credits + r.credits, latency_sum=m.latency_sum + r.latency_sum,
                latency_count=m.latency_count + r.latency_count,
            )  # fmt: skip
    return list(merged.values())


def _categories(raw: RawReport, spent: Decimal) -> list[CategoryRow]:
    per: dict[str, list[tuple[Decimal, str, int]]] = defaultdict(list)
    for row in _by_category_and_model(raw.categories):
        per[row.task_category].append((row.credits, row.model, row.prompts))
    rows = []
    for category, items in per.items():
        credits = sum((c for c, _, _ in items), ZERO)
        top = max(items, key=lambda i: (i[0], i[1]))[1]
        rows.append(
            CategoryRow(category, sum(p for *_, p in items), credits, _share(credits, spent), top)
        )
    return sorted(rows, key=lambda r: (-r.credits, r.task_category))


def _efficiency(raw: RawReport, settings: ReportConfig) -> list[EfficiencyRow]:
    """Task category x model pairs with enough prompts, ranked within their service type
    (an embedding is not compared with a chat answer), cheapest per prompt first."""
    pairs = [r for r in raw.categories if r.prompts >= settings.min_prompts]
    pairs.sort(
        key=lambda r: (r.service_type or "", r.credits / r.prompts, r.task_category, r.model)
    )
    rows: list[EfficiencyRow] = []
    for r in pairs:
        same_kind = bool(rows) and rows[-1].service_type == r.service_type
        rows.append(
            EfficiencyRow(
                rows[-1].rank + 1 if same_kind else 1, r.service_type, r.task_category, r.model,
                r.prompts, r.credits, float(r.credits / r.prompts), r.successes / r.prompts,
            )
        )  # fmt: skip
    return rows


def _urgency(row: BudgetRow) -> tuple[bool, float, str, str, str]:
    """Over their limit first, then the largest share of the limit used."""
    return (row.status != "over", -row.used_ratio, row.organization, row.scope, row.scope_id)


def _budgets(raw: RawReport, now: datetime) -> list[BudgetRow]:
    """Current billing period of each budget; projected = used / elapsed x period length.
    Most urgent first (see ``_urgency``)."""
    rows = []
    for b in raw.budgets or []:
        projected = None
        if b.period_start and b.period_end and b.period_start < now < b.period_end:
            elapsed = Decimal(repr((now - b.period_start).total_seconds()))
            length = Decimal(repr((b.period_end - b.period_start).total_seconds()))
            projected = (b.used * length / elapsed).quantize(Decimal("0.000001"))
        if b.used >= b.limit:
            status = "over"
        elif projected is not None and projected >= b.limit:
            status = "at_risk"
        else:
            status = "on_track"
        rows.append(
            BudgetRow(
                b.organization, b.scope, b.scope_id, b.used, b.limit, float(b.used / b.limit),
                b.period_start, b.period_end, projected,
                float(projected / b.limit) if projected is not None else None, status,
            )
        )  # fmt: skip
    return sorted(rows, key=_urgency)

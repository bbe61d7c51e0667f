"""Allocations, balances, top-ups and budgets, from what was loaded."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter

from credit_exporter.demo.generator.reference import (
    ALERT_LEVELS,
    BUDGET_ALERT_LADDER,
    BUDGET_TARGETS,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    ORG_ALERT_LADDERS,
)
from credit_exporter.demo.generator.sampling import format_cents, format_credits, from_ms
from credit_exporter.demo.generator.timeline import Timeline
from credit_exporter.demo.generator.world import Org, World


@dataclass(frozen=True)
class Allocation:
    org: Org
    used: int  # micro-credits, non-playground, current period
    drawn_plan: int
    drawn_topup: int
    limit: int  # micro-credits: plan + topup allocation
    plan: int
    topup: int


@dataclass(frozen=True)
class PeriodUsage:
    """Billable micro-credits of each org's current period, from the stream's sums."""

    drawn: dict[tuple[int, str], int]  # (org, pool)
    by_scope: dict[tuple[int, str], list[tuple[int, int]]]  # (org, scope) -> [(ref id, used)]

    @classmethod
    def from_stream(
        cls,
        sums: dict[tuple[int, str, bytes], int],
        scopes: dict[bytes, tuple[int, int, int, int]],
    ) -> PeriodUsage:
        """``sums`` by (org, pool, dims); ``scopes`` gives dims' org, project, department,
        user."""
        drawn: dict[tuple[int, str], int] = defaultdict(int)
        scoped: dict[tuple[int, str, int], int] = defaultdict(int)
        for (org, pool, dims), credits in sums.items():
            drawn[org, pool] += credits
            _, project, department, user = scopes[dims]
            scoped[org, "department", department] += credits
            scoped[org, "project", project] += credits
            scoped[org, "user", user] += credits
        by_scope: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
        for (org, scope, ref), credits in sorted(scoped.items()):
            by_scope[org, scope].append((ref, credits))
        return cls(dict(drawn), dict(by_scope))


def _allocate(org: Org, drawn_plan: int, drawn_topup: int) -> Allocation:
    """Plan and topup allocations that put the org at its target ratio (to within a
    rounding step): the limit is rounded up to whole credits (to cents on tiny loads).

    An org that exhausted its plan pool gets a plan allocation just above what it
    drew from it (the rest of the limit is top-ups); the others get a topup share
    of the limit and never reach the end of their plan pool.
    """
    profile = org.profile
    used = drawn_plan + drawn_topup
    step = 1_000_000 if used >= 1_000 * 1_000_000 else 10_000

    def up(micro: int) -> int:
        return -(-micro // step) * step

    limit = max(step, up(-(-used * 1000 // profile.ratio_milli)))
    if profile.crossing_milli is not None:
        plan = up(drawn_plan)
        topup = limit - plan
        if topup < 0:
            raise RuntimeError(f"{org.slug}: plan pool drawn beyond its whole budget")
    else:
        topup = limit * profile.topup_milli // 1000 // step * step
        plan = limit - topup
        if drawn_topup or plan < drawn_plan:
            raise RuntimeError(f"{org.slug}: usage exceeds the plan pool")
    return Allocation(org, used, drawn_plan, drawn_topup, limit, plan, topup)


def _topups(
    world: World, timeline: Timeline, allocations: list[Allocation], rng: random.Random
) -> list[tuple]:
    """Top-up purchases, sorted by time: earlier periods' and the current period's
    (which add up to its topup allocation). Auto only where auto-recharge is on."""
    rows: list[tuple[int, int, int, str]] = []  # t, org, micro-credits, trigger
    for oi, org in enumerate(world.orgs):
        trigger = "auto" if org.profile.auto_recharge else "manual"
        rows += [(t, org.id, micro, trigger) for t, micro in _past_topups(oi, org, timeline, rng)]
        rows += [
            (t, org.id, micro, trigger)
            for t, micro in _current_topups(oi, allocations[oi], timeline, rng)
        ]
    rows.sort(key=itemgetter(0, 1))
    currency = {org.id: org.profile.currency for org in world.orgs}
    return [
        (n, org_id, from_ms(t), format_credits(micro), trigger, format_cents(_price_cents(micro)),
         currency[org_id])
        for n, (t, org_id, micro, trigger) in enumerate(rows, start=1)
    ]  # fmt: skip


def _price_cents(micro_credits: int) -> int:
    """What a top-up costs: 1 cent per 10 credits, rounded up."""
    return -(-micro_credits // 100_000)


def _past_topups(
    oi: int, org: Org, timeline: Timeline, rng: random.Random
) -> list[tuple[int, int]]:
    """(time, micro-credits) of one purchase in each earlier period that needed one."""
    mean_hour = sum(row[oi] for row in timeline.expected) / max(1, timeline.n_hours)
    typical = max(1, round(mean_hour * 24 * 30 * 1.3 * 0.2 / 500)) * 500 * 1_000_000
    out = []
    for period in timeline.periods[oi][:-1]:
        start = max(period.start_ms, timeline.range_start)
        if period.crossing_ms is not None:  # bought just before the plan pool ran dry
            t = period.crossing_ms - 20 * MS_PER_MINUTE - rng.randrange(MS_PER_HOUR)
        elif org.profile.auto_recharge or org.profile.topup_milli:
            t = start + int((period.end_ms - start) * (0.5 + 0.4 * rng.random()))
        else:
            continue
        out.append((min(max(start, t), period.end_ms - 1), typical))
    return out


def _current_topups(
    oi: int, alloc: Allocation, timeline: Timeline, rng: random.Random
) -> list[tuple[int, int]]:
    """(time, micro-credits) of this period's purchases, adding up to the allocation."""
    if alloc.topup <= 0:
        return []
    period = timeline.current_period(oi)
    window = max(period.start_ms, timeline.range_start)
    if period.crossing_ms is not None:  # one purchase, just before the plan pool ran dry
        t = period.crossing_ms - 20 * MS_PER_MINUTE - rng.randrange(10 * MS_PER_MINUTE)
        return [(max(window, t), alloc.topup)]
    first = alloc.topup // 2 // 1_000_000 * 1_000_000  # two purchases
    out = []
    for part, share in ((first, 0.25), (alloc.topup - first, 0.6)):
        if part > 0:
            at = share + 0.1 * rng.random()
            out.append((window + int((timeline.now - window) * at), part))
    return out


def _auto_recharge(world: World, allocations: list[Allocation]) -> list[tuple]:
    """Settings of every org; where a top-up was automatic, its amount is the setting."""
    rows = []
    for org, alloc in zip(world.orgs, allocations, strict=True):
        threshold = max(1, alloc.plan // 10 // 1_000_000)
        amount = max(500, round(alloc.limit * 0.2 / 1_000_000 / 500) * 500) * 1_000_000
        if org.profile.crossing_milli is not None and org.profile.auto_recharge:
            amount = alloc.topup
        rows.append((org.id, org.profile.auto_recharge, threshold, format_credits(amount)))
    return rows


def _budgets(
    world: World, usage: PeriodUsage, allocations: list[Allocation], rng: random.Random
) -> list[tuple]:
    """The organization budget (= plan + topup allocation) and a handful of
    department, project and user budgets per org, several just past a threshold."""
    rows: list[tuple] = []
    for oi, org in enumerate(world.orgs):
        rows.append((org.id, "organization", org.id, format_credits(allocations[oi].limit)))
        targets = list(BUDGET_TARGETS)
        rng.shuffle(targets)
        for scope, count in (("department", 2), ("project", 2), ("user", 3)):
            used = [(ref, c) for ref, c in usage.by_scope.get((org.id, scope), []) if c > 0]
            for ref, micro in rng.sample(used, min(count, len(used))):
                target = targets.pop()
                limit = max(1, -(-micro * 1000 // target // 1_000_000))
                rows.append((org.id, scope, ref, f"{limit}.000000"))
    return [(n, *row) for n, row in enumerate(rows, start=1)]


def _alert_levels(world: World, usage: PeriodUsage, budgets: list[tuple]) -> list[tuple]:
    """budget_alert_levels rows: the organizations' ladders of ORG_ALERT_LADDERS and
    the budget ladder of BUDGET_ALERT_LADDER. Deterministic (no draw from the seed's
    random stream), so every other table stays as it was without ladders."""

    def ladder(org_id: int, budget_id: int | None, percents: tuple[int | None, ...]):
        return [
            (org_id, budget_id, level, f"{percent}.000")
            for level, percent in zip(ALERT_LEVELS, percents, strict=True)
            if percent is not None
        ]

    by_slug = {org.slug: org for org in world.orgs}
    rows = [
        row
        for slug, percents in ORG_ALERT_LADDERS.items()
        if slug in by_slug
        for row in ladder(by_slug[slug].id, None, percents)
    ]
    slug, below_milli, percents = BUDGET_ALERT_LADDER
    if slug not in by_slug:
        return rows
    org_id = by_slug[slug].id
    used = {
        (scope, ref): micro
        for (org, scope), refs in usage.by_scope.items()
        if org == org_id
        for ref, micro in refs
    }
    ratios = [
        (used.get((scope, ref), 0) * 1000 / (Decimal(limit) * 1_000_000), budget_id)
        for budget_id, org, scope, ref, limit in budgets
        if org == org_id and scope != "organization"
    ]
    below = [(ratio, budget_id) for ratio, budget_id in ratios if ratio < below_milli]
    if below:
        rows += ladder(org_id, max(below)[1], percents)
    return rows

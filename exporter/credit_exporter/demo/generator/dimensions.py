"""Dimension rows."""

from __future__ import annotations

from datetime import timedelta

from credit_exporter.demo.generator.reference import (
    CHANNELS,
    MODELS,
    PLANS,
    PRICING_RULES,
    QUOTAS,
    SERVICE_TYPES,
    SVC,
    TASKS,
)
from credit_exporter.demo.generator.sampling import from_ms
from credit_exporter.demo.generator.timeline import Timeline
from credit_exporter.demo.generator.world import World


def _dimension_rows(
    world: World, timeline: Timeline, scale: float
) -> dict[str, tuple[str, list[tuple]]]:
    """Every dimension table's (columns, rows), in foreign-key order."""
    usage_scale = max(1.0, scale)
    plans = [(p.id, p.slug, p.name, round(p.monthly_credits * usage_scale), p.agent_slots,
              p.seats) for p in PLANS]  # fmt: skip
    quotas = [
        (p.id, quota, round(limit * usage_scale) if n < 2 else limit)
        for p in PLANS
        for n, (quota, limit) in enumerate(zip(QUOTAS, p.quotas, strict=True))
    ]
    orgs, periods, departments, projects, users, agents, numbers = [], [], [], [], [], [], []
    for oi, org in enumerate(world.orgs):
        created = from_ms(org.created_ms)
        churn = from_ms(org.churn_ms)
        orgs.append((org.id, org.slug, org.profile.name, org.plan.id, created))
        periods += [(org.id, from_ms(p.start_ms), from_ms(p.end_ms)) for p in timeline.periods[oi]]
        departments += [(d, org.id, slug, name) for d, slug, name in org.departments]
        projects += [(p, org.id, slug, name, color) for p, slug, name, color in org.projects]
        for n, u in enumerate(org.users):
            joined = created + timedelta(days=3 + 5 * n, hours=n % 9)
            users.append((u.id, org.id, u.department_id, u.email, u.human_agent, joined,
                          churn if u.deactivated else None))  # fmt: skip
        for n, a in enumerate(org.agents):
            agents.append((a.id, org.id, a.project_id, a.slug, a.name, a.model.id,
                           a.paid is not None, created + timedelta(days=10 + 7 * n),
                           churn if a.deleted else None))  # fmt: skip
        numbers += [(pid, org.id, number, churn if released else None)
                    for pid, number, released in org.phone_numbers]  # fmt: skip
    return {
        "plans": ("id, slug, name, monthly_credits, agent_slots, seats", plans),
        "plan_quotas": ("plan_id, quota, quota_limit", quotas),
        "organizations": ("id, slug, name, plan_id, created_at", orgs),
        "billing_periods": ("organization_id, starts_at, ends_at", periods),
        "departments": ("id, organization_id, slug, name", departments),
        "projects": ("id, organization_id, slug, name, color", projects),
        "users": (
            "id, organization_id, department_id, email, human_agent, created_at, deactivated_at",
            users,
        ),
        "models": (
            "id, slug, provider, name, multiplier, tier",
            [(m.id, m.slug, m.provider, m.name, m.multiplier, m.tier) for m in MODELS],
        ),
        "agents": (
            "id, organization_id, project_id, slug, name, model_id, paid, created_at, deleted_at",
            agents,
        ),
        "service_types": ("id, slug, name", list(SERVICE_TYPES)),
        "pricing_rules": (
            "id, service_type_id, slug, name, unit, credits_per_unit",
            [
                (r.id, SVC[r.service], r.slug, r.name, r.unit, r.credits_per_unit)
                for r in PRICING_RULES
            ],
        ),
        "task_categories": ("id, slug, name", [(t.id, t.slug, t.name) for t in TASKS]),
        "channels": ("id, slug, name", list(CHANNELS)),
        "phone_numbers": ("id, organization_id, number, released_at", numbers),
    }

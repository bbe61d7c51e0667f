"""The report as plain data: a summary and named tables of flat rows.

Every table is a list of one row dataclass; the CSV, JSON and PDF writers all
read these, so the three formats always carry the same figures. Credit
amounts are ``Decimal`` (exact, as summed by PostgreSQL); ratios, averages and
shares are floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Summary:
    credits_used: Decimal  # spent, refunds not subtracted (credit_spent_credits_total)
    credits_refunded: Decimal
    credits_net: Decimal
    prompts: int
    average_credits_per_prompt: float | None
    plan_credits_used: Decimal
    additional_credits_used: Decimal
    credits_remaining: Decimal | None  # sum of pool balances now; None: not configured
    potential_saving_credits: Decimal
    peak_day: date | None
    peak_day_credits: Decimal | None
    peak_hour: int | None  # hour of day, UTC
    peak_hour_average_credits: float | None
    most_active_weekdays: list[str]


@dataclass(frozen=True)
class TierRow:
    tier: str
    prompts: int
    credits: Decimal
    share: float


@dataclass(frozen=True)
class ModelRow:
    model: str
    tier: str | None
    multiplier: Decimal | None
    prompts: int
    credits: Decimal
    share: float
    average_credits_per_prompt: float | None
    average_response_seconds: float | None
    success_rate: float | None
    ratings: int
    average_rating: float | None


@dataclass(frozen=True)
class UserRow:
    user: str
    prompts: int
    top_model: str
    credits: Decimal
    average_credits_per_prompt: float | None


@dataclass(frozen=True)
class TimelineRow:
    bucket_start: datetime
    prompts: int
    credits: Decimal


@dataclass(frozen=True)
class HourOfDayRow:
    hour: int
    prompts: int
    credits: Decimal
    average_credits_per_day: float
    average_response_seconds: float | None


@dataclass(frozen=True)
class WeekdayRow:
    weekday: str
    prompts: int
    credits: Decimal


@dataclass(frozen=True)
class CategoryRow:
    task_category: str
    prompts: int
    credits: Decimal
    share: float
    top_model: str


@dataclass(frozen=True)
class BudgetRow:
    organization: str
    scope: str
    scope_id: str
    used_credits: Decimal
    limit_credits: Decimal
    used_ratio: float
    period_start: datetime | None
    period_end: datetime | None
    projected_credits: Decimal | None
    projected_ratio: float | None
    status: str  # over, at_risk, on_track
    # Time to exhaustion (report.exhaustion): None without --prometheus
    runs_out_status: str | None = None  # exhaustion.STATUSES
    runs_out_at: datetime | None = None
    runs_out_in_seconds: float | None = None
    runs_out_basis: str | None = None  # the series' burn label: 1d, period_average, ...


@dataclass(frozen=True)
class BalanceRow:
    pool: str
    balance_credits: Decimal
    # Time to exhaustion (report.exhaustion): None without --prometheus
    runs_out_status: str | None = None  # exhaustion.STATUSES
    runs_out_at: datetime | None = None
    runs_out_in_seconds: float | None = None
    runs_out_basis: str | None = None  # the series' burn label: 1d, period_average, ...


@dataclass(frozen=True)
class EfficiencyRow:
    rank: int  # within the service type
    service_type: str | None
    task_category: str
    model: str
    prompts: int
    credits: Decimal
    average_credits_per_prompt: float
    success_rate: float


@dataclass(frozen=True)
class ModelSwitchRow:
    task_category: str
    service_type: str | None  # both models served this service type; None: not configured
    from_model: str
    to_model: str
    prompts: int  # prompts of from_model in the category
    from_credits_per_prompt: float
    to_credits_per_prompt: float
    from_success_rate: float
    to_success_rate: float
    to_prompts: int
    from_average_rating: float
    to_average_rating: float
    from_ratings: int
    to_ratings: int
    saving_credits: Decimal
    message: str


@dataclass(frozen=True)
class OffPeakRow:
    peak_hours_utc: str
    peak_prompts: int
    off_peak_prompts: int
    peak_average_response_seconds: float
    off_peak_average_response_seconds: float
    peak_credit_share: float
    message: str


@dataclass(frozen=True)
class ExhaustionSource:
    """Where the budgets' and pools' Runs out came from, or why there is none."""

    prometheus: str | None  # the URL read; None: not asked for
    read_at: datetime | None  # None: not read
    note: str


@dataclass
class Report:
    generated_at: datetime
    period_start: datetime
    period_end: datetime
    period_label: str
    granularity: str
    organization: str | None
    source: str
    summary: Summary
    tables: dict[str, list[Any]] = field(default_factory=dict)
    time_to_exhaustion: ExhaustionSource = field(
        default_factory=lambda: ExhaustionSource(None, None, _NOT_REQUESTED)
    )

    @property
    def to_date(self) -> bool:
        """The period had not ended when the report was made: figures run to generated_at."""
        return self.generated_at < self.period_end


_NOT_REQUESTED = (
    "No time to exhaustion: it comes from Prometheus, not the billing database. Give "
    "--prometheus URL (or report.prometheus in the config) to read the series the alert "
    "rules record (organization_scope_scope_id:credit_budget_exhaustion:seconds, "
    "organization_pool:credit_pool_exhaustion:seconds), the figures the Budgets dashboard "
    "and the alerts' 'Runs out' show."
)

# table name -> row type: the stable order and column names of CSV and JSON
TABLES: dict[str, type] = {
    "tiers": TierRow,
    "models": ModelRow,
    "users": UserRow,
    "timeline": TimelineRow,
    "hours_of_day": HourOfDayRow,
    "weekdays": WeekdayRow,
    "task_categories": CategoryRow,
    "budgets": BudgetRow,
    "balances": BalanceRow,
    "efficiency": EfficiencyRow,
    "model_switches": ModelSwitchRow,
    "off_peak": OffPeakRow,
}


def columns(row_type: type) -> list[str]:
    return [f.name for f in fields(row_type)]

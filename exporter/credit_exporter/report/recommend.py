"""Recommendations: cheaper models already used for the same task, and off-peak scheduling.

A model switch from A to B in a task category is recommended only when A and B
served the same service type there (an embedding or speech model is no
replacement for a chat model, whatever the task), and, in the report period
(thresholds in the ``report:`` config section, documented in docs/report.md):

- both A and B have at least ``min_prompts`` prompts of that service type in that
  category (all figures below are of that category and service type);
- B's credits per prompt are lower than A's;
- B's success rate is at most ``max_success_rate_drop`` below A's;
- both models have at least ``min_ratings`` ratings, and B's average rating is
  at most ``max_rating_drop`` below A's (ratings are per model, not per category:
  the rating stream carries no category);
- the saving, A's prompts x (A's - B's credits per prompt), is at least
  ``min_saving_credits``.

Of several such B, the one with the largest saving is recommended.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from credit_exporter.config import ReportConfig
from credit_exporter.report.data import CategoryModelRow, HourRow
from credit_exporter.report.model import ModelSwitchRow, OffPeakRow

MICRO = Decimal("0.000001")


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def model_switches(
    rows: list[CategoryModelRow],
    ratings: dict[str, tuple[int, Decimal]],
    settings: ReportConfig,
) -> list[ModelSwitchRow]:
    by_kind: dict[tuple[str, str], list[CategoryModelRow]] = defaultdict(list)
    for row in rows:
        if row.prompts >= settings.min_prompts:
            by_kind[(row.task_category, row.service_type or "")].append(row)
    found: list[ModelSwitchRow] = []
    for (category, _), candidates in sorted(by_kind.items()):
        for current in sorted(candidates, key=lambda r: r.model):
            best = None
            for other in candidates:
                switch = _switch(category, current, other, ratings, settings)
                if switch is not None and (
                    best is None or switch.saving_credits > best.saving_credits
                ):
                    best = switch
            if best is not None:
                found.append(best)
    return sorted(
        found,
        key=lambda s: (-s.saving_credits, s.task_category, s.service_type or "", s.from_model),
    )


def _switch(
    category: str,
    a: CategoryModelRow,
    b: CategoryModelRow,
    ratings: dict[str, tuple[int, Decimal]],
    settings: ReportConfig,
) -> ModelSwitchRow | None:
    cpp_a, cpp_b = a.credits / a.prompts, b.credits / b.prompts
    if b.model == a.model or cpp_b >= cpp_a:
        return None
    success_a, success_b = _rate(a.successes, a.prompts), _rate(b.successes, b.prompts)
    if success_b < success_a - settings.max_success_rate_drop:
        return None
    (n_a, total_a), (n_b, total_b) = ratings.get(a.model, (0, 0)), ratings.get(b.model, (0, 0))
    if min(n_a, n_b) < settings.min_ratings:
        return None
    rating_a, rating_b = float(total_a) / n_a, float(total_b) / n_b
    if rating_b < rating_a - settings.max_rating_drop:
        return None
    saving = (a.prompts * (cpp_a - cpp_b)).quantize(MICRO)
    if saving < Decimal(repr(settings.min_saving_credits)):
        return None
    kind = f" ({a.service_type})" if a.service_type else ""
    message = (
        f"For {category}{kind}, use {b.model} instead of {a.model}: {float(cpp_b):.2f} instead of "
        f"{float(cpp_a):.2f} credits per prompt, success rate {success_b:.1%} vs "
        f"{success_a:.1%}, rating {rating_b:.2f} vs {rating_a:.2f}; {a.prompts:,} prompts "
        f"would have cost {saving:,.2f} credits less."
    )
    return ModelSwitchRow(
        task_category=category, service_type=a.service_type, from_model=a.model,
        to_model=b.model, prompts=a.prompts,
        from_credits_per_prompt=float(cpp_a), to_credits_per_prompt=float(cpp_b),
        from_success_rate=success_a, to_success_rate=success_b, to_prompts=b.prompts,
        from_average_rating=rating_a, to_average_rating=rating_b, from_ratings=n_a,
        to_ratings=n_b, saving_credits=saving, message=message,
    )  # fmt: skip


def is_peak(row: HourRow, settings: ReportConfig) -> bool:
    """Weekday (Monday to Friday) hours in [peak_start_hour, peak_end_hour), UTC."""
    hour = row.hour
    return hour.weekday() < 5 and settings.peak_start_hour <= hour.hour < settings.peak_end_hour


def off_peak(hours: list[HourRow], settings: ReportConfig) -> list[OffPeakRow]:
    """Advise off-peak scheduling when peak response times are clearly worse.

    Needs ``min_prompts`` timed prompts both in and out of peak hours, and the
    peak average at least ``min_latency_increase`` (a fraction) above off-peak.
    """
    peak = [h for h in hours if is_peak(h, settings)]
    rest = [h for h in hours if not is_peak(h, settings)]
    n_peak, n_rest = sum(h.latency_count for h in peak), sum(h.latency_count for h in rest)
    if min(n_peak, n_rest) < settings.min_prompts:
        return []
    avg_peak = float(sum((h.latency_sum for h in peak), Decimal(0))) / n_peak
    avg_rest = float(sum((h.latency_sum for h in rest), Decimal(0))) / n_rest
    if avg_peak < avg_rest * (1 + settings.min_latency_increase):
        return []
    credits = sum((h.credits for h in hours), Decimal(0))
    share = float(sum((h.credits for h in peak), Decimal(0)) / credits) if credits else 0.0
    window = f"Mon-Fri {settings.peak_start_hour:02d}:00-{settings.peak_end_hour:02d}:00 UTC"
    message = (
        f"Schedule heavy or batch work outside {window}: responses took {avg_peak:.2f} s on "
        f"average in peak hours against {avg_rest:.2f} s off-peak "
        f"({avg_peak / avg_rest - 1:+.0%}); {share:.0%} of credits were spent in peak hours."
    )
    return [
        OffPeakRow(
            peak_hours_utc=window,
            peak_prompts=sum(h.prompts for h in peak),
            off_peak_prompts=sum(h.prompts for h in rest),
            peak_average_response_seconds=avg_peak,
            off_peak_average_response_seconds=avg_rest,
            peak_credit_share=share,
            message=message,
        )
    ]

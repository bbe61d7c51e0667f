"""The credit-pools group: 75/90/100% of every credit pool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules_settings import POOL_EXHAUSTION, POOL_KEY, POOL_RATIO
from rules_templates import Links, level_rules, q, runs_out, selector, when


def pool_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    key = ", ".join(POOL_KEY)
    sel = selector(POOL_KEY)
    balance = q(f"max(credit_balance_credits{sel})", POOL_KEY)
    allocation = q(f"max(credit_allocation_credits{sel})", POOL_KEY)
    spend = q(
        f"3600 * sum(max by (pool) (rate(credit_spent_by_pool_credits_total{sel}[1d])))",
        POOL_KEY,
        unit=" credits/hour",
        missing="unknown (no credit_spent_by_pool_credits_total)",
    )
    window = settings["projection"]["window"]
    spend_rate = f"max by ({key}) (rate(credit_spent_by_pool_credits_total[{window}]))"
    runs_out_text = runs_out(
        f"{POOL_EXHAUSTION}{sel}",
        POOL_KEY,
        missing=when(
            f"max(credit_balance_credits{sel}) <= 0",
            POOL_KEY,
            "never: already empty",
            when(
                f"max(rate(credit_spent_by_pool_credits_total{sel}[{window}]))",
                POOL_KEY,
                f"never: not burning (no spend in the last {window})",
                "unknown (no credit_spent_by_pool_credits_total)",
            ),
        ),
    )
    recharge = (
        '{{ with printf "max(credit_auto_recharge_enabled{organization=%q})" '
        "$labels.organization | query }}{{ if eq (. | first | value) 1.0 }}on"
        "{{ else }}off{{ end }}{{ else }}not configured{{ end }}"
    )
    who = "the {{ $labels.pool }} pool of {{ $labels.organization }}"
    who_capital = "The" + who.removeprefix("the")
    rules: list[dict[str, Any]] = [
        {
            "record": POOL_RATIO,
            "expr": (
                "(\n"
                f"    max by ({key}) (credit_allocation_credits)\n"
                f"  -\n"
                f"    max by ({key}) (credit_balance_credits)\n"
                ")\n"
                f"/\n"
                f"  max by ({key}) (credit_allocation_credits > 0)\n"
            ),
        },
        {
            # Seconds until the balance reaches 0 at the pool's spend rate over the
            # projection window: none for a pool that is not spending or is empty.
            "record": POOL_EXHAUSTION,
            "expr": (f"max by ({key}) (credit_balance_credits > 0)\n/\n  ({spend_rate} > 0)\n"),
        },
    ]
    summaries = {
        "UsageHigh": "Credit pool past {t} used: {who} at {{{{ $value | humanizePercentage }}}}",
        "AlmostExhausted": (
            "Credit pool almost exhausted: {who} at {{{{ $value | humanizePercentage }}}} used"
        ),
        "Exhausted": "Credit pool exhausted: {who} at {{{{ $value | humanizePercentage }}}} used",
    }
    rules += level_rules(
        "CreditPool", POOL_RATIO, settings["pool_levels"], summaries, who,
        lambda _level, threshold: (
            f"{who_capital} has {balance} of its {allocation} credits left "
            f"({{{{ $value | humanizePercentage }}}} used; alert threshold "
            f"{threshold}). Spend from this pool over the last day: "
            f"{spend}. Runs out: {runs_out_text}. Auto-recharge is {recharge}."
        ),
        links.dashboard("budgets", "organization"), links,
    )  # fmt: skip
    return rules

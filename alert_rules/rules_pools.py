"""The credit-pools group: 75/90/100% of every credit pool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules_settings import PARTIAL_WINDOW, POOL_EXHAUSTION, POOL_KEY, POOL_RATIO
from rules_templates import Links, level_rules, q, runs_out, selector, spend_per_hour, when


def pool_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    key = ", ".join(POOL_KEY)
    sel = selector(POOL_KEY)
    balance = q(f"max(credit_balance_credits{sel})", POOL_KEY)
    allocation = q(f"max(credit_allocation_credits{sel})", POOL_KEY)
    window = settings["projection"]["window"]
    # the spend rate the time to exhaustion assumes (POOL_EXHAUSTION's two bases)
    spent_sel = f"credit_spent_by_pool_credits_total{sel}"
    spend = spend_per_hour(spent_sel, POOL_KEY, window, lambda series: f"max({series})")
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
        bases={
            window: f"at the spend rate of the last {window}",
            PARTIAL_WINDOW: f"at the spend rate since Prometheus has data (less than {window})",
        },
    )
    recharge = (
        '{{ with printf "max(credit_auto_recharge_enabled{organization=%q})" '
        "$labels.organization | query }}{{ if eq (. | first | value) 1.0 }}on"
        "{{ else }}off{{ end }}{{ else }}not configured{{ end }}"
    )
    who = "the {{ $labels.pool }} pool of {{ $labels.organization }}"
    who_capital = "The" + who.removeprefix("the")
    balance_now = f"max by ({key}) (credit_balance_credits > 0)"
    spent = "credit_spent_by_pool_credits_total"
    held = f"max by ({key}) ({spent} offset {window})"
    spend_slope = f"max by ({key}) (deriv({spent}[{window}]))"
    resets = f"max by ({key}) (resets({spent}[{window}]))"
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
            # Seconds until the balance reaches 0 at the pool's spend rate, labelled
            # with the rate it assumes: `burn` = the window when Prometheus holds a
            # sample from a window ago (rate() over the window); else PARTIAL_WINDOW,
            # the slope (deriv) of the samples it holds, since rate() would divide
            # their increase by the whole window; none across a counter reset there.
            # None for a pool that is not spending or is empty.
            "record": POOL_EXHAUSTION,
            "expr": (
                f"label_replace(\n  {balance_now} / ({spend_rate} > 0)\n"
                f"  and on ({key}) {held},\n"
                f'  "burn", "{window}", "", ""\n)\n'
                "or\n"
                f"label_replace(\n  {balance_now} / ({spend_slope} > 0)\n"
                f"  unless on ({key}) {held}\n"
                f"  unless on ({key}) ({resets} > 0),\n"
                f'  "burn", "{PARTIAL_WINDOW}", "", ""\n)\n'
            ),
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
            f"{threshold}). Spend from this pool: "
            f"{spend}. Runs out: {runs_out_text}. Auto-recharge is {recharge}."
        ),
        links.dashboard("budgets", "organization"), links,
    )  # fmt: skip
    return rules

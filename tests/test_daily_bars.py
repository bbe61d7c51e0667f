"""Daily bars are exact on backfilled hourly history: promtool runs each daily-bar
query of the dashboards over hourly samples (what `credit-exporter backfill --step 1h`
writes) and every bar equals the counter's growth between two midnights.

The bars read the counter at both ends of the bucket with instant lookups, never a
range: Prometheus 3 made range selectors left-open (the sample exactly at a range's
start is excluded), which turns increase() over a day of hourly samples into an
extrapolation from 23 hours, while an instant lookup at a sample's own timestamp
finds that sample on 2.x and 3.x alike.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from conftest import require_binary
from dashboard_support import (
    ALL,
    interpolate,
    is_prometheus,
    load_dashboards,
    offline_values,
    panels,
)

from credit_exporter import catalog

HOURS = 72
DAY = {"$__interval": "1d", "$__interval_ms": "86400000", "$__range": "3d", "$__range_s": "259200",
       "$__rate_interval": "1h"}  # fmt: skip
LABELS = {"organization": "acme", "agent": "a1", "project": "p1", "service_type": "embedding",
          "pricing_rule": "tokens", "department": "d1", "user": "u1", "channel": "api",
          "role": "user", "kind": "charge", "currency": "USD"}  # fmt: skip


def hourly_values(hours: int) -> list[float]:
    """An absolute counter with uneven hourly growth (some hours idle)."""
    values, total = [], 1000.0
    for hour in range(hours + 1):
        values.append(total)
        total += (hour * 7) % 11 * 2.5
    return values


def daily_bars() -> list[tuple[str, str]]:
    out = []
    for uid, dashboard in load_dashboards().items():
        values = offline_values(dashboard)
        values["organization"] = "acme"
        for name in ("agent", "service_type"):
            if name in values and values[name] is not ALL:
                values[name] = LABELS[name]
        for panel in panels(dashboard):
            if panel.panel.get("interval") != "1d":
                continue
            for target in filter(is_prometheus, panel.targets):
                out.append((f"{uid}: {panel.title}",
                            interpolate(target["expr"], dashboard, values, DAY)))  # fmt: skip
    return out


def test_every_daily_bar_equals_the_growth_between_two_midnights(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    values = hourly_values(HOURS)
    labels = ",".join(f'{k}="{v}"' for k, v in LABELS.items())
    counters = [m.name for m in catalog.METRICS if m.type is catalog.MetricType.COUNTER]
    series = [{"series": f"{name}{{{labels}}}", "values": " ".join(f"{v:g}" for v in values)}
              for name in counters]  # fmt: skip
    bars = daily_bars()
    assert len(bars) >= 10, bars
    tests = []
    for day in (1, 2, 3):
        expected = values[24 * day] - values[24 * (day - 1)]
        for where, expr in bars:
            tests.append({"expr": f"sum({expr})", "eval_time": f"{day}d",
                          "exp_samples": [{"labels": "{}", "value": expected}],
                          "name": where})  # fmt: skip
    unit = tmp_path / "daily_bars_test.yml"
    for test in tests:
        test.pop("name")
    unit.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1h",
                                    "tests": [{"interval": "1h", "input_series": series,
                                               "promql_expr_test": tests}]}))  # fmt: skip
    done = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

"""Template helpers (Prometheus alert templates: Go text/template), links and the
per-level rules shared by budget scopes and credit pools."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rules_settings import SCOPE_NOUNS


def q(
    expr: str,
    labels: Sequence[str],
    fmt: str = "humanize",
    unit: str = "",
    missing: str = "unknown",
) -> str:
    """Template text that runs the instant query ``expr`` (``%q`` placeholders, or
    ``%[n]q`` for the n-th, are filled, Go-quoted, from the alert's labels, or from
    a literal given as ``'"late"'``) and prints its first value and ``unit``, or
    ``missing`` when the query returns nothing."""
    return (
        f"{_query(expr, labels)}"
        f"{{{{ . | first | value | {fmt} }}}}{unit}{{{{ else }}}}{missing}{{{{ end }}}}"
    )


def when(expr: str, labels: Sequence[str], then: str, otherwise: str) -> str:
    """Template text: ``then`` when the instant query ``expr`` (filled as in ``q``)
    returns anything, else ``otherwise``."""
    return f"{_query(expr, labels)}{then}{{{{ else }}}}{otherwise}{{{{ end }}}}"


def _query(expr: str, labels: Sequence[str]) -> str:
    """``{{ with <expr filled from labels and literals> | query }}``, for ``q`` and ``when``."""
    assert '"' not in expr and "{{" not in expr and "}}" not in expr, expr
    args = "".join(f" {arg}" if arg.startswith('"') else f" $labels.{arg}" for arg in labels)
    return f'{{{{ with printf "{expr}"{args} | query }}}}'


def runs_out(series: str, labels: Sequence[str], missing: str, bases: Mapping[str, str]) -> str:
    """Template text: "in <duration> (at <time>), <basis>" from a recorded
    time-to-exhaustion series in seconds (``series`` with its selector), the basis
    read from its `burn` label through ``bases`` (label value -> text), or ``missing``."""
    at = q(f"time() + {series}", labels, fmt="humanizeTimestamp")
    branches = [f'if eq . "{value}" }}}}, {text}' for value, text in bases.items()]
    basis = '{{ with . | first | label "burn" }}{{ ' + "{{ else ".join(branches)
    basis += "{{ end }}{{ end }}"
    return q(series, labels, fmt="humanizeDuration", unit=f" (at {at}){basis}", missing=missing)


def spend_per_hour(
    spent: str, labels: Sequence[str], window: str, aggregate: Callable[[str], str]
) -> str:
    """Template text: credits per hour of the counter selector ``spent`` (filled from
    ``labels``), ``aggregate``-d: over ``window`` when Prometheus holds a sample from a
    window ago, else the slope of what it holds (rate() over the window would divide a
    few hours' spend by the whole window)."""
    return q(
        f"3600 * {aggregate(f'rate({spent}[{window}])')}"
        f" and on () {aggregate(f'{spent} offset {window}')}",
        [*labels, *labels],
        unit=f" credits/hour over the last {window}",
        missing=q(
            f"3600 * {aggregate(f'deriv({spent}[{window}])')}",
            labels,
            unit=f" credits/hour since Prometheus has data (less than {window})",
            missing=f"unknown (no {spent.partition('{')[0]})",
        ),
    )


def scope_noun() -> str:
    """Template text naming the alert's budget scope in a sentence (SCOPE_NOUNS)."""
    branches = [f'if eq $labels.scope "{value}" }}}}{noun}' for value, noun in SCOPE_NOUNS.items()]
    return "{{ " + "{{ else ".join(branches) + "{{ else }}{{ $labels.scope }}{{ end }}"


def selector(labels: Sequence[str]) -> str:
    return "{" + ",".join(f"{label}=%q" for label in labels) + "}"


class Links:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.dashboards = settings["links"]["dashboards"].rstrip("/")
        self.runbooks = settings["links"]["runbooks"]
        self.uids = settings["dashboards"]

    def runbook(self, alert: str) -> str:
        return f"{self.runbooks}#{alert.lower()}"

    def dashboard(self, key: str, *variables: str) -> str:
        """A link to our dashboard ``key`` (settings `dashboards`) with variables set."""
        uid = self.uids[key]
        query = "&".join(f"var-{name}={{{{ $labels.{name} | urlquery }}}}" for name in variables)
        return f"{self.dashboards}/d/{uid}" + (f"?{query}" if query else "")


def percent(value: float) -> str:
    return f"{value:g}"


def ratio_literal(threshold: float) -> str:
    """``75`` -> ``0.75`` with no float noise (``0.7500000000000001``)."""
    text = repr(round(threshold / 100, 10))
    return text.removesuffix(".0")


# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------


def level_rules(
    prefix: str,
    ratio: str,
    levels: Mapping[str, Any],
    summaries: Mapping[str, str],
    who: str,
    description: Callable[[str, str], str],
    dashboard: str,
    links: Links,
    threshold_of: Callable[[str], tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """One alert per threshold level (UsageHigh, AlmostExhausted, Exhausted) on a ratio.

    The threshold is the level's ``threshold`` setting, also carried as the label
    ``threshold``; or, with ``threshold_of``, (the PromQL the ratio is compared
    with, template text printing it) for a level, without the label: a threshold
    that depends on the alerting series (a ladder from the billing database).
    ``description`` gets the level and the text printing its threshold."""
    rules = []
    for level, spec in levels.items():
        name = f"{prefix}{level}"
        labels = {"severity": spec["severity"]}
        if threshold_of is None:
            bound, shown = ratio_literal(spec["threshold"]), f"{percent(spec['threshold'])}%"
            labels["threshold"] = percent(spec["threshold"])
        else:
            bound, shown = threshold_of(level)
        rules.append(
            {
                "alert": name,
                "expr": f"{ratio} >= {bound}\n",
                "for": spec["for"],
                "labels": labels,
                "annotations": {
                    "summary": summaries[level].format(t=shown, who=who),
                    "description": description(level, shown),
                    "runbook_url": links.runbook(name),
                    "dashboard_url": dashboard,
                },
            }
        )
    return rules

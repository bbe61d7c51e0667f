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
    assert '"' not in expr and "{{" not in expr and "}}" not in expr, expr
    args = "".join(f" {arg}" if arg.startswith('"') else f" $labels.{arg}" for arg in labels)
    return (
        f'{{{{ with printf "{expr}"{args} | query }}}}'
        f"{{{{ . | first | value | {fmt} }}}}{unit}{{{{ else }}}}{missing}{{{{ end }}}}"
    )


def when(expr: str, labels: Sequence[str], then: str, otherwise: str) -> str:
    """Template text: ``then`` when the instant query ``expr`` (filled as in ``q``)
    returns anything, else ``otherwise``."""
    assert '"' not in expr and "{{" not in expr and "}}" not in expr, expr
    args = "".join(f" $labels.{arg}" for arg in labels)
    head = f'{{{{ with printf "{expr}"{args} | query }}}}'
    return f"{head}{then}{{{{ else }}}}{otherwise}{{{{ end }}}}"


def runs_out(series: str, labels: Sequence[str], missing: str, bases: Mapping[str, str]) -> str:
    """Template text: "in <duration> (at <time>), <basis>" from a recorded
    time-to-exhaustion series in seconds (``series`` with its selector), the basis
    read from its `burn` label through ``bases`` (label value -> text), or ``missing``."""
    at = q(f"time() + {series}", labels, fmt="humanizeTimestamp")
    branches = [f'if eq . "{value}" }}}}, {text}' for value, text in bases.items()]
    basis = '{{ with . | first | label "burn" }}{{ ' + "{{ else ".join(branches)
    basis += "{{ end }}{{ end }}"
    return q(series, labels, fmt="humanizeDuration", unit=f" (at {at}){basis}", missing=missing)


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
    description: Callable[[float], str],
    dashboard: str,
    links: Links,
) -> list[dict[str, Any]]:
    """One alert per threshold level (UsageHigh, AlmostExhausted, Exhausted) on a ratio."""
    rules = []
    for level, spec in levels.items():
        threshold = spec["threshold"]
        name = f"{prefix}{level}"
        rules.append(
            {
                "alert": name,
                "expr": f"{ratio} >= {ratio_literal(threshold)}\n",
                "for": spec["for"],
                "labels": {"severity": spec["severity"], "threshold": percent(threshold)},
                "annotations": {
                    "summary": summaries[level].format(t=percent(threshold), who=who),
                    "description": description(threshold),
                    "runbook_url": links.runbook(name),
                    "dashboard_url": dashboard,
                },
            }
        )
    return rules

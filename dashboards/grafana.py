"""What Grafana does with a dashboard before it queries: variable defaults and
interpolation, for the forms these dashboards use. The preview renderer and the
tests use it, since no Grafana server runs there.

- Prometheus: a single-value variable is inserted as is; a multi-value or
  include-All variable becomes its custom all value (``.*``) when All is
  selected, else its values regex-escaped and joined as ``(a|b)``.
- PostgreSQL: ``$var`` of a single-value variable as is (quotes doubled),
  ``${var:regex}`` as above; the macros ``$__timeFilter(col)``,
  ``$__timeFrom()`` and ``$__timeTo()`` become literal timestamps.
- Built-ins: ``$__range``, ``$__range_s``, ``$__interval``, ``$__interval_ms``,
  ``$__rate_interval``.
- Query variables (``label_values(selector, label)``) default to their first
  value in alphabetical order, or to All when they include it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")
ALL: Any = object()  # the All option of a variable
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


@dataclass
class Panel:
    dashboard: str  # uid
    panel: dict[str, Any]
    repeat: str | None  # the variable its row repeats over

    @property
    def title(self) -> str:
        return self.panel["title"]

    @property
    def targets(self) -> list[dict[str, Any]]:
        return self.panel.get("targets", [])

    def __repr__(self) -> str:
        return f"{self.dashboard}/{self.title}"


def panels(dashboard: dict[str, Any]) -> Iterator[Panel]:
    """The data panels (no rows), with the repeat variable of their row."""
    repeat = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            repeat = panel.get("repeat")
            continue
        yield Panel(dashboard["uid"], panel, repeat)


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def seconds(duration: str) -> int:
    return int(duration[:-1]) * UNITS[duration[-1]]


def regex_escape(value: str) -> str:
    """Grafana's escape of one value inside a regex matcher."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\1", value)


def _format_multi(values: Any, variable: dict[str, Any], promql: bool) -> str:
    if values is ALL:
        return variable.get("allValue") or ".*"
    escaped = [regex_escape(v) for v in values]
    if promql:  # inside a PromQL double-quoted string
        escaped = [e.replace("\\", "\\\\") for e in escaped]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(text: str, dashboard: dict[str, Any], values: dict[str, Any],
                builtins: dict[str, str], sql: bool = False) -> str:  # fmt: skip
    """Replace every variable reference in a query the way Grafana would."""
    defs = variables(dashboard)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        fmt = match.group(2)
        if f"${name}" in builtins:
            return builtins[f"${name}"]
        if name not in defs or name not in values:
            return match.group(0)  # not a variable (a label_replace $1, a macro)
        variable, value = defs[name], values[name]
        if variable.get("multi") or variable.get("includeAll"):
            return _format_multi(value, variable, promql=not sql)
        if fmt == "regex":
            return regex_escape(value)
        return value.replace("'", "''") if sql else value

    return VAR.sub(replace, text)


def sql_macros(text: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL time macros with a concrete range."""
    lo, hi = (f"'{t.strftime('%Y-%m-%dT%H:%M:%SZ')}'" for t in (start, end))
    text = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN {lo} AND {hi}", text)
    return text.replace("$__timeFrom()", lo).replace("$__timeTo()", hi)


def resolve_defaults(dashboard: dict[str, Any], series: Callable[[str], list[dict[str, str]]]
                     ) -> tuple[dict[str, Any], dict[str, list[str]]]:  # fmt: skip
    """Each variable's default as Grafana picks it, and the options of each.

    ``series(selector)`` returns the label sets of the series a selector matches
    (Prometheus ``/api/v1/series``).
    """
    values: dict[str, Any] = {}
    options: dict[str, list[str]] = {}
    for name, var in variables(dashboard).items():
        current = var.get("current", {}).get("value")
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"])
            if not match:
                raise ValueError(f"unsupported variable query {var['query']!r}")
            selector = interpolate(match.group(1), dashboard, values, {})
            label = match.group(2)
            found = sorted({s[label] for s in series(selector) if label in s})
            options[name] = found
            if var.get("includeAll"):
                values[name] = ALL
            else:
                values[name] = found[0] if found else ""
        elif current in (["$__all"], "$__all"):
            values[name] = ALL
            options[name] = [o["value"] for o in var.get("options", [])]
        else:
            values[name] = current
    return values, options


def panel_interval(panel: Panel, values: dict[str, Any], default: str = "15s") -> str:
    interval = panel.panel.get("interval") or default
    return values[interval[1:]] if interval.startswith("$") else interval


def builtins(panel: Panel, values: dict[str, Any], range_seconds: int,
             rate_interval: str = "1m") -> dict[str, str]:  # fmt: skip
    interval = panel_interval(panel, values)
    return {
        "$__range": f"{range_seconds}s",
        "$__range_s": str(range_seconds),
        "$__rate_interval": rate_interval,
        "$__interval": interval,
        "$__interval_ms": str(seconds(interval) * 1000),
    }


def for_panel(panel: Panel, values: dict[str, Any], options: dict[str, list[str]]
              ) -> dict[str, Any]:  # fmt: skip
    """The values a panel sees: a repeated row gets one value of its variable."""
    if panel.repeat and values.get(panel.repeat) is ALL and options.get(panel.repeat):
        return {**values, panel.repeat: [options[panel.repeat][0]]}
    return values


def legend(template: str, labels: dict[str, str]) -> str:
    """A Prometheus legend format with a series' labels."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)

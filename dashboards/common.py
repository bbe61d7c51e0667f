"""Shared building blocks: data sources, units, thresholds, panels, variables, layout.

The dashboards are built with grafanalib (``Dashboard``, ``RowPanel``,
``Target``, ``SqlTarget``, ``Template``, ``DashboardLink``); panels use one
small subclass of grafanalib's ``Panel`` (``Viz``) that writes the field config
and options current Grafana (11, 12) reads. ``finalize`` then drops what
grafanalib emits for old Grafana versions (legacy rows, ``style``,
``maxDataPoints`` 100, ``span``...) and stamps a current ``schemaVersion``.

Conventions every dashboard follows (the tests enforce them):

- every panel has a title, a description, a data source (always a data source
  variable: ``${datasource}`` for Prometheus, ``${billing}`` for PostgreSQL) and
  a unit when it shows numbers;
- counters are only read through ``increase()`` (totals over ``$__range`` or per
  ``$__interval`` bucket), ``rate()`` (over ``$__rate_interval``) or, for daily
  bars, ``growth_between_boundaries()``; recorded increases
  (``dashboards/recording.py``) only through ``sum_over_time()``;
- credits use the custom unit ``count:credits`` (Grafana scales it: 12.3K credits).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attr
from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

from dashboards import recording
from monitoring import config

SCHEMA_VERSION = 39  # Grafana 11.0; newer Grafana migrates forward on load
TAG = "credit-exporter"

PROMETHEUS_UID = "prometheus"
POSTGRES_UID = "billing-postgres"
POSTGRES_TYPE = "grafana-postgresql-datasource"
PROMETHEUS = {"type": "prometheus", "uid": "${datasource}"}
POSTGRES = {"type": POSTGRES_TYPE, "uid": "${billing}"}

# Dashboard uids, from the monitoring configuration (alert_rules/settings.yml
# `dashboards`): alert rules and data links point at them.
UID_USAGE = config.dashboard_uid("usage")
UID_ORG = config.dashboard_uid("org_analytics")
UID_AGENT = config.dashboard_uid("agent_analytics")
UID_MODELS = config.dashboard_uid("models_users")
UID_BUDGETS = config.dashboard_uid("budgets")
UID_HEALTH = config.dashboard_uid("exporter_health")

# Units (Grafana unit ids). Credits are a custom unit that still scales (K, M, B).
CREDITS = "count:credits"
CREDITS_PER_PROMPT = "count:credits/prompt"
COUNT = "short"
SECONDS = "s"
DURATION = "dtdurations"  # seconds shown as "12 days, 4 hours"
HOURS = "h"
MINUTES = "m"
PERCENT = "percent"  # 0-100
RATIO = "percentunit"  # 0-1
BYTES = "bytes"
NONE = "none"
NUMERIC_UNITS = {CREDITS, CREDITS_PER_PROMPT, COUNT, SECONDS, DURATION, HOURS, MINUTES,
                 PERCENT, RATIO, BYTES, NONE, "dateTimeAsIso"}  # fmt: skip

# Label values of the demo data and the reference schema, with display names.
SERVICE_TYPE_COLORS = {
    "text_generation": "blue",
    "speech_to_text": "green",
    "text_to_speech": "yellow",
    "embedding": "purple",
    "agent": "orange",
    "tool_run": "red",
    "document_processing": "super-light-blue",
}
CHANNEL_NAMES = {
    "web_chat": "Web chat",
    "whatsapp": "WhatsApp",
    "phone": "Phone",
    "sms": "SMS",
    "messenger": "Messenger",
    "instagram": "Instagram",
    "telegram": "Telegram",
    "api": "API",
}


# --------------------------------------------------------------------------
# Thresholds, mappings, overrides
# --------------------------------------------------------------------------


def steps(*pairs: tuple[str, float | None]) -> dict[str, Any]:
    """Absolute threshold steps; the first pair is the base colour (value None)."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


GREEN = steps(("green", None))
NEUTRAL = steps(("text", None))
# Budget and plan-health colours at the budget alert levels of the monitoring
# configuration (75% yellow, 90% orange, 100% red by default).
BUDGET_PERCENT = config.budget_thresholds()
BUDGET_RATIO = config.budget_thresholds(scale=0.01)
UP_DOWN = steps(("red", None), ("green", 1))


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Value mappings: {"1": ("Up", "green")}."""
    return [
        {
            "type": "value",
            "options": {
                key: {"text": text, "color": color, "index": i}
                for i, (key, (text, color)) in enumerate(mapping.items())
            },
        }
    ]


def range_map(low: float | None, high: float | None, text: str, color: str) -> dict[str, Any]:
    return {
        "type": "range",
        "options": {"from": low, "to": high, "result": {"text": text, "color": color}},
    }


def override(matcher: str, value: str, **properties: Any) -> dict[str, Any]:
    """A field override: matcher byName, byFrameRefID or byRegexp."""
    return {
        "matcher": {"id": matcher, "options": value},
        "properties": [{"id": key, "value": val} for key, val in properties.items()],
    }


def series_colors(colors: dict[str, str]) -> list[dict[str, Any]]:
    return [
        override("byName", name, color={"mode": "fixed", "fixedColor": color})
        for name, color in colors.items()
    ]


def display_names(names: dict[str, str]) -> list[dict[str, Any]]:
    return [override("byName", slug, displayName=name) for slug, name in names.items()]


def link(title: str, uid: str, params: str = "") -> dict[str, Any]:
    """A link to another credit-exporter dashboard, keeping the time range."""
    query = "&".join(p for p in (params, "${__url_time_range}") if p)
    return {"title": title, "url": f"/d/{uid}/{uid}?{query}", "targetBlank": False}


# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------


def prom(expr: str, legend: str = "", *, ref: str = "", instant: bool | None = None,
         table: bool = False) -> g.Target:  # fmt: skip
    """A PromQL target. ``instant`` defaults to the panel kind's default."""
    target = g.Target(
        expr=" ".join(expr.split()),
        legendFormat=legend,
        refId=ref,
        format="table" if table else "time_series",
        datasource=PROMETHEUS,
    )
    target._instant = instant  # resolved by the panel helper
    return target


def sql(raw: str, *, ref: str = "") -> g.SqlTarget:
    """A PostgreSQL target (table format) on the billing database."""
    text = "\n".join(line.rstrip() for line in raw.strip("\n").splitlines())
    import textwrap

    return g.SqlTarget(rawSql=textwrap.dedent(text), refId=ref, format="table", datasource=POSTGRES)


# --------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------


@attr.s
class Viz(g.Panel):
    """Any current Grafana panel: grafanalib's Panel plus field config and options.

    ``width``/``height`` are grid units for ``layout``; ``seeds`` names the seed
    items the panel reproduces (documentation only, not emitted).
    """

    type = attr.ib(default="timeseries")
    fieldConfig = attr.ib(factory=dict)
    options = attr.ib(factory=dict)
    width = attr.ib(default=6)
    height = attr.ib(default=8)
    seeds = attr.ib(default="")
    paid_only = attr.ib(default=False)

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {"type": self.type, "fieldConfig": self.fieldConfig, "options": self.options}
        )


def _targets(targets: Sequence[g.Target], instant: bool) -> list[g.Target]:
    refs = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    out = []
    for target in targets:
        wanted = getattr(target, "_instant", None)
        ref = target.refId or next(refs)
        new = attr.evolve(target, refId=ref)
        if isinstance(target, g.SqlTarget):
            new.instant = False
        else:
            new = attr.evolve(new, instant=instant if wanted is None else wanted)
        out.append(new)
    return out


def _datasource(targets: Sequence[g.Target]) -> dict[str, str]:
    kinds = {json.dumps(t.datasource, sort_keys=True) for t in targets}
    if len(kinds) != 1:
        raise ValueError("a panel reads one data source")
    return json.loads(kinds.pop())


def _defaults(unit: str, thresholds: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": thresholds or GREEN,
        "mappings": extra.pop("mappings", None) or [],
    }
    defaults.update({k: v for k, v in extra.items() if v is not None})
    return defaults


def _reduce(calc: str = "lastNotNull", values: bool = False, fields: str = "") -> dict[str, Any]:
    return {"calcs": [calc], "fields": fields, "values": values}


def _panel(kind: str, title: str, description: str, targets: Sequence[g.Target], *,
           instant: bool, field_config: dict[str, Any], options: dict[str, Any],
           width: int, height: int, interval: str | None = None,
           links: list[dict[str, Any]] | None = None,
           transformations: list[dict[str, Any]] | None = None, seeds: str = "",
           paid_only: bool = False) -> Viz:  # fmt: skip
    if not description:
        raise ValueError(f"panel {title!r} needs a description")
    built = _targets(targets, instant)
    return Viz(
        type=kind,
        title=title,
        description=description,
        dataSource=_datasource(built),
        targets=built,
        fieldConfig=field_config,
        options=options,
        width=width,
        height=height,
        interval=interval,
        links=links or [],
        transformations=transformations or [],
        seeds=seeds,
        paid_only=paid_only,
    )


def stat(title: str, description: str, targets: Sequence[g.Target], unit: str, *,
         thresholds: dict[str, Any] | None = None, mappings: list | None = None,
         overrides: list | None = None, color_mode: str = "value", text_mode: str = "auto",
         graph: str = "none", decimals: int | None = None, no_value: str | None = None,
         links: list | None = None, width: int = 4, height: int = 4,
         orientation: str = "auto", calc: str = "lastNotNull", seeds: str = "",
         paid_only: bool = False) -> Viz:  # fmt: skip
    """A stat: one instant value per series (graph mode "area" asks for a range)."""
    if unit == COUNT and decimals is None:
        decimals = 0  # counts: increase() extrapolates to fractions
    return _panel(
        "stat", title, description, targets, instant=graph == "none",
        field_config={
            "defaults": _defaults(unit, thresholds or NEUTRAL, mappings=mappings,
                                  decimals=decimals, noValue=no_value,
                                  color={"mode": "thresholds"}, links=links),
            "overrides": overrides or [],
        },
        options={
            "reduceOptions": _reduce(calc), "orientation": orientation,
            "textMode": text_mode, "colorMode": color_mode, "graphMode": graph,
            "justifyMode": "auto", "wideLayout": True, "showPercentChange": False,
        },
        width=width, height=height, seeds=seeds, paid_only=paid_only,
    )  # fmt: skip


def timeseries(title: str, description: str, targets: Sequence[g.Target], unit: str, *,
               bars: bool = False, stacked: bool = False, interval: str = "1m",
               fill: int = 10, overrides: list | None = None,
               thresholds: dict[str, Any] | None = None, threshold_style: str = "off",
               legend: str = "list", legend_calcs: Sequence[str] = (), min_value: float | None = 0,
               max_value: float | None = None, width: int = 12, height: int = 8,
               links: list | None = None, seeds: str = "", paid_only: bool = False,
               decimals: int | None = None) -> Viz:  # fmt: skip
    """A time series; ``interval`` is the panel's min interval (the bucket for bars)."""
    if any(GROWTH_MARK in getattr(t, "expr", "") for t in targets):
        description = f"{description} {FIRST_BAR_NOTE}"
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else fill,
        "gradientMode": "none",
        "showPoints": "never",
        "pointSize": 4,
        "spanNulls": False,
        "lineInterpolation": "linear",
        "barAlignment": -1 if bars else 0,
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "axisPlacement": "auto",
        "axisLabel": "",
        "axisBorderShow": False,
        "axisCenteredZero": False,
        "axisColorMode": "text",
        "scaleDistribution": {"type": "linear"},
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "thresholdsStyle": {"mode": threshold_style},
        "insertNulls": False,
    }
    return _panel(
        "timeseries", title, description, targets, instant=False,
        field_config={
            "defaults": _defaults(unit, thresholds, color={"mode": "palette-classic"},
                                  custom=custom, min=min_value, max=max_value,
                                  decimals=decimals, links=links),
            "overrides": overrides or [],
        },
        options={
            "legend": {"showLegend": legend != "hidden", "displayMode":
                       "list" if legend == "hidden" else legend,
                       "placement": "bottom", "calcs": list(legend_calcs)},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        width=width, height=height, interval=interval, seeds=seeds, paid_only=paid_only,
    )  # fmt: skip


def piechart(title: str, description: str, targets: Sequence[g.Target], unit: str, *,
             overrides: list | None = None, width: int = 6, height: int = 8,
             seeds: str = "", links: list | None = None) -> Viz:  # fmt: skip
    """A doughnut over instant values, legend with value and percent."""
    return _panel(
        "piechart", title, description, targets, instant=True,
        field_config={
            "defaults": _defaults(unit, None, color={"mode": "palette-classic"},
                                  custom={"hideFrom": {"legend": False, "tooltip": False,
                                                       "viz": False}}, links=links),
            "overrides": overrides or [],
        },
        options={
            "reduceOptions": _reduce(), "pieType": "donut", "displayLabels": ["percent"],
            "legend": {"showLegend": True, "displayMode": "table", "placement": "right",
                       "values": ["value", "percent"]},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        width=width, height=height, seeds=seeds,
    )  # fmt: skip


def bargauge(title: str, description: str, targets: Sequence[g.Target], unit: str, *,
             thresholds: dict[str, Any] | None = None, min_value: float | None = 0,
             max_value: float | None = None, links: list | None = None,
             overrides: list | None = None, mappings: list | None = None,
             values: bool = False, width: int = 8, height: int = 8, seeds: str = "",
             decimals: int | None = None, paid_only: bool = False,
             color_mode: str = "thresholds") -> Viz:  # fmt: skip
    """Horizontal bars, one per series (or per row with ``values`` for SQL tables)."""
    color = {"mode": color_mode} if color_mode == "thresholds" else {"mode": "continuous-BlPu"}
    return _panel(
        "bargauge", title, description, targets, instant=True,
        field_config={
            "defaults": _defaults(unit, thresholds or steps(("blue", None)), mappings=mappings,
                                  min=min_value, max=max_value, links=links,
                                  decimals=decimals, color=color),
            "overrides": overrides or [],
        },
        options={
            "reduceOptions": _reduce(values=values), "orientation": "horizontal",
            "displayMode": "gradient", "valueMode": "color", "namePlacement": "auto",
            "showUnfilled": True, "sizing": "auto", "minVizWidth": 8, "minVizHeight": 16,
            "maxVizHeight": 300,
        },
        width=width, height=height, seeds=seeds, paid_only=paid_only,
    )  # fmt: skip


def gauge(title: str, description: str, targets: Sequence[g.Target], unit: str, *,
          thresholds: dict[str, Any], min_value: float = 0, max_value: float = 100,
          width: int = 4, height: int = 6, seeds: str = "",
          links: list | None = None) -> Viz:  # fmt: skip
    return _panel(
        "gauge", title, description, targets, instant=True,
        field_config={
            "defaults": _defaults(unit, thresholds, min=min_value, max=max_value,
                                  color={"mode": "thresholds"}, links=links),
            "overrides": [],
        },
        options={
            "reduceOptions": _reduce(), "orientation": "auto", "showThresholdLabels": False,
            "showThresholdMarkers": True, "sizing": "auto", "minVizWidth": 75,
            "minVizHeight": 75,
        },
        width=width, height=height, seeds=seeds,
    )  # fmt: skip


def table(title: str, description: str, targets: Sequence[g.Target], unit: str = NONE, *,
          overrides: list | None = None, transformations: list | None = None,
          sort_by: str | None = None, width: int = 24, height: int = 10,
          seeds: str = "", links: list | None = None,
          thresholds: dict[str, Any] | None = None) -> Viz:  # fmt: skip
    """A table. Prometheus targets are instant table-format queries."""
    built = []
    for target in targets:
        if not isinstance(target, g.SqlTarget):
            target = attr.evolve(target, format="table")
            target._instant = True
        built.append(target)
    return _panel(
        "table", title, description, built, instant=True,
        field_config={
            "defaults": _defaults(unit, thresholds, color={"mode": "thresholds"},
                                  links=links,
                                  custom={"align": "auto", "cellOptions": {"type": "auto"},
                                          "inspect": False, "filterable": True}),
            "overrides": overrides or [],
        },
        options={
            "showHeader": True, "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
            "sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else [],
        },
        width=width, height=height, transformations=transformations, seeds=seeds,
    )  # fmt: skip


def text(title: str, content: str, *, width: int = 24, height: int = 3) -> Viz:
    """A markdown note (no data source, no query)."""
    return Viz(
        type="text",
        title=title,
        description=title,
        options={
            "mode": "markdown",
            "content": content.strip(),
            "code": {"language": "plaintext", "showLineNumbers": False, "showMiniMap": False},
        },
        fieldConfig={"defaults": {}, "overrides": []},
        width=width,
        height=height,
    )


def row(title: str, repeat: str | None = None) -> g.RowPanel:
    panel = g.RowPanel(title=title)
    panel._repeat_var = repeat
    return panel


def table_columns(renames: dict[str, str], hide: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Merge the instant queries of a table into rows, rename and hide columns."""
    excluded = {name: True for name in ("Time", *hide)}
    order = {name: i for i, name in enumerate(renames)}
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {"excludeByName": excluded, "indexByName": order,
                        "renameByName": renames},
        },
    ]  # fmt: skip


# --------------------------------------------------------------------------
# Variables
# --------------------------------------------------------------------------


def datasource_variable(name: str, plugin: str, label: str, default_uid: str) -> dict:
    return _variable(
        g.Template(name=name, query=plugin, type="datasource", label=label, default=default_uid),
        current={"text": default_uid, "value": default_uid},
    )


def query_variable(name: str, label: str, query: str, *, multi: bool = False,
                   include_all: bool = False, all_value: str | None = None,
                   description: str = "") -> dict:  # fmt: skip
    """A Prometheus ``label_values`` variable, refreshed when the time range changes."""
    template = g.Template(
        name=name, label=label, query=query, dataSource=PROMETHEUS, multi=multi,
        includeAll=include_all, allValue=all_value, refresh=2, sort=1,
    )  # fmt: skip
    current = {"text": ["All"], "value": ["$__all"]} if include_all else {}
    if include_all and not multi:
        current = {"text": "All", "value": "$__all"}
    data = _variable(template, current=current)
    data["definition"] = query
    data["description"] = description
    return data


def custom_variable(name: str, label: str, options: Sequence[tuple[str, str]], *,
                    default: Sequence[str], multi: bool = False, include_all: bool = False,
                    all_value: str | None = None, description: str = "") -> dict:  # fmt: skip
    """A fixed list of ``(text, value)`` options."""
    query = ", ".join(f"{text} : {value}" if text != value else value for text, value in options)
    template = g.Template(name=name, label=label, query=query, type="custom", multi=multi,
                          includeAll=include_all, allValue=all_value)  # fmt: skip
    chosen = [(t, v) for t, v in options if v in default]
    current: dict[str, Any]
    if include_all and len(chosen) == len(options):
        current = {"text": ["All"], "value": ["$__all"]}
    elif multi:
        current = {"text": [t for t, _ in chosen], "value": [v for _, v in chosen]}
    else:
        current = {"text": chosen[0][0], "value": chosen[0][1]}
    data = _variable(template, current=current)
    data["options"] = [{"text": t, "value": v, "selected": v in default} for t, v in options]
    data["description"] = description
    return data


def interval_variable(name: str, label: str, values: Sequence[str], default: str,
                      description: str = "") -> dict:  # fmt: skip
    template = g.Template(name=name, label=label, query=",".join(values), type="interval",
                          default=default, refresh=2)  # fmt: skip
    data = _variable(template, current={"text": default, "value": default})
    data["options"] = [{"text": v, "value": v, "selected": v == default} for v in values]
    data["auto"] = False
    data["description"] = description
    return data


def textbox_variable(name: str, label: str, default: str, description: str = "") -> dict:
    template = g.Template(name=name, label=label, query=default, type="textbox", default=default)
    data = _variable(template, current={"text": default, "value": default})
    data["options"] = [{"text": default, "value": default, "selected": True}]
    data["description"] = description
    return data


_VARIABLE_KEYS = ("type", "name", "label", "description", "query", "definition", "datasource",
                  "current", "options", "multi", "includeAll", "allValue", "refresh", "sort",
                  "regex", "hide", "auto")  # fmt: skip


def _variable(template: g.Template, current: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(template.to_json_data(), cls=DashboardEncoder))
    data["current"] = current
    data["regex"] = data.get("regex") or ""
    data["options"] = data.get("options") or []
    if data["type"] in ("custom", "interval", "textbox", "datasource"):
        data.pop("datasource", None)
        data.pop("sort", None)
    if data["type"] != "interval":
        data.pop("auto", None)
    if data["type"] in ("custom", "textbox"):
        data.pop("refresh", None)
    if data.get("allValue") is None:
        data.pop("allValue", None)
    return {key: data[key] for key in _VARIABLE_KEYS if key in data}


def prometheus_variable() -> dict:
    return datasource_variable("datasource", "prometheus", "Prometheus", PROMETHEUS_UID)


def postgres_variable() -> dict:
    return datasource_variable("billing", POSTGRES_TYPE, "Billing database", POSTGRES_UID)


def organization_variable() -> dict:
    return query_variable(
        "organization", "Organization",
        "label_values(credit_organization_info, organization)",
        description="Organization slug (credit_organization_info).",
    )  # fmt: skip


# --------------------------------------------------------------------------
# Layout and the final JSON
# --------------------------------------------------------------------------


def layout(items: Sequence[g.RowPanel | Viz]) -> list[Any]:
    """Place panels left to right on the 24-column grid; a row starts a new line."""
    placed: list[Any] = []
    x = y = line_height = 0
    panel_id = 0
    for item in items:
        panel_id += 1
        if isinstance(item, g.RowPanel):
            if x:
                y += line_height
            x, line_height = 0, 0
            placed.append(attr.evolve(item, id=panel_id, gridPos=g.GridPos(h=1, w=24, x=0, y=y)))
            placed[-1]._repeat_var = getattr(item, "_repeat_var", None)
            y += 1
            continue
        if x + item.width > 24:
            x, y, line_height = 0, y + line_height, 0
        grid = g.GridPos(h=item.height, w=item.width, x=x, y=y)
        placed.append(attr.evolve(item, id=panel_id, gridPos=grid))
        x += item.width
        line_height = max(line_height, item.height)
    return placed


def dashboard_links() -> list[g.DashboardLink]:
    return [
        g.DashboardLink(
            type="dashboards",
            tags=[TAG],
            asDropdown=True,
            includeVars=True,
            keepTime=True,
            title="Credit dashboards",
        )
    ]


_TOP_KEYS = ("annotations", "description", "editable", "fiscalYearStartMonth", "graphTooltip",
             "links", "liveNow", "panels", "refresh", "schemaVersion", "tags", "templating",
             "time", "timepicker", "timezone", "title", "uid", "version", "weekStart")  # fmt: skip
_PANEL_KEYS = ("id", "type", "title", "description", "datasource", "gridPos", "interval",
               "targets", "fieldConfig", "options", "links", "transformations", "repeat",
               "repeatDirection", "maxPerRow", "collapsed", "panels")  # fmt: skip
_PROM_TARGET_KEYS = ("refId", "datasource", "expr", "legendFormat", "instant", "range",
                     "format", "editorMode")  # fmt: skip
_SQL_TARGET_KEYS = ("refId", "datasource", "rawSql", "format", "rawQuery", "editorMode")

BUILTIN_ANNOTATION = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def _clean_target(target: dict[str, Any]) -> dict[str, Any]:
    target = dict(target)
    target["editorMode"] = "code"
    if "rawSql" in target:
        target["rawQuery"] = True
        return {k: target[k] for k in _SQL_TARGET_KEYS}
    target["range"] = not target["instant"]
    return {k: target[k] for k in _PROM_TARGET_KEYS}


def _clean_panel(panel: dict[str, Any], repeat: str | None) -> dict[str, Any]:
    if panel["type"] == "row":
        out = {"id": panel["id"], "type": "row", "title": panel["title"], "collapsed": False,
               "gridPos": panel["gridPos"], "panels": []}  # fmt: skip
        if repeat:
            out["repeat"] = repeat
        return out
    out = {k: panel[k] for k in _PANEL_KEYS if panel.get(k) not in (None, "")}
    if "targets" in out:
        out["targets"] = [_clean_target(t) for t in out["targets"]]
    if not out.get("targets"):
        out.pop("targets", None)
    for key in ("links", "transformations"):
        if not out.get(key):
            out.pop(key, None)
    out.pop("repeatDirection", None)
    if panel["type"] == "text":
        out.pop("datasource", None)
    return out


def finalize(dashboard: g.Dashboard, repeats: dict[int, str | None]) -> dict[str, Any]:
    """The JSON current Grafana reads: grafanalib's output without its legacy keys."""
    data = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    data["schemaVersion"] = SCHEMA_VERSION
    data["annotations"] = {"list": [BUILTIN_ANNOTATION]}
    data["timepicker"] = {}
    data["fiscalYearStartMonth"] = 0
    data["liveNow"] = False
    data["weekStart"] = ""
    data["version"] = 1
    data["panels"] = [_clean_panel(p, repeats.get(p["id"])) for p in data["panels"]]
    for link_ in data["links"]:
        link_["url"] = link_.get("url") or ""
    return {k: data[k] for k in _TOP_KEYS}


def dashboard(*, uid: str, title: str, description: str, items: Sequence[g.RowPanel | Viz],
              variables: Sequence[dict], time_from: str = "now-30d", time_to: str = "now",
              refresh: str = "", tags: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    placed = layout(with_overrides(uid, items))
    repeats = {p.id: getattr(p, "_repeat_var", None) for p in placed}
    built = g.Dashboard(
        title=title, uid=uid, description=description, tags=[TAG, *tags], panels=placed,
        templating=g.Templating(list=list(variables)), time=g.Time(time_from, time_to),
        refresh=refresh, links=dashboard_links(), timezone="browser", graphTooltip=1,
    )  # fmt: skip
    return finalize(built, repeats)


def extra_panel(spec: dict[str, Any]) -> Viz:
    """A panel a platform team adds in its overrides file: a time series (``kind``
    stat for a single figure) of one PromQL query; metric names are checked against
    the catalogue and the recording rules when the dashboards are built."""
    unknown = set(metric_names(spec["expr"])) - known_metric_names()
    if unknown:
        raise ValueError(f"extra panel {spec['title']!r}: unknown metrics {sorted(unknown)}")
    make = stat if spec.get("kind") == "stat" else timeseries
    target = prom(spec["expr"], spec.get("legend", ""))
    return make(
        spec["title"],
        spec["description"],
        [target],
        spec.get("unit", COUNT),
        width=spec.get("width", 12),
    )


def metric_names(expr: str) -> set[str]:
    """Names that stand where a metric does in ``expr`` (words before ``{`` or ``[``)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr)) - {"by", "without", "on"}


def known_metric_names() -> set[str]:
    from credit_exporter import catalog

    rules = config.rule_names()  # the alert rules' records a dashboard may read
    recorded = {rules.BUDGET_EXHAUSTION, rules.POOL_EXHAUSTION}
    return catalog.all_series_names() | {rule.name for rule in recording.RULES} | recorded


def with_overrides(uid: str, items: Sequence[g.RowPanel | Viz]) -> list[g.RowPanel | Viz]:
    """``items`` without the panels the overrides file removes, plus its extra panels."""
    removed = config.removed_panels(uid)
    kept = [item for item in items if getattr(item, "title", None) not in removed]
    return kept + [extra_panel(spec) for spec in config.extra_panels(uid)]


def panel_notes(items: Sequence[g.RowPanel | Viz]) -> list[tuple[str, str, str, bool]]:
    """(title, description, seeds, paid_only) of every data panel, for docs and tests."""
    return [
        (item.title, item.description, item.seeds, item.paid_only)
        for item in items
        if isinstance(item, Viz) and item.type != "text"
    ]


def one_line(text_: str) -> str:
    return re.sub(r"\s+", " ", text_).strip()


# --------------------------------------------------------------------------
# Recording rules (dashboards/recording_rules.yml) and common selectors
# --------------------------------------------------------------------------

# Recorded per-evaluation increases (dashboards/recording.py): a panel adds them
# up with sum_over_time(), so a 30-day panel reads a handful of series instead
# of thousands and a series leaving a sum never shows as a spike.
SPENT_BY_AGENT = recording.SPENT_BY_AGENT.name
SPENT_BY_PROJECT_SERVICE = recording.SPENT_BY_PROJECT_SERVICE_TYPE.name
REQUESTS_BY_AGENT = recording.REQUESTS_BY_AGENT.name
REQUESTS_BY_PROJECT_SERVICE = recording.REQUESTS_BY_PROJECT_SERVICE_TYPE.name
MESSAGES_BY_AGENT = recording.MESSAGES_BY_AGENT.name
SPENT_BY_USER = recording.SPENT_BY_USER.name
REQUESTS_BY_USER = recording.REQUESTS_BY_USER.name

ORG = 'organization="$organization"'
AGENT_SELECTOR = 'agent=~"$agent"'
SERVICE_TYPE_SELECTOR = 'service_type=~"$service_type"'


def workspace(expr: str) -> str:
    """Name the agent "(workspace)" for direct prompts (agent label "")."""
    return f'label_replace({expr}, "agent", "(workspace)", "agent", "")'


def average_rating(selector: str, by: str = "") -> str:
    """Mean rating (1-5) from the per-rating counters: sum(rating x count) / count."""
    group = f" by ({by})" if by else ""
    weighted = " or ".join(
        f'increase(credit_ratings_total{{{selector}, rating="{n}"}}[$__range]) * {n}'
        for n in range(1, 6)
    )
    total = f"increase(credit_ratings_total{{{selector}}}[$__range])"
    return f"sum{group} ({weighted}) / sum{group} ({total})"


GROWTH_MARK = " offset $__interval, 0)"  # what growth_between_boundaries() writes
FIRST_BAR_NOTE = (
    "A series counts from the first bar boundary at which it exists: in the bar where "
    "it first appears (a new agent, model or user; the first day of Prometheus's "
    "history) its growth is left out, so that bar reads low rather than spike."
)


def growth_between_boundaries(selector: str, window: str = "$__interval") -> str:
    """Per series, how much a counter grew between the samples at ``window`` ago and
    now, for bars whose buckets end on sample times (daily bars on backfilled
    hourly history). Two instant lookups instead of a range: a range selector's
    start sample is included by Prometheus 2 and excluded by Prometheus 3
    (left-open ranges), which turns increase() over a bucket into an
    extrapolated estimate on 3.x, while an instant lookup at the bucket's start
    finds the same sample on both. A series absent at either end adds nothing to
    that bucket (a gap, not a spike), and one that comes back lower adds zero."""
    return f"clamp_min({selector} - {selector} offset {window}, 0)"

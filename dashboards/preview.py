"""Render each dashboard's panels from a live Prometheus into one PNG per dashboard.

    python -m dashboards.preview --prometheus http://127.0.0.1:9090 --output preview/ \\
        [--postgres postgresql://...] [--range 6h] [--dashboard credit-usage ...] \\
        [--var credit-agent-analytics:agent=sales-outreach ...] [--note "text under the title"]

A reviewer's look at what every view shows, without a Grafana server: panels
are placed on Grafana's 24-column grid, queries run with the dashboards'
default variables (resolved against that Prometheus, as Grafana would), and
each panel type is drawn the way Grafana draws it, roughly. Without --range each
dashboard is drawn over its own default time range (its ``time.from``). PostgreSQL panels
run when --postgres is given (read-only), else they say so. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from dashboards.grafana import (
    ALL,
    Panel,
    builtins,
    for_panel,
    interpolate,
    legend,
    panels,
    resolve_defaults,
    seconds,
    sql_macros,
    variables,
)

GENERATED = Path(__file__).resolve().parent / "generated"
COLORS = {
    "green": "#56a64b", "yellow": "#e0b400", "orange": "#ff9830", "red": "#e02f44",
    "blue": "#5794f2", "purple": "#b877d9", "super-light-blue": "#8ab8ff", "text": "#333333",
    "transparent": "#333333",
}  # fmt: skip
PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9",
           "#705da0", "#508642", "#cca300", "#447ebc", "#c15c17", "#890f02", "#0a437c"]  # fmt: skip
ROW_INCH = 0.3
WIDTH_INCH = 20.0
SCRAPE_SECONDS = 15  # the scrape interval Grafana's data source assumes
TITLE_INCH = 0.12  # a panel's title, above its axes


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


class Source:
    """Prometheus (and optionally the billing database) with the dashboard defaults."""

    def __init__(self, prometheus: str, postgres: str | None, range_seconds: int) -> None:
        self.url = prometheus.rstrip("/")
        self.postgres = postgres
        self.range_seconds = range_seconds
        self.now = time.time()

    def api(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
        return body["data"]

    def series(self, selector: str) -> list[dict[str, str]]:
        return self.api("/api/v1/series", {"match[]": selector})

    def prometheus(self, panel: Panel, target: dict[str, Any], values: dict[str, Any],
                   dashboard: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
        step = max(self.range_seconds // 120, 15)
        interval = panel.panel.get("interval")
        if interval:  # Grafana's min interval: never under range/120 (30 days at a 30s
            # interval is more points than Prometheus returns: 400 Bad Request); the
            # bucket itself unless the range is shorter than one
            bucket = seconds(values[interval[1:]] if interval[0] == "$" else interval)
            step = max(bucket, step) if bucket <= self.range_seconds else step
        # Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape
        # interval), the scrape interval taken as 15 s; a fixed 1m left a 24 h range
        # with a point every 12 min rating one-minute windows: gaps, not a line
        rate_interval = f"{max(step + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)}s"
        expr = interpolate(target["expr"], dashboard, values,
                           builtins(panel, values, self.range_seconds, rate_interval))  # fmt: skip
        if target.get("instant"):
            data = self.api("/api/v1/query", {"query": expr, "time": f"{self.now:.3f}"})
            return data["result"]
        params = {"query": expr, "start": f"{self.now - self.range_seconds:.3f}",
                  "end": f"{self.now:.3f}", "step": str(step)}  # fmt: skip
        return self.api("/api/v1/query_range", params)["result"]

    def sql(self, target: dict[str, Any], values: dict[str, Any], dashboard: dict[str, Any]
            ) -> tuple[list[str], list[tuple]] | None:  # fmt: skip
        if not self.postgres:
            return None
        import psycopg

        end = datetime.fromtimestamp(self.now, UTC)
        start = end - timedelta(seconds=max(self.range_seconds, 30 * 86400))
        query = sql_macros(interpolate(target["rawSql"], dashboard, values, {}, sql=True),
                           start, end)  # fmt: skip
        with psycopg.connect(self.postgres) as conn:
            conn.execute("SET TRANSACTION READ ONLY")
            cursor = conn.execute(query)
            return [c.name for c in cursor.description or []], cursor.fetchall()


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------


def _scaled(value: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def _duration(value: float) -> str:
    for size, name in ((86400 * 7, "week"), (86400, "day"), (3600, "hour"), (60, "min")):
        if abs(value) >= size:
            return f"{value / size:.1f} {name}"
    return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"


def fmt(value: float, unit: str, decimals: int | None = None) -> str:
    """A value the way Grafana's unit (and a field's ``decimals``) formats it, near
    enough."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if math.isinf(value):
        return "∞"
    if decimals is not None:
        value = round(value, decimals)
        if unit == "percent":
            return f"{value:.{decimals}f}%"
    if unit.startswith("count:"):
        return f"{_scaled(value)} {unit[6:]}"
    if unit.startswith("suffix:"):
        return f"{value:.2f}{unit[7:]}"
    if unit.startswith("currency"):
        return f"{value:,.2f} {unit[8:]}"
    if unit == "percent":
        return f"{value:.1f}%"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit in ("s", "dtdurations"):
        return _duration(value)
    if unit == "h":
        return f"{value:.0f} hours"
    if unit == "m":
        return f"{value:.0f} min"
    if unit == "bytes":
        return f"{_scaled(value)}B"
    return _scaled(value)


def threshold_color(value: float, thresholds: dict[str, Any] | None) -> str:
    color = "blue"
    for step in (thresholds or {}).get("steps", []):
        if step["value"] is None or (value is not None and value >= step["value"]):
            color = step["color"]
    return COLORS.get(color, color)


def mapped(value: float, mappings: list[dict[str, Any]]) -> str | None:
    for mapping in mappings:
        if mapping["type"] == "value":
            hit = mapping["options"].get(f"{value:g}")
            if hit:
                return hit["text"]
    return None


def field_config(panel: dict[str, Any], ref: str, name: str) -> dict[str, Any]:
    """The panel defaults with the overrides that match a frame or a display name."""
    config = dict(panel["fieldConfig"]["defaults"])
    for override in panel["fieldConfig"]["overrides"]:
        matcher = override["matcher"]
        if (matcher["id"] == "byFrameRefID" and matcher["options"] == ref) or (
            matcher["id"] == "byName" and matcher["options"] == name
        ):
            for prop in override["properties"]:
                config[prop["id"]] = prop["value"]
    return config


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------


def _frames(source: Source, panel: Panel, values: dict[str, Any], dashboard: dict[str, Any]
            ) -> list[tuple[str, str, dict[str, str], Any]]:  # fmt: skip
    """(refId, display name, labels, value or [(t, v)]) of every series of a panel."""
    out = []
    for target in panel.targets:
        for series in source.prometheus(panel, target, values, dashboard):
            labels = series["metric"]
            name = legend(target.get("legendFormat", ""), labels) or target["refId"]
            name = field_config(panel.panel, target["refId"], name).get("displayName", name)
            if "value" in series:
                data: Any = float(series["value"][1])
            else:
                data = [(float(t), float(v)) for t, v in series["values"]]
            out.append((target["refId"], name, labels, data))
    return out


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.45, text, ha="center", va="center", fontsize=9, color="#888888", wrap=True)


def draw_stat(ax: Any, panel: dict[str, Any], frames: list) -> None:
    if not frames:
        _message(ax, panel["fieldConfig"]["defaults"].get("noValue") or "No data")
        return
    count = len(frames)
    if count > 4:  # many values (one per query, say): Grafana tiles them; so does this
        draw_stat_tiles(ax, panel, frames)
        return
    for i, (ref, name, _, value) in enumerate(frames):
        if isinstance(value, list):
            value = value[-1][1] if value else float("nan")
        config = field_config(panel, ref, name)
        text = mapped(value, config.get("mappings", [])) or fmt(value, config.get("unit", ""))
        color = threshold_color(value, config.get("thresholds"))
        if config.get("color", {}).get("mode") == "fixed":
            color = COLORS.get(config["color"]["fixedColor"], config["color"]["fixedColor"])
        y = 0.5 if count == 1 else 0.85 - i * (0.75 / max(count - 1, 1))
        size = 20 if count == 1 else max(9, 16 - 2 * count)
        ax.text(0.5, y, text, ha="center", va="center", fontsize=size, color=color,
                fontweight="bold")  # fmt: skip
        if count > 1 or panel["options"].get("textMode") == "value_and_name":
            ax.text(0.5, y - 0.25 if count == 1 else y - 0.13, name, ha="center",
                    va="center", fontsize=7, color="#666666")  # fmt: skip


def draw_stat_tiles(ax: Any, panel: dict[str, Any], frames: list) -> None:
    """One small tile (value over name) per frame, in rows of up to ten."""
    columns = min(len(frames), 10)
    rows = math.ceil(len(frames) / columns)
    for i, (ref, name, _, value) in enumerate(frames):
        if isinstance(value, list):
            value = value[-1][1] if value else float("nan")
        config = field_config(panel, ref, name)
        text = mapped(value, config.get("mappings", [])) or fmt(value, config.get("unit", ""))
        x = (i % columns + 0.5) / columns
        y = 1 - (i // columns + 0.5) / rows
        ax.text(
            x,
            y + 0.12 / rows,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color=threshold_color(value, config.get("thresholds")),
            fontweight="bold",
        )
        ax.text(
            x, y - 0.15 / rows, name[:22], ha="center", va="center", fontsize=5, color="#666666"
        )


def draw_bars(ax: Any, panel: dict[str, Any], frames: list) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    items = [(name, v if not isinstance(v, list) else v[-1][1], ref)
             for ref, name, _, v in frames][:20]  # fmt: skip
    if not items:
        _message(ax, defaults.get("noValue") or "No data")
        return
    names = [n for n, _, _ in items][::-1]
    numbers = [0 if math.isnan(v) or math.isinf(v) else v for _, v, _ in items][::-1]
    colors = [threshold_color(v, defaults.get("thresholds")) for v in numbers]
    low = defaults.get("min") or 0
    ax.barh(range(len(numbers)), [v - low for v in numbers], left=low, color=colors, alpha=0.8)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_ylim(-0.6, len(numbers) - 0.4)
    unit = defaults.get("unit", "")
    # name at the left edge, value at the right edge (as Grafana's bar gauge puts them),
    # in axes coordinates: they never run into each other whatever a bar's length
    at = ax.get_yaxis_transform()
    for i, (name, v) in enumerate(zip(names, numbers, strict=True)):
        ax.text(0.005, i, name[:40], va="center", fontsize=6, color="#111111", transform=at)
        ax.text(0.995, i, fmt(v, unit), va="center", ha="right", fontsize=6, transform=at)
    top = defaults.get("max")
    ax.set_xlim(low, top if top is not None else max(max(numbers), low) * 1.3 or 1)


def draw_pie(ax: Any, panel: dict[str, Any], frames: list) -> None:
    items = [(n, v) for _, n, _, v in frames if not isinstance(v, list) and v > 0]
    if not items:
        _message(ax, "No data")
        return
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    total = sum(v for _, v in items)
    ax.pie([v for _, v in items], colors=PALETTE[: len(items)],
           wedgeprops={"width": 0.4}, startangle=90)  # fmt: skip
    ax.legend([f"{n} {100 * v / total:.0f}%" for n, v in items], loc="center left",
              bbox_to_anchor=(1, 0.5), fontsize=6, frameon=False)  # fmt: skip
    ax.text(0, 0, fmt(total, unit), ha="center", va="center", fontsize=7)
    ax.set_aspect("equal")


def draw_timeseries(ax: Any, panel: dict[str, Any], frames: list) -> None:
    series = [(n, v) for _, n, _, v in frames if isinstance(v, list) and v]
    if not series:
        _message(ax, "No data")
        return
    custom = panel["fieldConfig"]["defaults"].get("custom", {})
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    for i, (name, points) in enumerate(series[:12]):
        xs = [datetime.fromtimestamp(t, UTC) for t, _ in points]
        ys = [v for _, v in points]
        color = PALETTE[i % len(PALETTE)]
        if custom.get("drawStyle") == "bars" or stacked:
            # barAlignment -1: a bar ends at its time (the bucket before it), as Grafana
            where = "pre" if custom.get("barAlignment") == -1 else "post"
            ax.step(xs, ys, where=where, color=color, label=name[:28], linewidth=1)
            ax.fill_between(xs, ys, step=where, alpha=0.25, color=color)
        else:
            ax.plot(xs, ys, color=color, label=name[:28], linewidth=1)
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    import matplotlib.dates as mdates
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_formatter(lambda v, _: fmt(v, unit))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=8))
    span = series[0][1][-1][0] - series[0][1][0][0]
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M" if span > 86400 else "%H:%M"))
    ax.tick_params(labelsize=6, pad=1)
    # the y labels inside the axes: outside they would run into the panel on the left
    ax.tick_params(axis="y", direction="in", pad=-4)
    for label in ax.get_yticklabels():
        label.set_horizontalalignment("left")
    ax.legend(fontsize=5, loc="upper right", ncol=4, frameon=False)


def draw_table(ax: Any, columns: list[str], rows: list[list[str]]) -> None:
    if not rows:
        _message(ax, "No data")
        return
    table = ax.table(cellText=rows[:12], colLabels=columns, loc="upper center",
                     cellLoc="left")  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(6)
    table.scale(1, 0.9)


def prometheus_table(panel: dict[str, Any], frames: list) -> tuple[list[str], list[list[str]]]:
    """Grafana's merge + organize of instant table queries, near enough."""
    hidden = {"__name__", "job", "instance", "Time"}
    renames: dict[str, str] = {}
    for transformation in panel.get("transformations", []):
        if transformation["id"] == "organize":
            renames = transformation["options"]["renameByName"]
            hidden |= set(transformation["options"]["excludeByName"])
    common = None
    for _, _, labels, _ in frames:
        keys = set(labels) - hidden
        common = keys if common is None else common & keys
    key_labels = sorted(common or [])
    rows: dict[tuple, dict[str, Any]] = {}
    for ref, _, labels, value in frames:
        key = tuple(labels.get(k, "") for k in key_labels)
        row = rows.setdefault(key, {})
        row.update({k: v for k, v in labels.items() if k not in hidden})
        row[f"Value #{ref}"] = value
    order = list(renames) or key_labels
    columns = [c for c in order if any(c in r for r in rows.values()) and c not in hidden]
    configs = {c: field_config(panel, "", renames.get(c, c)) for c in columns}
    body = [[fmt(r[c], configs[c].get("unit", ""), configs[c].get("decimals"))
             if isinstance(r.get(c), float) else str(r.get(c, ""))[:24]
             for c in columns] for r in rows.values()]  # fmt: skip
    return [renames.get(c, c) for c in columns], body


def variable_text(variable: dict[str, Any], value: Any) -> str:
    """A variable's value as Grafana's variable picker shows it: an option's text, not
    its value, "All" for the All option, several values joined with " + "."""
    if value is ALL or value in ("$__all", ["$__all"]):
        return "All"
    texts = {o["value"]: o["text"] for o in variable.get("options", [])}
    picked = value if isinstance(value, list) else [value]
    return " + ".join(str(texts.get(v, v)) for v in picked) or "(none)"


def title_text(dashboard: dict[str, Any], values: dict[str, Any], note: str = "") -> str:
    """The figure title: the dashboard, its uid and each variable shown as ``name = value``
    (data source variables left out: they only pick the connection), and ``note``, if
    any, on a second line."""
    shown = [f"{name} = {variable_text(var, values[name])}"
             for name, var in variables(dashboard).items()
             if var["type"] != "datasource" and name in values]  # fmt: skip
    title = "   ".join([f"{dashboard['title']}  ({dashboard['uid']})", *shown])
    return f"{title}\n{note}" if note else title


def default_range(dashboard: dict[str, Any], now: float) -> int:
    """Seconds from the dashboard's default ``time.from`` to ``now``: ``now-30d`` is
    30 days, ``now/M`` (and ``/d``, ``/w``, ``/y``) the start of that calendar unit in UTC
    (Grafana's weeks start on Monday)."""
    start = dashboard["time"]["from"]
    if start.startswith("now-"):
        return seconds(start[4:])
    at = datetime.fromtimestamp(now, UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    floors = {"d": day, "w": day - timedelta(days=day.weekday()), "M": day.replace(day=1),
              "y": day.replace(month=1, day=1)}  # fmt: skip
    if start.startswith("now/") and start[4:] in floors:
        return int(now - floors[start[4:]].timestamp())
    raise ValueError(f"{dashboard['uid']}: unsupported time.from {start!r}")


def override(values: dict[str, Any], options: dict[str, list[str]],
             assignments: list[str], uid: str = "") -> dict[str, Any]:  # fmt: skip
    """``values`` with each ``name=value`` of ``assignments`` set, for variables this
    dashboard has (``uid:name=value``: on that dashboard only); a value that is not one
    of a query variable's options is refused (a typo would draw every panel empty)."""
    out = dict(values)
    for assignment in assignments:
        target, _, value = assignment.partition("=")
        only, _, name = target.rpartition(":")
        if name not in out or (only and only != uid):
            continue  # a variable of another dashboard
        if name in options and options[name] and value not in options[name]:
            raise ValueError(f"--var {assignment}: {value!r} is not one of {options[name]}")
        out[name] = value
    return out


def sql_cell(value: Any) -> str:
    """One cell of a PostgreSQL table panel the way Grafana shows it: a time to the
    second in UTC, a number without float noise, NULL empty, text cut at 40."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        return f"{float(value):.6g}"
    return str(value)[:40]


def render(dashboard: dict[str, Any], source: Source, output: Path,
           errors: list[str] | None = None, assignments: list[str] | None = None,
           note: str = "") -> Path:  # fmt: skip
    """Draw one dashboard into ``output/<uid>.png``; panel failures go to ``errors``;
    ``assignments`` (``name=value``) replace variable defaults; ``note`` goes under
    the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, options = resolve_defaults(dashboard, source.series)
    values = override(values, options, assignments or [], dashboard["uid"])
    grid_rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    head = 0.8 if note else 0.6  # inches above the grid for the title (and the note)
    fig = plt.figure(figsize=(WIDTH_INCH, grid_rows * ROW_INCH + head))
    top = grid_rows * ROW_INCH / (grid_rows * ROW_INCH + head)
    fig.suptitle(title_text(dashboard, values, note), fontsize=11, x=0.01, ha="left",
                 y=0.995, va="top")  # fmt: skip
    by_id = {p.panel["id"]: p for p in panels(dashboard)}
    for raw in dashboard["panels"]:
        pos = raw["gridPos"]
        height = top * pos["h"] / grid_rows
        pad = min(0.004, height / 6)
        title_room = 0 if raw["type"] == "row" else TITLE_INCH / fig.get_figheight()
        rect = [pos["x"] / 24 + 0.004, top * (1 - (pos["y"] + pos["h"]) / grid_rows) + pad,
                pos["w"] / 24 - 0.008, height - 3 * pad - title_room]  # fmt: skip
        ax = fig.add_axes(rect)
        ax.set_xticks([])
        ax.set_yticks([])
        if raw["type"] == "row":
            ax.axis("off")
            ax.text(0, 0.5, raw["title"], fontsize=10, fontweight="bold", va="center")
            continue
        ax.set_title(raw["title"], fontsize=8, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#dddddd")
        panel = by_id[raw["id"]]
        panel_values = for_panel(panel, values, options)
        try:
            _draw(ax, panel, source, panel_values, dashboard)
        except Exception as error:  # a preview shows the failure in the panel
            _message(ax, f"error: {error}"[:120])
            if errors is not None:
                errors.append(f"{panel}: {error}")
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{dashboard['uid']}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _draw(ax: Any, panel: Panel, source: Source, values: dict[str, Any],
          dashboard: dict[str, Any]) -> None:  # fmt: skip
    raw = panel.panel
    kind = raw["type"]
    if kind == "text":
        ax.axis("off")
        ax.text(0, 1, raw["options"]["content"][:400], va="top", fontsize=7, wrap=True)
        return
    if raw["datasource"]["uid"] == "${billing}":
        result = source.sql(raw["targets"][0], values, dashboard)
        if result is None:
            _message(ax, "PostgreSQL panel: pass --postgres to render it")
            return
        columns, rows = result
        if kind == "table":
            draw_table(ax, columns, [[sql_cell(c) for c in row] for row in rows])
        else:
            frames = [("A", str(row[0]), {}, float(row[1] or 0)) for row in rows]
            draw_bars(ax, raw, frames)
        return
    frames = _frames(source, panel, values, dashboard)
    if kind == "stat" or kind == "gauge":
        draw_stat(ax, raw, frames)
    elif kind == "bargauge":
        draw_bars(ax, raw, frames)
    elif kind == "piechart":
        draw_pie(ax, raw, frames)
    elif kind == "timeseries":
        draw_timeseries(ax, raw, frames)
        if any(isinstance(v, list) and v for *_, v in frames):  # the whole range, as Grafana
            ax.set_xlim(datetime.fromtimestamp(source.now - source.range_seconds, UTC),
                        datetime.fromtimestamp(source.now, UTC))  # fmt: skip
    elif kind == "table":
        draw_table(ax, *prometheus_table(raw, frames))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--output", required=True, type=Path, help="directory for the PNGs")
    parser.add_argument("--postgres", help="billing database DSN (read-only) for SQL panels")
    parser.add_argument("--range", help="time range to show (default: each dashboard's own)")
    parser.add_argument("--dashboard", action="append", help="only these uids")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable's value instead of its default, [UID:]NAME=VALUE (repeatable)",
    )
    parser.add_argument("--note", default="", help="a line of text under each title")
    args = parser.parse_args(argv)
    errors: list[str] = []
    for path in sorted(GENERATED.glob("*.json")):
        dashboard = json.loads(path.read_text())
        if args.dashboard and dashboard["uid"] not in args.dashboard:
            continue
        now = time.time()
        span = seconds(args.range) if args.range else default_range(dashboard, now)
        source = Source(args.prometheus, args.postgres, span)
        source.now = now
        print(render(dashboard, source, args.output, errors, args.var, args.note))
    for error in errors:
        print(f"panel failed: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

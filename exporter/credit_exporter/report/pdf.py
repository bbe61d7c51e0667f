"""The PDF report: A4 pages of charts and tables drawn with matplotlib.

Summary figures, credits by tier, timeline; models (usage, response time,
success rate); users and task categories; every budget, most urgent first (as
many pages as they need); the efficiency leaderboard; recommendations. A table
cut short says so ("top 20 of 31"); the CSV and JSON always hold every row.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from credit_exporter.report.exhaustion import runs_out_text
from credit_exporter.report.model import Report

A4 = (8.27, 11.69)
ACCENT = "#4e79a7"
TIER_COLORS = {"premium": "#e15759", "standard": "#4e79a7", "economy": "#59a14f"}
STATUS_COLORS = {"over": "#f8d7da", "at_risk": "#fff3cd"}
STATUS_TEXT = {"over": "over limit", "at_risk": "at risk", "on_track": "on track"}
BUDGET_ROWS_PER_PAGE = 50
BUDGET_ROW_HEIGHT = 0.0141  # of the page, a row of the budgets table (size 7, scale 1)
MODEL_ROWS = 20
EFFICIENCY_ROWS = 45


def _credits(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _per_prompt(value: float | None) -> str:
    """Credits per prompt: 2 decimals from 1 up, three significant digits below, so
    that a cheap model's 0.00115 does not print as a free 0.00."""
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 1:
        return _num(value)
    return f"{value:.{2 - math.floor(math.log10(abs(value)))}f}"


def _multiplier(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}x"


def _minute(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def period_text(report: Report) -> str:
    """``2026-11-01 00:00 to 2026-12-01 00:00 UTC``, or for a period not over yet
    ``2026-12-01 00:00 to date (2026-12-03 17:57 UTC; the period ends 2027-01-01 00:00)``."""
    start = _minute(report.period_start)
    if report.generated_at < report.period_start:
        return (
            f"{start} to {_minute(report.period_end)} UTC (not begun at "
            f"{_minute(report.generated_at)} UTC)"
        )
    if report.to_date:
        return (
            f"{start} to date ({_minute(report.generated_at)} UTC; the period ends "
            f"{_minute(report.period_end)})"
        )
    return f"{start} to {_minute(report.period_end)} UTC"


def _page(report: Report, title: str) -> Figure:
    fig = plt.figure(figsize=A4)
    who = report.organization or "all organizations"
    fig.text(0.06, 0.965, "Credit report", fontsize=10, color="#666666")
    fig.text(0.06, 0.94, title, fontsize=17, weight="bold")
    fig.text(0.94, 0.965, f"{who} | {period_text(report)}", fontsize=8, ha="right", color="#666")
    return fig


def _top(shown: int, total: int, what: str) -> str:
    """``all 12 models`` or ``top 20 of 31 models`` (the rest: CSV and JSON)."""
    if shown >= total:
        return f"all {total} {what}"
    return f"top {shown} of {total} {what}; all in the CSV and JSON"


def _table(
    ax: Axes,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str,
    size: float = 7.5,
    empty: str = "no data in this period",
    shading: Sequence[str | None] = (),
    row_scale: float = 1.25,
    col_widths: Sequence[float] = (),
) -> None:
    """A table under ``title``; ``shading`` colours whole rows (one entry per row)."""
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=11, weight="bold")
    if not rows:
        ax.text(0, 0.9, empty, fontsize=9, color="#666", va="top")
        return
    table = ax.table(
        cellText=list(rows), colLabels=list(header), loc="upper left", cellLoc="left",
        colWidths=list(col_widths) or None,
    )  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(size)
    table.scale(1, row_scale)
    if not col_widths:
        table.auto_set_column_width(list(range(len(header))))
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("#dddddd")
        if row == 0:
            cell.set_facecolor("#eef2f7")
            cell.set_text_props(weight="bold")
        elif row - 1 < len(shading) and shading[row - 1]:
            cell.set_facecolor(shading[row - 1])


def _remaining_label(report: Report) -> str:
    """Balances are read now: say so, and say when that is not the period's end."""
    if report.to_date:
        return f"Credits remaining now ({_minute(report.generated_at)} UTC)"
    return f"Credits remaining on {report.generated_at:%Y-%m-%d}, after the period"


def _summary_page(report: Report) -> Figure:
    fig = _page(report, "Summary")
    s = report.summary
    lines = [
        ("Total credits used", _credits(s.credits_used)),
        ("Plan credits used", _credits(s.plan_credits_used)),
        ("Additional (top-up) credits used", _credits(s.additional_credits_used)),
        ("Credits refunded", _credits(s.credits_refunded)),
        (_remaining_label(report), _credits(s.credits_remaining)),
        ("Prompts", f"{s.prompts:,}"),
        ("Average credits per prompt", _per_prompt(s.average_credits_per_prompt)),
        ("Peak day", f"{s.peak_day} ({_credits(s.peak_day_credits)} credits)"),
        (
            "Peak hour (UTC)",
            "-"
            if s.peak_hour is None
            else f"{s.peak_hour:02d}:00-{(s.peak_hour + 1) % 24:02d}:00 "
            f"(average {_num(s.peak_hour_average_credits)} credits/day)",
        ),
        ("Most active weekdays", ", ".join(s.most_active_weekdays) or "-"),
        ("Potential saving (recommendations)", _credits(s.potential_saving_credits)),
    ]
    ax = fig.add_axes((0.06, 0.62, 0.88, 0.28))
    _table(ax, ["figure", "value"], [list(line) for line in lines], "Key figures", size=8.5,
           col_widths=(0.57, 0.43))  # fmt: skip

    tiers = report.tables["tiers"]
    ax = fig.add_axes((0.16, 0.36, 0.3, 0.2))
    ax.set_title("Credits by multiplier tier", loc="left", fontsize=11, weight="bold")
    if tiers:
        ax.barh(
            [t.tier for t in tiers],
            [float(t.credits) for t in tiers],
            color=[TIER_COLORS.get(t.tier, "#999999") for t in tiers],
        )
        for i, t in enumerate(tiers):
            ax.text(float(t.credits), i, f" {t.share:.0%}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.spines[["top", "right"]].set_visible(False)
    ax = fig.add_axes((0.56, 0.36, 0.38, 0.2))
    ax.set_title("Credits by weekday", loc="left", fontsize=11, weight="bold")
    weekdays = report.tables["weekdays"]
    ax.bar([w.weekday[:3] for w in weekdays], [float(w.credits) for w in weekdays], color=ACCENT)
    ax.spines[["top", "right"]].set_visible(False)

    ax = fig.add_axes((0.1, 0.08, 0.84, 0.2))
    ax.set_title(f"Timeline ({report.granularity})", loc="left", fontsize=11, weight="bold")
    timeline = report.tables["timeline"]
    if timeline:
        ax.bar(range(len(timeline)), [float(t.credits) for t in timeline], color=ACCENT, width=0.8)
        step = max(1, len(timeline) // 10)
        ax.set_xticks(range(0, len(timeline), step))
        fmt = "%m-%d %H:00" if report.granularity == "hour" else "%Y-%m-%d"
        ax.set_xticklabels(
            [t.bucket_start.strftime(fmt) for t in timeline][::step], fontsize=7, rotation=30
        )
        ax.set_ylabel("credits", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _models_page(report: Report) -> Figure:
    fig = _page(report, "Models")
    models = report.tables["models"]
    top = models[:12]
    ax = fig.add_axes((0.25, 0.66, 0.69, 0.24))
    ax.set_title(f"Credits by model ({_top(len(top), len(models), 'models')})", loc="left",
                 fontsize=11, weight="bold")  # fmt: skip
    ax.barh(
        [m.model for m in top],
        [float(m.credits) for m in top],
        color=[TIER_COLORS.get(m.tier or "", "#999999") for m in top],
    )
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    rows = [
        [
            m.model, m.tier or "-", _multiplier(m.multiplier),
            f"{m.prompts:,}", _credits(m.credits), _pct(m.share),
            _per_prompt(m.average_credits_per_prompt), _num(m.average_response_seconds),
            _pct(m.success_rate), _num(m.average_rating),
        ]
        for m in models[:MODEL_ROWS]
    ]  # fmt: skip
    ax = fig.add_axes((0.06, 0.05, 0.88, 0.55))
    header = ["model", "tier", "mult.", "prompts", "credits", "share", "cr/prompt", "resp. s",
              "success", "rating"]  # fmt: skip
    title = f"Usage, response time and success rate ({_top(len(rows), len(models), 'models')})"
    _table(ax, header, rows, title)
    return fig


def _users_page(report: Report) -> Figure:
    fig = _page(report, "Users and task categories")
    users = report.tables["users"]
    rows = [
        [u.user, f"{u.prompts:,}", u.top_model, _credits(u.credits),
         _per_prompt(u.average_credits_per_prompt)]
        for u in users[:20]
    ]  # fmt: skip
    title = f"Users by credits ({_top(len(rows), len(users), 'users')})"
    ax = fig.add_axes((0.06, 0.42, 0.88, 0.48))
    _table(ax, ["user", "prompts", "top model", "credits", "cr/prompt"], rows, title)
    categories = report.tables["task_categories"]
    ax = fig.add_axes((0.25, 0.06, 0.69, 0.28))
    ax.set_title("Credits by task category", loc="left", fontsize=11, weight="bold")
    ax.barh([c.task_category for c in categories], [float(c.credits) for c in categories],
            color=ACCENT)  # fmt: skip
    for i, c in enumerate(categories):
        ax.text(float(c.credits), i, f" {c.share:.0%} (top: {c.top_model})", va="center",
                fontsize=7)  # fmt: skip
    ax.invert_yaxis()
    if categories:  # room on the right for the longest bar's label
        ax.set_xlim(0, max(float(c.credits) for c in categories) * 1.45)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _budget_title(report: Report, budgets: Sequence[Any]) -> str:
    counts = {status: sum(1 for b in budgets if b.status == status) for status in STATUS_TEXT}
    tally = ", ".join(f"{n} {STATUS_TEXT[status]}" for status, n in counts.items())
    return f"{len(budgets)} budgets: {tally}; most urgent first"


def _budget_notes(report: Report) -> list[str]:
    when = "today" if not report.to_date else "now"
    notes = [
        f"Used and limit are {when} ({_minute(report.generated_at)} UTC), in each "
        "organization's current billing period; projected = used / elapsed time x the "
        "billing period's length.",
        "Order: over their limit first, then by the share of the limit used.",
    ]
    if not report.to_date:
        notes.insert(
            0,
            "These are today's budgets, not of the report's period: the billing schema "
            "keeps no history of budgets.",
        )
    notes.append(report.time_to_exhaustion.note)
    return notes


def _reads_exhaustion(report: Report) -> bool:
    """The Runs out column is there when --prometheus was given."""
    return report.time_to_exhaustion.prometheus is not None


def _pools_height(report: Report) -> float:
    """Page height the Credit pools table takes (it is there with a Runs out only)."""
    pools = report.tables["balances"]
    if not pools or not _reads_exhaustion(report):
        return 0.0
    return 0.03 + 0.018 * (len(pools) + 1) + 0.015


def _pools_table(report: Report, fig: Figure, y: float) -> float:
    """Credit pools (balance now, Runs out) under the notes; the y below it."""
    height = _pools_height(report)
    if not height:
        return y
    rows = [[b.pool, _credits(b.balance_credits), runs_out_text(b)]
            for b in report.tables["balances"]]  # fmt: skip
    ax = fig.add_axes((0.06, y - height + 0.015, 0.88, height - 0.015))
    _table(ax, ["pool", "balance now", "runs out (UTC)"], rows, "Credit pools", size=7.5,
           row_scale=1.0, col_widths=(0.15, 0.2, 0.4))  # fmt: skip
    return y - height


def _rows_that_fit(y: float) -> int:
    """Budget rows a table from ``y`` down to the page's foot holds (title included)."""
    return max(5, min(BUDGET_ROWS_PER_PAGE, int((y - 0.09) / BUDGET_ROW_HEIGHT)))


def _budget_pages(report: Report) -> list[Figure]:
    """Every budget, most urgent first, over as many pages as they need."""
    budgets = report.tables["budgets"]
    header = ["organization", "scope", "scope id", "used", "limit", "used %", "projected",
              "proj. %", "status"]  # fmt: skip
    runs_out = _reads_exhaustion(report)
    widths: tuple[float, ...] = ()
    if runs_out:
        header.append("runs out (UTC)")
        widths = (0.09, 0.085, 0.175, 0.07, 0.07, 0.055, 0.075, 0.065, 0.065, 0.25)
    notes = [line for note in _budget_notes(report) for line in textwrap.wrap(note, 120)]
    top = 0.905 - 0.014 * len(notes) - 0.02 - _pools_height(report)
    chunks: list[list[Any]] = []
    rest = list(budgets)
    while rest or not chunks:
        size = _rows_that_fit(top if not chunks else 0.905)
        chunks.append(rest[:size])
        rest = rest[size:]
    pages = []
    shown = 0
    for number, chunk in enumerate(chunks):
        first = shown + 1
        shown += len(chunk)
        title = "Budgets" if number == 0 else f"Budgets (continued, {first} to "
        if number:
            title += f"{shown} of {len(budgets)})"
        fig = _page(report, title)
        y = 0.905
        if number == 0:
            for line in notes:
                fig.text(0.06, y, line, fontsize=8, color="#333")
                y -= 0.014
            y -= 0.02
            y = _pools_table(report, fig, y)
        rows = [
            [b.organization, b.scope, b.scope_id, _credits(b.used_credits),
             _credits(b.limit_credits), _pct(b.used_ratio), _credits(b.projected_credits),
             _pct(b.projected_ratio), STATUS_TEXT.get(b.status, b.status)]
            + ([runs_out_text(b)] if runs_out else [])
            for b in chunk
        ]  # fmt: skip
        ax = fig.add_axes((0.06, 0.05, 0.88, y - 0.05 - 0.01))
        _table(
            ax, header, rows, _budget_title(report, budgets), size=6.5 if runs_out else 7,
            empty="no budget query configured" if not budgets else "no budgets",
            shading=[STATUS_COLORS.get(b.status) for b in chunk], row_scale=1.0,
            col_widths=widths,
        )  # fmt: skip
        pages.append(fig)
    return pages


def _efficiency_page(report: Report) -> Figure:
    """The cheapest pairs of every service type (each kind gets its share of the page)."""
    fig = _page(report, "Efficiency leaderboard")
    efficiency = report.tables["efficiency"]
    kinds = list(dict.fromkeys(e.service_type for e in efficiency))
    per_kind = max(3, EFFICIENCY_ROWS // max(1, len(kinds)))
    shown = [e for e in efficiency if e.rank <= per_kind]
    rows = [
        [str(e.rank), e.service_type or "-", e.task_category, e.model, f"{e.prompts:,}",
         _per_prompt(e.average_credits_per_prompt), _pct(e.success_rate)]
        for e in shown
    ]  # fmt: skip
    fig.text(
        0.06, 0.905, "Task category x model pairs with enough prompts, ranked within their "
        "service type (like with like), cheapest per prompt first.", fontsize=8, color="#333",
    )  # fmt: skip
    if len(shown) < len(efficiency):
        title = (
            f"Cheapest {per_kind} of each service type ({len(shown)} of {len(efficiency)} "
            "pairs; all in the CSV and JSON)"
        )
    else:
        title = f"All {len(efficiency)} pairs"
    ax = fig.add_axes((0.06, 0.05, 0.88, 0.8))
    header = ["#", "service type", "task category", "model", "prompts", "cr/prompt", "success"]
    _table(ax, header, rows, title)
    return fig


def _recommendations_page(report: Report) -> Figure:
    fig = _page(report, "Recommendations")
    lines: list[tuple[str, Any]] = []
    switches = report.tables["model_switches"]
    total = report.summary.potential_saving_credits
    share = float(total / report.summary.credits_used) if report.summary.credits_used else 0.0
    lines.append(("bold", f"Model switches: {len(switches)} found, potential saving "
                          f"{_credits(total)} credits ({share:.0%} of credits used)"))  # fmt: skip
    for s in switches[:12]:
        lines.append(("normal", "- " + s.message))
    if len(switches) > 12:
        lines.append(("normal", f"... and {len(switches) - 12} more (see the CSV or JSON)"))
    lines.append(("bold", "Scheduling"))
    off_peak = report.tables["off_peak"]
    lines += [("normal", "- " + o.message) for o in off_peak] or [
        ("normal", "- No off-peak advice: peak-hour response times are not clearly worse, "
                   "or there is too little data.")
    ]  # fmt: skip
    y = 0.9
    for weight, text in lines:
        for i, part in enumerate(textwrap.wrap(text, 105)):
            fig.text(0.07 if i == 0 else 0.085, y, part, fontsize=8.5, weight=weight)
            y -= 0.018
        y -= 0.008 if weight == "normal" else 0.004
        if y < 0.05:
            break
    return fig


def figures(report: Report) -> list[Figure]:
    """Every page, numbered "page i of n"."""
    pages = [_summary_page(report), _models_page(report), _users_page(report)]
    pages += _budget_pages(report)
    pages += [_efficiency_page(report), _recommendations_page(report)]
    for number, fig in enumerate(pages, 1):
        fig.text(0.94, 0.02, f"page {number} of {len(pages)}", fontsize=8, ha="right",
                 color="#666")  # fmt: skip
    return pages


def write_pdf(report: Report, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    pages = figures(report)
    try:
        with PdfPages(output) as pdf:
            for fig in pages:
                pdf.savefig(fig)
            info = pdf.infodict()
            info["Title"] = f"Credit report {report.period_label}"
            info["Creator"] = "credit-exporter report"
    finally:
        for fig in pages:
            plt.close(fig)

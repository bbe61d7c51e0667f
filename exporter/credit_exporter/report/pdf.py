"""The PDF report: five A4 pages of charts and tables drawn with matplotlib.

1. summary figures, credits by tier, timeline; 2. models (usage, response time,
success rate); 3. users and task categories; 4. budgets and the efficiency
leaderboard; 5. recommendations.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from credit_exporter.report.model import Report

A4 = (8.27, 11.69)
PAGES = 5
ACCENT = "#4e79a7"
TIER_COLORS = {"premium": "#e15759", "standard": "#4e79a7", "economy": "#59a14f"}


def _credits(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _multiplier(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}x"


def _page(report: Report, title: str, number: int) -> Figure:
    fig = plt.figure(figsize=A4)
    who = report.organization or "all organizations"
    start = report.period_start.strftime("%Y-%m-%d %H:%M")
    end = report.period_end.strftime("%Y-%m-%d %H:%M")
    fig.text(0.06, 0.965, "Credit report", fontsize=10, color="#666666")
    fig.text(0.06, 0.94, title, fontsize=17, weight="bold")
    fig.text(0.94, 0.965, f"{who} | {start} to {end} UTC", fontsize=8, ha="right", color="#666")
    fig.text(0.94, 0.02, f"page {number} of {PAGES}", fontsize=8, ha="right", color="#666")
    return fig


def _table(
    ax: Axes, header: Sequence[str], rows: Sequence[Sequence[str]], title: str, size: float = 7.5
) -> None:
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=11, weight="bold")
    if not rows:
        ax.text(0, 0.9, "no data in this period", fontsize=9, color="#666", va="top")
        return
    table = ax.table(cellText=list(rows), colLabels=list(header), loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(size)
    table.scale(1, 1.25)
    table.auto_set_column_width(list(range(len(header))))
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("#dddddd")
        if row == 0:
            cell.set_facecolor("#eef2f7")
            cell.set_text_props(weight="bold")


def _summary_page(report: Report) -> Figure:
    fig = _page(report, "Summary", 1)
    s = report.summary
    lines = [
        ("Total credits used", _credits(s.credits_used)),
        ("Plan credits used", _credits(s.plan_credits_used)),
        ("Additional (top-up) credits used", _credits(s.additional_credits_used)),
        ("Credits refunded", _credits(s.credits_refunded)),
        ("Credits remaining (now)", _credits(s.credits_remaining)),
        ("Prompts", f"{s.prompts:,}"),
        ("Average credits per prompt", _num(s.average_credits_per_prompt, 3)),
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
    _table(ax, ["figure", "value"], [list(line) for line in lines], "Key figures", size=9)

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
    fig = _page(report, "Models", 2)
    models = report.tables["models"]
    top = models[:12]
    ax = fig.add_axes((0.25, 0.66, 0.69, 0.24))
    ax.set_title("Credits by model", loc="left", fontsize=11, weight="bold")
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
            _num(m.average_credits_per_prompt), _num(m.average_response_seconds),
            _pct(m.success_rate), _num(m.average_rating),
        ]
        for m in models[:20]
    ]  # fmt: skip
    ax = fig.add_axes((0.06, 0.05, 0.88, 0.55))
    header = ["model", "tier", "mult.", "prompts", "credits", "share", "cr/prompt", "resp. s",
              "success", "rating"]  # fmt: skip
    _table(ax, header, rows, "Usage, response time and success rate per model")
    return fig


def _users_page(report: Report) -> Figure:
    fig = _page(report, "Users and task categories", 3)
    users = report.tables["users"]
    rows = [
        [u.user, f"{u.prompts:,}", u.top_model, _credits(u.credits),
         _num(u.average_credits_per_prompt)]
        for u in users[:20]
    ]  # fmt: skip
    title = f"Top {min(20, len(users))} of {len(users)} users by credits"
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


def _budgets_page(report: Report) -> Figure:
    fig = _page(report, "Budgets and efficiency", 4)
    budgets = report.tables["budgets"]
    rows = [
        [b.organization, b.scope, b.scope_id, _credits(b.used_credits), _credits(b.limit_credits),
         _pct(b.used_ratio), _credits(b.projected_credits), b.status.replace("_", " ")]
        for b in budgets[:18]
    ]  # fmt: skip
    ax = fig.add_axes((0.06, 0.5, 0.88, 0.4))
    header = ["organization", "scope", "scope id", "used", "limit", "used %", "projected", "status"]
    _table(ax, header, rows, "Budgets in the current billing period (projected to its end)", 7)
    efficiency = report.tables["efficiency"]
    rows = [
        [str(e.rank), e.task_category, e.model, f"{e.prompts:,}",
         _num(e.average_credits_per_prompt, 3), _pct(e.success_rate)]
        for e in efficiency[:15]
    ]  # fmt: skip
    ax = fig.add_axes((0.06, 0.05, 0.88, 0.38))
    header = ["#", "task category", "model", "prompts", "cr/prompt", "success"]
    _table(ax, header, rows, "Efficiency leaderboard (cheapest per prompt first)")
    return fig


def _recommendations_page(report: Report) -> Figure:
    fig = _page(report, "Recommendations", 5)
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


def write_pdf(report: Report, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    with PdfPages(output) as pdf:
        for draw in (_summary_page, _models_page, _users_page, _budgets_page,
                     _recommendations_page):  # fmt: skip
            fig = draw(report)
            pdf.savefig(fig)
            plt.close(fig)
        info = pdf.infodict()
        info["Title"] = f"Credit report {report.period_label}"
        info["Creator"] = "credit-exporter report"

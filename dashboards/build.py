"""Regenerate the dashboard JSON (and the panel reference in docs/dashboards.md).

python -m dashboards.build          # write dashboards/generated/*.json, recording_rules.yml, docs
python -m dashboards.build --check  # exit 1 when a committed file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import ModuleType

from dashboards import (
    agent_analytics,
    budgets,
    checklist,
    exporter_health,
    models_users,
    org_analytics,
    recording,
    usage,
)
from dashboards.common import known_metric_names, metric_names, one_line, panel_notes

ROOT = Path(__file__).resolve().parent
GENERATED = ROOT / "generated"
DOCS = ROOT.parent / "docs" / "dashboards.md"
RECORDING_RULES = ROOT / "recording_rules.yml"
BEGIN = "<!-- BEGIN GENERATED PANEL REFERENCE (python -m dashboards.build) -->"
END = "<!-- END GENERATED PANEL REFERENCE -->"

MODULES: tuple[ModuleType, ...] = (
    usage,
    org_analytics,
    agent_analytics,
    models_users,
    budgets,
    exporter_health,
)


def render_json(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated dashboard file (and the recording rules they read) with its content."""
    built = {module.UID: module.build() for module in MODULES}
    for uid, data in built.items():
        check_metric_names(uid, data)
    files = {GENERATED / f"{uid}.json": render_json(data) for uid, data in built.items()}
    files[RECORDING_RULES] = recording.render()
    return files


# Series Prometheus itself writes (scrape health, alert state), not the exporter's.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}


def check_metric_names(uid: str, data: dict) -> None:
    """Fail the build when a panel query names a metric the catalogue (or a recording
    rule) does not define: a typo never reaches Grafana as an empty panel."""
    known = known_metric_names() | PROMETHEUS_SERIES
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            unknown = metric_names(target.get("expr", "")) - known
            if unknown:
                raise SystemExit(f"{uid}: {panel['title']}: unknown metrics {sorted(unknown)}")


def panel_reference() -> str:
    """The generated part of docs/dashboards.md: every panel, what it answers, its seed."""
    lines = [BEGIN, ""]
    for module in MODULES:
        lines += [f"### {module.TITLE} (`{module.UID}`)", "",
                  "| panel | what it answers | seed item |", "|---|---|---|"]  # fmt: skip
        for title, description, seeds, paid in panel_notes(module.items()):
            note = " (paid agents only)" if paid else ""
            cell = one_line(description).replace("|", "\\|")
            lines.append(f"| {title} | {cell}{note} | {seeds} |")
        lines.append("")
    lines += ["### Seed checklist", "", "| view | seed item | dashboard | panels |",
              "|---|---|---|---|"]  # fmt: skip
    for item in checklist.ITEMS:
        panels = ", ".join(item.panels)
        lines.append(f"| {item.view} | {item.item} | `{item.uid}` | {panels} |")
    lines += ["", END]
    return "\n".join(lines)


def docs_with_reference(current: str) -> str:
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{DOCS}: the generated-section markers are missing")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + panel_reference() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is stale")
    args = parser.parse_args(argv)
    wanted = outputs()
    if DOCS.exists():
        wanted[DOCS] = docs_with_reference(DOCS.read_text())
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT.parent)}", file=sys.stderr)
        return 1 if stale else 0
    GENERATED.mkdir(exist_ok=True)
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

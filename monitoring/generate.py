"""Regenerate every monitoring artefact from the catalogue and the monitoring
configuration, in dependency order; needs no database and no running exporter.

    python -m monitoring.generate            # rewrite the committed files that changed
    python -m monitoring.generate --check    # exit 1 and name each stale file (CI)
    python -m monitoring.generate --overrides team.yml --output-dir build/
        # our dashboards and rules with a platform team's overrides, written to build/

Order: docs/metrics.md (catalogue) -> alert rules (settings) -> the dashboards'
recording rules, dashboard JSON and panel reference -> the alert table of
docs/alerts.md (from the generated rules) -> deploy/kubernetes (from both rule
files and config.example.yaml) -> deploy/compose (the example Prometheus and
Alertmanager configs with the Compose hosts).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from monitoring import config

REPO = config.REPO
METRICS_DOC = REPO / "docs" / "metrics.md"
ALERTS_DOC = REPO / "docs" / "alerts.md"
RULES = REPO / "alert_rules" / "credit-exporter.rules.yml"
TABLE_BEGIN = "<!-- BEGIN GENERATED ALERT TABLE (python -m monitoring.generate) -->"
TABLE_END = "<!-- END GENERATED ALERT TABLE -->"


def metrics_doc() -> dict[Path, str]:
    from credit_exporter import catalog

    return {METRICS_DOC: catalog.to_markdown()}


def rules_document() -> dict[str, Any]:
    """The alerting and recording rules with the overrides' extra rules appended to
    their groups (a group of ours, or a new one)."""
    generator = config.rule_generator()
    document = generator.build(config.settings())
    groups = {group["name"]: group for group in document["groups"]}
    for name, rules in config.extra_rules().items():
        groups.setdefault(name, {"name": name, "rules": []})["rules"].extend(rules)
        if groups[name] not in document["groups"]:
            document["groups"].append(groups[name])
    return document


# Names in rule expressions that are not the exporter's metrics.
PROMETHEUS_SERIES = {"up", "ALERTS"}


def check_metric_names(document: dict[str, Any]) -> None:
    """Fail when a rule names a metric neither the catalogue nor a rule defines."""
    from credit_exporter import catalog
    from dashboards.common import metric_names

    rules = [rule for group in document["groups"] for rule in group["rules"]]
    known = catalog.all_series_names() | PROMETHEUS_SERIES
    known |= {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        unknown = metric_names(rule["expr"]) - known
        if unknown:
            name = rule.get("alert") or rule.get("record")
            raise SystemExit(f"rule {name}: unknown metrics {sorted(unknown)}")


def alert_rules() -> dict[Path, str]:
    generator = config.rule_generator()
    document = rules_document()
    check_metric_names(document)
    body = yaml.dump(document, Dumper=generator._Dumper, sort_keys=False,
                     width=10_000, allow_unicode=True)  # fmt: skip
    return {RULES: generator.HEADER + body}


def dashboards() -> dict[Path, str]:
    from dashboards import build

    files = build.outputs()
    if build.DOCS.exists():
        files[build.DOCS] = build.docs_with_reference(build.DOCS.read_text())
    return files


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rules_document()["groups"] for rule in group["rules"]
            if "alert" in rule]  # fmt: skip


def alert_names() -> set[str]:
    """Every alert the generator writes: tests and docs take the list from here."""
    return {rule["alert"] for rule in alerts()}


def what_it_says(summary: str) -> str:
    """An alert's summary template as plain text: labels and the value in <angle brackets>."""
    text = re.sub(r"\{\{ (if|with) .*?\{\{ end \}\}", "...", summary)
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", r"<\1>", text)
    text = re.sub(r"\{\{ \$value[^}]*\}\}", "<value>", text)
    return text.replace("|", "\\|")


def alert_table() -> str:
    uids = {uid: key for key, uid in config.settings()["dashboards"].items()}
    lines = [
        TABLE_BEGIN,
        "",
        "| alert | summary | severity | for | dashboard |",
        "|---|---|---|---|---|",
    ]
    for rule in alerts():
        link = rule["annotations"].get("dashboard_url", "")
        uid = next((u for u in uids if f"/d/{u}" in link), "")
        lines.append(f"| `{rule['alert']}` | {what_it_says(rule['annotations']['summary'])} "
                     f"| {rule['labels']['severity']} | {rule.get('for', '0s')} "
                     f"| {f'`{uid}`' if uid else 'none'} |")  # fmt: skip
    return "\n".join([*lines, "", TABLE_END])


def alerts_doc() -> dict[Path, str]:
    current = ALERTS_DOC.read_text()
    if TABLE_BEGIN not in current or TABLE_END not in current:
        raise SystemExit(f"{ALERTS_DOC}: the generated-table markers are missing")
    head, rest = current.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return {ALERTS_DOC: head + alert_table() + tail}


def deploy_module(name: str) -> Any:
    """``deploy/<name>.py`` as a module (deploy is scripts, not a package)."""
    import importlib.util

    path = REPO / "deploy" / f"{name}.py"
    spec = importlib.util.spec_from_file_location("deploy_" + name.replace("/", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def kubernetes() -> dict[Path, str]:
    return deploy_module("kubernetes/generate").outputs()


def compose_configs() -> dict[Path, str]:
    """deploy/compose/*.yml: the example Alertmanager config (and the Prometheus
    config) with the Compose stack's hosts."""
    return deploy_module("stack_config").compose_files()


STEPS: tuple[tuple[str, Callable[[], Mapping[Path, str]]], ...] = (
    ("metrics reference", metrics_doc),
    ("alert rules", alert_rules),
    ("dashboards and recording rules", dashboards),
    ("alert table", alerts_doc),
    ("kubernetes manifests", kubernetes),
    ("compose configs", compose_configs),
)


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run(check: bool) -> int:
    """Each step in order, writing its files before the next step reads them."""
    stale = []
    for _, step in STEPS:
        for path, text in step().items():
            if path.exists() and path.read_text() == text:
                continue
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {shown(path)}")
    for path in stale if check else []:
        print(f"stale: {shown(path)} (run python -m monitoring.generate)",
              file=sys.stderr)  # fmt: skip
    return 1 if check and stale else 0


def build_with_overrides(output: Path) -> int:
    """Our dashboards and rules with a team's overrides, into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    files = {**alert_rules(), **dashboards()}
    for path, text in files.items():
        if path.suffix not in (".json", ".yml"):
            continue  # docs describe our defaults
        target = output / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    parser.add_argument("--overrides", type=Path, help="a platform team's overrides file")
    parser.add_argument("--output-dir", type=Path, help="where an overrides build writes")
    args = parser.parse_args(argv)
    if args.overrides:
        if not args.output_dir or args.check:
            parser.error("--overrides builds into --output-dir (never over the committed files)")
        # read by monitoring.config before any dashboard module is imported
        os.environ[config.OVERRIDES_VARIABLE] = str(args.overrides.resolve())
        return build_with_overrides(args.output_dir)
    if config.overrides_path() is not None:
        parser.error(f"{config.OVERRIDES_VARIABLE} is set: the committed files hold our defaults")
    return run(args.check)


if __name__ == "__main__":
    sys.exit(main())

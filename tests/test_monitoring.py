"""One monitoring configuration and one command: `python -m monitoring.generate`
regenerates every artefact (and `--check` fails on a stale one), the dashboards and
the rules read the same levels and uids, and a platform team's overrides file
builds our dashboards and rules with its changes, without a fork."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from alerting_support import threshold_record

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from monitoring import config, generate  # noqa: E402

EXAMPLE = REPO / "docs" / "examples" / "monitoring" / "platform-overrides.yml"


def build_with(overrides: dict[str, Any] | Path, output: Path) -> subprocess.CompletedProcess:
    """Our dashboards and rules built with ``overrides`` into ``output``."""
    if isinstance(overrides, dict):
        path = output.parent / f"{output.name}-overrides.yml"
        path.write_text(yaml.safe_dump(overrides))
        overrides = path
    return subprocess.run(
        [sys.executable, "-m", "monitoring.generate", "--overrides", str(overrides),
         "--output-dir", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def budget_steps(output: Path) -> list[list[dict[str, Any]]]:
    data = json.loads((output / "dashboards" / "generated" / "credit-budgets.json").read_text())
    found = []
    for panel in data["panels"]:
        steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {})
        if [s["color"] for s in steps.get("steps", [])] == ["green", "yellow", "orange", "red"]:
            found.append(steps["steps"])
    return found


def rules_document(output: Path) -> dict[str, Any]:
    return yaml.safe_load((output / "alert_rules" / "credit-exporter.rules.yml").read_text())


def alerts(output: Path) -> dict[str, dict[str, Any]]:
    document = rules_document(output)
    found: dict[str, dict[str, Any]] = {}
    for rule in (r for g in document["groups"] for r in g["rules"] if "alert" in r):
        found.setdefault(rule["alert"], rule)  # the default levels come first
    return found


def panel_titles(output: Path, uid: str) -> list[str]:
    data = json.loads((output / "dashboards" / "generated" / f"{uid}.json").read_text())
    return [panel["title"] for panel in data["panels"]]


def test_committed_artefacts_are_what_the_one_command_generates() -> None:
    assert generate.main(["--check"]) == 0, "stale files: run python -m monitoring.generate"


def test_check_names_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    stale = tmp_path / "alerts.md"
    stale.write_text(generate.ALERTS_DOC.read_text().replace("CreditExporterDown", "Renamed"))
    monkeypatch.setattr(generate, "ALERTS_DOC", stale)
    assert generate.main(["--check"]) == 1
    assert f"stale: {stale}" in capsys.readouterr().err
    assert "Renamed" in stale.read_text()  # --check never writes


def test_docs_alert_table_lists_every_generated_alert() -> None:
    table = generate.ALERTS_DOC.read_text().split(generate.TABLE_BEGIN)[1]
    table = table.split(generate.TABLE_END)[0]
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert listed == generate.alert_names()
    assert len(listed) >= 20


def test_dashboard_budget_colours_follow_the_alert_levels() -> None:
    levels = [spec["threshold"] for spec in config.settings()["budget_levels"].values()]
    committed = budget_steps(REPO)
    assert committed
    assert all([s["value"] for s in steps[1:]] == levels for steps in committed)


def test_changing_the_first_level_recolours_dashboards_and_rules(tmp_path: Path) -> None:
    first = {"settings": {"budget_levels": {"UsageHigh": {"threshold": 70}}}}
    done = build_with(first, tmp_path / "build")
    assert done.returncode == 0, done.stderr
    steps = budget_steps(tmp_path / "build")
    assert steps and all([s["value"] for s in st[1:]] == [70, 90, 100] for st in steps)
    assert "0.7 * group by" in threshold_record(rules_document(tmp_path / "build"), "UsageHigh")


def test_a_wrong_metric_name_fails_the_build(tmp_path: Path) -> None:
    typo = {"dashboards": {"extra_panels": {"credit-usage": [
        {"title": "Typo", "description": "A misspelt metric.",
         "expr": "sum(rate(credit_spent_credit_total[5m]))"}]}}}  # fmt: skip
    done = build_with(typo, tmp_path / "build")
    assert done.returncode != 0
    assert "credit_spent_credit_total" in done.stderr


def test_the_worked_example_overrides_levels_links_panels_and_alerts(tmp_path: Path) -> None:
    output = tmp_path / "build"
    done = build_with(EXAMPLE, output)
    assert done.returncode == 0, done.stderr
    built = alerts(output)
    assert "0.7 * group by" in threshold_record(rules_document(output), "UsageHigh")
    assert built["CreditExporterDown"]["annotations"]["runbook_url"].startswith(
        "https://wiki.example.internal/credit-exporter/runbooks#"
    )
    assert 'job="billing-exporter"' in built["CreditExporterDown"]["expr"]
    assert "PlatformCreditSpendStopped" in built
    titles = panel_titles(output, "credit-usage")
    assert "Voice seconds per day" in titles
    assert "Agent slots used" not in titles and "Team-member seats used" not in titles
    assert "Credits used in range" in titles
    # our committed files keep our defaults
    assert "Agent slots used" in panel_titles(REPO, "credit-usage")
    promtool = subprocess.run(
        ["promtool", "check", "rules", str(output / "alert_rules" / "credit-exporter.rules.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr


def test_the_worked_example_gives_departments_levels_of_their_own(tmp_path: Path) -> None:
    """promtool on the built rules: at 60% a department budget warns (its own 50%
    level) and an organization budget does not (the overridden 70%)."""
    output = tmp_path / "build"
    assert build_with(EXAMPLE, output).returncode == 0
    series = [{"series": f'credit_budget_{kind}_credits{{organization="acme",scope="{scope}",'
                         f'scope_id="{scope_id}"}}', "values": f"{value}x30"}
              for scope, scope_id in (("department", "sales"), ("organization", "acme"))
              for kind, value in (("used", 60), ("limit", 100))]  # fmt: skip
    unit = tmp_path / "levels_test.yml"
    unit.write_text(yaml.safe_dump({
        "rule_files": [str(output / "alert_rules" / "credit-exporter.rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [{
            "expr": 'ALERTS{alertname="CreditBudgetUsageHigh", alertstate="firing"}',
            "eval_time": "20m",
            "exp_samples": [{"value": 1, "labels": (
                'ALERTS{alertname="CreditBudgetUsageHigh", alertstate="firing", '
                'organization="acme", scope="department", scope_id="sales", '
                'severity="info"}')}],
        }]}],
    }))  # fmt: skip
    done = subprocess.run(["promtool", "test", "rules", str(unit)], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

"""`credit-exporter report --prometheus`: the budgets' and pools' Runs out are the time
to exhaustion the alert rules record, read from a real Prometheus that scrapes the
exporter on demo data and evaluates those rules, at report time."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from alerting_support import recording_rules_only
from conftest import require_binary
from dashboard_support import write_fresh_usage
from report_support import REPO, config_for, report_json
from support import PrometheusProcess, start_exporter, start_prometheus, wait_until

from credit_exporter import cli
from credit_exporter.demo.embedded import free_port
from credit_exporter.report import exhaustion
from credit_exporter.report.model import BudgetRow
from monitoring import config as monitoring

BUDGET = exhaustion.BUDGET_SERIES
POOL = exhaustion.POOL_SERIES


@dataclass
class Stack:
    dsn: str
    prometheus: PrometheusProcess


@pytest.fixture(scope="module")
def stack(make_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The exporter on a fresh week of demo data, Prometheus scraping it every second with
    the alert rules' records (no alerts) evaluated every second, then new usage written
    so that the pools' spend counters move; ready once both exhaustion series exist."""
    require_binary("prometheus")
    from credit_exporter.demo.generator import load_demo

    dsn = make_database()
    load_demo(dsn, days=7, seed=42)
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    for source in [*config["queries"].values(), *config["streams"].values()]:
        source.update(interval="2s", timeout="2s")
    for stream in config["streams"].values():
        stream.update(settle="1s")
    work = tmp_path_factory.mktemp("report-prometheus")
    exporter = start_exporter(config, work / "exporter", env={"CREDIT_EXPORTER_DSN": dsn})
    try:
        records = work / "records.yml"
        records.write_text(recording_rules_only(interval="1s"))
        prometheus = start_prometheus(
            work / "prometheus", [exporter.url.removeprefix("http://")], rule_files=[records]
        )
        try:
            wait_until(
                lambda: prometheus.query('count_over_time(up{job="credit-exporter"}[1m]) >= 3'),
                60, "three scrapes",
            )  # fmt: skip
            write_fresh_usage(dsn)
            # a rule evaluation after scrapes of the moved counters records both series
            wait_until(lambda: prometheus.query(f"count({BUDGET})") and prometheus.query(
                f"count({POOL})"), 90, "both exhaustion series")  # fmt: skip
            yield Stack(dsn, prometheus)
        finally:
            prometheus.stop()
    finally:
        exporter.stop()


def _at(prometheus: PrometheusProcess, query: str, at: str) -> dict[tuple[str, ...], Any]:
    """The vector of ``query`` at the instant ``at`` (RFC 3339), by its label values."""
    moment = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    params = urllib.parse.urlencode({"query": query, "time": f"{moment:.3f}"})
    result = prometheus.api(f"/api/v1/query?{params}")["result"]
    return {tuple(sorted(r["metric"].items())): r for r in result}


def _month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def _current(stack: Stack, tmp_path: Path, *args: str) -> dict[str, Any]:
    config = config_for(stack.dsn, tmp_path)
    return report_json(config, tmp_path, "--period", _month(datetime.now(UTC)),
                       "--prometheus", stack.prometheus.url, *args)  # fmt: skip


def _seconds(row: dict[str, Any]) -> float:
    return float(row["runs_out_in_seconds"])


def test_series_names_are_the_ones_the_alert_rules_record() -> None:
    rules = monitoring.rule_names()
    assert (BUDGET, POOL) == (rules.BUDGET_EXHAUSTION, rules.POOL_EXHAUSTION)


def test_budget_runs_out_is_the_recorded_series_at_report_time(
    stack: Stack, tmp_path: Path
) -> None:
    document = _current(stack, tmp_path)
    read_at = document["time_to_exhaustion"]["read_at"]
    assert document["time_to_exhaustion"]["prometheus"] == stack.prometheus.url
    recorded = {
        (r["metric"]["organization"], r["metric"]["scope"], r["metric"]["scope_id"]): r
        for r in _at(stack.prometheus, BUDGET, read_at).values()
    }
    rows = document["tables"]["budgets"]
    burning = [r for r in rows if r["runs_out_status"] == "runs_out"]
    assert burning
    assert {(r["organization"], r["scope"], r["scope_id"]) for r in burning} == set(recorded)
    for row in burning:
        series = recorded[(row["organization"], row["scope"], row["scope_id"])]
        assert _seconds(row) == pytest.approx(
            float(series["value"][1]), abs=1e-6
        )  # JSON: 6 decimals
        assert row["runs_out_basis"] == series["metric"]["burn"]
        at = datetime.fromisoformat(row["runs_out_at"].replace("Z", "+00:00"))
        start = datetime.fromisoformat(read_at.replace("Z", "+00:00"))
        assert abs((at - start).total_seconds() - _seconds(row)) < 1e-3


def test_budgets_without_a_series_are_over_or_not_burning(stack: Stack, tmp_path: Path) -> None:
    rows = _current(stack, tmp_path)["tables"]["budgets"]
    for row in rows:
        if row["runs_out_status"] == "runs_out":
            continue
        over = Decimal(row["used_credits"]) >= Decimal(row["limit_credits"])
        assert row["runs_out_status"] == ("already_over" if over else "not_burning"), row
    assert any(r["runs_out_status"] == "already_over" for r in rows)


def test_pool_runs_out_is_the_recorded_series_of_the_organization(
    stack: Stack, tmp_path: Path
) -> None:
    series = stack.prometheus.query(POOL)
    organization = sorted(s["metric"]["organization"] for s in series)[0]
    document = _current(stack, tmp_path, "--organization", organization)
    recorded = {
        r["metric"]["pool"]: r
        for r in _at(stack.prometheus, f'{POOL}{{organization="{organization}"}}',
                     document["time_to_exhaustion"]["read_at"]).values()
    }  # fmt: skip
    pools = {row["pool"]: row for row in document["tables"]["balances"]}
    assert recorded and set(recorded) <= set(pools)
    for pool, row in pools.items():
        if pool in recorded:
            assert row["runs_out_status"] == "runs_out"
            assert _seconds(row) == pytest.approx(float(recorded[pool]["value"][1]), abs=1e-6)
            assert row["runs_out_basis"] == recorded[pool]["metric"]["burn"]
        else:
            assert row["runs_out_status"] in ("not_burning", "already_over"), row


def test_pools_of_every_organization_together_have_no_single_runs_out(
    stack: Stack, tmp_path: Path
) -> None:
    pools = _current(stack, tmp_path)["tables"]["balances"]
    assert pools and {row["runs_out_status"] for row in pools} == {"per_organization"}


def test_a_range_to_now_reads_runs_out(stack: Stack, tmp_path: Path) -> None:
    config = config_for(stack.dsn, tmp_path)
    document = report_json(config, tmp_path, "--from", "now-2d", "--prometheus",
                           stack.prometheus.url)  # fmt: skip
    assert document["time_to_exhaustion"]["read_at"] == document["generated_at"]
    assert any(r["runs_out_status"] == "runs_out" for r in document["tables"]["budgets"])


def test_past_period_says_runs_out_does_not_apply_without_asking_prometheus(
    demo_db: str, tmp_path: Path
) -> None:
    """Nothing listens at the URL: a past period never reads it."""
    last_month = _month(datetime.now(UTC).replace(day=1) - timedelta(days=1))
    nowhere = f"http://127.0.0.1:{free_port()}"
    document = report_json(config_for(demo_db, tmp_path), tmp_path, "--period", last_month,
                           "--prometheus", nowhere)  # fmt: skip
    rows = document["tables"]["budgets"] + document["tables"]["balances"]
    assert rows and {r["runs_out_status"] for r in rows} == {"not_current_period"}
    assert document["time_to_exhaustion"]["read_at"] is None
    assert "does not apply" in document["time_to_exhaustion"]["note"]


def test_without_prometheus_rows_have_no_runs_out_and_the_note_says_where_it_comes_from(
    demo_db: str, tmp_path: Path
) -> None:
    document = report_json(config_for(demo_db, tmp_path), tmp_path, "--period",
                           _month(datetime.now(UTC)))  # fmt: skip
    rows = document["tables"]["budgets"] + document["tables"]["balances"]
    assert rows and all(r["runs_out_status"] is None for r in rows)
    note = document["time_to_exhaustion"]
    assert note["prometheus"] is None and note["read_at"] is None
    assert "--prometheus URL" in note["note"] and BUDGET in note["note"] and POOL in note["note"]


def test_config_key_reads_prometheus_like_the_flag(stack: Stack, tmp_path: Path) -> None:
    config = config_for(stack.dsn, tmp_path, report={"prometheus": stack.prometheus.url})
    document = report_json(config, tmp_path, "--period", _month(datetime.now(UTC)))
    assert document["time_to_exhaustion"]["prometheus"] == stack.prometheus.url
    assert any(r["runs_out_status"] == "runs_out" for r in document["tables"]["budgets"])


def test_unreachable_prometheus_exits_1_naming_the_flag(
    demo_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    code = cli.main(["report", "--config", str(config_for(demo_db, tmp_path)), "--format",
                     "json", "--output", str(tmp_path / "r.json"), "--period",
                     _month(datetime.now(UTC)), "--prometheus", nowhere])  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err.startswith(f"credit-exporter report: --prometheus: {nowhere}")


def test_prometheus_that_is_not_an_http_url_exits_2(demo_db: str, tmp_path: Path) -> None:
    code = cli.main(["report", "--config", str(config_for(demo_db, tmp_path)), "--format",
                     "json", "--period", "2026-11", "--prometheus", "localhost:9090"])  # fmt: skip
    assert code == 2


def test_pdf_budget_page_has_runs_out_and_the_pools(stack: Stack, tmp_path: Path) -> None:
    import pymupdf

    output = tmp_path / "report.pdf"
    code = cli.main(["report", "--config", str(config_for(stack.dsn, tmp_path)), "--format",
                     "pdf", "--output", str(output), "--period", _month(datetime.now(UTC)),
                     "--prometheus", stack.prometheus.url])  # fmt: skip
    assert code == 0
    with pymupdf.open(output) as pdf:
        pages = [" ".join(page.get_text().split()) for page in pdf]
    budgets = next(p for p in pages if "scope id" in p)
    assert "runs out (UTC)" in budgets and "Credit pools" in budgets
    assert "per organization (--organization)" in budgets and "already over" in budgets


def test_runs_out_text_names_time_duration_and_basis() -> None:
    at = datetime(2026, 12, 6, 14, 0, tzinfo=UTC)
    row = BudgetRow(
        "acme",
        "project",
        "p",
        Decimal(1),
        Decimal(2),
        0.5,
        None,
        None,
        None,
        None,
        "on_track",
        "runs_out",
        at,
        2 * 86400 + 3 * 3600 + 59,
        "period_average",
    )
    assert exhaustion.runs_out_text(row) == "06 Dec 14:00, in 2d 3h (period avg.)"


def test_runs_out_fields_are_in_the_published_schema() -> None:
    schema = json.loads((REPO / "docs" / "report.schema.json").read_text())
    budget = schema["properties"]["tables"]["properties"]["budgets"]["items"]["properties"]
    assert {"runs_out_status", "runs_out_at", "runs_out_in_seconds", "runs_out_basis"} <= set(
        budget
    )
    assert "time_to_exhaustion" in schema["required"]

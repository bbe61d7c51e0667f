"""`credit-exporter report` on a week of demo data: every total equals SQL written here
against the reference tables, and the JSON, CSV and PDF outputs are produced."""

from __future__ import annotations

import csv
import json
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from report_support import REPO, config_for, report_json

from credit_exporter import cli

USAGE = """
FROM usage_events e
JOIN organizations o ON o.id = e.organization_id
JOIN models m ON m.id = e.model_id
JOIN users u ON u.id = e.user_id
JOIN task_categories tc ON tc.id = e.task_category_id
WHERE NOT e.playground AND e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
"""


def _window(dsn: str) -> tuple[datetime, datetime]:
    """Three whole UTC days inside the demo week (so the range filter matters)."""
    with psycopg.connect(dsn) as conn:
        first = conn.execute("SELECT min(occurred_at) FROM usage_events").fetchone()[0]
    start = datetime(first.year, first.month, first.day, tzinfo=UTC) + timedelta(days=2)
    return start, start + timedelta(days=3)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _sql(dsn: str, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(statement, params).fetchall()


@pytest.fixture(scope="module")
def demo_report(
    demo_db: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], datetime, datetime]:
    tmp = tmp_path_factory.mktemp("report")
    start, end = _window(demo_db)
    document = report_json(config_for(demo_db, tmp), tmp, "--from", _iso(start), "--to", _iso(end))
    return document, start, end


def test_summary_totals_equal_independent_sql(demo_db: str, demo_report: Any) -> None:
    document, start, end = demo_report
    (row,) = _sql(
        demo_db,
        f"""SELECT sum(greatest(e.credits, 0)), sum(greatest(-e.credits, 0)),
                   count(*) FILTER (WHERE e.credits >= 0),
                   coalesce(sum(greatest(e.credits, 0)) FILTER (WHERE e.pool = 'plan'), 0),
                   coalesce(sum(greatest(e.credits, 0)) FILTER (WHERE e.pool = 'topup'), 0)
            {USAGE}""",
        start=start,
        end=end,
    )
    spent, refunded, prompts, plan, topup = row
    summary = document["summary"]
    assert prompts > 1000  # the window holds real traffic
    assert Decimal(summary["credits_used"]) == spent
    assert Decimal(summary["credits_refunded"]) == refunded
    assert Decimal(summary["credits_net"]) == spent - refunded
    assert summary["prompts"] == prompts
    assert Decimal(summary["plan_credits_used"]) == plan
    assert Decimal(summary["additional_credits_used"]) == topup
    assert summary["average_credits_per_prompt"] == pytest.approx(float(spent / prompts), abs=1e-6)
    (remaining,) = _sql(demo_db, "SELECT sum(balance) FROM credit_pools")[0]
    assert Decimal(summary["credits_remaining"]) == remaining


def test_model_table_equals_independent_sql(demo_db: str, demo_report: Any) -> None:
    document, start, end = demo_report
    expected = {
        slug: (prompts, credits, tier, multiplier, successes)
        for slug, prompts, credits, tier, multiplier, successes in _sql(
            demo_db,
            f"""SELECT m.slug, count(*) FILTER (WHERE e.credits >= 0),
                       sum(greatest(e.credits, 0)), m.tier, m.multiplier,
                       count(*) FILTER (WHERE e.credits >= 0 AND e.success)
                {USAGE} GROUP BY m.slug, m.tier, m.multiplier""",
            start=start,
            end=end,
        )
    }
    rows = {r["model"]: r for r in document["tables"]["models"]}
    assert set(rows) == set(expected)
    for slug, (prompts, credits, tier, multiplier, successes) in expected.items():
        row = rows[slug]
        assert (row["prompts"], Decimal(row["credits"])) == (prompts, credits), slug
        assert (row["tier"], Decimal(row["multiplier"])) == (tier, multiplier), slug
        assert row["success_rate"] == pytest.approx(successes / prompts, abs=1e-6), slug


def test_tier_user_and_category_totals_equal_independent_sql(
    demo_db: str, demo_report: Any
) -> None:
    document, start, end = demo_report
    tables = document["tables"]
    for key, column in (("tier", "m.tier"), ("user", "u.email"), ("task_category", "tc.slug")):
        expected = {
            name: (prompts, credits)
            for name, prompts, credits in _sql(
                demo_db,
                f"""SELECT {column}, count(*) FILTER (WHERE e.credits >= 0),
                           sum(greatest(e.credits, 0)) {USAGE} GROUP BY 1""",
                start=start,
                end=end,
            )
        }
        table = {"tier": "tiers", "user": "users", "task_category": "task_categories"}[key]
        got = {r[key]: (r["prompts"], Decimal(r["credits"])) for r in tables[table]}
        assert got == expected, key


def test_timeline_days_equal_independent_sql(demo_db: str, demo_report: Any) -> None:
    document, start, end = demo_report
    expected = {
        day: (prompts, credits)
        for day, prompts, credits in _sql(
            demo_db,
            f"""SELECT date_trunc('day', e.occurred_at AT TIME ZONE 'UTC'),
                       count(*) FILTER (WHERE e.credits >= 0), sum(greatest(e.credits, 0))
                {USAGE} GROUP BY 1""",
            start=start,
            end=end,
        )
    }
    timeline = document["tables"]["timeline"]
    got = {
        datetime.fromisoformat(r["bucket_start"]).replace(tzinfo=None): (
            r["prompts"],
            Decimal(r["credits"]),
        )
        for r in timeline
    }
    assert got == expected
    assert len(timeline) == 3
    peak = max(expected.items(), key=lambda kv: kv[1][1])
    assert document["summary"]["peak_day"] == peak[0].date().isoformat()
    assert Decimal(document["summary"]["peak_day_credits"]) == peak[1][1]


def test_organization_budget_rows_equal_current_period_usage(
    demo_db: str, demo_report: Any
) -> None:
    document, _, _ = demo_report
    expected = dict(
        _sql(
            demo_db,
            """SELECT o.slug, coalesce(sum(e.credits), 0)
               FROM budgets b JOIN organizations o ON o.id = b.organization_id
               JOIN billing_periods bp ON bp.organization_id = o.id
                    AND bp.starts_at <= now() AND now() < bp.ends_at
               LEFT JOIN usage_events e ON e.organization_id = o.id AND NOT e.playground
                    AND e.occurred_at >= bp.starts_at AND e.occurred_at < bp.ends_at
               WHERE b.scope = 'organization' GROUP BY o.slug""",
        )
    )
    got = {
        r["scope_id"]: Decimal(r["used_credits"])
        for r in document["tables"]["budgets"]
        if r["scope"] == "organization"
    }
    assert expected and got == expected
    for row in document["tables"]["budgets"]:
        assert row["projected_credits"] is not None
        assert Decimal(row["projected_credits"]) >= Decimal(row["used_credits"])


def test_organization_filter_reports_only_that_organization(
    demo_db: str, demo_report: Any, tmp_path: Path
) -> None:
    _, start, end = demo_report
    document = report_json(
        config_for(demo_db, tmp_path), tmp_path, "--from", _iso(start), "--to", _iso(end),
        "--organization", "acme",
    )  # fmt: skip
    (spent,) = _sql(
        demo_db,
        f"SELECT sum(greatest(e.credits, 0)) {USAGE} AND o.slug = 'acme'",
        start=start,
        end=end,
    )[0]
    assert document["organization"] == "acme"
    assert Decimal(document["summary"]["credits_used"]) == spent
    (remaining,) = _sql(
        demo_db,
        "SELECT sum(balance) FROM credit_pools cp JOIN organizations o "
        "ON o.id = cp.organization_id WHERE o.slug = 'acme'",
    )[0]
    assert Decimal(document["summary"]["credits_remaining"]) == remaining
    assert {r["organization"] for r in document["tables"]["budgets"]} == {"acme"}


def test_json_document_validates_against_the_published_schema(demo_report: Any) -> None:
    import jsonschema

    document, _, _ = demo_report
    schema = json.loads((REPO / "docs" / "report.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    validator.validate(document)
    broken = {**document, "summary": {**document["summary"], "credits_used": 12.5}}
    assert not validator.is_valid(broken)  # a float credit amount is rejected


def test_committed_schema_is_what_the_generator_writes() -> None:
    from credit_exporter.report.schema import render

    assert (REPO / "docs" / "report.schema.json").read_text() == render()


def test_csv_zip_holds_one_file_per_table_with_the_json_figures(
    demo_db: str, demo_report: Any, tmp_path: Path
) -> None:
    from credit_exporter.report.model import TABLES, columns

    document, start, end = demo_report
    output = tmp_path / "report.zip"
    code = cli.main(
        ["report", "--config", str(config_for(demo_db, tmp_path)), "--format", "csv",
         "--output", str(output), "--from", _iso(start), "--to", _iso(end)]
    )  # fmt: skip
    assert code == 0
    with zipfile.ZipFile(output) as archive:
        assert set(archive.namelist()) == {"summary.csv", *(f"{t}.csv" for t in TABLES)}
        models = list(csv.reader(archive.read("models.csv").decode().splitlines()))
        summary = dict(csv.reader(archive.read("summary.csv").decode().splitlines()))
    assert models[0] == columns(TABLES["models"])
    assert len(models) - 1 == len(document["tables"]["models"])
    assert summary["credits_used"] == document["summary"]["credits_used"]


def test_pdf_has_six_pages_and_a_non_blank_first_page(
    demo_db: str, demo_report: Any, tmp_path: Path
) -> None:
    import pymupdf

    _, start, end = demo_report
    output = tmp_path / "report.pdf"
    code = cli.main(
        ["report", "--config", str(config_for(demo_db, tmp_path)), "--format", "pdf",
         "--output", str(output), "--from", _iso(start), "--to", _iso(end)]
    )  # fmt: skip
    assert code == 0
    with pymupdf.open(output) as pdf:
        assert pdf.page_count == 6  # the demo's 47 budgets fit on one page
        assert "Credit report" in pdf[0].get_text()
        pixmap = pdf[0].get_pixmap(dpi=50)
        pixmap.save(tmp_path / "page1.png")
    samples = pixmap.samples
    non_white = sum(1 for i in range(0, len(samples), pixmap.n) if samples[i] < 200)
    assert non_white > len(samples) // pixmap.n // 50  # charts and tables, not an empty page
    assert (tmp_path / "page1.png").stat().st_size > 5_000


def _money_fields(row_type: type) -> list[str]:
    import typing

    hints = typing.get_type_hints(row_type)
    return [name for name, hint in hints.items() if Decimal in (hint, *typing.get_args(hint))]


def _double_precision_config(dsn: str, tmp_path: Path) -> Path:
    """The example config with credits, limits and balances as double precision columns."""
    path = config_for(dsn, tmp_path)
    text = path.read_text()
    for numeric, double in (
        ("greatest(e.credits, 0) AS spent", "greatest(e.credits, 0)::float8 AS spent"),
        ("s.monthly_limit AS limit_credits", "s.monthly_limit::float8 AS limit_credits"),
    ):
        assert numeric in text, numeric
        text = text.replace(numeric, double)
    path.write_text(text)
    return path


def test_money_is_exact_at_six_decimals_from_double_precision_columns(
    demo_db: str, demo_report: Any, tmp_path: Path
) -> None:
    import re

    from credit_exporter.report.model import TABLES, Summary

    _, start, end = demo_report
    document = report_json(
        _double_precision_config(demo_db, tmp_path), tmp_path, "--from", _iso(start),
        "--to", _iso(end),
    )  # fmt: skip
    six = re.compile(r"^-?[0-9]+\.[0-9]{6}$")
    checked = 0
    for name in _money_fields(Summary):
        value = document["summary"][name]
        assert value is None or six.match(value), (name, value)
        checked += 1
    for table, row_type in TABLES.items():
        for row in document["tables"][table]:
            for name in _money_fields(row_type):
                assert row[name] is None or six.match(row[name]), (table, name, row[name])
                checked += 1
    assert checked > 100
    (spent,) = _sql(demo_db, f"SELECT sum(greatest(e.credits, 0)) {USAGE}", start=start, end=end)[0]
    assert Decimal(document["summary"]["credits_used"]) == spent  # summed exactly, as numeric


def test_budget_rows_come_most_urgent_first(demo_report: Any) -> None:
    document, _, _ = demo_report
    budgets = document["tables"]["budgets"]
    assert {b["status"] for b in budgets} >= {"over", "on_track"}
    urgency = sorted(budgets, key=lambda b: (b["status"] != "over", -Decimal(str(b["used_ratio"]))))
    assert [b["scope_id"] for b in budgets] == [b["scope_id"] for b in urgency]


def _pdf_text(demo_db: str, tmp_path: Path, *when: str) -> list[str]:
    import pymupdf

    output = tmp_path / "report.pdf"
    code = cli.main(
        ["report", "--config", str(config_for(demo_db, tmp_path)), "--format", "pdf",
         "--output", str(output), *when]
    )  # fmt: skip
    assert code == 0
    with pymupdf.open(output) as pdf:
        return [" ".join(page.get_text().split()) for page in pdf]


def test_pdf_lists_every_budget_with_the_over_limit_ones_first(
    demo_db: str, demo_report: Any, tmp_path: Path
) -> None:
    document, start, end = demo_report
    budgets = document["tables"]["budgets"]
    assert len(budgets) > 20
    text = " ".join(_pdf_text(demo_db, tmp_path, "--from", _iso(start), "--to", _iso(end)))
    for budget in budgets:
        row = f"{budget['organization']} {budget['scope']} {budget['scope_id']} "
        assert row in text, row
    over = [b for b in budgets if b["status"] == "over"]
    assert over
    assert f"{len(over)} over limit" in text
    first_over = text.index(f"{over[0]['scope']} {over[0]['scope_id']} ")
    for budget in budgets:
        if budget["status"] == "on_track":
            assert first_over < text.index(f"{budget['scope']} {budget['scope_id']} ")


def _month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def test_pdf_of_the_current_month_says_to_date(demo_db: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    pages = _pdf_text(demo_db, tmp_path, "--period", _month(now))
    start = now.strftime("%Y-%m-01 00:00")
    assert f"| {start} to date (" in pages[0]  # the header of the first page
    assert all(" to date (" in page for page in pages)  # ... and of every page


def test_pdf_of_a_past_month_flags_budgets_and_balances_as_today(
    demo_db: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    last_month = _month(now.replace(day=1) - timedelta(days=1))
    pages = _pdf_text(demo_db, tmp_path, "--period", last_month)
    assert "to date" not in pages[0]
    generated = now.strftime("%Y-%m-%d")
    assert f"Credits remaining on {generated}, after the period" in pages[0]
    budgets = next(p for p in pages if "Budgets" in p and "scope id" in p)
    assert "not of the report's period" in budgets


def test_json_period_says_whether_it_runs_to_date(demo_db: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    config = config_for(demo_db, tmp_path)
    current = report_json(config, tmp_path, "--period", _month(now))
    past = report_json(config, tmp_path, "--period", _month(now.replace(day=1) - timedelta(days=1)))
    assert current["period"]["to_date"] is True
    assert past["period"]["to_date"] is False


def test_pdf_prints_a_cheap_models_credits_per_prompt_to_three_significant_digits(
    demo_db: str, demo_report: Any, tmp_path: Path
) -> None:
    """An embedding model at 0.1x costs about a thousandth of a credit per prompt:
    "0.00" would read as free."""
    document, start, end = demo_report
    models = document["tables"]["models"]
    cheap = [m for m in models if 0 < Decimal(str(m["average_credits_per_prompt"])) < 0.01]
    assert cheap, "the demo must have a model under 0.01 credits per prompt"
    pages = _pdf_text(demo_db, tmp_path, "--from", _iso(start), "--to", _iso(end))
    (page,) = [page for page in pages if "Usage, response time and success" in page]
    for model in cheap:
        exact = Decimal(str(model["average_credits_per_prompt"]))
        three_digits = f"{exact:.{2 - exact.adjusted()}f}"
        row = page[page.index(f" {model['model']} {model['tier']} ") :][:120]
        assert f" {three_digits} " in row, (three_digits, row)

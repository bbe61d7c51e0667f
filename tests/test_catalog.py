"""The metric contract: naming conventions, coverage, and its generated docs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from credit_exporter import catalog
from credit_exporter.catalog import METRICS, MetricType, Source

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def test_every_name_is_in_the_credit_namespace() -> None:
    assert all(m.name.startswith("credit_") for m in METRICS)


def test_names_and_labels_are_valid_prometheus_identifiers() -> None:
    for metric in METRICS:
        assert NAME.match(metric.name), metric.name
        for label in metric.labels:
            assert NAME.match(label) and not label.startswith("__"), (metric.name, label)


def test_names_are_unique() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))


def test_counters_end_in_total_and_nothing_else_does() -> None:
    for metric in METRICS:
        assert metric.name.endswith("_total") == (metric.type is MetricType.COUNTER), metric.name


def test_info_metrics_end_in_info() -> None:
    for metric in METRICS:
        assert metric.name.endswith("_info") == (metric.type is MetricType.INFO), metric.name


def test_credit_amounts_carry_the_credits_unit_suffix() -> None:
    for metric in METRICS:
        if metric.unit == "credits":
            base = metric.name.removesuffix("_total")
            assert base.endswith("_credits"), metric.name


def test_times_are_in_seconds() -> None:
    for metric in METRICS:
        if metric.unit == "seconds":
            assert metric.name.removesuffix("_total").endswith("seconds"), metric.name
        assert not re.search(r"_(ms|milliseconds|minutes|hours)(_|$)", metric.name), metric.name


def test_histograms_declare_increasing_buckets() -> None:
    for metric in METRICS:
        if metric.type is MetricType.HISTOGRAM:
            assert list(metric.buckets) == sorted(set(metric.buckets)), metric.name
            assert len(metric.buckets) >= 5


def test_model_labels_use_the_opentelemetry_genai_names() -> None:
    for metric in METRICS:
        assert "model" not in metric.labels, metric.name
        assert "token_type" not in metric.labels, metric.name


def test_the_fixed_names_exist() -> None:
    assert catalog.get("credit_spent_credits_total").type is MetricType.COUNTER
    assert catalog.get("credit_build_info").type is MetricType.INFO


def test_spend_is_broken_down_by_every_seed_dimension() -> None:
    spend_labels = {
        label
        for m in METRICS
        if m.name.startswith("credit_spent") and m.unit == "credits"
        for label in m.labels
    }
    wanted = {
        "organization", "project", "department", "agent", "user", "gen_ai_request_model",
        "service_type", "channel", "task_category", "pool", "pricing_rule",
    }  # fmt: skip
    assert wanted <= spend_labels


def test_budget_metrics_help_names_every_budget_scope() -> None:
    for name in ("credit_budget_used_credits", "credit_budget_limit_credits"):
        metric = catalog.get(name)
        assert metric.labels == ("organization", "scope", "scope_id"), name
        missing = [s for s in catalog.BUDGET_SCOPES if not re.search(rf"\b{s}\b", metric.help)]
        assert not missing, (name, missing)


def test_no_metric_is_budgeted_beyond_30k_series_per_organization() -> None:
    for metric in METRICS:
        assert 0 < metric.series_budget <= 30_000, metric.name
        assert metric.budget_note, metric.name


def test_state_metrics_are_gauges() -> None:
    for metric in METRICS:
        if metric.source is Source.STATE:
            assert metric.type in (MetricType.GAUGE, MetricType.INFO), metric.name


def test_catalog_json_lists_every_metric_with_the_documented_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "catalog", "--format", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    entries = json.loads(out)
    assert [e["name"] for e in entries] == [m.name for m in METRICS]
    for entry in entries:
        assert set(entry) == {"name", "type", "unit", "help", "labels"}
        assert isinstance(entry["labels"], list)


def test_committed_metrics_doc_is_up_to_date() -> None:
    assert DOCS.read_text(encoding="utf-8") == catalog.to_markdown(), (
        "docs/metrics.md is stale: regenerate it with"
        " `credit-exporter catalog --format markdown > docs/metrics.md`"
    )

"""The demo end to end: the exporter on config.example.yaml over a week of
generated data exports every state gauge of the catalogue, with the values
the database holds."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from stream_support import sql_truth
from support import ExporterProcess, http_get, select, start_exporter, wait_until

from credit_exporter import catalog
from credit_exporter.config import load_config
from credit_exporter.sources.state import to_label, to_number

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


@pytest.fixture(scope="module")
def demo_exporter(demo_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    import yaml

    config = yaml.safe_load(EXAMPLE.read_text())
    exporter = start_exporter(
        config, tmp_path_factory.mktemp("demo"), env={"CREDIT_EXPORTER_DSN": demo_db}
    )
    try:
        wait_until(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 60, "ready")
        yield exporter
    finally:
        exporter.stop()


def one(samples, name: str, **labels: str) -> float | None:
    """The single series of ``name`` with exactly these labels, from one scrape."""
    found = select(samples, name, **labels)
    assert len(found) <= 1, (name, labels)
    return next(iter(found.values()), None)


def _rows(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def test_every_state_gauge_has_at_least_one_series(demo_exporter: ExporterProcess) -> None:
    samples = demo_exporter.samples()
    empty = [m.name for m in catalog.state_metrics() if not select(samples, m.name)]
    assert not empty, f"state metrics without a series in the demo: {empty}"


def test_every_query_and_stream_is_up(demo_exporter: ExporterProcess) -> None:
    config = load_config(EXAMPLE)
    samples = demo_exporter.samples()
    for name in [*config.queries, *config.streams]:
        assert one(samples, "credit_exporter_query_up", query=name) == 1, name


def test_every_exported_gauge_equals_its_query_rows(
    demo_exporter: ExporterProcess, demo_db: str
) -> None:
    """Run each query's SQL directly and compare every row with /metrics."""
    config = load_config(EXAMPLE)
    samples = demo_exporter.samples()
    for name, query in config.queries.items():
        with psycopg.connect(demo_db) as conn:
            cur = conn.execute(query.sql)
            columns = [c.name for c in cur.description or []]
            rows = cur.fetchall()
        for mapping in query.metrics:
            metric = catalog.get(mapping.metric)
            expected: dict[tuple, float] = {}
            for row in rows:
                record = dict(zip(columns, row, strict=True))
                labels = tuple(
                    (label, to_label(record[mapping.labels[label]])) for label in metric.labels
                )
                value = 1.0 if mapping.value is None else to_number(record[mapping.value])
                expected[tuple(sorted(labels))] = value
            exported = select(samples, metric.name)
            assert exported == expected, f"{name} -> {metric.name}"


def test_pool_balances_equal_the_credit_pools_table(
    demo_exporter: ExporterProcess, demo_db: str
) -> None:
    rows = _rows(
        demo_db,
        "SELECT o.slug, p.pool, p.allocation, p.balance FROM credit_pools p"
        " JOIN organizations o ON o.id = p.organization_id",
    )
    assert rows
    samples = demo_exporter.samples()
    for org, pool, allocation, balance in rows:
        assert one(samples, "credit_balance_credits", organization=org, pool=pool) == float(balance)
        assert one(samples, "credit_allocation_credits", organization=org, pool=pool) == float(
            allocation
        )


def test_organization_budget_used_equals_a_naive_period_sum(
    demo_exporter: ExporterProcess, demo_db: str
) -> None:
    """An independent, deliberately simple SQL for the figure the 75/90/100% alerts read."""
    rows = _rows(
        demo_db,
        """
        SELECT o.slug, coalesce(sum(e.credits), 0)
        FROM organizations o
        JOIN billing_periods bp ON bp.organization_id = o.id
             AND bp.starts_at <= now() AND now() < bp.ends_at
        LEFT JOIN usage_events e ON e.organization_id = o.id AND NOT e.playground
             AND e.occurred_at >= bp.starts_at AND e.occurred_at < bp.ends_at
        GROUP BY o.slug
        """,
    )
    assert len(rows) >= 6
    samples = demo_exporter.samples()
    for org, used in rows:
        exported = one(
            samples,
            "credit_budget_used_credits",
            organization=org,
            scope="organization",
            scope_id=org,
        )
        assert exported is not None, org
        assert Decimal(repr(exported)).quantize(Decimal("0.000001")) == used, org


def test_demo_has_organizations_past_75_90_and_100_percent(demo_exporter: ExporterProcess):
    samples = demo_exporter.samples()
    ratios = {}
    for key, used in select(samples, "credit_budget_used_credits", scope="organization").items():
        labels = dict(key)
        limit = select(samples, "credit_budget_limit_credits", **labels)
        ratios[labels["organization"]] = used / next(iter(limit.values()))
    bands = {"acme": (0.75, 0.90), "globex": (0.90, 1.0), "initech": (1.0, 1.10)}
    for org, (low, high) in bands.items():
        assert low < ratios[org] < high, (org, ratios[org])


def test_every_counter_and_histogram_has_at_least_one_series(
    demo_exporter: ExporterProcess,
) -> None:
    samples = demo_exporter.samples()
    empty = []
    for metric in catalog.event_metrics():
        names = catalog.series_names(metric)
        sample_names = {f"{metric.name}_count"} if len(names) > 1 else names
        if not any(select(samples, name) for name in sample_names):
            empty.append(metric.name)
    assert not empty, f"event metrics without a series in the demo: {empty}"


def test_every_counter_equals_its_sql_definition_per_label_set(
    demo_exporter: ExporterProcess, demo_db: str
) -> None:
    """Each counter against a plain GROUP BY over its stream's rows (stream_support.sql_truth)."""
    config = load_config(EXAMPLE)
    samples = demo_exporter.samples()
    checked = 0
    for stream in config.streams.values():
        for name, expected in sql_truth(demo_db, stream).items():
            metric = catalog.get(name)
            if metric.type is not catalog.MetricType.COUNTER:
                continue
            exported = {
                tuple(dict(key)[label] for label in metric.labels): value
                for key, value in select(samples, metric.name).items()
            }
            assert set(exported) == set(expected), metric.name
            for labels, total in expected.items():
                assert exported[labels] == float(total), (metric.name, labels)
            checked += 1
    assert checked == sum(
        1 for m in catalog.event_metrics() if m.type is catalog.MetricType.COUNTER
    )


def test_spent_credits_sum_equals_billable_usage_to_the_micro_credit(
    demo_exporter: ExporterProcess, demo_db: str
) -> None:
    samples = demo_exporter.samples()
    exported = sum(
        (Decimal(repr(v)) for v in select(samples, "credit_spent_credits_total").values()),
        Decimal(0),
    )
    [(billable,)] = _rows(
        demo_db, "SELECT sum(credits) FROM usage_events WHERE NOT playground AND credits > 0"
    )
    assert exported.quantize(Decimal("0.000001")) == billable


def test_latency_histogram_equals_its_sql_definition(
    demo_exporter: ExporterProcess, demo_db: str
) -> None:
    rows = _rows(
        demo_db,
        """
        SELECT o.slug, m.slug, count(e.latency_seconds), sum(e.latency_seconds),
               count(*) FILTER (WHERE e.latency_seconds <= 1.28)
        FROM usage_events e
        JOIN organizations o ON o.id = e.organization_id
        JOIN models m ON m.id = e.model_id
        WHERE NOT e.playground AND e.credits >= 0
        GROUP BY 1, 2
        """,
    )
    assert rows
    samples = demo_exporter.samples()
    for org, model, count, total, under in rows:
        labels = {"organization": org, "gen_ai_request_model": model}
        assert one(samples, "credit_response_duration_seconds_count", **labels) == count
        assert one(samples, "credit_response_duration_seconds_sum", **labels) == float(total)
        bucket = one(samples, "credit_response_duration_seconds_bucket", le="1.28", **labels)
        assert bucket == under

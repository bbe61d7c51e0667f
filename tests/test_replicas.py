"""Two identical replicas (high availability): an exporter started after another
has polled for a while exports the same value for every business series, so a
Prometheus HA pair or a deduplicating query layer may scrape either."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ExporterProcess, Samples, http_get, start_exporter, wait_until

from credit_exporter import catalog

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
BUSINESS_SAMPLE_NAMES = {
    name
    for metric in catalog.METRICS
    if metric.source is not catalog.Source.EXPORTER
    for name in catalog.series_names(metric)
}
POLLS_BEFORE_SECOND = 4


def fast_config() -> dict[str, Any]:
    """config.example.yaml polling every 2 s, so "several polls" take seconds."""
    config = yaml.safe_load(EXAMPLE.read_text())
    for section in ("queries", "streams"):
        for source in config[section].values():
            source["interval"] = "2s"
            source["timeout"] = "2s"
    return config


def business(samples: Samples) -> Samples:
    return {key: value for key, value in samples.items() if key[0] in BUSINESS_SAMPLE_NAMES}


def polls(exporter: ExporterProcess, source: str) -> float:
    """Runs of ``source`` so far (read from the text: parsing every series is slow)."""
    prefix = f'credit_exporter_query_duration_seconds_count{{query="{source}"}} '
    for line in exporter.metrics_text().splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def wait_for_polls(exporter: ExporterProcess, sources: list[str], count: int) -> None:
    for source in sources:
        wait_until(
            lambda s=source: polls(exporter, s) >= count, 60, f"{count} polls of {source}", 0.5
        )


@pytest.fixture
def replicas(demo_db: str, tmp_path: Path) -> Iterator[tuple[ExporterProcess, ExporterProcess]]:
    env = {"CREDIT_EXPORTER_DSN": demo_db}
    config = fast_config()
    sources = [*config["queries"], *config["streams"]]
    started: list[ExporterProcess] = []
    try:
        first = start_exporter(config, tmp_path / "first", env=env)
        started.append(first)
        wait_for_polls(first, sources, POLLS_BEFORE_SECOND)
        second = start_exporter(config, tmp_path / "second", env=env)
        started.append(second)
        wait_until(lambda: http_get(second.url + "/-/ready")[0] == 200, 60, "second ready")
        assert polls(first, "usage_events") > polls(second, "usage_events")
        yield first, second
    finally:
        for exporter in started:
            exporter.stop()


def assert_identical(first: ExporterProcess, second: ExporterProcess) -> int:
    a, b = business(first.samples()), business(second.samples())
    assert set(a) == set(b), (
        f"only in the first: {sorted(set(a) - set(b))[:5]}; "
        f"only in the second: {sorted(set(b) - set(a))[:5]}"
    )
    differing = [(key, a[key], b[key]) for key in a if a[key] != b[key]]
    assert not differing, differing[:5]
    return len(a)


def test_a_replica_started_later_exports_identical_values_for_every_series(
    replicas: tuple[ExporterProcess, ExporterProcess],
) -> None:
    first, second = replicas
    compared = assert_identical(first, second)
    exported = {name for name, _ in business(first.samples())}
    assert exported >= {m.name for m in catalog.state_metrics()}
    assert compared > 1000
    # and they stay identical while both keep polling
    config = fast_config()
    sources = [*config["queries"], *config["streams"]]
    before = {source: polls(second, source) for source in sources}
    for source, count in before.items():
        wait_until(
            lambda s=source, c=count: polls(second, s) >= c + 2, 60, f"polls of {source}", 0.5
        )
    assert_identical(first, second)

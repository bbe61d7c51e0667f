"""``--shard N/M``: three shard processes together export exactly what one
unsharded exporter exports, each organization from exactly one shard, and the
organization hash is the same number in Python and in PostgreSQL."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from support import (
    ExporterProcess,
    Samples,
    http_get,
    http_post,
    launch,
    start_exporter,
    wait_until,
)

from credit_exporter import catalog
from credit_exporter.cli import main
from credit_exporter.config import ConfigError, load_config, parse_config
from credit_exporter.sharding import Shard, apply, bucket, bucket_sql

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
SHARDS = 3
BUSINESS_SAMPLE_NAMES = {
    name
    for metric in catalog.METRICS
    if metric.source is not catalog.Source.EXPORTER
    for name in catalog.series_names(metric)
}


def business(samples: Samples) -> Samples:
    """The credit_* series of the metric contract (not the exporter's own health)."""
    return {key: value for key, value in samples.items() if key[0] in BUSINESS_SAMPLE_NAMES}


def start_shard(shard: str, workdir: Path, dsn: str) -> ExporterProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(EXAMPLE.read_text())
    process, url, log_path = launch(
        "exporter",
        lambda port: [sys.executable, "-m", "credit_exporter", "run", "--config",
                      str(config_path), "--listen", f"127.0.0.1:{port}", "--shard", shard],
        workdir, "/-/healthy", timeout=20, env={"CREDIT_EXPORTER_DSN": dsn},
    )  # fmt: skip
    return ExporterProcess(process, url, log_path, config_path)


@pytest.fixture(scope="module")
def exporters(
    demo_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ExporterProcess, list[ExporterProcess]]]:
    """(the unsharded exporter, [shard 1/3, 2/3, 3/3]), all ready on the demo data."""
    started: list[ExporterProcess] = []
    try:
        unsharded = start_exporter(
            yaml.safe_load(EXAMPLE.read_text()),
            tmp_path_factory.mktemp("unsharded"),
            env={"CREDIT_EXPORTER_DSN": demo_db},
        )
        started.append(unsharded)
        for index in range(1, SHARDS + 1):
            workdir = tmp_path_factory.mktemp(f"shard{index}")
            started.append(start_shard(f"{index}/{SHARDS}", workdir, demo_db))
        for exporter in started:
            wait_until(lambda e=exporter: http_get(e.url + "/-/ready")[0] == 200, 90, "ready")
        yield started[0], started[1:]
    finally:
        for exporter in started:
            exporter.process.terminate()  # all at once, then wait for each
        for exporter in started:
            exporter.stop()


Scrapes = tuple[Samples, list[Samples]]


@pytest.fixture(scope="module")
def scrapes(exporters: tuple[ExporterProcess, list[ExporterProcess]]) -> Scrapes:
    """One /metrics of each (the demo data does not change): (unsharded, [shards])."""
    unsharded, shards = exporters
    return unsharded.samples(), [shard.samples() for shard in shards]


def organization_of(key: tuple[str, tuple[tuple[str, str], ...]]) -> str | None:
    return dict(key[1]).get("organization")


def test_the_union_of_the_shards_equals_the_unsharded_exporter(scrapes: Scrapes) -> None:
    unsharded, shards = scrapes
    expected = business(unsharded)
    union: Samples = {}
    for shard in shards:
        union.update(business(shard))
    assert set(union) == set(expected), (
        f"only in the shards: {sorted(set(union) - set(expected))[:5]}; "
        f"only unsharded: {sorted(set(expected) - set(union))[:5]}"
    )
    differing = [key for key, value in expected.items() if union[key] != value]
    assert not differing, [(key, union[key], expected[key]) for key in differing[:5]]
    assert {key[0] for key in expected} >= {m.name for m in catalog.state_metrics()}


def test_no_series_is_exported_by_two_shards(scrapes: Scrapes) -> None:
    _, shards = scrapes
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for number, shard in enumerate(shards, start=1):
        for key in business(shard):
            assert key not in seen, f"{key} exported by shards {seen[key]} and {number}"
            seen[key] = number
    assert seen


def test_each_organization_is_exported_by_exactly_the_shard_its_hash_names(
    scrapes: Scrapes, demo_db: str
) -> None:
    _, shards = scrapes
    with psycopg.connect(demo_db) as conn:
        organizations = {row[0] for row in conn.execute("SELECT slug FROM organizations")}
    exported: dict[str, set[int]] = {}
    for number, shard in enumerate(shards, start=1):
        for key in business(shard):
            if (organization := organization_of(key)) is not None:
                exported.setdefault(organization, set()).add(number)
    assert set(exported) == organizations
    for organization, numbers in exported.items():
        assert numbers == {bucket(organization, SHARDS) + 1}, (organization, numbers)


def test_metrics_without_an_organization_come_from_shard_one_only(scrapes: Scrapes) -> None:
    unsharded, shards = scrapes
    name = "credit_model_multiplier_ratio"
    expected = {k: v for k, v in unsharded.items() if k[0] == name}
    assert expected
    assert {k: v for k, v in shards[0].items() if k[0] == name} == expected
    for shard in shards[1:]:
        assert not [k for k in shard if k[0] == name]


def test_each_shard_receives_only_its_own_rows_from_the_database(scrapes: Scrapes) -> None:
    """The filter runs in SQL: a state query's result rows add up across shards."""
    unsharded, shards = scrapes

    def rows(samples: Samples, query: str) -> float | None:
        return samples.get(("credit_exporter_query_rows", (("query", query),)))

    for query in ("credit_pools", "budgets", "plan_quotas", "agents"):
        total = rows(unsharded, query)
        parts = [rows(shard, query) for shard in shards]
        assert total is not None and total > 0
        assert sum(p or 0 for p in parts) == total, (query, parts, total)
        assert all(p is None or p < total for p in parts), (query, parts, total)


def test_the_organization_hash_is_the_same_in_python_and_postgresql(demo_db: str) -> None:
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_.@ éüß日本🙂'\""
    values = ["", "acme", "a" * 1000] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(2000)
    ]
    for count in (2, 3, 7, 64):
        with psycopg.connect(demo_db) as conn:
            rows = conn.execute(
                f"SELECT v, {bucket_sql('v', count)} FROM unnest(%s::text[]) AS t(v)", (values,)
            ).fetchall()
        assert len(rows) == len(values)
        mismatched = [(v, b) for v, b in rows if b != bucket(v, count)]
        assert not mismatched, (count, mismatched[:5])
    assert {bucket(v, 3) for v in values} == {0, 1, 2}


@pytest.mark.parametrize("value", ["0/3", "4/3", "abc", "1/0", "-1/3", "2"])
def test_a_bad_shard_value_exits_2_naming_the_flag(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--config", str(EXAMPLE), f"--shard={value}"])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert "argument --shard:" in stderr and repr(value) in stderr, stderr


def test_shard_values_parse_as_number_and_count() -> None:
    assert Shard.parse("2/3") == Shard(2, 3)
    assert Shard.parse(" 1 / 1 ") == Shard(1, 1)
    assert str(Shard(3, 4)) == "3/4"


MIXED_QUERY = {
    "databases": {"billing": {"dsn": "postgresql://unused"}},
    "queries": {
        "mixed": {
            "database": "billing",
            "sql": "SELECT 'acme' AS org, 'm' AS model, 'p' AS provider, 't' AS tier, 1 AS v",
            "metrics": [
                {"metric": "credit_seats_used", "value": "v", "labels": {"organization": "org"}},
                {
                    "metric": "credit_model_multiplier_ratio",
                    "value": "v",
                    "labels": {
                        "gen_ai_request_model": "model",
                        "gen_ai_provider_name": "provider",
                        "tier": "tier",
                    },
                },
            ],
        }
    },
}


def test_a_query_mixing_metrics_with_and_without_organization_cannot_be_sharded() -> None:
    config = parse_config(MIXED_QUERY)
    assert apply(config, None) is config
    assert apply(config, Shard(1, 1)) is config
    with pytest.raises(ConfigError) as error:
        apply(config, Shard(1, 2))
    assert error.value.problems[0].startswith("queries.mixed: --shard cannot split")
    assert "credit_model_multiplier_ratio" in error.value.problems[0]


def test_an_unsplittable_config_exits_2_before_serving(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(MIXED_QUERY))
    result = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "run", "--config", str(path), "--shard", "1/2"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert "queries.mixed: --shard cannot split" in result.stderr


def test_the_example_config_can_be_sharded() -> None:
    config = load_config(EXAMPLE)
    second = apply(config, Shard(2, 3))
    assert "models" not in second.queries  # no organization label: shard 1 only
    assert set(apply(config, Shard(1, 3)).queries) == set(config.queries)
    assert set(second.streams) == set(config.streams)
    assert all("md5(credit_exporter_shard" in s.sql for s in second.streams.values())
    assert all("AS MATERIALIZED" in q.sql for q in second.queries.values())
    assert not any("AS MATERIALIZED" in s.sql for s in second.streams.values())


def seats_query(*entries: dict[str, str]) -> dict:
    """A config whose query ``seats`` feeds one seat metric per organization label entry,
    over a NULL, a 'none' and an 'acme' organization."""
    metrics = ["credit_seats_used", "credit_seats_limit"]
    return {
        "databases": {"billing": {"dsn": "postgresql://unused"}},
        "queries": {"seats": {
            "database": "billing",
            "sql": "SELECT * FROM (VALUES (NULL::text, 1), ('none', 2), ('acme', 3)) AS r(org, v)",
            "metrics": [{"metric": metric, "value": "v", "labels": {"organization": entry}}
                        for metric, entry in zip(metrics, entries, strict=False)],
        }},
    }  # fmt: skip


def test_null_organizations_go_to_the_shard_of_their_if_null_text(empty_db: str) -> None:
    config = parse_config(seats_query({"column": "org", "if_null": "none"}))
    assert bucket("none", SHARDS) != 0  # not shard 1, where NULLs go without if_null
    returned = {}
    with psycopg.connect(empty_db) as conn:
        for index in range(1, SHARDS + 1):
            sql = apply(config, Shard(index, SHARDS)).queries["seats"].sql
            returned[index] = {org for org, _ in conn.execute(sql)}
    owner = bucket("none", SHARDS) + 1
    assert returned[owner] >= {None, "none"}
    assert all(None not in orgs for index, orgs in returned.items() if index != owner)


def test_a_source_whose_metrics_replace_a_null_organization_differently_cannot_be_sharded():
    config = parse_config(seats_query({"column": "org", "if_null": "none"},
                                      {"column": "org", "if_null": "unknown"}))  # fmt: skip
    with pytest.raises(ConfigError) as error:
        apply(config, Shard(1, 2))
    assert error.value.problems == [
        "queries.seats: --shard needs every metric's organization label to give the same"
        " if_null, got 'none', 'unknown'"
    ]


def runs(exporter: ExporterProcess) -> dict[str, float]:
    """Completed runs per query and stream (from the text: parsing every series is slow)."""
    prefix = 'credit_exporter_query_duration_seconds_count{query="'
    found = {}
    for line in exporter.metrics_text().splitlines():
        if line.startswith(prefix):
            name, _, value = line.removeprefix(prefix).partition('"} ')
            found[name] = float(value)
    return found


def test_a_reloaded_shard_stays_filtered(
    exporters: tuple[ExporterProcess, list[ExporterProcess]],
) -> None:
    """Leaves shard 1 as it was (same config reloaded), so test order does not matter."""
    shard = exporters[1][0]
    owned = {o for o in ("northwind", "acme", "globex", "initech", "umbrella", "hooli")
             if bucket(o, SHARDS) == 0}  # fmt: skip
    before = business(shard.samples())
    assert {organization_of(key) for key in before} - {None} == owned
    runs_before = runs(shard)
    assert http_post(shard.url + "/-/reload")[0] == 200
    assert shard.value("credit_exporter_config_last_reload_successful") == 1
    # every source restarts at once on reload: wait for each one's next run
    wait_until(
        lambda: all(runs(shard).get(s, 0) > n for s, n in runs_before.items()), 60, "reruns", 0.5
    )
    assert set(business(shard.samples())) == set(before)
    assert f"shard 1/{SHARDS}" in http_get(shard.url + "/")[1].decode()

"""Config validation: every bad config names the key and the problem, exit code 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from credit_exporter import catalog
from credit_exporter.config import ConfigError, load_config, parse_config, parse_duration

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"

GOOD: dict[str, Any] = {
    "databases": {"billing": {"dsn_env": "CREDIT_EXPORTER_DSN", "statement_timeout": "10s"}},
    "queries": {
        "pools": {
            "database": "billing",
            "interval": "30s",
            "timeout": "10s",
            "sql": "SELECT 'acme' AS organization, 'plan' AS pool, 1 AS allocation",
            "metrics": [
                {
                    "metric": "credit_allocation_credits",
                    "value": "allocation",
                    "labels": ["organization", "pool"],
                }
            ],
        }
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the value at a dotted path replaced (None deletes it)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is None:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


M0 = "queries.pools.metrics.0"

BAD_CASES = [
    ("unknown top-level key", _with("scrape", {}), "scrape", "unknown key"),
    ("unknown database key", _with("databases.billing.passwd", "x"),
     "databases.billing.passwd", "unknown key"),
    ("unknown query key", _with("queries.pools.every", "5s"), "queries.pools.every", "unknown key"),
    ("no databases", _with("databases", {}), "databases", "at least 1"),
    ("two DSN sources", _with("databases.billing.dsn", "postgresql://x"),
     "databases.billing", "exactly one of dsn, dsn_env, dsn_file"),
    ("no DSN source", _with("databases.billing.dsn_env", None),
     "databases.billing", "exactly one of dsn, dsn_env, dsn_file"),
    ("pool size zero", _with("databases.billing.pool_size", 0),
     "databases.billing.pool_size", "greater than or equal to 1"),
    ("bad duration unit", _with("queries.pools.interval", "30 seconds"),
     "queries.pools.interval", "duration"),
    ("bare number duration", _with("queries.pools.timeout", 10),
     "queries.pools.timeout", "unit"),
    ("zero duration", _with("databases.billing.statement_timeout", "0s"),
     "databases.billing.statement_timeout", "positive"),
    ("timeout above interval", _with("queries.pools.timeout", "1m"),
     "queries.pools", "must not exceed interval"),
    ("unknown database reference", _with("queries.pools.database", "ledger"),
     "queries.pools.database", "unknown database 'ledger'"),
    ("bad query name", {**GOOD, "queries": {"Pools!": GOOD["queries"]["pools"]}},
     "queries.Pools!", "names must match"),
    ("empty sql", _with("queries.pools.sql", ""), "queries.pools.sql", "at least 1"),
    ("no metrics", _with("queries.pools.metrics", []), "queries.pools.metrics", "at least 1"),
    ("unknown metric", _with(f"{M0}.metric", "credit_spend_credits"),
     "queries.pools.metrics[0].metric", "unknown metric 'credit_spend_credits'"),
    ("counter fed by a state query", _with(f"{M0}.metric", "credit_spent_credits_total"),
     "queries.pools.metrics[0].metric", "a state query can only feed gauges"),
    ("self-metric fed by a query", _with(f"{M0}.metric", "credit_exporter_query_up"),
     "queries.pools.metrics[0].metric", "the exporter's own metric"),
    ("missing label", _with(f"{M0}.labels", ["organization"]),
     "queries.pools.metrics[0].labels", "missing pool"),
    ("extra label", _with(f"{M0}.labels", ["organization", "pool", "plan"]),
     "queries.pools.metrics[0].labels", "plan not a label of credit_allocation_credits"),
    ("label listed twice", _with(f"{M0}.labels", ["organization", "pool", "pool"]),
     "queries.pools.metrics[0].labels", "listed twice"),
    ("two labels from one column", _with(f"{M0}.labels", {"organization": "o", "pool": "o"}),
     "queries.pools.metrics[0].labels", "same column"),
    ("missing value column", _with(f"{M0}.value", None),
     "queries.pools.metrics[0].value", "required"),
    ("value column is a label", _with(f"{M0}.value", "pool"),
     "queries.pools.metrics[0].value", "also used as a label"),
    ("duplicate series across queries",
     _with("queries.pools2", GOOD["queries"]["pools"]),
     "queries.pools2.metrics[0].metric", "already fed by queries.pools"),
    ("value given for an info metric",
     _with(f"{M0}", {"metric": "credit_organization_info", "value": "x",
                     "labels": ["organization", "organization_name", "plan"]}),
     "queries.pools.metrics[0].value", "_info metric"),
    ("checkpoint without a directory", _with("checkpoint", {"interval": "5m"}),
     "checkpoint.directory", "required"),
    ("blank checkpoint directory", _with("checkpoint", {"directory": " "}),
     "checkpoint.directory", "a directory the exporter can write"),
    ("checkpoint interval without a unit", _with("checkpoint", {"directory": "/d", "interval": 60}),
     "checkpoint.interval", "unit"),
    ("unknown checkpoint key", _with("checkpoint", {"directory": "/d", "every": "5m"}),
     "checkpoint.every", "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "key", "problem"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_config_names_the_key_and_the_problem(data: dict[str, Any], key: str, problem: str):
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    matching = [p for p in caught.value.problems if p.startswith(f"{key}:")]
    assert matching, f"no problem reported for {key}: {caught.value.problems}"
    assert any(problem in p for p in matching), caught.value.problems


def test_the_good_config_is_accepted() -> None:
    config = parse_config(GOOD)
    assert config.queries["pools"].interval == 30.0


def test_a_top_level_list_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"\(top level\)"):
        parse_config([1, 2])  # type: ignore[arg-type]


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("databases:\n  billing: {dsn: [\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1d", 86400)]
)
def test_durations_use_the_prometheus_format(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_check_config_exits_2_and_prints_the_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(f"{M0}.metric", "credit_nope")))
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert "queries.pools.metrics[0].metric: unknown metric 'credit_nope'" in run.stderr


def test_check_config_never_prints_a_literal_dsn(tmp_path: Path) -> None:
    secret = "s3cr3t-passw0rd"
    data = _with("databases.billing", {"dsn": f"postgresql://u:{secret}@h/db", "pool_size": -1})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert "databases.billing.pool_size" in run.stderr
    assert secret not in run.stdout + run.stderr


def test_example_config_is_valid_and_maps_every_state_metric() -> None:
    config = load_config(EXAMPLE)
    mapped = [m.metric for q in config.queries.values() for m in q.metrics]
    assert sorted(mapped) == sorted(m.name for m in catalog.state_metrics())


def test_example_config_maps_every_counter_and_histogram_to_a_stream() -> None:
    config = load_config(EXAMPLE)
    mapped = [m.metric for s in config.streams.values() for m in s.metrics]
    assert sorted(mapped) == sorted(m.name for m in catalog.event_metrics())


STREAM = {
    "database": "billing",
    "time": "occurred_at",
    "sql": "SELECT occurred_at, org, credits FROM usage_events",
    "metrics": [
        {
            "metric": "credit_topup_credits_total",
            "value": "credits",
            "labels": {"organization": "org", "trigger": "org2"},
        }
    ],
}

STREAM_CASES = [
    ("gauge fed by a stream", {"metric": "credit_balance_credits", "value": "credits",
                               "labels": ["organization", "pool"]},
     "streams.topups.metrics[0].metric", "a stream can only feed counters and histograms"),
    ("histogram without a value", {"metric": "credit_response_duration_seconds",
                                   "labels": ["organization", "gen_ai_request_model"]},
     "streams.topups.metrics[0].value", "the column observed by the histogram"),
    ("time column as a label", {"metric": "credit_topups_total",
                                "labels": {"organization": "occurred_at", "trigger": "t"}},
     "streams.topups.metrics[0].labels", "time column"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mapping", "key", "problem"), [c[1:] for c in STREAM_CASES], ids=[c[0] for c in STREAM_CASES]
)
def test_bad_stream_names_the_key_and_the_problem(mapping, key: str, problem: str) -> None:
    data = copy.deepcopy(GOOD) | {"streams": {"topups": {**STREAM, "metrics": [mapping]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert any(p.startswith(f"{key}:") and problem in p for p in caught.value.problems), (
        caught.value.problems
    )


def test_a_metric_fed_by_a_query_and_a_stream_is_a_duplicate() -> None:
    stream = copy.deepcopy(STREAM)
    data = copy.deepcopy(GOOD) | {"streams": {"topups": stream}}
    parse_config(data)  # distinct metrics: fine
    data["streams"]["dup"] = copy.deepcopy(STREAM)
    with pytest.raises(ConfigError, match=r"streams.dup.metrics\[0\].metric: .*already fed by"):
        parse_config(data)


# --- a label's if_null: the text a NULL cell exports ------------------------------------

SPEND_LABELS = {
    "organization": "team",
    "agent": {"column": "api_key_alias", "if_null": "unknown"},
    "project": "project",
    "service_type": "service_type",
}


def _spend_stream(agent: Any = SPEND_LABELS["agent"], **mapping: Any) -> dict[str, Any]:
    """GOOD plus a stream whose agent label entry is ``agent``."""
    labels = {**SPEND_LABELS, "agent": agent}
    stream = {
        "database": "billing",
        "time": "occurred_at",
        "sql": "SELECT occurred_at, team, api_key_alias, project, service_type, spend FROM logs",
        "metrics": [{"metric": "credit_spent_credits_total", "value": "spend", "labels": labels,
                     **mapping}],
    }  # fmt: skip
    return copy.deepcopy(GOOD) | {"streams": {"spend": stream}}


def test_a_label_with_if_null_reads_its_column_and_keeps_the_replacement_apart() -> None:
    mapping = parse_config(_spend_stream()).streams["spend"].metrics[0]
    assert mapping.labels == {"organization": "team", "agent": "api_key_alias",
                              "project": "project", "service_type": "service_type"}  # fmt: skip
    assert mapping.if_null == {"agent": "unknown"}
    assert mapping.policy.if_null == {"agent": "unknown"}


def test_an_empty_if_null_is_a_replacement() -> None:
    agent = {"column": "api_key_alias", "if_null": ""}
    mapping = parse_config(_spend_stream(agent)).streams["spend"].metrics[0]
    assert mapping.policy.if_null == {"agent": ""}


def test_labels_given_as_column_names_replace_no_null() -> None:
    config = parse_config(_spend_stream("api_key_alias"))
    assert config.streams["spend"].metrics[0].policy.if_null == {}
    assert config.queries["pools"].metrics[0].policy.if_null == {}  # the list form


def test_a_dropped_label_may_declare_if_null() -> None:
    mapping = parse_config(_spend_stream(drop_labels=["agent"])).streams["spend"].metrics[0]
    assert mapping.policy.dropped == {"agent"}


def test_a_hashed_label_may_declare_if_null(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDIT_EXPORTER_TEST_HMAC_KEY", "a-key-of-at-least-16-bytes")
    data = _spend_stream(hash_labels=["agent"])
    data["privacy"] = {"hmac_key_env": "CREDIT_EXPORTER_TEST_HMAC_KEY"}
    policy = parse_config(data).streams["spend"].metrics[0].policy
    assert policy.hashed == {"agent"} and policy.if_null == {"agent": "unknown"}


AGENT = "streams.spend.metrics[0].labels.agent"
LABEL_ENTRY_CASES = [
    ("a number", 5, AGENT, "give a column name or {column, if_null}"),
    ("null", None, AGENT, "give a column name or {column, if_null}"),
    ("a list", ["api_key_alias"], AGENT, "give a column name or {column, if_null}"),
    ("if_null a number", {"column": "api_key_alias", "if_null": 0},
     f"{AGENT}.if_null", "must be a string"),
    ("if_null null", {"column": "api_key_alias", "if_null": None},
     f"{AGENT}.if_null", "must be a string"),
    ("if_null missing", {"column": "api_key_alias"}, f"{AGENT}.if_null", "Field required"),
    ("column missing", {"if_null": "unknown"}, f"{AGENT}.column", "Field required"),
    ("column a number", {"column": 7, "if_null": "unknown"}, f"{AGENT}.column", "must be a string"),
    ("another key", {"column": "api_key_alias", "if_null": "unknown", "default": "x"},
     f"{AGENT}.default", "unknown key"),
    ("column read by another label", {"column": "team", "if_null": "unknown"},
     "streams.spend.metrics[0].labels", "two labels read the same column"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("agent", "key", "problem"),
    [c[1:] for c in LABEL_ENTRY_CASES],
    ids=[c[0] for c in LABEL_ENTRY_CASES],
)
def test_a_bad_label_entry_names_its_key_path(agent: Any, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_spend_stream(agent))
    assert f"{key}: {problem}" in caught.value.problems, caught.value.problems


def test_a_changed_if_null_makes_a_changed_stream_so_a_reload_recomputes_its_base() -> None:
    """A reload keeps a stream's base only when its StreamConfig compares equal."""
    before = parse_config(_spend_stream()).streams["spend"]
    assert parse_config(_spend_stream()).streams["spend"] == before
    changed = {"column": "api_key_alias", "if_null": "none"}
    assert parse_config(_spend_stream(changed)).streams["spend"] != before

"""Fuzzing: the config loader and the result-row conversion on generated input.

The config loader either returns a Config or raises ConfigError whose every
problem names a key path and a problem; the row conversion (state queries and
the event engine's splitting) raises nothing but QueryError and exports only
finite floats (or exact finite Decimals) under label values within their cap.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import random
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credit_exporter import catalog
from credit_exporter.config import ConfigError, parse_config
from credit_exporter.db import QueryError, Result
from credit_exporter.limits import HASH_HEX_DIGITS
from credit_exporter.sources.events import HistogramValue, StreamPlan
from credit_exporter.sources.state import convert

FUZZ = settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# a key path ("queries.q.metrics[0].value", "(top level)", "privacy") then ": " then a problem
PROBLEM = re.compile(r"^(\(top level\)|[^\s:][^\n]*?): \S[^\n]*$")

VALID: dict[str, Any] = {
    "limits": {"max_series_per_metric": 1000, "max_label_value_length": 256},
    "privacy": {"hmac_key_env": "FUZZ_HMAC_KEY"},
    "databases": {"billing": {"dsn": "dbname=billing", "statement_timeout": "10s"}},
    "queries": {
        "balances": {
            "database": "billing",
            "interval": "30s",
            "timeout": "10s",
            "sql": "SELECT organization, pool, balance FROM balances",
            "metrics": [
                {"metric": "credit_balance_credits", "value": "balance",
                 "labels": ["organization", "pool"], "hash_labels": ["organization"],
                 "limits": {"max_series_per_metric": 10}},
            ],
        },
    },
    "streams": {
        "usage": {
            "database": "billing",
            "key": "id",
            "time": "occurred_at",
            "sql": "SELECT id, occurred_at, org, usr, dept, model, credits FROM usage",
            "metrics": [
                {"metric": "credit_spent_by_user_credits_total", "value": "credits",
                 "labels": {"organization": "org", "department": "dept", "user": "usr",
                            "gen_ai_request_model": "model"},
                 "drop_labels": ["department"], "hash_labels": ["user"]},
                {"metric": "credit_response_duration_seconds", "value": "credits",
                 "labels": {"organization": "org", "gen_ai_request_model": "model"}},
            ],
        }
    },
}  # fmt: skip

# Documents are built by a seeded random.Random from one drawn integer: a
# recursive hypothesis strategy costs ~10 ms an example on a loaded machine,
# too slow for 10k cases, and a failing case is still reproduced by its seed.
WORDS = [
    "databases", "queries", "streams", "limits", "privacy", "billing", "dsn", "sql", "metrics",
    "metric", "labels", "value", "interval", "timeout", "database", "key", "time",
    "hash_labels", "drop_labels", "max_series_per_metric", "max_label_value_length",
    "hmac_key_env", "hmac_key_file", "dsn_env", "dsn_file", "q", "Q-1", ":", "", "a\nb",
    "30s", "1h30m", "0s", "-1s", "10", "64MB", "SELECT 1", "/nonexistent", "\x00",
    "FUZZ_HMAC_KEY", "UNSET_VARIABLE", "organization", "user", "pool", "é",
    *(m.name for m in catalog.METRICS[:8]),
]  # fmt: skip
ATOMS: list[Any] = [
    None, True, False, 0, 1, -1, 2**70, 0.5, float("nan"), float("inf"), b"\xff",
    dt.date(2026, 1, 1), 16, 10_000_001,
]  # fmt: skip


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 4 and roll < 0.25:
        return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 4 and roll < 0.35:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.7:
        return rng.choice(WORDS)
    return rng.choice(ATOMS)


def random_key(rng: random.Random) -> Any:
    return rng.choice(WORDS) if rng.random() < 0.95 else rng.choice([1, None, True, 2.5])


VALUES = st.integers(0, 2**64).map(lambda seed: random_value(random.Random(seed)))


def assert_loads_or_names_problems(data: Any) -> None:
    try:
        parse_config(data)
    except ConfigError as error:
        assert error.problems, "a ConfigError without problems"
        for problem in error.problems:
            assert PROBLEM.match(problem), f"problem without a key path: {problem!r}"


@pytest.fixture(autouse=True)
def _hmac_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUZZ_HMAC_KEY", "a-fuzzing-key-of-enough-length")


def test_the_valid_base_config_loads() -> None:
    config = parse_config(VALID)
    assert config.queries["balances"].metrics[0].policy.max_series == 10


@pytest.mark.slow
@FUZZ
@given(VALUES)
def test_any_yaml_like_document_loads_or_fails_with_key_paths(data: Any) -> None:
    assert_loads_or_names_problems(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


PATHS = _paths(VALID)[1:]


def mutate(seed: int) -> Any:
    """The valid config with 1-4 random replacements, deletions or additions."""
    rng = random.Random(seed)
    config = copy.deepcopy(VALID)
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(PATHS)
        parent: Any = config
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = rng.choice(["replace", "delete", "add"])
            if action == "replace":
                parent[path[-1]] = random_value(rng, depth=2)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[random_key(rng)] = random_value(rng, depth=3)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return config


@pytest.mark.slow
@FUZZ
@given(st.integers(0, 2**64).map(mutate))
def test_a_mutated_valid_config_loads_or_fails_with_key_paths(config: Any) -> None:
    assert_loads_or_names_problems(config)


# --- row conversion -------------------------------------------------------------

CELL_ATOMS: list[Any] = [
    None, True, False, 0, -1, 10**400, -(10**400), 2**63, 1.5, -0.0, 1e308, 5e-324,
    float("nan"), float("inf"), float("-inf"), Decimal("NaN"), Decimal("sNaN"),
    Decimal("Infinity"), Decimal("-Infinity"), Decimal("1e400"), Decimal("-1e400"),
    Decimal("1e30"), Decimal("1e-400"), Decimal("0.000001"), "nan", "inf", "1_000", " 12.5 ",
    "1e400", "-0", "0x10", "", "x" * 300, "é" * 33, "\ud800", "a\nb", "\x00", b"",
    b"\xff\xfe", "zürich".encode(), dt.datetime(2026, 1, 1, 12), dt.date(2026, 1, 1),
    uuid.UUID(int=7), [1, 2], {"a": 1}, (1,), dt.timedelta(seconds=3),
]  # fmt: skip


def random_cell(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(CELL_ATOMS)
    if roll < 0.7:
        return "".join(rng.choice("ab1.é@\n") for _ in range(rng.randint(0, 40)))
    if roll < 0.8:
        return rng.uniform(-1e6, 1e6)
    if roll < 0.9:
        return Decimal(rng.randint(-(10**20), 10**20)).scaleb(rng.randint(-30, 30))
    return rng.randint(-(2**70), 2**70)


STATE_CONFIG = parse_config(
    {
        "limits": {"max_series_per_metric": 3, "max_label_value_length": 32},
        "databases": {"billing": {"dsn": "dbname=billing"}},
        "queries": {
            "q": {
                "database": "billing",
                "sql": "SELECT 1",
                "metrics": [
                    {"metric": "credit_balance_credits", "value": "v",
                     "labels": ["organization", "pool"]},
                    {"metric": "credit_organization_info",
                     "labels": {"organization": "organization", "organization_name": "name",
                                "plan": "pool"}},
                ],
            }
        },
    }
)  # fmt: skip
STATE_COLUMNS = ("organization", "pool", "v", "name")


def random_rows(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    return [tuple(random_cell(rng) for _ in STATE_COLUMNS) for _ in range(rng.randint(0, 12))]


@pytest.mark.slow
@FUZZ
@given(st.integers(0, 2**64).map(random_rows))
def test_state_conversion_exports_only_finite_floats_under_capped_labels(
    rows: list[tuple[Any, ...]],
) -> None:
    try:
        conversion = convert(Result(STATE_COLUMNS, rows), STATE_CONFIG.queries["q"].metrics)
    except QueryError:
        return
    total = 0
    for series in conversion.snapshot.values():
        assert len(series) <= 3
        for labels, value in series.items():
            assert type(value) is float and math.isfinite(value)
            for label in labels:
                assert isinstance(label, str) and len(label) <= 32
                label.encode("utf-8")
            total += 1
    assert sum(conversion.dropped.values()) + total + sum(
        conversion.over_limit.values()
    ) == 2 * len(rows)


def test_a_missing_column_is_the_documented_query_error() -> None:
    with pytest.raises(QueryError) as error:
        convert(Result(("organization",), [("a",)]), STATE_CONFIG.queries["q"].metrics)
    assert error.value.reason == "validation"


def stream_plan() -> StreamPlan:
    """Built at import, so the HMAC key comes from a variable set here, not the fixture."""
    os.environ.setdefault("FUZZ_HMAC_KEY", "a-fuzzing-key-of-enough-length")
    config = parse_config(
        {
            "privacy": {"hmac_key_env": "FUZZ_HMAC_KEY"},
            "limits": {"max_series_per_metric": 4, "max_label_value_length": 24},
            "databases": {"billing": {"dsn": "dbname=billing"}},
            "streams": {
                "s": {
                    "database": "billing", "key": "id", "time": "t", "sql": "SELECT 1",
                    "metrics": [
                        {"metric": "credit_spent_by_user_credits_total", "value": "v",
                         "labels": {"organization": "org", "department": "dept", "user": "usr",
                                    "gen_ai_request_model": "model"},
                         "hash_labels": ["user"], "drop_labels": ["department"]},
                        {"metric": "credit_response_duration_seconds", "value": "v",
                         "labels": {"organization": "org", "gen_ai_request_model": "model"}},
                    ],
                }
            },
        }
    )  # fmt: skip
    return StreamPlan(config.streams["s"])


PLAN = stream_plan()
STREAM_COLUMNS = ("__settled", "__grouping", *PLAN.columns, *(n for n, _ in PLAN.aggregates))
BUCKETS = len(catalog.get("credit_response_duration_seconds").buckets)
SUM_ATOMS: list[Any] = [
    None, 0, 2**70, 1.5, float("nan"), float("inf"), float("-inf"), Decimal("NaN"),
    Decimal("Infinity"), Decimal("-Infinity"), Decimal("1e400"), Decimal("1e30"),
    Decimal("1e-400"), Decimal("-3.000001"),
]  # fmt: skip


def aggregate_rows(seed: int) -> list[tuple[Any, ...]]:
    """GROUPING SETS rows as PostgreSQL returns them, label and sum cells generated."""
    rng = random.Random(seed)
    rows = []
    for _ in range(rng.randint(0, 10)):
        cells: dict[str, Any] = {
            "__settled": rng.random() < 0.5,
            "__grouping": rng.choice([p.grouping_mask for p in PLAN.metrics]),
        }
        for column in PLAN.columns:
            cells[column] = random_cell(rng) if rng.random() < 0.5 else rng.choice("abcdef")
        for name, _ in PLAN.aggregates:
            if name == "__rows" or "_b" in name or name.endswith("_count"):
                cells[name] = rng.randint(0, 10**12)
            elif rng.random() < 0.5:
                cells[name] = rng.choice(SUM_ATOMS)
            else:
                cells[name] = Decimal(rng.randint(-(10**12), 10**12)).scaleb(-6)
        rows.append(tuple(cells[c] for c in STREAM_COLUMNS))
    return rows


@pytest.mark.slow
@FUZZ
@given(st.integers(0, 2**64).map(aggregate_rows))
def test_stream_splitting_keeps_values_exact_finite_and_labels_capped(
    rows: list[tuple[Any, ...]],
) -> None:
    split = PLAN.split(STREAM_COLUMNS, rows)
    for part in (split.settled, split.live):
        for metric, series in part.items():
            assert len(series) <= 4, metric
            for labels, value in series.items():
                assert all(isinstance(v, str) and len(v) <= 24 for v in labels)
                if metric == "credit_spent_by_user_credits_total":
                    assert labels[1] == ""  # department dropped
                    assert len(labels[2]) in (HASH_HEX_DIGITS, len("__overflow__"))
                if isinstance(value, HistogramValue):
                    assert len(value.buckets) == BUCKETS
                    total = value.total
                else:
                    total = value
                assert isinstance(total, Decimal) and total.is_finite()
                assert math.isfinite(float(total))

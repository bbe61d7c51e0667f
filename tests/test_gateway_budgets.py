"""An LLM gateway's team and virtual-key budgets (demo/shapes/gateway.py) exported
as the budget scopes ``team`` and ``api_key`` by the real exporter process, and
compared with the gateway's tables read by SQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support import ExporterProcess, http_get, select, start_exporter, wait_until

from credit_exporter.demo.shapes import gateway
from credit_exporter.demo.shapes.gateway import BUDGET_QUERIES, KEY_HASH_DIGITS, NO_ORGANIZATION

Series = dict[tuple[tuple[str, str], ...], float]

TEAM_ML, TEAM_OPS, TEAM_LAB = (
    "5b7e0c1e-8d52-4f59-9a57-1f0c3c6f2a01",
    "a4d3b2c1-0f9e-4d8c-b7a6-958473625140",
    "0e1d2c3b-4a59-4687-9786-a5b4c3d2e1f0",
)


def token(key: str) -> str:
    """How the gateway stores a virtual key: the hex SHA-256 of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def short(key: str) -> str:
    """The scope_id of a key without an alias: the start of its hash."""
    return token(key)[:KEY_HASH_DIGITS]


# (team_id, team_alias, organization_id, max_budget, spend); spend is SQL, so the
# float is the one PostgreSQL computes, as a gateway's running sum would be
TEAMS = [
    (TEAM_ML, "ml-research", "acme", 1000.0, "812.37"),
    (TEAM_OPS, None, "acme", None, "12.5"),  # no alias, no budget
    (TEAM_LAB, "", None, 50.0, "0.1::float8 + 0.2::float8"),  # empty alias, no organization
]
# (token, key_alias, team_id, organization_id, max_budget, spend)
KEYS = [
    (token("sk-ci"), "ci-bot", TEAM_ML, None, 100.0, "99.99"),  # the team's organization
    (token("sk-ops"), None, TEAM_OPS, None, None, "3.25"),  # no alias, no budget
    (token("sk-solo"), None, None, "globex", 20.0, "21.5"),  # no team, over its budget
    (token("sk-orphan"), "orphan", None, None, None, "0"),  # no team, no organization
    (token("sk-lent"), "lent", TEAM_ML, "initech", 5.0, "1.75"),  # its own organization
]


def _load(dsn: str) -> None:
    gateway.create(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for team_id, alias, organization, budget, spend in TEAMS:
            conn.execute(
                "INSERT INTO gateway_teams (team_id, team_alias, organization_id, max_budget,"
                f" spend) VALUES (%s, %s, %s, %s, {spend})",
                (team_id, alias, organization, budget),
            )
        for key, alias, team_id, organization, budget, spend in KEYS:
            conn.execute(
                "INSERT INTO gateway_keys (token, key_alias, team_id, organization_id,"
                f" max_budget, spend) VALUES (%s, %s, %s, %s, %s, {spend})",
                (key, alias, team_id, organization, budget),
            )


def _config() -> dict[str, Any]:
    return {
        "databases": {"gateway": {"dsn_env": "GATEWAY_DSN"}},
        "queries": BUDGET_QUERIES,
    }


@pytest.fixture(scope="module")
def dsn(make_database: Callable[[], str]) -> str:
    """A fresh database (as ``empty_db``, once for the module) with the gateway's tables."""
    created = make_database()
    _load(created)
    return created


@pytest.fixture(scope="module")
def exporter(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    process = start_exporter(
        _config(), tmp_path_factory.mktemp("gateway"), env={"GATEWAY_DSN": dsn}
    )
    try:
        wait_until(lambda: http_get(process.url + "/-/ready")[0] == 200, 30, "exporter ready")
        yield process
    finally:
        process.stop()


def _key(organization: str, scope: str, scope_id: str) -> tuple[tuple[str, str], ...]:
    return (("organization", organization), ("scope", scope), ("scope_id", scope_id))


def _from_tables(dsn: str) -> tuple[Series, Series]:
    """Used and limit series as the gateway's rows say they should be, read by SQL:
    alias else team id or hash prefix; the key's organization, else its team's,
    else NO_ORGANIZATION; a limit only where max_budget is set."""
    used: Series = {}
    limits: Series = {}
    with psycopg.connect(dsn) as conn:
        teams = conn.execute(
            "SELECT team_id, team_alias, organization_id, spend, max_budget FROM gateway_teams"
        ).fetchall()
        keys = conn.execute(
            "SELECT k.token, k.key_alias, k.organization_id, t.organization_id, k.spend,"
            " k.max_budget FROM gateway_keys k LEFT JOIN gateway_teams t USING (team_id)"
        ).fetchall()
    rows = [
        (_key(org or NO_ORGANIZATION, "team", alias or team_id), spend, budget)
        for team_id, alias, org, spend, budget in teams
    ] + [
        (_key(own or team_org or NO_ORGANIZATION, "api_key", alias or key[:KEY_HASH_DIGITS]),
         spend, budget)
        for key, alias, own, team_org, spend, budget in keys
    ]  # fmt: skip
    for labels, spend, budget in rows:
        used[labels] = spend
        if budget is not None:
            limits[labels] = budget
    return used, limits


def test_used_credits_of_every_team_and_key_equal_their_spend_bit_for_bit(
    exporter: ExporterProcess, dsn: str
) -> None:
    exported = select(exporter.samples(), "credit_budget_used_credits")
    used, _ = _from_tables(dsn)
    assert len(used) == len(TEAMS) + len(KEYS)
    assert exported == used  # float equality: no rounding between the column and /metrics
    assert exported[_key(NO_ORGANIZATION, "team", TEAM_LAB)] == 0.30000000000000004


def test_limits_are_exported_for_teams_and_keys_with_a_max_budget_only(
    exporter: ExporterProcess, dsn: str
) -> None:
    exported = select(exporter.samples(), "credit_budget_limit_credits")
    _, limits = _from_tables(dsn)
    assert exported == limits
    assert _key("acme", "team", TEAM_OPS) not in exported
    assert _key("acme", "api_key", short("sk-ops")) not in exported


def test_a_missing_alias_names_a_team_by_its_id_and_a_key_by_its_hash_prefix(
    exporter: ExporterProcess,
) -> None:
    exported = select(exporter.samples(), "credit_budget_used_credits")
    assert exported[_key("acme", "team", TEAM_OPS)] == 12.5  # NULL alias
    assert exported[_key(NO_ORGANIZATION, "team", TEAM_LAB)] > 0  # empty alias
    assert exported[_key("acme", "api_key", short("sk-ops"))] == 3.25


def test_a_key_belongs_to_its_own_organization_else_its_teams_else_the_default(
    exporter: ExporterProcess,
) -> None:
    keys = {
        dict(labels)["scope_id"]: dict(labels)["organization"]
        for labels in select(exporter.samples(), "credit_budget_used_credits", scope="api_key")
    }
    assert keys == {
        "ci-bot": "acme",  # its team's
        short("sk-ops"): "acme",
        short("sk-solo"): "globex",  # no team: its own
        "orphan": NO_ORGANIZATION,  # neither
        "lent": "initech",  # its own, over its team's
    }


def test_teams_and_keys_without_a_budget_cost_no_dropped_rows(
    exporter: ExporterProcess,
) -> None:
    samples = exporter.samples()
    dropped = {
        labels: value
        for labels, value in select(samples, "credit_exporter_dropped_rows_total").items()
        if dict(labels)["query"] in BUDGET_QUERIES and value
    }
    assert not dropped
    up = select(samples, "credit_exporter_query_up")
    assert {dict(labels)["query"]: value for labels, value in up.items()} == {
        name: 1.0 for name in BUDGET_QUERIES
    }


def test_check_config_connect_accepts_the_budget_queries(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(_config(), sort_keys=False))
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", "--connect", str(path)],
        capture_output=True, text=True, env={**os.environ, "GATEWAY_DSN": dsn}, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    budgeted = sum(t[3] is not None for t in TEAMS) + sum(k[4] is not None for k in KEYS)
    rows = {"gateway_budgets": len(TEAMS) + len(KEYS), "gateway_budget_limits": budgeted}
    assert set(rows) == set(BUDGET_QUERIES)
    for name, count in rows.items():
        assert f"ok   {name}: {count} rows" in run.stdout, (name, run.stdout)

"""The least-privilege roles of docs/security.md, applied verbatim to the demo database.

The SQL is read from the document itself, so the page and what is tested are one text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import REPO
from dashboard_support import interpolate, sql_macros
from support import start_exporter, wait_until
from test_dashboards import DASHBOARDS, SQL_TARGETS, _sql_defaults, _time_range

DOC = REPO / "docs" / "security.md"
EXAMPLE = REPO / "config.example.yaml"
MIGRATIONS = REPO / "exporter" / "credit_exporter" / "demo" / "migrations"
BLOCK = re.compile(r"<!-- sql:(?P<name>[\w-]+) -->\s*```sql\n(?P<sql>.*?)```", re.S)
GRANT_SELECT = re.compile(r"GRANT SELECT ON TABLE\s+(?P<tables>[\w,\s]+?)\s+TO\s", re.S)
DOC_ROLES = {"exporter-role": "credit_exporter_reader", "grafana-role": "credit_grafana_reader"}
REFUSED = ("permission denied", "read-only transaction")


def doc_blocks() -> dict[str, str]:
    return {m["name"]: m["sql"] for m in BLOCK.finditer(DOC.read_text())}


def granted_tables(sql: str) -> set[str]:
    match = GRANT_SELECT.search(sql)
    assert match, sql
    return {name.strip() for name in match["tables"].split(",")}


def tables_read(sql: str) -> set[str]:
    schema = "\n".join(path.read_text() for path in sorted(MIGRATIONS.glob("*.sql")))
    tables = set(re.findall(r"CREATE TABLE (\w+)", schema))
    return {t for t in tables if re.search(rf"\b(?:FROM|JOIN)\s+{t}\b", sql, re.I)}


def _with(dsn: str, **params: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.update(params)
    return psycopg.conninfo.make_conninfo(**info)


@dataclass
class Roles:
    exporter: str
    grafana: str
    dsn: str

    def dsn_as(self, role: str) -> str:
        return _with(self.dsn, user=role)


@pytest.fixture(scope="module")
def roles(demo_db: str) -> Iterator[Roles]:
    """The document's two roles, under unique names, on the demo database; dropped after."""
    suffix = uuid.uuid4().hex[:8]
    names = {block: f"{role}_{suffix}" for block, role in DOC_ROLES.items()}
    dbname = psycopg.conninfo.conninfo_to_dict(demo_db)["dbname"]
    blocks = doc_blocks()
    with psycopg.connect(demo_db, autocommit=True) as conn:
        try:
            for block, role in names.items():
                sql = blocks[block].replace(DOC_ROLES[block], role)
                conn.execute(sql.replace("DATABASE billing", f'DATABASE "{dbname}"').encode())
            yield Roles(names["exporter-role"], names["grafana-role"], demo_db)
        finally:
            for role in names.values():
                conn.execute(f"DROP OWNED BY {role}")  # revokes its grants here
                conn.execute(f"DROP ROLE {role}")


def _refused(dsn: str, statement: str, read_only_off: bool = False) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if read_only_off:
            conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.Error) as failure:
            conn.execute(statement)
    message = str(failure.value)
    assert any(reason in message for reason in REFUSED), message
    return message


# --- the document ------------------------------------------------------------------------------


def test_the_document_has_both_role_blocks() -> None:
    assert set(doc_blocks()) == set(DOC_ROLES)


def test_exporter_role_reads_exactly_the_tables_of_the_example_config() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    sources = [*example["queries"].values(), *example["streams"].values()]
    read = set().union(*(tables_read(source["sql"]) for source in sources))
    assert granted_tables(doc_blocks()["exporter-role"]) == read


def test_grafana_role_reads_exactly_the_tables_of_the_dashboards_sql_panels() -> None:
    assert SQL_TARGETS, "no SQL panels found"
    read = set().union(*(tables_read(target["rawSql"]) for _, target in SQL_TARGETS))
    granted = granted_tables(doc_blocks()["grafana-role"])
    assert granted == read
    assert {"topups", "credit_pools", "budgets", "phone_numbers"}.isdisjoint(granted)


# --- the exporter's role ----------------------------------------------------------------------


def test_exporter_serves_the_demo_metrics_as_its_role(roles: Roles, tmp_path: Path) -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    names = [*example["queries"], *example["streams"]]
    exporter = start_exporter(
        example, tmp_path, env={"CREDIT_EXPORTER_DSN": roles.dsn_as(roles.exporter)}
    )
    try:

        def all_up() -> bool:
            up = [exporter.value("credit_exporter_query_up", query=name) for name in names]
            return all(value == 1 for value in up)

        wait_until(all_up, 90, "every query and stream to succeed as the exporter role")
        samples = exporter.samples()
    finally:
        exporter.stop()
    with psycopg.connect(roles.dsn) as conn:
        models = conn.execute("SELECT count(*) FROM models").fetchone()
        spent = conn.execute(
            "SELECT coalesce(sum(greatest(credits, 0)), 0) FROM usage_events WHERE NOT playground"
        ).fetchone()
    assert models and spent
    multipliers = [k for k in samples if k[0] == "credit_model_multiplier_ratio"]
    assert len(multipliers) == models[0]
    exported = sum(v for (name, _), v in samples.items() if name == "credit_spent_credits_total")
    assert exported == pytest.approx(float(spent[0]), rel=1e-9)


def test_exporter_role_sessions_are_read_only_and_bounded(roles: Roles) -> None:
    with psycopg.connect(roles.dsn_as(roles.exporter)) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("default_transaction_read_only", "statement_timeout", "lock_timeout")
        }
        monitor = conn.execute(
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')"
        ).fetchone()
    assert settings == {"default_transaction_read_only": "on", "statement_timeout": "1min",
                        "lock_timeout": "5s"}  # fmt: skip
    assert monitor == (True,)  # the event engine can see open transactions


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO topups (organization_id, occurred_at, credits, trigger, price, currency)"
        " SELECT id, now(), 1, 'manual', 1, 'USD' FROM organizations LIMIT 1",
        "UPDATE credit_pools SET balance = balance + 1000000",
        "DELETE FROM usage_events",
        "CREATE TABLE exporter_was_here (id int)",
    ],
)
@pytest.mark.parametrize("read_only_off", [False, True], ids=["default", "read-only-off"])
def test_exporter_role_cannot_write(roles: Roles, statement: str, read_only_off: bool) -> None:
    message = _refused(roles.dsn_as(roles.exporter), statement, read_only_off)
    if read_only_off:  # the session setting is not the boundary; the privileges are
        assert "permission denied" in message


# --- Grafana's role ---------------------------------------------------------------------------


def test_every_dashboard_sql_panel_runs_as_the_grafana_role(roles: Roles) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(roles.dsn_as(roles.grafana)) as conn:
        for panel, target in SQL_TARGETS:
            dashboard = DASHBOARDS[panel.dashboard]
            start, end = _time_range(dashboard, now)
            query = interpolate(target["rawSql"], dashboard, _sql_defaults(dashboard), {}, sql=True)
            rows = conn.execute(sql_macros(query, start, end)).fetchall()
            assert rows, f"{panel}: no rows as the Grafana role"
            conn.rollback()


@pytest.mark.parametrize(
    "table", ["topups", "credit_pools", "budgets", "phone_numbers", "auto_recharge", "plans"]
)
def test_grafana_role_cannot_read_money_or_phone_tables(roles: Roles, table: str) -> None:
    message = _refused(roles.dsn_as(roles.grafana), f"SELECT * FROM {table} LIMIT 1")
    assert f"permission denied for table {table}" in message


def test_grafana_role_cannot_write_row_tables(roles: Roles) -> None:
    _refused(roles.dsn_as(roles.grafana), "DELETE FROM usage_events", read_only_off=True)
    _refused(roles.dsn_as(roles.grafana), "UPDATE users SET email = 'x'", read_only_off=True)

"""PostgreSQL helpers: throw-away databases, EXPLAIN ANALYZE, psql timings."""

from __future__ import annotations

import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DATABASE_PREFIX = "ce_bench_"
Statement = str | sql.Composable


def with_dbname(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


@contextmanager
def bench_database(admin_dsn: str, label: str) -> Iterator[str]:
    """A fresh ``ce_bench_<label>_<random>`` database, dropped on the way out."""
    name = f"{DATABASE_PREFIX}{label}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT version()").fetchone()
    return str(row[0]) if row else "unknown"


def literal_sql(dsn: str, statement: Statement, params: Any = None) -> str:
    """The statement with its parameters inlined, as psql would receive it."""
    with psycopg.connect(dsn) as conn:
        return psycopg.ClientCursor(conn).mogrify(statement, params)


@dataclass(frozen=True)
class Explained:
    """What EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) says about one statement."""

    planning_ms: float
    execution_ms: float
    buffers: int  # shared blocks hit + read
    table_rows: int  # rows the scans of the fact table returned
    scans: frozenset[str] = frozenset()  # how the fact table was read ("Index Scan using ...")

    @property
    def database_ms(self) -> float:
        return self.planning_ms + self.execution_ms

    def __add__(self, other: Explained) -> Explained:
        return Explained(
            self.planning_ms + other.planning_ms,
            self.execution_ms + other.execution_ms,
            self.buffers + other.buffers,
            self.table_rows + other.table_rows,
            self.scans | other.scans,
        )


class Explainer:
    """EXPLAIN ANALYZE on one long-lived connection.

    A fresh backend loads the catalog entries of every joined table while
    planning (tens of ms for the stream's 11 tables); the exporter's pooled
    connections have them cached, so the measurements reuse one warm connection
    and plan each statement once, unmeasured, before measuring it.
    """

    PREFIX = "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) "

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *_: object) -> None:
        self.conn.close()

    def literal(self, statement: Statement, params: Any = None) -> str:
        return psycopg.ClientCursor(self.conn).mogrify(statement, params)

    def explain(self, statement: str, fact_table: str = "usage_events") -> Explained:
        """``statement`` (parameters inlined) under EXPLAIN ANALYZE.

        TIMING OFF: per-node clocks would slow a 10M-row aggregate down far
        more than a 1k-row one and flatter the ratio; the total is still timed.
        """
        self.conn.execute("EXPLAIN " + statement)  # type: ignore[arg-type]
        row = self.conn.execute(self.PREFIX + statement).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return explained(row[0][0], fact_table)


def explained(document: dict[str, Any], fact_table: str) -> Explained:
    """One EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) document, summed up."""
    plan = document["Plan"]
    return Explained(
        planning_ms=float(document.get("Planning Time", 0.0)),
        execution_ms=float(document["Execution Time"]),
        buffers=int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)),
        table_rows=_rows_from(plan, fact_table),
        scans=frozenset(_scans_of(plan, fact_table)),
    )


def _rows_from(plan: dict[str, Any], table: str) -> int:
    own = 0
    if plan.get("Relation Name") == table:
        own = int(plan.get("Actual Rows", 0)) * int(plan.get("Actual Loops", 1))
    return own + sum(_rows_from(child, table) for child in plan.get("Plans", []))


def _scans_of(plan: dict[str, Any], table: str) -> list[str]:
    """The plan's scans of ``table``: node type, and the index it goes through."""
    own = []
    if plan.get("Relation Name") == table:
        node = str(plan["Node Type"])
        indexes = [plan["Index Name"]] if "Index Name" in plan else _bitmap_indexes(plan)
        own.append(f"{node} using {', '.join(indexes)}" if indexes else node)
    return own + [scan for child in plan.get("Plans", []) for scan in _scans_of(child, table)]


def _bitmap_indexes(plan: dict[str, Any]) -> list[str]:
    """The indexes of the Bitmap Index Scans under a Bitmap Heap Scan."""
    found = [plan["Index Name"]] if plan.get("Node Type") == "Bitmap Index Scan" else []
    return found + [name for child in plan.get("Plans", []) for name in _bitmap_indexes(child)]


_PSQL_TIME = re.compile(r"^Time: ([0-9.]+) ms", re.MULTILINE)


def psql_seconds(dsn: str, statement: str) -> float:
    """Wall time of ``statement`` in psql (``\\timing``), its rows sent to /dev/null."""
    return psql_script_seconds(dsn, statement.rstrip().rstrip(";") + ";")[0]


def psql_script_seconds(dsn: str, script_text: str) -> list[float]:
    """Run a psql script with ``\\timing`` on; the seconds of each statement, in order.

    Meta-commands such as ``\\copy`` are timed like statements; ``\\timing off``
    lines in the script leave their statements out of the list.
    """
    params = conninfo_to_dict(dsn)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write("\\timing on\n" + script_text.rstrip() + "\n")
        script.flush()
        command = [
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(params.get("host", "127.0.0.1")), "-p", str(params.get("port", 5432)),
            "-U", str(params.get("user", "postgres")), "-d", str(params["dbname"]),
            "-o", "/dev/null", "-f", script.name,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    times = [float(ms) / 1000 for ms in _PSQL_TIME.findall(result.stdout)]
    if not times:
        raise RuntimeError(f"psql printed no timing: {result.stdout!r} {result.stderr!r}")
    return times


def execute(dsn: str, statement: Statement, params: Any = None) -> list[tuple[Any, ...]]:
    """One autocommit statement; its rows (if any)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []

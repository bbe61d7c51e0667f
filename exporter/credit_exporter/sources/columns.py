"""Where a stream's result columns come from, as the PostgreSQL catalog describes them.

``check-config --connect`` must tell whether a stream's key is really fed by a
sequence in commit order and whether its ordering columns are indexed. The
stream's SQL can be any SELECT, so its result columns are traced back to table
columns the way the server itself does: the row description of a query names,
for each result column, the table and column it was read from (libpq's
``PQftable`` / ``PQftablecol``; 0 for an expression), through subqueries and
joins. A view's column is reported as the view's own, so a view is traced once
more through its definition. The catalog then says what feeds the column
(identity, serial or ``nextval`` default, and that sequence's cache), whether it
may be NULL, and which index starts with it.

Nothing here judges: ``sources/ordering_check.py`` turns these facts into verdicts.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from credit_exporter.sources.ordering import TYPE_NAMES_SQL

# how many views deep a column is traced (a view over a view over a table is 2)
MAX_VIEW_DEPTH = 8

_RELKIND = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view",
            "f": "foreign table"}  # fmt: skip

# One table column: what feeds it and what serves it. The sequence is the one
# pg_get_serial_sequence finds (serial and identity columns, owned by the
# column) or, failing that, one the column's default depends on (a
# ``DEFAULT nextval('some_seq')`` the column does not own, or a partition's copy
# of its parent's default).
_TABLE_COLUMN_SQL = """
SELECT format('%%I.%%I', n.nspname, c.relname),
       a.attname,
       quote_ident(a.attname),
       format_type(a.atttypid, a.atttypmod),
       a.attnotnull,
       a.attidentity <> '',
       (SELECT format('%%I.%%I', sn.nspname, sc.relname)
          FROM pg_class sc JOIN pg_namespace sn ON sn.oid = sc.relnamespace
         WHERE sc.oid = seq.oid),
       s.seqcache,
       pg_get_expr(ad.adbin, ad.adrelid),
       (SELECT format('%%I.%%I', n.nspname, ic.relname)
          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum AND i.indisvalid
         ORDER BY i.indpred IS NOT NULL, i.indexrelid
         LIMIT 1)
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  LEFT JOIN LATERAL (
       SELECT coalesce(
         pg_get_serial_sequence(format('%%I.%%I', n.nspname, c.relname), a.attname)::regclass::oid,
         (SELECT d.refobjid
            FROM pg_depend d JOIN pg_class sc ON sc.oid = d.refobjid AND sc.relkind = 'S'
           WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
             AND d.refclassid = 'pg_class'::regclass
           ORDER BY d.refobjid
           LIMIT 1)) AS oid) AS seq ON TRUE
  LEFT JOIN pg_sequence s ON s.seqrelid = seq.oid
 WHERE a.attrelid = %s AND a.attnum = %s AND NOT a.attisdropped
"""

_RELATION_SQL = """
SELECT format('%%I.%%I', n.nspname, c.relname), c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = %s
"""


@dataclass(frozen=True)
class TableColumn:
    """A plain column of a table (or partitioned table), as the catalog describes it."""

    table: str  # schema-qualified, quoted as SQL needs it
    name: str
    quoted: str  # the name as SQL must write it (quote_ident)
    type_name: str  # format_type, with modifiers
    not_null: bool
    identity: bool  # GENERATED ... AS IDENTITY
    sequence: str | None  # the sequence feeding it (schema-qualified), None when nothing does
    sequence_cache: int | None  # that sequence's CACHE
    default: str | None  # the column default's expression
    leading_index: str | None  # an index whose first column this is (a full one preferred)

    @property
    def qualified(self) -> str:
        """``table.column`` as SQL would write it."""
        return f"{self.table}.{self.quoted}"


@dataclass(frozen=True)
class ResultColumn:
    """One column of a stream's result: its type, and the table column it is read from.

    ``source`` is None when the column is not a plain table column; ``opaque``
    then says what it is instead (an expression, a view's computed column, a
    materialized view's or foreign table's column), for a message, and
    ``computed`` whether it is an expression (only an index on that very
    expression can serve a filter on it).
    """

    name: str
    type_oid: int
    source: TableColumn | None
    opaque: str | None = None
    computed: bool = False


async def _origins(
    conn: psycopg.AsyncConnection[Any], query: sql.Composable | str
) -> list[tuple[str, int, int, int]]:
    """(name, type OID, table OID, column number) of each result column; 0, 0 for an expression."""
    cur = await conn.execute(query)
    result = cur.pgresult
    assert result is not None and cur.description is not None
    return [
        (d.name, d.type_code, result.ftable(i), result.ftablecol(i))
        for i, d in enumerate(cur.description)
    ]


async def _trace(
    conn: psycopg.AsyncConnection[Any], name: str, type_oid: int, table: int, column: int
) -> ResultColumn:
    """Follow one result column to the table column it is read from, through views."""
    for _ in range(MAX_VIEW_DEPTH + 1):
        if table == 0 or column <= 0:
            return ResultColumn(name, type_oid, None, "an expression, not a table column", True)
        cur = await conn.execute(_RELATION_SQL, [table])
        relation = await cur.fetchone()
        if relation is None:  # dropped since the shape query ran: nothing to say about it
            return ResultColumn(name, type_oid, None, "a column of a relation that is gone")
        relname, relkind = relation
        if relkind in ("r", "p"):
            cur = await conn.execute(_TABLE_COLUMN_SQL, [table, column])
            row = await cur.fetchone()
            if row is None:
                return ResultColumn(name, type_oid, None, f"a column {relname} no longer has")
            return ResultColumn(name, type_oid, TableColumn(*row))
        if relkind != "v":
            kind = _RELKIND.get(relkind, f"relation of kind {relkind!r}")
            return ResultColumn(name, type_oid, None, f"a column of {kind} {relname}")
        # a view reports its own column: trace that column through the view's definition
        # (in a savepoint: a definition that will not run alone must not end the check)
        try:
            async with conn.transaction():
                cur = await conn.execute("SELECT pg_get_viewdef(%s::oid)", [table])
                row = await cur.fetchone()
                definition = (row[0] if row else "").strip().rstrip(";")
                inner = await _origins(
                    conn, sql.SQL("SELECT * FROM ({}) AS v LIMIT 0").format(sql.SQL(definition))
                )
        except psycopg.Error:
            return ResultColumn(name, type_oid, None, f"a column of view {relname}")
        if column > len(inner):
            return ResultColumn(name, type_oid, None, f"a column of view {relname}")
        _, _, table, column = inner[column - 1]
        if table == 0:
            return ResultColumn(name, type_oid, None, f"a computed column of view {relname}", True)
    return ResultColumn(name, type_oid, None, f"a column behind {MAX_VIEW_DEPTH}+ nested views")


async def result_columns(
    conn: psycopg.AsyncConnection[Any], shape: sql.Composable, traced: Collection[str]
) -> list[ResultColumn]:
    """Run a no-row query (a stream's ``shape_statement``): every result column with its type,
    and for those named in ``traced`` the table column each is read from."""
    return [
        await _trace(conn, *origin)
        if origin[0] in traced
        else ResultColumn(origin[0], origin[1], None, "not traced")
        for origin in await _origins(conn, shape)
    ]


async def type_names(conn: psycopg.AsyncConnection[Any], oids: set[int]) -> dict[int, str]:
    """``format_type`` of each type OID (for messages naming a column's type)."""
    cur = await conn.execute(TYPE_NAMES_SQL, [sorted(oids)])
    return dict(await cur.fetchall())

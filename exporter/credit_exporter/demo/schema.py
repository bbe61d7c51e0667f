"""Apply the reference schema's SQL migrations, in order, once each."""

from __future__ import annotations

from importlib import resources

import psycopg

MIGRATIONS_TABLE = "credit_exporter_schema_migrations"


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped in the package, sorted by name."""
    folder = resources.files("credit_exporter.demo") / "migrations"
    files = sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return files


def apply_migrations(dsn: str) -> list[str]:
    """Apply pending migrations in one transaction each; return the names applied."""
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        for name, sql in migration_files():
            if name in done:
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied

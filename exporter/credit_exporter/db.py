"""Connections to a billing database: a bounded pool, read-only transactions,
server-side statement timeouts, and errors classified by reason.

The pool never blocks start-up: a database that is down at start or goes down
later turns into ``QueryError(reason="connection")`` for the query that needed
it, and the next run tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from credit_exporter import redact
from credit_exporter.config import ConfigError, DatabaseConfig

log = logging.getLogger(__name__)

# Rows per FETCH of a server-side cursor: large enough that round trips do not
# dominate, small enough that a chunk in memory is a few MB.
CHUNK_ROWS = 5_000
# lock_timeout as a share of the statement timeout (see Database.read_only)
LOCK_TIMEOUT_FRACTION = 0.9
# SET LOCAL statement_timeout and lock_timeout, in one round trip
_TIMEOUTS = """
SELECT set_config('statement_timeout', %(st)s, true), set_config('lock_timeout', CASE
    WHEN current_setting('lock_timeout')::interval > interval '0'
     AND current_setting('lock_timeout')::interval <= %(lt)s * interval '1 millisecond'
    THEN current_setting('lock_timeout') ELSE %(lt)s::text END, true)
"""
# The database this connection reached: another database under the same DSN (dropped
# and restored, re-created) has another OID.
DATABASE_OID_SQL = "SELECT oid FROM pg_database WHERE datname = current_database()"
# What DECLARE ... CURSOR FOR accepts, after leading comments and parentheses.
_SELECT_LIKE = re.compile(
    r"^(\s|--[^\n]*\n|/\*.*?\*/|\()*(SELECT|WITH|VALUES|TABLE)\b", re.IGNORECASE | re.DOTALL
)


class QueryError(Exception):
    """A query run that failed; ``reason`` is one of timeout, connection, sql, validation."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Result:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def classify(exc: BaseException) -> QueryError:
    """Map a psycopg or pool exception onto an error reason.

    The message is the server's primary message only, scrubbed of any
    password (``redact.scrub``): libpq quotes parts of a DSN it cannot use.
    """
    if isinstance(exc, QueryError):
        return exc
    if isinstance(exc, psycopg.errors.LockNotAvailable):  # 55P03, from lock_timeout
        return QueryError(
            "timeout",
            "waited too long for a lock (another session holds a conflicting lock on a table "
            "this query reads: a migration, VACUUM FULL, LOCK TABLE?)",
        )
    if isinstance(exc, psycopg.errors.QueryCanceled | asyncio.TimeoutError | TimeoutError):
        return QueryError("timeout", "statement timeout or run timeout exceeded")
    if isinstance(exc, PoolTimeout):
        return QueryError("connection", "no database connection available (database down?)")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        return QueryError("connection", _first_line(exc) or "connection failed")
    if isinstance(exc, psycopg.Error):
        diag = getattr(exc, "diag", None)
        primary = diag.message_primary if diag is not None else None
        text = redact.scrub(primary) if primary else _first_line(exc)
        return QueryError("sql", text or type(exc).__name__)
    return QueryError("sql", f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return redact.scrub(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""


class Database:
    """One configured database and its connection pool.

    psycopg_pool's own background reconnect backs off exponentially, so after a
    long outage it can stay away for minutes once the database is back. The
    pool is therefore dropped on the first connection error and rebuilt on a
    later run, with our own backoff capped at ``max_backoff`` (the caller sets
    it below its shortest query interval, so recovery takes at most one
    interval).
    """

    def __init__(self, name: str, config: DatabaseConfig, max_backoff: float = 5.0) -> None:
        self.name = name
        self.config = config
        self.max_backoff = max_backoff
        self._pool: AsyncConnectionPool | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._next_attempt = 0.0

    @property
    def connected(self) -> bool:
        return self._pool is not None

    async def _open_pool(self, timeout: float) -> AsyncConnectionPool:
        async with self._lock:
            if self._pool is not None:
                return self._pool
            now = time.monotonic()
            if now < self._next_attempt:
                raise QueryError(
                    "connection",
                    f"database {self.name} unreachable; next attempt in "
                    f"{self._next_attempt - now:.1f}s",
                )
            try:
                dsn = self.config.resolve_dsn()
            except ConfigError as exc:
                raise QueryError("connection", f"databases.{self.name}.{exc}") from None
            pool = AsyncConnectionPool(
                dsn,
                min_size=1,
                max_size=self.config.pool_size,
                kwargs={
                    "application_name": self.config.application_name,
                    "connect_timeout": max(1, round(self.config.connect_timeout)),
                    "autocommit": False,
                },
                check=AsyncConnectionPool.check_connection,
                reconnect_timeout=max(1.0, self.config.connect_timeout),
                name=f"credit-exporter-{self.name}",
                open=False,
            )
            try:
                await pool.open(wait=True, timeout=min(timeout, self.config.connect_timeout))
            except asyncio.CancelledError:
                # a reload or shutdown stopped us mid-open: close what was opened, or
                # its workers and connections outlive it
                await pool.close(timeout=1)
                raise
            except Exception as exc:
                await pool.close(timeout=1)
                error = classify(exc)
                if isinstance(exc, PoolTimeout):
                    error = await self._why_unreachable(dsn, error)
                self._failures += 1
                delay = min(self.max_backoff, 0.5 * 2 ** (self._failures - 1))
                self._next_attempt = time.monotonic() + delay
                if self._failures == 1:
                    log.warning("database %s unreachable: %s", self.name, error)
                raise error from None
            if self._failures:
                log.info("database %s reachable again", self.name)
            self._failures = 0
            self._pool = pool
            return pool

    async def _why_unreachable(self, dsn: str, fallback: QueryError) -> QueryError:
        """The pool only says it timed out; one direct attempt says why (refused, wrong
        password, no such database), so the error tells the operator what to fix."""
        try:
            async with asyncio.timeout(self.config.connect_timeout + 1):
                conn = await psycopg.AsyncConnection.connect(
                    dsn, connect_timeout=max(1, round(self.config.connect_timeout))
                )
            await conn.close()
        except Exception as exc:
            return classify(exc)
        return fallback

    async def _discard_pool(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            # the pool is already broken; failing to close it must not hide the
            # error that made us discard it
            with contextlib.suppress(Exception):
                await pool.close(timeout=1)

    async def close(self) -> None:
        await self._discard_pool()

    @contextlib.asynccontextmanager
    async def read_only(
        self,
        timeout: float,
        repeatable_read: bool = False,
        settings: dict[str, str] | None = None,
        beyond_statement_timeout: bool = False,
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A read-only transaction with a server-side statement timeout.

        With ``repeatable_read`` every statement in it sees the same snapshot
        (the event engine needs its top key and its aggregate to agree).
        ``settings`` are applied with SET LOCAL. The database's
        ``statement_timeout`` caps every statement unless
        ``beyond_statement_timeout`` (a stream's one start-up aggregate has its
        own ``startup_timeout``). Failures surface as ``QueryError``.
        """
        deadline = time.monotonic() + timeout
        cap = timeout if beyond_statement_timeout else min(timeout, self.config.statement_timeout)
        statement_timeout_ms = int(cap * 1000)
        try:
            async with asyncio.timeout(timeout + 1.0):
                pool = await self._open_pool(timeout)
                async with pool.connection(timeout=timeout) as conn, conn.transaction():
                    isolation = "REPEATABLE READ" if repeatable_read else "READ COMMITTED"
                    await conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation} READ ONLY")
                    remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                    cap_ms = min(statement_timeout_ms, remaining_ms)
                    # a lock wait fails a little before the statement timeout would, so
                    # the server reports it as a lock (55P03), not as a plain timeout; a
                    # lower lock_timeout (the role's, say) is kept
                    await conn.execute(
                        _TIMEOUTS,
                        {"st": str(cap_ms), "lt": max(1, int(cap_ms * LOCK_TIMEOUT_FRACTION))},
                    )
                    if settings:  # in one round trip
                        await conn.execute(
                            sql.SQL("SELECT {}").format(sql.SQL(", ").join(
                                sql.SQL("set_config({}, {}, true)").format(
                                    sql.Literal(name), sql.Literal(value))
                                for name, value in settings.items()
                            ))
                        )  # fmt: skip
                    yield conn
        except Exception as exc:
            error = classify(exc)
            if error.reason == "connection":
                await self._discard_pool()
            raise error from None

    async def fetch(
        self, query: str | sql.Composable, timeout: float, params: Any = None
    ) -> Result:
        """Run one read-only query; classify failures."""
        async with self.read_only(timeout) as conn, conn.cursor() as cur:
            await cur.execute(query, params)
            if cur.description is None:
                raise QueryError("validation", "the query returned no result set")
            columns = tuple(col.name for col in cur.description)
            rows = await cur.fetchall()
        return Result(columns, rows)

    async def fetch_chunks(
        self,
        query: str | sql.Composable,
        timeout: float,
        consume: Callable[[tuple[str, ...], list[tuple[Any, ...]]], Awaitable[None]],
        chunk_rows: int = CHUNK_ROWS,
    ) -> int:
        """Run one read-only query through a server-side cursor, handing ``consume``
        one chunk of rows at a time; returns the row count.

        Unlike ``fetch``, the whole result never sits in this process: a query
        returning a million rows costs one chunk of memory plus what ``consume``
        keeps. ``cursor_tuple_fraction = 1`` keeps the plan the one a plain
        query would get (a cursor otherwise favours fast-start plans).
        """
        if isinstance(query, str):
            query = query.strip().rstrip(";")
            if not _SELECT_LIKE.match(query):
                # not a query a cursor can run (a write, SHOW): run it plainly so
                # the error is the server's own ("read-only transaction", ...)
                result = await self.fetch(query, timeout)
                for start in range(0, max(1, len(result.rows)), chunk_rows):
                    await consume(result.columns, result.rows[start : start + chunk_rows])
                return len(result.rows)
        total = 0
        async with (
            self.read_only(timeout, settings={"cursor_tuple_fraction": "1"}) as conn,
            conn.cursor(name="credit_exporter_chunks") as cur,
        ):
            await cur.execute(query)  # type: ignore[arg-type]
            if cur.description is None:
                raise QueryError("validation", "the query returned no result set")
            columns = tuple(col.name for col in cur.description)
            while rows := await cur.fetchmany(chunk_rows):
                total += len(rows)
                await consume(columns, rows)
            if total == 0:
                await consume(columns, [])
        return total

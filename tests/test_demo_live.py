"""The live demo writer, against a real PostgreSQL loaded with demo data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest

from credit_exporter.demo.embedded import free_port
from credit_exporter.demo.generator import load_demo
from credit_exporter.demo.live import run_live_writer

SEED = 42
SPEED = 3600.0  # one hour of demo traffic per second
TICK = 0.2


@pytest.fixture(scope="module")
def live_dsn(make_database: Callable[[], str]) -> str:
    """A week of demo data ending now, so live rows land in the current period."""
    dsn = make_database()
    load_demo(dsn, days=7, seed=SEED)
    return dsn


def _counts(dsn: str) -> dict[str, int]:
    tables = ("usage_events", "conversations", "messages", "visitors")
    with psycopg.connect(dsn) as conn:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in tables
        }


async def _run_for(dsn: str, seconds: float, during: Callable[[], None] | None = None) -> float:
    """Run the writer for ``seconds``; return how long it took to stop once asked."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_live_writer(dsn, seed=SEED, stop=stop, speed=SPEED, tick_seconds=TICK)
    )
    if during is not None:
        await asyncio.sleep(seconds / 2)
        await asyncio.to_thread(during)
        await asyncio.sleep(seconds / 2)
    else:
        await asyncio.sleep(seconds)
    asked = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    return time.monotonic() - asked


def _unbalanced_pools(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            """
            WITH cp AS (SELECT organization_id, starts_at, ends_at FROM billing_periods
                        WHERE starts_at <= now() AND now() < ends_at)
            SELECT p.organization_id, p.pool, p.allocation - p.balance, coalesce(sum(u.credits), 0)
            FROM credit_pools p JOIN cp USING (organization_id)
            LEFT JOIN usage_events u ON u.organization_id = p.organization_id
             AND u.pool = p.pool AND NOT u.playground
             AND u.occurred_at >= cp.starts_at AND u.occurred_at < cp.ends_at
            GROUP BY p.organization_id, p.pool, p.allocation, p.balance
            HAVING p.allocation - p.balance <> coalesce(sum(u.credits), 0)
            """
        ).fetchall()


def test_live_writer_inserts_rows_and_keeps_balances_exact(live_dsn: str) -> None:
    before = _counts(live_dsn)
    started = datetime.now(UTC)
    stopped_in = asyncio.run(_run_for(live_dsn, 2.0))
    after = _counts(live_dsn)
    assert after["usage_events"] > before["usage_events"]
    assert after["conversations"] > before["conversations"]
    assert after["messages"] > before["messages"]
    assert _unbalanced_pools(live_dsn) == []
    with psycopg.connect(live_dsn) as conn:
        newest = conn.execute("SELECT max(occurred_at) FROM usage_events").fetchone()
    assert newest is not None and newest[0] >= started
    assert stopped_in < 1.0


def _ratios(dsn: str) -> dict[str, float]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """
            WITH cp AS (SELECT organization_id, starts_at, ends_at FROM billing_periods
                        WHERE starts_at <= now() AND now() < ends_at)
            SELECT o.slug, sum(u.credits) / b.monthly_limit
            FROM organizations o JOIN cp ON cp.organization_id = o.id
            JOIN budgets b ON b.organization_id = o.id AND b.scope = 'organization'
            JOIN usage_events u ON u.organization_id = o.id AND NOT u.playground
             AND u.occurred_at >= cp.starts_at AND u.occurred_at < cp.ends_at
            GROUP BY o.slug, b.monthly_limit
            """
        ).fetchall()
    return {slug: float(ratio) for slug, ratio in rows}


def test_live_writer_keeps_every_org_near_its_ratio_for_an_hour_of_demo(live_dsn: str) -> None:
    before = _ratios(live_dsn)
    asyncio.run(_run_for(live_dsn, 1.0))  # about an hour of demo traffic
    after = _ratios(live_dsn)
    for slug, ratio in before.items():
        assert ratio <= after[slug] < ratio + 0.03, slug
    assert after["acme"] < 0.9


def test_live_writer_reconnects_after_its_connection_is_killed(live_dsn: str) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(live_dsn)["dbname"]
    killed_at: list[datetime] = []

    def kill() -> None:
        with psycopg.connect(live_dsn, autocommit=True) as conn:
            killed_at.append(datetime.now(UTC))
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )

    asyncio.run(_run_for(live_dsn, 3.0, during=kill))
    with psycopg.connect(live_dsn) as conn:
        after_kill = conn.execute(
            "SELECT count(*) FROM usage_events WHERE occurred_at > %s", (killed_at[0],)
        ).fetchone()
    assert after_kill is not None and after_kill[0] > 0
    assert _unbalanced_pools(live_dsn) == []


def test_live_writer_survives_an_unreachable_database() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere?connect_timeout=1"
    stopped_in = asyncio.run(_run_for(dsn, 1.0))
    assert stopped_in < 2.0


def test_live_writer_idles_on_an_empty_database(schema_db: str) -> None:
    stopped_in = asyncio.run(_run_for(schema_db, 0.6))
    assert stopped_in < 2.0
    assert _counts(schema_db)["usage_events"] == 0

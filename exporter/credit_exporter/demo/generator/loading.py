"""Loading: the one transaction that fills the reference tables."""

from __future__ import annotations

import gc
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from credit_exporter.demo import pgbinary
from credit_exporter.demo.generator.allocations import (
    Allocation,
    PeriodUsage,
    _alert_levels,
    _allocate,
    _auto_recharge,
    _budgets,
    _topups,
)
from credit_exporter.demo.generator.dimensions import _dimension_rows
from credit_exporter.demo.generator.reference import MS_PER_DAY, RUNAWAY
from credit_exporter.demo.generator.sampling import format_credits, from_ms, to_ms
from credit_exporter.demo.generator.stream import STREAM_COLUMNS, STREAM_TABLES, Batch, Stream
from credit_exporter.demo.generator.timeline import Timeline
from credit_exporter.demo.generator.world import World, build_world
from credit_exporter.demo.schema import apply_migrations
from credit_exporter.progress import ProgressBar

ALL_TABLES = (
    "plans", "plan_quotas", "organizations", "billing_periods", "departments", "projects",
    "users", "models", "agents", "service_types", "pricing_rules", "task_categories", "channels",
    "credit_pools", "budgets", "budget_alert_levels", "auto_recharge", "topups", "phone_numbers",
    "visitors", "conversations", "messages", "feedback", "paid_agent_subscriptions",
    "paid_agent_transactions", "usage_events",
)  # fmt: skip
SERIAL_TABLES = ("topups", "visitors", "conversations", "messages", "feedback",
                 "paid_agent_subscriptions", "paid_agent_transactions", "usage_events")  # fmt: skip


@dataclass(frozen=True)
class DemoSummary:
    usage_events: int
    conversations: int
    messages: int
    seconds: float
    visitors: int = 0
    feedback: int = 0
    paid_agent_subscriptions: int = 0
    paid_agent_transactions: int = 0
    topups: int = 0
    budgets: int = 0
    organizations: int = 0
    ratios: tuple[tuple[str, float], ...] = ()  # (org slug, current-period usage / limit)
    # Where the time went: generating and copying the rows; restoring foreign keys and
    # indexes; allocations, budgets and sequences; ANALYZE.
    phases: tuple[tuple[str, float], ...] = ()

    @property
    def events_per_second(self) -> float:
        return self.usage_events / self.seconds if self.seconds > 0 else 0.0


def _copy_rows(cur: psycopg.Cursor, table: str, columns: str, rows: list[tuple]) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FREEZE)") as copy:
        for row in rows:
            copy.write_row(row)


def _copy_binary(cur: psycopg.Cursor, table: str, parts: list[bytes]) -> None:
    if not parts:
        return
    statement = f"COPY {table} ({STREAM_COLUMNS[table]}) FROM STDIN WITH (FORMAT binary, FREEZE)"
    with cur.copy(statement) as copy:
        copy.write(pgbinary.SIGNATURE)
        copy.write(b"".join(parts))
        copy.write(pgbinary.TRAILER)


@contextmanager
def _bulk_mode(
    cur: psycopg.Cursor, tables: Sequence[str], maintenance_mb: int = 256
) -> Iterator[None]:
    """Drop the tables' keys, foreign keys and indexes, restore them afterwards.

    Checking a foreign key row by row and growing an index one row at a time
    cost several times what COPY itself does (the primary key alone adds half
    to a binary COPY of usage_events); validating each constraint and building
    each index once at the end, from sorted input, is far cheaper. Definitions
    are read from the catalog and restored verbatim (same names), all inside
    the load's transaction, so no other session ever sees the schema without
    them. Foreign keys of other tables that point at these go and come back
    too, since a key cannot be dropped under them.
    """
    cur.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'f' AND (conrelid = ANY(%(t)s::regclass[]) "
        "OR confrelid = ANY(%(t)s::regclass[])) ORDER BY 1, 2",
        {"t": list(tables)},
    )
    foreign_keys = cur.fetchall()
    cur.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype IN ('p', 'u') AND conrelid = ANY(%s::regclass[]) ORDER BY 1, 2",
        (list(tables),),
    )
    keys = cur.fetchall()
    cur.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1",
        (list(tables),),
    )
    indexes = cur.fetchall()
    for table, name, _ in foreign_keys + keys:
        cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cur.execute(f"DROP INDEX {name}")
    yield
    cur.execute(f"SET LOCAL maintenance_work_mem = '{maintenance_mb}MB'")
    for _, definition in indexes:
        cur.execute(definition)
    for table, name, definition in keys + foreign_keys:
        cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


class _Producer(threading.Thread):
    """Runs the stream on its own thread and hands its batches over a small queue,
    so that rows are generated while the previous batch is being copied."""

    def __init__(self, stream_factory: Callable[[Callable[[Batch], None]], Stream]) -> None:
        super().__init__(name="demo-generator", daemon=True)
        self.queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=3)
        self.cancelled = threading.Event()
        self.stream = stream_factory(self._put)

    def _put(self, item: Batch | BaseException | None) -> None:
        while not self.cancelled.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Cancelled

    def run(self) -> None:
        try:
            self.stream.run()
            self._put(None)
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            with suppress(_Cancelled):
                self._put(exc)


class _Cancelled(Exception):
    pass


def _copy_stream(
    cur: psycopg.Cursor, world: World, timeline: Timeline, seed: int, progress: bool
) -> Stream:
    """Generate the fact rows on a producer thread and COPY them as they come."""
    producer = _Producer(lambda emit: Stream(world, timeline, seed, emit))
    expected = sum(map(sum, timeline.expected))
    bar = ProgressBar(expected, label="demo data", unit="usage events", enabled=progress)
    with _quick_thread_switches(), _no_cyclic_gc():
        producer.start()
        try:
            while (item := producer.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                for table in STREAM_TABLES:
                    _copy_binary(cur, table, item.parts[table])
                bar.update(item.events_done)
        finally:
            producer.cancelled.set()
            producer.join()
            bar.close()
    return producer.stream


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while the stream runs.

    The stream allocates millions of short-lived tuples, none in a reference
    cycle (reference counting frees them), and each allocation burst triggers a
    collection that walks them; the full ones also walk every slot and template.
    Counted with callgrind at 280k events: 2.8% of the stream's instructions.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _quick_thread_switches(seconds: float = 0.0005) -> Iterator[None]:
    """Lower the interpreter's thread switch interval while the copy runs.

    The copying thread wakes up each time the socket to the server has room
    again, then waits for the GIL, which the generating thread keeps for up to
    the switch interval (5 ms by default); meanwhile the server runs out of
    input. Measured on 1M events: the copy phase takes about a quarter less.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@dataclass(frozen=True)
class _Finished:
    allocations: list[Allocation]
    topups: int
    budgets: int


def load_demo(
    dsn: str,
    *,
    days: int = 90,
    seed: int = 42,
    now: datetime | None = None,
    scale: float = 1.0,
    progress: bool = False,
) -> DemoSummary:
    """Apply the migrations and fill the reference tables with ``days`` of demo data
    ending at ``now`` (default: the current UTC time), in one transaction.

    Same (seed, days, now, scale), same table contents. Any existing rows in
    the reference tables are replaced: they are truncated in the same
    transaction (which also lets COPY write frozen rows).
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if scale <= 0:
        raise ValueError("scale must be positive")
    started = time.monotonic()
    phases: dict[str, float] = {}
    apply_migrations(dsn)
    now_ms = to_ms(now if now is not None else datetime.now(UTC))
    range_start = now_ms - days * MS_PER_DAY
    world = build_world(seed, range_start, now_ms)
    timeline = Timeline(world, seed, range_start, now_ms, scale)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute(f"TRUNCATE {', '.join(ALL_TABLES)} RESTART IDENTITY")
        for table, (columns, rows) in _dimension_rows(world, timeline, scale).items():
            _copy_rows(cur, table, columns, rows)
        # Sort memory for the index builds: enough to sort millions of rows in memory.
        expected_events = sum(map(sum, timeline.expected))
        maintenance_mb = 1024 if expected_events > 2_000_000 else 256
        with _bulk_mode(cur, STREAM_TABLES, maintenance_mb):
            stream = _copy_stream(cur, world, timeline, seed, progress)
            phases["copy"] = time.monotonic()
        phases["constraints"] = time.monotonic()
        usage = PeriodUsage.from_stream(stream.period_usage, stream.render.scopes)
        finished = _finish(cur, world, timeline, usage, seed)
        conn.commit()
        phases["finish"] = time.monotonic()
    _analyze(dsn, sorted(ALL_TABLES, key=lambda t: -stream.ids.get(t, 0)))
    phases["analyze"] = time.monotonic()
    ids = stream.ids
    return DemoSummary(
        usage_events=ids["usage_events"],
        conversations=ids["conversations"],
        messages=ids["messages"],
        seconds=time.monotonic() - started,
        visitors=ids["visitors"],
        feedback=ids["feedback"],
        paid_agent_subscriptions=ids["paid_agent_subscriptions"],
        paid_agent_transactions=ids["paid_agent_transactions"],
        topups=finished.topups,
        budgets=finished.budgets,
        organizations=len(world.orgs),
        ratios=tuple((a.org.slug, a.used / a.limit) for a in finished.allocations),
        phases=_durations(started, phases),
    )


def _analyze(dsn: str, tables: Sequence[str], sessions: int = 2) -> None:
    """ANALYZE ``tables`` (largest first) on ``sessions`` connections at once.

    Each ANALYZE is one backend's work, a few hundred milliseconds for a large
    table; two sessions take the largest tables side by side.
    """
    pending: queue.SimpleQueue[str] = queue.SimpleQueue()
    for table in tables:
        pending.put(table)

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                try:
                    table = pending.get_nowait()
                except queue.Empty:
                    return
                conn.execute(f"ANALYZE {table}")

    with ThreadPoolExecutor(sessions, thread_name_prefix="demo-analyze") as pool:
        for done in [pool.submit(work) for _ in range(sessions)]:
            done.result()


def _durations(started: float, marks: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Seconds of each phase, from the times at which each one ended."""
    out, previous = [], started
    for name, mark in marks.items():
        out.append((name, mark - previous))
        previous = mark
    return tuple(out)


def _finish(
    cur: psycopg.Cursor, world: World, timeline: Timeline, usage: PeriodUsage, seed: int
) -> _Finished:
    """Pools, top-ups, auto-recharge and budgets from the period's usage; sequences."""
    rng = random.Random(f"{seed}:finish")
    allocations = [
        _allocate(org, usage.drawn.get((org.id, "plan"), 0), usage.drawn.get((org.id, "topup"), 0))
        for org in world.orgs
    ]
    updated = from_ms(timeline.now)
    pools = []
    for a in allocations:
        pools.append((a.org.id, "plan", format_credits(a.plan),
                      format_credits(a.plan - a.drawn_plan), updated))  # fmt: skip
        pools.append((a.org.id, "topup", format_credits(a.topup),
                      format_credits(a.topup - a.drawn_topup), updated))  # fmt: skip
    topups = _topups(world, timeline, allocations, rng)
    budgets = _budgets(world, usage, allocations, rng)
    for table, columns, rows in (
        ("credit_pools", "organization_id, pool, allocation, balance, updated_at", pools),
        ("topups", "id, organization_id, occurred_at, credits, trigger, price, currency", topups),
        ("auto_recharge", "organization_id, enabled, threshold_credits, amount_credits",
         _auto_recharge(world, allocations)),
        ("budgets", "id, organization_id, scope, scope_ref_id, monthly_limit", budgets),
        ("budget_alert_levels", "organization_id, budget_id, level, threshold_percent",
         _alert_levels(world, usage, budgets)),
    ):  # fmt: skip
        _copy_rows(cur, table, columns, rows)
    for table in SERIAL_TABLES:
        cur.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"coalesce(max(id), 1), max(id) IS NOT NULL) FROM {table}"
        )
    return _Finished(allocations, len(topups), len(budgets))


def demo_loaded(dsn: str) -> bool:
    """True if the reference schema exists and holds demo data."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('public.usage_events') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return False
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM usage_events) "
            "AND EXISTS (SELECT 1 FROM organizations WHERE slug = %s)",
            (RUNAWAY[0],),
        ).fetchone()
    return bool(row and row[0])

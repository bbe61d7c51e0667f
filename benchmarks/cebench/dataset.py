"""The reference schema filled by the demo generator, and new events on top of it."""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cebench import pg
from credit_exporter.demo.generator import DemoSummary, load_demo

DAYS = 90
SEED = 42
# usage_events per unit of ``scale`` over 90 days (measured: scale 3.6 -> 999k)
EVENTS_PER_SCALE = 277_500

# Every usage_events column but the id, which the sequence assigns.
EVENT_COLUMNS = (
    "organization_id, project_id, department_id, user_id, agent_id, model_id, "
    "service_type_id, pricing_rule_id, task_category_id, channel_id, conversation_id, pool, "
    "credits, input_tokens, output_tokens, voice_seconds, documents, tool_runs, "
    "latency_seconds, success, playground"
)


def scale_for(events: int) -> float:
    return events / EVENTS_PER_SCALE


@dataclass(frozen=True)
class Load:
    """One load_demo run: usage events, every row it wrote, and where the time went."""

    summary: DemoSummary
    rows: int
    phases: dict[str, float] = field(default_factory=dict)  # share of wall time

    @property
    def events_per_second(self) -> float:
        return self.summary.usage_events / self.summary.seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.summary.seconds

    def phase_seconds(self, name: str) -> float:
        """Seconds of one of load_demo's phases (copy, constraints, finish, analyze)."""
        return dict(self.summary.phases).get(name, 0.0)


@dataclass(frozen=True)
class BareLoad:
    """PostgreSQL's own load of the same usage_events rows from a file: the ceiling.

    psql copies the table out in binary, then, in one transaction, into a new
    table created in that transaction (COPY FREEZE, like load_demo) and builds
    its primary key and the two secondary indexes; rolled back.
    """

    events: int
    copy_seconds: float
    index_seconds: float

    @property
    def seconds(self) -> float:
        return self.copy_seconds + self.index_seconds

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


def bare_load(dsn: str, events: int) -> BareLoad:
    with tempfile.TemporaryDirectory(prefix="ce-bench-") as tmp:
        path = Path(tmp) / "usage_events.bin"
        times = pg.psql_script_seconds(
            dsn,
            f"""\\timing off
\\copy usage_events TO '{path}' WITH (FORMAT binary)
BEGIN;
CREATE TABLE ce_bench_bare (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
\\timing on
\\copy ce_bench_bare FROM '{path}' WITH (FORMAT binary, FREEZE)
ALTER TABLE ce_bench_bare ADD PRIMARY KEY (id);
CREATE INDEX ON ce_bench_bare (occurred_at);
CREATE INDEX ON ce_bench_bare (organization_id, occurred_at);
\\timing off
ROLLBACK;""",
        )
    if len(times) != 4:
        raise RuntimeError(f"expected 4 timings from the bare load, psql printed {times}")
    return BareLoad(events, times[0], sum(times[1:]))


def history(events: int, per_day: int | None = None) -> tuple[int, float]:
    """(days, scale) of a dataset of about ``events`` usage events.

    Without ``per_day``: 90 days, the write rate growing with ``events``. With it: that
    many events a day (the write rate fixed), the history growing with ``events``.
    """
    if per_day is None:
        return DAYS, scale_for(events)
    return max(1, round(events / per_day)), scale_for(per_day * DAYS)


def load(dsn: str, events: int, per_day: int | None = None) -> Load:
    """load_demo at the (days, scale) of ``history``."""
    days, scale = history(events, per_day)
    sampler = ActivitySampler(dsn)
    sampler.start()
    try:
        summary = load_demo(dsn, days=days, seed=SEED, scale=scale)
    finally:
        sampler.stop()
    rows = (
        summary.usage_events + summary.conversations + summary.messages + summary.visitors
        + summary.feedback + summary.paid_agent_subscriptions + summary.paid_agent_transactions
    )  # fmt: skip
    return Load(summary, rows, sampler.shares())


def insert_new_events(dsn: str, count: int, spread_seconds: float = 15.0) -> int:
    """Copy the latest ``count`` events, stamped within the last ``spread_seconds``.

    Returns the highest id before the insert, so the caller can delete them.
    """
    statement = (
        f"INSERT INTO usage_events (occurred_at, {EVENT_COLUMNS}) "
        f"SELECT now() - random() * make_interval(secs => %(spread)s), {EVENT_COLUMNS} "
        "FROM (SELECT * FROM usage_events ORDER BY id DESC LIMIT %(count)s) AS latest"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM usage_events").fetchone()
        assert row is not None
        conn.execute(statement, {"spread": spread_seconds, "count": count})
    return int(row[0])


def delete_events_after(dsn: str, last_id: int) -> None:
    """Remove what ``insert_new_events`` added and vacuum, so every repetition starts alike."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM usage_events WHERE id > %s", (last_id,))
        conn.execute("VACUUM usage_events")


class ActivitySampler:
    """Samples pg_stat_activity of one database every 100 ms while a load runs.

    Tells generator-bound time (COPY waiting for the client to send rows) from
    server-bound time (COPY writing, index builds, constraint checks, ANALYZE).
    """

    PERIOD = 0.1

    def __init__(self, dsn: str) -> None:
        self.dbname = str(conninfo_to_dict(dsn)["dbname"])
        self.admin_dsn = pg.with_dbname(dsn, "postgres")
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activity-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {k: v / total for k, v in self.counts.most_common()} if total else {}

    def _run(self) -> None:
        query = (
            "SELECT state, wait_event, left(query, 200) FROM pg_stat_activity "
            "WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while not self._stop.wait(self.PERIOD):
                rows = conn.execute(query, (self.dbname,)).fetchall()
                self.counts[self._classify(rows)] += 1

    @staticmethod
    def _classify(rows: list[tuple[str | None, str | None, str | None]]) -> str:
        active = [r for r in rows if r[0] == "active"]
        if not active:
            return "no statement running (client side)"
        _, wait_event, query = active[0]
        text = (query or "").lstrip().upper()
        if text.startswith("COPY"):
            table = text.split()[1].lower()
            if wait_event == "ClientRead":
                return "COPY waiting for rows from the generator"
            return (
                f"COPY writing ({table})"
                if table in {"usage_events", "messages"}
                else ("COPY writing (other tables)")
            )
        if text.startswith("ALTER TABLE") and " FOREIGN KEY " not in text:
            return "index builds"  # a primary key or unique constraint
        for prefix, label in (
            ("CREATE INDEX", "index builds"),
            ("CREATE UNIQUE INDEX", "index builds"),
            ("ALTER TABLE", "foreign-key validation"),
            ("ANALYZE", "ANALYZE"),
            ("TRUNCATE", "TRUNCATE"),
        ):
            if text.startswith(prefix):
                return label
        return "other statements"

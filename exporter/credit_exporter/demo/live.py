"""Live demo traffic: keeps writing usage after the bulk load so rates never go flat.

Every tick inserts what the generator's distributions give for the time that
passed: per organization, its average historical rate for the current hour of
day (read from the loaded data, so an organization at 78% of its budget does
not cross 90% within an hour of demo), split into conversations, direct
prompts and document uploads by the same ``Sampler`` the bulk load uses. The
runaway agent keeps looping. Credits drawn are subtracted from
``credit_pools.balance`` in the same short transaction as the rows, plan pool
first, so ``balance = allocation - credits drawn this period`` always holds.

A database outage is logged and retried with backoff; the writer only returns
when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import struct
import time
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from credit_exporter.demo import pgbinary
from credit_exporter.demo.generator import (
    DOC_SHARE,
    MS_PER_DAY,
    MS_PER_HOUR,
    POOL_FIELD,
    PROMPT_PLAYGROUND,
    RETURNING_VISITOR,
    RUNAWAY,
    RUNAWAY_FACTOR,
    STREAM_COLUMNS,
    SUBSCRIBE,
    Agent,
    ConversationPlan,
    Org,
    Renderer,
    Sampler,
    World,
    add_months,
    build_world,
    format_cents,
    from_ms,
    hour_shape,
    stochastic_round,
    visitor_contact,
)

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
MAX_TICK_GAP_MS = 10_000  # after a pause or an outage, do not catch up on more than this
RATE_WINDOW_DAYS = 28  # history used for the per-hour-of-day rates
# The bulk load's binary row layout without the id, which the sequence assigns here.
USAGE_COLUMNS = STREAM_COLUMNS["usage_events"].removeprefix("id, ")
USAGE_WIDTH = USAGE_COLUMNS.count(",") + 1
EVENT_HEAD = struct.Struct(">hiqiq")  # field count, occurred_at, conversation_id
EVENT_HEAD_WITHOUT_CONVERSATION = struct.Struct(">hiqi")


class WrongDatabase(Exception):
    """The database holds no demo data, or another seed's."""


@dataclass(order=True)
class _Due:
    """Something to write once its time has come: a message, an event, a close."""

    t: int
    seq: int
    kind: str = field(compare=False)  # "message", "event", "feedback", "close"
    row: tuple = field(compare=False)


@dataclass
class _Tick:
    """Rows of one tick, written in one transaction."""

    events: list[tuple] = field(default_factory=list)  # sampler value tuples
    messages: list[tuple] = field(default_factory=list)
    feedback: list[tuple] = field(default_factory=list)  # (t, message id, org, agent, model, r)
    closes: list[tuple[int, int]] = field(default_factory=list)  # (conversation, ended_at)
    later: list[_Due] = field(default_factory=list)  # scheduled once the tick commits


class LiveWriter:
    """State of the live writer across ticks (and reconnections)."""

    def __init__(self, dsn: str, seed: int, speed: float, tick_seconds: float) -> None:
        self.dsn = dsn
        self.speed = speed
        self.tick_seconds = tick_seconds
        now = _now_ms()
        self.world: World = build_world(seed, now - MS_PER_DAY, now)
        self.rng = random.Random(f"{seed}:live")
        self.sampler = Sampler(self.rng)
        self.render = Renderer()
        self.rates: dict[int, list[float]] = {}  # org id -> usage events per hour, by hour
        self.period_end: dict[int, int] = {}  # org id -> end of the current period (ms)
        self.visitors: dict[int, list[int]] = defaultdict(list)  # agent id -> recent visitors
        self.due: list[_Due] = []
        self.seq = itertools.count()
        self.runaway_agent: Agent = self.world.agent(*RUNAWAY)
        self.runaway_conv = 0
        self.last_tick = 0
        self.ready = False

    # --- set-up, once per (re)connection ------------------------------------------

    async def prepare(self, conn: psycopg.AsyncConnection) -> None:
        """Check the database holds this seed's world; read rates and open conversations."""
        cur = await conn.execute("SELECT id, organization_id, slug, model_id FROM agents")
        in_db = sorted(await cur.fetchall())
        expected = sorted(
            (a.id, a.org_id, a.slug, a.model.id) for o in self.world.orgs for a in o.agents
        )
        if in_db != expected:
            raise WrongDatabase("the database does not hold demo data of this seed")
        self.rates = await self._read_rates(conn)
        cur = await conn.execute(
            "SELECT organization_id, max(ends_at) FROM billing_periods GROUP BY 1"
        )
        self.period_end = {org: _ms(end) for org, end in await cur.fetchall()}
        if not self.ready:
            await self._adopt_open_conversations(conn)
        self.ready = True

    async def _read_rates(self, conn: psycopg.AsyncConnection) -> dict[int, list[float]]:
        cur = await conn.execute("SELECT min(occurred_at), max(occurred_at) FROM usage_events")
        row = await cur.fetchone()
        rates = {org.id: [0.0] * 24 for org in self.world.orgs}
        if row is None or row[0] is None:
            return rates
        first, last = _ms(row[0]), _ms(row[1])
        since = max(first, last - RATE_WINDOW_DAYS * MS_PER_DAY)
        days = max((last - since) / MS_PER_DAY, 1 / 24)
        cur = await conn.execute(
            "SELECT organization_id, extract(hour FROM occurred_at AT TIME ZONE 'UTC')::int, "
            "count(*) FROM usage_events WHERE occurred_at >= %s GROUP BY 1, 2",
            (from_ms(since),),
        )
        for org, hour, count in await cur.fetchall():
            if org in rates:
                rates[org][hour] = count / days
        return rates

    async def _adopt_open_conversations(self, conn: psycopg.AsyncConnection) -> None:
        """Calls left in progress by the load (or an earlier run) end a few minutes on."""
        cur = await conn.execute(
            "SELECT id, agent_id, started_at FROM conversations WHERE ended_at IS NULL ORDER BY id"
        )
        now = _now_ms()
        for conv, agent, started in await cur.fetchall():
            if agent == self.runaway_agent.id:
                self.runaway_conv = conv  # keeps looping, never ends
                continue
            end = max(now + 5_000, _ms(started) + 120_000) + self.rng.randrange(600_000)
            self._schedule(end, "close", (conv,))

    # --- one tick ---------------------------------------------------------------

    async def tick(self, conn: psycopg.AsyncConnection) -> int:
        """Write one tick's rows; return the number of usage events written."""
        now = _now_ms()
        since = max(self.last_tick, now - MAX_TICK_GAP_MS) if self.last_tick else now - 1000
        work = _Tick()
        new_conversations = self._plan(work, since, now)
        taken = self._take_due(now)
        try:
            async with conn.transaction():
                await self._roll_periods(conn, now)
                for plan, t in new_conversations:
                    await self._start_conversation(conn, work, plan, t, now)
                for item in taken:
                    self._apply_due(work, item)
                await self._write(conn, work, now)
        except BaseException:
            for item in taken:  # they belong to committed conversations: retry later
                heapq.heappush(self.due, item)
            raise
        for item in work.later:
            heapq.heappush(self.due, item)
        self.last_tick = now
        return len(work.events)

    def _plan(self, work: _Tick, since: int, now: int) -> list[tuple]:
        """Draw this tick's prompts, document uploads, runaway steps and conversation starts."""
        rng, sampler = self.rng, self.sampler
        span = now - since
        hours = span / MS_PER_HOUR * self.speed
        hour = now // MS_PER_HOUR % 24
        lat = hour_shape(now // MS_PER_HOUR * MS_PER_HOUR)[1]
        starts = []
        for org in self.world.orgs:
            expected = self.rates.get(org.id, [0.0] * 24)[hour] * hours
            for _ in range(stochastic_round(expected * org.conversations_per_event, rng)):
                starts.append((since + int(rng.random() * span), org))
            for _ in range(stochastic_round(expected * org.profile.workspace_share, rng)):
                t = since + int(rng.random() * span)
                work.events.append(sampler.prompt(org, t, lat, rng.random() < PROMPT_PLAYGROUND))
            for _ in range(stochastic_round(expected * DOC_SHARE, rng)):
                work.events.append(sampler.document_ingest(org, since + int(rng.random() * span)))
        if self.runaway_conv:
            org = self.world.org(RUNAWAY[0])
            rate = self._runaway_rate(org)
            for _ in range(stochastic_round(rate * hours, rng)):
                t = since + int(rng.random() * span)
                work.events.append(sampler.runaway_step(self.runaway_agent, self.runaway_conv, t))
        starts.sort(key=lambda s: (s[0], s[1].id))
        return [
            (sampler.plan_conversation(org, sampler.pick_agent(org, t)), t) for t, org in starts
        ]

    def _runaway_rate(self, org: Org) -> float:
        """The runaway agent's loop rate: many times its share of the org's average rate."""
        agent = self.runaway_agent
        mean = sum(self.rates.get(org.id, [0.0])) / 24
        share = agent.weight / sum(a.weight for a in org.agents)
        per_conversation = agent.mean_events_per_conversation()
        return RUNAWAY_FACTOR * mean * org.conversations_per_event * share * per_conversation

    async def _start_conversation(
        self, conn: psycopg.AsyncConnection, work: _Tick, plan: ConversationPlan, t: int, now: int
    ) -> None:
        visitor = await self._visitor(conn, plan.agent, plan.channel_id, t)
        cur = await conn.execute(
            "INSERT INTO conversations (organization_id, agent_id, channel_id, visitor_id, type, "
            "started_at, playground) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (plan.org.id, plan.agent.id, plan.channel_id, visitor, plan.type, from_ms(t),
             plan.playground),
        )  # fmt: skip
        row = await cur.fetchone()
        assert row is not None
        conv = row[0]
        lat = hour_shape(t // MS_PER_HOUR * MS_PER_HOUR)[1]
        messages, events, ended = self.sampler.conversation(plan, conv, t, lat, None)
        for m in messages:
            if m[0] <= now:
                work.messages.append(m)
            else:
                work.later.append(self._due(m[0], "message", m))
        for e in events:
            if e[0] <= now:
                work.events.append(e)
            else:
                work.later.append(self._due(e[0], "event", e))
        end = ended if ended is not None else messages[-1][0]
        if end <= now:
            work.closes.append((conv, end))
        else:
            work.later.append(self._due(end, "close", (conv,)))

    async def _visitor(
        self, conn: psycopg.AsyncConnection, agent: Agent, channel: int, t: int
    ) -> int:
        known = self.visitors[agent.id]
        if not known:
            cur = await conn.execute(
                "SELECT id FROM visitors WHERE agent_id = %s ORDER BY id DESC LIMIT 50", (agent.id,)
            )
            known.extend(r[0] for r in await cur.fetchall())
        if known and self.rng.random() < RETURNING_VISITOR:
            return known[self.rng.randrange(len(known))]
        cur = await conn.execute(
            "INSERT INTO visitors (organization_id, agent_id, contact, first_seen_at) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (agent.org_id, agent.id, visitor_contact(channel, t // 1000), from_ms(t)),
        )
        row = await cur.fetchone()
        assert row is not None
        visitor = row[0]
        known.append(visitor)
        del known[:-200]
        if agent.paid is not None and self.rng.random() < SUBSCRIBE:
            cur = await conn.execute(
                "INSERT INTO paid_agent_subscriptions (organization_id, agent_id, visitor_id, "
                "started_at) VALUES (%s, %s, %s, %s) RETURNING id",
                (agent.org_id, agent.id, visitor, from_ms(t)),
            )
            sub = await cur.fetchone()
            assert sub is not None
            await conn.execute(
                "INSERT INTO paid_agent_transactions (organization_id, agent_id, subscription_id, "
                "occurred_at, kind, amount, currency) VALUES (%s, %s, %s, %s, 'charge', %s, %s)",
                (agent.org_id, agent.id, sub[0], from_ms(t), format_cents(agent.paid.price_cents),
                 agent.paid.currency),
            )  # fmt: skip
        return visitor

    def _apply_due(self, work: _Tick, item: _Due) -> None:
        if item.kind == "message":
            work.messages.append(item.row)
        elif item.kind == "event":
            work.events.append(item.row)
        elif item.kind == "feedback":
            work.feedback.append(item.row)
        else:
            work.closes.append((item.row[0], item.t))

    async def _write(self, conn: psycopg.AsyncConnection, work: _Tick, now: int) -> None:
        """Messages, feedback, usage events (drawing the pools), closes."""
        async with conn.cursor() as cur:
            for m in sorted(work.messages, key=lambda m: m[0]):
                t, conv, org, agent, role, unanswered, feedback = m
                await cur.execute(
                    "INSERT INTO messages (conversation_id, organization_id, agent_id, role, "
                    "created_at, unanswered) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    (conv, org, agent, role, from_ms(t), unanswered),
                )
                row = await cur.fetchone()
                if feedback is not None and row is not None:
                    delay, model, rating = feedback
                    fb = (t + delay, row[0], org, agent, model, rating)
                    if fb[0] <= now:
                        work.feedback.append(fb)
                    else:
                        work.later.append(self._due(fb[0], "feedback", fb))
            if work.feedback:
                await cur.executemany(
                    "INSERT INTO feedback (created_at, message_id, organization_id, agent_id, "
                    "model_id, rating) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(from_ms(t), *rest) for t, *rest in work.feedback],
                )
            if work.events:
                await self._write_events(cur, work.events)
            for conv, ended in work.closes:
                await cur.execute(
                    "UPDATE conversations SET ended_at = %s WHERE id = %s AND ended_at IS NULL",
                    (from_ms(ended), conv),
                )

    async def _write_events(self, cur: psycopg.AsyncCursor, events: list[tuple]) -> None:
        """COPY the events in time order, each drawing the plan pool until it is empty."""
        events.sort(key=lambda e: e[0])
        orgs = sorted({e[1] for e in events})
        await cur.execute(
            "SELECT organization_id, pool, balance FROM credit_pools "
            "WHERE organization_id = ANY(%s) ORDER BY 1, 2 FOR UPDATE",
            (orgs,),
        )
        plan_left = {org: 0 for org in orgs}
        for org, pool, balance in await cur.fetchall():
            if pool == "plan":
                plan_left[org] = round(balance * 1_000_000)
        drawn: dict[tuple[int, str], int] = defaultdict(int)
        parts = [pgbinary.SIGNATURE]
        for e in events:
            t, conv = e[0], e[11]
            org, dims, pg, credits, tail = self.render.event(e)
            pool = "plan" if pg or plan_left[org] > 0 else "topup"
            if not pg:
                drawn[org, pool] += credits
                if pool == "plan":
                    plan_left[org] -= credits
            us = pgbinary.timestamp_us(t)
            parts += (
                EVENT_HEAD.pack(USAGE_WIDTH, 8, us, 8, conv) if conv
                else EVENT_HEAD_WITHOUT_CONVERSATION.pack(USAGE_WIDTH, 8, us, -1),
                dims, POOL_FIELD[pool], tail,
            )  # fmt: skip
        parts.append(pgbinary.TRAILER)
        statement = f"COPY usage_events ({USAGE_COLUMNS}) FROM STDIN WITH (FORMAT binary)"
        async with cur.copy(statement) as copy:
            await copy.write(b"".join(parts))
        for (org, pool), micro in sorted(drawn.items()):
            await cur.execute(
                "UPDATE credit_pools SET balance = balance - %s::numeric / 1000000, "
                "updated_at = now() WHERE organization_id = %s AND pool = %s",
                (micro, org, pool),
            )

    async def _roll_periods(self, conn: psycopg.AsyncConnection, now: int) -> None:
        """Start the next billing period of any org whose period ended: refill the plan
        pool, empty the topup pool, set the organization budget to the new allocation."""
        for org, end in sorted(self.period_end.items()):
            if now < end:
                continue
            start = from_ms(end)
            new_end = add_months(start, 1, start.day)
            await conn.execute(
                "INSERT INTO billing_periods (organization_id, starts_at, ends_at) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (org, start, new_end),
            )
            await conn.execute(
                "UPDATE credit_pools SET allocation = CASE pool WHEN 'plan' THEN allocation "
                "ELSE 0 END, balance = CASE pool WHEN 'plan' THEN allocation ELSE 0 END, "
                "updated_at = now() WHERE organization_id = %s",
                (org,),
            )
            await conn.execute(
                "UPDATE budgets SET monthly_limit = (SELECT allocation FROM credit_pools "
                "WHERE organization_id = %s AND pool = 'plan') "
                "WHERE organization_id = %s AND scope = 'organization'",
                (org, org),
            )
            self.period_end[org] = _ms(new_end)

    # --- helpers -----------------------------------------------------------------

    def _due(self, t: int, kind: str, row: tuple) -> _Due:
        return _Due(t, next(self.seq), kind, row)

    def _schedule(self, t: int, kind: str, row: tuple) -> None:
        heapq.heappush(self.due, self._due(t, kind, row))

    def _take_due(self, now: int) -> list[_Due]:
        taken = []
        while self.due and self.due[0].t <= now:
            taken.append(heapq.heappop(self.due))
        return taken


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


async def run_live_writer(
    dsn: str,
    *,
    seed: int,
    stop: asyncio.Event,
    speed: float = 1.0,
    tick_seconds: float = 1.0,
) -> None:
    """Write live demo traffic until ``stop`` is set.

    ``speed`` multiplies the arrival rates (tests use a high speed). Database
    errors are logged and retried with exponential backoff; nothing but
    cancellation escapes before ``stop`` is set.
    """
    writer = LiveWriter(dsn, seed, speed, tick_seconds)
    conn: psycopg.AsyncConnection | None = None
    failures = 0

    async def step() -> None:
        nonlocal conn
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
            await writer.prepare(conn)
        await writer.tick(conn)

    try:
        while not stop.is_set():
            delay = tick_seconds
            try:
                if not await _unless_stopped(step(), stop):
                    break
                failures = 0
            except Exception as exc:  # an outage or a failed statement: retry later
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, tick_seconds * 2 ** min(failures, 10))
                level = logging.ERROR if isinstance(exc, WrongDatabase) else logging.WARNING
                log.log(level, "live demo writer: %s (retrying in %.1fs)", exc, delay)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


async def _unless_stopped(work: Coroutine[object, object, None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it); True if it completed."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False
    task.result()  # raises what the work raised
    return True

"""The stream: hours -> binary COPY rows, in time order."""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from operator import itemgetter

from credit_exporter.demo import pgbinary
from credit_exporter.demo.generator.reference import (
    BATCH_EVENTS,
    CHANNEL,
    DOC_SHARE,
    FEEDBACK,
    FIRST_NAMES,
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    PROMPT_PLAYGROUND,
    REFUND_EVERY,
    RETURNING_VISITOR,
    RUNAWAY,
    RUNAWAY_FACTOR,
    SUBSCRIBE,
    ModelSpec,
)
from credit_exporter.demo.generator.sampler import PHONE, WEB_CHAT, ConversationPlan, Sampler
from credit_exporter.demo.generator.sampling import RATING, stochastic_round
from credit_exporter.demo.generator.timeline import Timeline
from credit_exporter.demo.generator.world import Agent, Org, World
from credit_exporter.demo.pgbinary import PG_EPOCH_MS

# Columns of each stream table in the order its binary rows carry them: the
# fields that vary from row to row first (packed by one struct each), then the
# fields whose bytes are cached (dimensions, rendered measures).
STREAM_COLUMNS: dict[str, str] = {
    "visitors": "id, first_seen_at, organization_id, agent_id, contact",
    "conversations": (
        "id, visitor_id, started_at, ended_at, organization_id, agent_id, channel_id, type, "
        "playground"
    ),
    "messages": "id, conversation_id, created_at, organization_id, agent_id, role, unanswered",
    "feedback": "id, message_id, created_at, organization_id, agent_id, model_id, rating",
    "paid_agent_subscriptions": (
        "id, visitor_id, started_at, cancelled_at, organization_id, agent_id"
    ),
    "paid_agent_transactions": (
        "id, subscription_id, occurred_at, organization_id, agent_id, kind, amount, currency"
    ),
    "usage_events": (
        "id, occurred_at, conversation_id, organization_id, project_id, department_id, user_id, "
        "agent_id, model_id, service_type_id, pricing_rule_id, task_category_id, channel_id, "
        "pool, credits, input_tokens, output_tokens, voice_seconds, documents, tool_runs, "
        "latency_seconds, success, playground"
    ),
}
# Copy order within a batch: every row's foreign keys point to rows copied before it.
STREAM_TABLES = tuple(STREAM_COLUMNS)
# Fields per row of each table (a binary row starts with its field count).
WIDTH = {table: columns.count(",") + 1 for table, columns in STREAM_COLUMNS.items()}

# Leading fields: the row's field count, then int8 fields (length 8, value); a
# trailing "i" is a NULL (length -1) in place of the last one.
THREE_INT8 = struct.Struct(">hiqiqiq")  # events, messages, feedback, transactions
TWO_INT8_NULL = struct.Struct(">hiqiqi")  # events without a conversation
TWO_INT8 = struct.Struct(">hiqiq")  # visitors
FOUR_INT8 = struct.Struct(">hiqiqiqiq")  # conversations, subscriptions
THREE_INT8_NULL = struct.Struct(">hiqiqiqi")  # open conversations, active subscriptions
TWO_INT4 = struct.Struct(">iiii")
POOL_FIELD = {"plan": pgbinary.text("plan"), "topup": pgbinary.text("topup")}


@dataclass
class Batch:
    """Binary rows of each stream table (a row is several consecutive parts)."""

    parts: dict[str, list[bytes]] = field(default_factory=lambda: {t: [] for t in STREAM_TABLES})
    events_done: int = 0  # usage events rendered so far, this batch included


# In the bulk stream a usage event is rendered once into binary parts
#   (organization, dims, playground, credits, tail)
# where dims holds the fields organization ... channel and tail credits ...
# playground; rows waiting in the hour buckets are (t, conversation or 0, that
# tuple), so a reused prompt or conversation shares it. A message is (t,
# conversation, rest, feedback) with rest the fields organization ... unanswered
# and feedback (delay_ms, fields organization ... rating) or None.

# Rendered prompts kept per (organization, churn side, latency class): 36 x 1024 in all;
# rendered conversations kept per (agent, latency class): 129 x 128. Fewer slots means
# less sampling on a 1M-event load (the generator took 15% less time than with 4096 and
# 256, medians of 5); more would add variety no aggregate shows.
PROMPT_SLOTS_BITS = 10
CONVERSATION_SLOTS_BITS = 7


def _seconds_field(ms: int) -> bytes:
    """A numeric(..., 3) field of seconds, from milliseconds."""
    return pgbinary.numeric(ms, 3)


def _message_fields(org: int, agent: int, role: str, unanswered: bool) -> bytes:
    return b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.text(role),
                     pgbinary.boolean(unanswered)))  # fmt: skip


def _feedback_fields(org: int, agent: int, model: int, rating: int) -> bytes:
    return b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.int4(model),
                     pgbinary.int2(rating)))  # fmt: skip


def _conversation_fields(org: int, agent: int, channel: int, kind: str, playground: bool) -> bytes:
    return b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.int4(channel),
                     pgbinary.text(kind), pgbinary.boolean(playground)))  # fmt: skip


def _owner_fields(org: int, agent: int) -> bytes:
    """The organization and agent fields of a visitor's or a subscription's row."""
    return pgbinary.int4(org) + pgbinary.int4(agent)


class Renderer:
    """Turns the sampler's value tuples into the stream's binary parts (cached where
    the same bytes recur: dimensions, seconds, message and feedback fields)."""

    def __init__(self) -> None:
        self._dims: dict[tuple, bytes] = {}
        self.scopes: dict[bytes, tuple[int, int, int, int]] = {}  # dims -> org ... user
        # per renderer, so a long-lived live writer's caches go with it
        self.seconds = cache(_seconds_field)
        self.message_fields = cache(_message_fields)
        self.feedback = cache(_feedback_fields)

    def event(self, e: tuple) -> tuple:
        """The rendered parts of the sampler's event ``e`` (its time and conversation aside)."""
        (_, org, project, dept, user, agent, model, svc, rule, task, channel, _, credits,
         inp, out, voice, docs, tools, latency, ok, pg) = e  # fmt: skip
        key = e[1:11]
        dims = self._dims.get(key)
        if dims is None:
            int4 = pgbinary.int4
            dims = b"".join((int4(org), int4(project), int4(dept), int4(user),
                             int4(agent) if agent else pgbinary.NULL, int4(model), int4(svc),
                             int4(rule), int4(task), int4(channel)))  # fmt: skip
            self._dims[key] = dims
            self.scopes[dims] = (org, project, dept, user)
        tail = b"".join((
            pgbinary.numeric(credits, 6), TWO_INT4.pack(4, inp, 4, out), self.seconds(voice),
            TWO_INT4.pack(4, docs, 4, tools), self.seconds(latency),
            pgbinary.TRUE if ok else pgbinary.FALSE, pgbinary.TRUE if pg else pgbinary.FALSE,
        ))  # fmt: skip
        return (org, dims, pg, credits, tail)

    def refund_tail(self, credits: int) -> bytes:
        """A refund's or correction's fields from credits on: zero units, latency 0, success."""
        zero, no_units = self.seconds(0), TWO_INT4.pack(4, 0, 4, 0)
        return b"".join((pgbinary.numeric(credits, 6), no_units, zero, no_units, zero,
                         pgbinary.TRUE, pgbinary.FALSE))  # fmt: skip

    def message(self, m: tuple) -> tuple:
        t, conv, org, agent, role, unanswered, feedback = m
        if feedback is not None:
            delay, model, rating = feedback
            feedback = (delay, self.feedback(org, agent, model, rating))
        return (t, conv, self.message_fields(org, agent, role, unanswered), feedback)


@dataclass(frozen=True)
class ConversationTemplate:
    """A sampled conversation rendered relative to its start (times are offsets)."""

    channel_id: int
    type: str
    playground: bool
    messages: tuple[tuple[int, bytes], ...]  # (offset, rest): each use draws its own rating
    events: tuple[tuple[int, tuple], ...]  # (offset, rendered event)
    duration: int  # offset of the last message
    last_offset: int  # offset of the last row of any kind
    rated_model: ModelSpec | None  # the model a visitor may rate (None: no rating possible)
    last_unanswered: bool


class Stream:
    """Walks the timeline hour by hour and renders every fact row for binary COPY.

    Rows that belong to a later hour (the rest of a conversation, a refund,
    next month's subscription charge) wait in per-hour buckets, so that ids
    increase with time in every table.

    Speed: sampling and rendering a row costs far more than copying it, so
    prompts and conversations are sampled into a fixed number of slots per
    (organization or agent, latency class) and a slot, once filled, is reused
    with a new time, id, visitor and conversation. A slot is picked at random,
    so this is sampling from an empirical distribution of thousands of draws:
    a small load fills few slots and reuses almost nothing, a 10M-event load
    mostly reuses. The result is as deterministic as the draws.
    """

    def __init__(self, world: World, timeline: Timeline, seed: int, emit: Callable[[Batch], None]):
        self.world = world
        self.tl = timeline
        self.rng = random.Random(f"{seed}:events")
        self.sampler = Sampler(self.rng)
        self.render = Renderer()
        self.emit = emit
        self.ids: dict[str, int] = {t: 0 for t in STREAM_TABLES}
        self.events: defaultdict[int, list[tuple]] = defaultdict(list)
        self.messages: defaultdict[int, list[tuple]] = defaultdict(list)
        self.feedback: defaultdict[int, list[tuple]] = defaultdict(list)
        self.transactions: defaultdict[int, list[tuple]] = defaultdict(list)
        self.prompt_slots: dict[tuple[int, bool, int], list[tuple | None]] = {}
        self.conversation_slots: dict[tuple[int, int], list[ConversationTemplate | None]] = {}
        self.visitors_by_agent: dict[int, list[int]] = {}
        self.testers: dict[int, int] = {}  # agent id -> playground visitor id
        self.batch = Batch()
        self.batch_from = 0  # usage events before this batch
        self.conversation_fields = cache(_conversation_fields)
        self.owner_fields = cache(_owner_fields)
        self.next_refund = self.rng.randint(*REFUND_EVERY) // 3
        # Billable credits of each org's current billing period, by (org, pool, dims),
        # summed as rows are rendered: the allocations and budgets are computed from
        # it without reading the table back.
        self.period_usage: dict[tuple[int, str, bytes], int] = {}
        self.period_start = [0] + [timeline.current_period(oi).start_ms
                                   for oi in range(len(world.orgs))]  # fmt: skip
        self.runaway_agent = world.agent(*RUNAWAY)
        self.runaway_conv = 0
        self.runaway_rate = RUNAWAY_FACTOR * timeline.mean_agent_events_per_hour(
            world.org(RUNAWAY[0]), self.runaway_agent
        )

    def next_id(self, table: str) -> int:
        self.ids[table] += 1
        return self.ids[table]

    def run(self) -> None:
        for k in range(self.tl.n_hours):
            self._hour(k)
            if self.ids["usage_events"] - self.batch_from >= BATCH_EVENTS:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        self.batch.events_done = self.batch_from = self.ids["usage_events"]
        self.emit(self.batch)
        self.batch = Batch()

    # --- one hour -------------------------------------------------------------

    def _hour(self, k: int) -> None:
        start, end = self.tl.bounds(k)
        span = end - start
        rng = self.rng
        lat = self.tl.lat_class[k]
        expected = self.tl.expected[k]
        starts: list[tuple[int, int, ConversationPlan | None]] = []
        for oi, org in enumerate(self.world.orgs):
            for _ in range(stochastic_round(expected[oi] * org.conversations_per_event, rng)):
                starts.append((start + int(rng.random() * span), oi, None))
        starts.extend(self._forced_conversations(start, end))
        starts.sort(key=itemgetter(0, 1))
        for t, oi, plan in starts:
            if plan is None:
                self._recycled_conversation(self.world.orgs[oi], t, lat)
            else:
                self._sampled_conversation(plan, t, lat)
        bucket = self.events[k]
        for oi, org in enumerate(self.world.orgs):
            for _ in range(stochastic_round(expected[oi] * org.profile.workspace_share, rng)):
                bucket.append(self._prompt(org, start + int(rng.random() * span), lat))
            for _ in range(stochastic_round(expected[oi] * DOC_SHARE, rng)):
                t = start + int(rng.random() * span)
                bucket.append((t, 0, self.render.event(self.sampler.document_ingest(org, t))))
        self._runaway(k, start, end)
        self._emit_events(k)
        self._emit_messages(k)
        self._emit_feedback(k)
        self._emit_transactions(k)

    def _prompt(self, org: Org, t: int, lat: int) -> tuple:
        key = (org.id, t >= org.churn_ms, lat)
        slots = self.prompt_slots.get(key)
        if slots is None:
            slots = self.prompt_slots[key] = [None] * (1 << PROMPT_SLOTS_BITS)
        n = self.rng.getrandbits(PROMPT_SLOTS_BITS)
        rendered = slots[n]
        if rendered is None:
            playground = self.rng.random() < PROMPT_PLAYGROUND
            rendered = self.render.event(self.sampler.prompt(org, t, lat, playground))
            slots[n] = rendered
        return (t, 0, rendered)

    def _forced_conversations(
        self, start: int, end: int
    ) -> list[tuple[int, int, ConversationPlan | None]]:
        """Calls in progress at ``now`` and the runaway agent's stuck session."""
        forced: list[tuple[int, int, ConversationPlan | None]] = []
        now = self.tl.now
        if start <= self.tl.runaway_start < end:
            agent = self.runaway_agent
            org = self.world.org(RUNAWAY[0])
            plan = ConversationPlan(org, agent, WEB_CHAT, "chat", 1, agent.task_id, keep_open=True)
            forced.append((self.tl.runaway_start, org.id - 1, plan))
        if end == now:
            for oi, org in enumerate(self.world.orgs):
                phones = [
                    a
                    for a in org.agents
                    if not a.deleted and a.template.slug == "voice-receptionist"
                ]
                for n in range(org.profile.calls_in_progress if phones else 0):
                    t = max(start, now - 20_000 - MS_PER_MINUTE * n - self.rng.randrange(40_000))
                    plan = ConversationPlan(org, phones[0], PHONE, "call", 60, phones[0].task_id)
                    forced.append((t, oi, plan))
        return forced

    def _template(self, org: Org, agent: Agent, lat: int) -> ConversationTemplate:
        key = (agent.id, lat)
        slots = self.conversation_slots.get(key)
        if slots is None:
            slots = self.conversation_slots[key] = [None] * (1 << CONVERSATION_SLOTS_BITS)
        n = self.rng.getrandbits(CONVERSATION_SLOTS_BITS)
        template = slots[n]
        if template is None:
            plan = self.sampler.plan_conversation(org, agent)
            messages, events, _ = self.sampler.conversation(plan, 0, 0, lat, None)
            rendered = tuple((e[0], self.render.event(e)) for e in events)
            rateable = not plan.playground and plan.type != "call"
            template = ConversationTemplate(
                plan.channel_id,
                plan.type,
                plan.playground,
                tuple((m[0], m[2]) for m in map(self.render.message, messages)),
                rendered,
                messages[-1][0],
                max(messages[-1][0], max((e[0] for e in events), default=0)),
                agent.model if rateable else None,
                messages[-1][5],
            )
            slots[n] = template
        return template

    def _recycled_conversation(self, org: Org, t: int, lat: int) -> None:
        agent = self.sampler.pick_agent(org, t)
        tpl = self._template(org, agent, lat)
        conv = self.next_id("conversations")
        visitor = self._visitor(agent, tpl.channel_id, tpl.playground, t)
        messages = [(t + off, conv, rest, None) for off, rest in tpl.messages]
        events = [(t + off, conv, rendered) for off, rendered in tpl.events]
        if tpl.rated_model is not None and self.rng.random() < FEEDBACK:
            model = tpl.rated_model
            rating = RATING[model.id].pick(self.rng)
            if tpl.last_unanswered:
                rating = min(rating, 2 + self.rng.getrandbits(1))
            delay = 5_000 + self.rng.randrange(115_000)
            last = messages[-1]
            feedback = (delay, self.render.feedback(org.id, agent.id, model.id, rating))
            messages[-1] = (*last[:3], feedback)
        ended: int | None = t + tpl.duration
        if t + tpl.last_offset >= self.tl.now:  # still going on at ``now``
            messages = [m for m in messages if m[0] < self.tl.now]
            events = [e for e in events if e[0] < self.tl.now]
            ended = None
        self._add_conversation(conv, org, agent, tpl.channel_id, visitor, tpl.type, t, ended,
                               tpl.playground, messages, events)  # fmt: skip

    def _sampled_conversation(self, plan: ConversationPlan, t: int, lat: int) -> None:
        conv = self.next_id("conversations")
        visitor = self._visitor(plan.agent, plan.channel_id, plan.playground, t)
        messages, events, ended = self.sampler.conversation(plan, conv, t, lat, self.tl.now)
        if plan.keep_open and plan.agent is self.runaway_agent:
            self.runaway_conv = conv
        self._add_conversation(
            conv, plan.org, plan.agent, plan.channel_id, visitor, plan.type, t, ended,
            plan.playground, [self.render.message(m) for m in messages],
            [(e[0], conv, self.render.event(e)) for e in events],
        )  # fmt: skip

    def _add_conversation(
        self, conv: int, org: Org, agent: Agent, channel: int, visitor: int, kind: str, t: int,
        ended: int | None, playground: bool, messages: list[tuple], events: list[tuple],
    ) -> None:  # fmt: skip
        fields = self.conversation_fields(org.id, agent.id, channel, kind, playground)
        started, width = (t - PG_EPOCH_MS) * 1000, WIDTH["conversations"]
        self.batch.parts["conversations"] += (
            FOUR_INT8.pack(width, 8, conv, 8, visitor, 8, started, 8, (ended - PG_EPOCH_MS) * 1000)
            if ended is not None
            else THREE_INT8_NULL.pack(width, 8, conv, 8, visitor, 8, started, -1),
            fields,
        )
        if not messages:
            return
        # Every row lies in [t, last reply + 60 ms] (the text-to-speech event comes last).
        first, last = self.tl.hour_of(t), self.tl.hour_of(messages[-1][0] + 60)
        if first == last:
            self.messages[first].extend(messages)
            self.events[first].extend(events)
            return
        hour_of = self.tl.hour_of
        for m in messages:
            self.messages[hour_of(m[0])].append(m)
        for e in events:
            self.events[hour_of(e[0])].append(e)

    def _visitor(self, agent: Agent, channel: int, playground: bool, t: int) -> int:
        if playground:
            tester = self.testers.get(agent.id)
            if tester is None:
                tester = self._new_visitor(agent, agent.owner.email, t)
                self.testers[agent.id] = tester
            return tester
        known = self.visitors_by_agent.setdefault(agent.id, [])
        rng = self.rng
        if known and rng.random() < RETURNING_VISITOR:
            return known[-1 - rng.getrandbits(8) % len(known)]
        visitor = self._new_visitor(agent, visitor_contact(channel, self.ids["visitors"] + 1), t)
        known.append(visitor)
        if len(known) > 512:
            del known[:256]
        if agent.paid and rng.random() < SUBSCRIBE:
            self._subscription(agent, visitor, t)
        return visitor

    def _new_visitor(self, agent: Agent, contact: str, t: int) -> int:
        vid = self.next_id("visitors")
        self.batch.parts["visitors"] += (
            TWO_INT8.pack(WIDTH["visitors"], 8, vid, 8, (t - PG_EPOCH_MS) * 1000),
            self.owner_fields(agent.org_id, agent.id),
            pgbinary.text(contact),
        )
        return vid

    def _subscription(self, agent: Agent, visitor: int, t: int) -> None:
        """A paid-agent subscription with its monthly charges (and the odd refund)."""
        assert agent.paid is not None
        rng, now = self.rng, self.tl.now
        started = t + 60_000 + rng.randrange(540_000)
        if started >= now:
            return
        cancelled = started + rng.randrange(5, 70) * MS_PER_DAY if rng.random() < 0.3 else None
        if cancelled is not None and cancelled >= now:
            cancelled = None
        sid = self.next_id("paid_agent_subscriptions")
        begin, width = pgbinary.timestamp_us(started), WIDTH["paid_agent_subscriptions"]
        self.batch.parts["paid_agent_subscriptions"] += (
            THREE_INT8_NULL.pack(width, 8, sid, 8, visitor, 8, begin, -1)
            if cancelled is None
            else FOUR_INT8.pack(
                width, 8, sid, 8, visitor, 8, begin, 8, pgbinary.timestamp_us(cancelled)
            ),
            self.owner_fields(agent.org_id, agent.id),
        )
        paid = agent.paid
        charge = started
        while charge < now and (cancelled is None or charge < cancelled):
            row = (charge, agent.org_id, agent.id, sid, "charge", paid.price_cents, paid.currency)
            self.transactions[self.tl.hour_of(charge)].append(row)
            if rng.random() < 0.06:
                refund = charge + MS_PER_DAY + rng.randrange(2 * MS_PER_DAY)
                if refund < now:
                    row = (refund, *row[1:4], "refund", paid.price_cents, paid.currency)
                    self.transactions[self.tl.hour_of(refund)].append(row)
            charge += 30 * MS_PER_DAY

    def _runaway(self, k: int, start: int, end: int) -> None:
        """The runaway agent's loop: many times its usual rate, flat, until ``now``."""
        begin = max(start, self.tl.runaway_start)
        if begin >= end or not self.runaway_conv:
            return
        n = stochastic_round(self.runaway_rate * (end - begin) / MS_PER_HOUR, self.rng)
        bucket = self.events[k]
        for _ in range(n):
            t = begin + int(self.rng.random() * (end - begin))
            step = self.sampler.runaway_step(self.runaway_agent, self.runaway_conv, t)
            bucket.append((t, self.runaway_conv, self.render.event(step)))

    # --- rendering ----------------------------------------------------------------

    def _emit_events(self, k: int) -> None:
        rows = self.events.pop(k, [])
        rows.sort(key=itemgetter(0))
        pools = self.tl.pools[k]
        out = self.batch.parts["usage_events"]
        head, head_without_conversation = THREE_INT8.pack, TWO_INT8_NULL.pack
        width = WIDTH["usage_events"]
        plan = POOL_FIELD["plan"]
        pool_fields = [POOL_FIELD[pool] for pool in pools]
        period_start = self.period_start
        billed: dict[bytes, int] = {}  # credits of this hour's current-period rows, by dims
        eid = self.ids["usage_events"]
        countdown = self.next_refund
        for t, conv, (org, dims, pg, credits, tail) in rows:
            eid += 1
            us = (t - PG_EPOCH_MS) * 1000
            out += (
                head(width, 8, eid, 8, us, 8, conv) if conv
                else head_without_conversation(width, 8, eid, 8, us, -1),
                dims,
                plan if pg else pool_fields[org],
                tail,
            )  # fmt: skip
            countdown -= 1
            if pg:
                continue
            if t >= period_start[org]:
                billed[dims] = billed.get(dims, 0) + credits
            if countdown <= 0 and credits > 0:
                countdown = self._schedule_refund(t, conv, org, dims, credits)
        self.next_refund = countdown
        self.ids["usage_events"] = eid
        usage, scopes = self.period_usage, self.render.scopes
        for dims, credits in billed.items():
            org = scopes[dims][0]
            key = (org, pools[org], dims)
            usage[key] = usage.get(key, 0) + credits

    def _schedule_refund(self, t: int, conv: int, org: int, dims: bytes, credits: int) -> int:
        """A refund or correction: negative credits on the same dimensions, later.

        Returns the new countdown: the next refund goes to the first billed row
        once that many more rows (of any kind) have been rendered.
        """
        rng = self.rng
        countdown = rng.randint(*REFUND_EVERY)
        t += MS_PER_HOUR + rng.randrange(35 * MS_PER_HOUR)
        if t < self.tl.now:
            credits = -credits if rng.random() < 0.7 else -(credits // 2) or -1
            refund = (org, dims, False, credits, self.render.refund_tail(credits))
            self.events[self.tl.hour_of(t)].append((t, conv, refund))
        return countdown

    def _emit_messages(self, k: int) -> None:
        rows = self.messages.pop(k, [])
        rows.sort(key=itemgetter(0))
        out = self.batch.parts["messages"]
        head, width = THREE_INT8.pack, WIDTH["messages"]
        now, hour_of = self.tl.now, self.tl.hour_of
        mid = self.ids["messages"]
        for t, conv, rest, feedback in rows:
            mid += 1
            out += (head(width, 8, mid, 8, conv, 8, (t - PG_EPOCH_MS) * 1000), rest)
            if feedback is not None:
                delay, fields = feedback
                if t + delay < now:
                    self.feedback[hour_of(t + delay)].append((t + delay, mid, fields))
        self.ids["messages"] = mid

    def _emit_feedback(self, k: int) -> None:
        rows = self.feedback.pop(k, [])
        rows.sort(key=itemgetter(0))
        out = self.batch.parts["feedback"]
        for t, mid, fields in rows:
            fid = self.next_id("feedback")
            us = (t - PG_EPOCH_MS) * 1000
            out += (THREE_INT8.pack(WIDTH["feedback"], 8, fid, 8, mid, 8, us), fields)

    def _emit_transactions(self, k: int) -> None:
        rows = self.transactions.pop(k, [])
        rows.sort(key=itemgetter(0))
        out = self.batch.parts["paid_agent_transactions"]
        for t, org, agent, sid, kind, cents, currency in rows:
            tid = self.next_id("paid_agent_transactions")
            out += (
                THREE_INT8.pack(WIDTH["paid_agent_transactions"], 8, tid, 8, sid, 8,
                                (t - PG_EPOCH_MS) * 1000),
                b"".join((pgbinary.int4(org), pgbinary.int4(agent), pgbinary.text(kind),
                          pgbinary.numeric(cents, 2), pgbinary.text(currency))),
            )  # fmt: skip


def visitor_contact(channel_id: int, vid: int) -> str:
    """A visitor's contact as its channel knows it: phone number, handle or e-mail."""
    if channel_id in (CHANNEL["phone"], CHANNEL["sms"], CHANNEL["whatsapp"]):
        return f"+1 555 {vid * 7919 % 900 + 100:03d} {vid % 10_000:04d}"
    if channel_id in (CHANNEL["instagram"], CHANNEL["messenger"], CHANNEL["telegram"]):
        return f"@{FIRST_NAMES[vid % len(FIRST_NAMES)]}_{vid}"
    return f"{FIRST_NAMES[vid * 31 % len(FIRST_NAMES)]}.{vid}@mail.example"

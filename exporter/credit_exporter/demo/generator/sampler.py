"""The sampler: one usage event, one conversation (shared with live.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from credit_exporter.demo.generator.reference import (
    CHANNEL,
    CONVERSATION_PLAYGROUND,
    DOC_MODEL,
    EMBEDDING_MODEL,
    FEEDBACK,
    PEAK,
    RULE,
    STT_MODEL,
    SVC,
    TASK,
    TTS_MODEL,
    UNANSWERED,
    ModelSpec,
)
from credit_exporter.demo.generator.sampling import (
    AGENT_CONTEXT_TOKENS,
    AGENT_REPLY_TOKENS,
    CHAT_EXCHANGES,
    DOC_LATENCY_MS,
    EMBED_TOKENS,
    EXCHANGES,
    GAPS,
    LATENCY,
    LOOKUP_PER_EXCHANGE,
    MEETING_AUDIO_MS,
    PROMPT_INPUT_TOKENS,
    PROMPT_OUTPUT_TOKENS,
    QUERY_EMBED_TOKENS,
    RATING,
    REPLY_SPEECH_MS,
    STEP_PER_EXCHANGE,
    STT_MS_PER_AUDIO_SECOND,
    SYNTH_MS,
    TASK_MODELS,
    TASK_PICK,
    TOOL_LATENCY_MS,
    TOOL_PER_EXCHANGE,
    UTTERANCE_MS,
    _round_div,
    credits_micro,
    voice_credits_micro,
)
from credit_exporter.demo.generator.world import Agent, Org

# A usage event is a plain tuple (cheap to build, easy to render or bind):
#   (t_ms, organization, project, department, user, agent or 0, model, service type,
#    pricing rule, task category, channel, conversation or 0, credits in micro-credits,
#    input tokens, output tokens, voice ms, documents, tool runs, latency ms, success,
#    playground)
# A message: (t_ms, conversation, organization, agent, role, unanswered, feedback or None)
# where feedback is (delay_ms, model_id, rating).
API = CHANNEL["api"]
WEB_CHAT = CHANNEL["web_chat"]
PHONE = CHANNEL["phone"]
R_INPUT, R_OUTPUT = RULE["input_tokens"], RULE["output_tokens"]
R_EMBED, R_AGENT_MESSAGE = RULE["embedding_tokens"], RULE["agent_message"]
R_AGENT_STEP = RULE["agent_step"]
R_REALTIME_STT, R_STT = RULE["realtime_transcription_seconds"], RULE["transcription_seconds"]
R_TTS, R_TTS_HD = RULE["synthesis_seconds"], RULE["hd_synthesis_seconds"]
R_TOOL, R_SEARCH = RULE["tool_run"], RULE["web_search"]
R_DOC, R_OCR = RULE["document_page"], RULE["document_ocr"]
S_TEXT, S_STT, S_TTS, S_EMBED = (SVC[s] for s in ("text_generation", "speech_to_text",
                                                  "text_to_speech", "embedding"))  # fmt: skip
S_AGENT, S_TOOL, S_DOC = SVC["agent"], SVC["tool_run"], SVC["document_processing"]


@dataclass(frozen=True)
class ConversationPlan:
    org: Org
    agent: Agent
    channel_id: int
    type: str
    exchanges: int
    task_id: int
    playground: bool = False
    keep_open: bool = False  # never ended (a stuck session)


class Sampler:
    """Draws usage events and conversations from the demo's distributions.

    The bulk generator and the live writer share it, so live traffic has the
    shape of the history. Methods are written for speed (locals, table
    look-ups): the bulk load calls them millions of times.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # --- direct workspace prompts (no agent, channel api) -------------------

    def prompt(self, org: Org, t: int, lat: int, playground: bool = False) -> tuple:
        rng = self.rng
        bits, rand = rng.getrandbits, rng.random
        user = (org.users_after if t >= org.churn_ms else org.users_before).pick(rng)
        project = user.projects.pick(rng)  # type: ignore[union-attr]
        task = TASK_PICK.table[bits(12)]
        roll = rand()
        inp = out = voice = docs = 0
        if roll < 0.82:
            model = TASK_MODELS[task.id].table[bits(12)]
            ok = rand() < model.success
            inp = PROMPT_INPUT_TOKENS[bits(10)]
            out = PROMPT_OUTPUT_TOKENS[bits(10)] if ok else 0
            in_cost = inp * R_INPUT.nano_per_unit
            out_cost = out * R_OUTPUT.nano_per_unit
            # One pricing rule per row: the one that priced most of it (module docs).
            rule = R_OUTPUT if out_cost >= in_cost else R_INPUT
            credits = _round_div((in_cost + out_cost) * model.multiplier_milli, 1_000_000)
            svc = S_TEXT
            latency = LATENCY[model.id][lat][bits(10)]
            if not ok and rand() < 0.1:  # a timeout
                latency = 20_000 + rng.randrange(40_000)
        elif roll < 0.89:
            model, rule, svc = EMBEDDING_MODEL, R_EMBED, S_EMBED
            ok = rand() < model.success
            inp = EMBED_TOKENS[bits(10)]
            credits = credits_micro(inp, rule, model)
            latency = LATENCY[model.id][lat][bits(10)] + inp // 200
        elif roll < 0.95:
            model, svc = DOC_MODEL, S_DOC
            rule = R_DOC if rand() < 0.7 else R_OCR
            ok = rand() < model.success
            docs = 1 + bits(2)
            credits = credits_micro(docs, rule, model)
            latency = DOC_LATENCY_MS[bits(10)]
        elif roll < 0.98:
            model, rule, svc = STT_MODEL, R_STT, S_STT
            ok = rand() < model.success
            voice = MEETING_AUDIO_MS[bits(10)]
            credits = voice_credits_micro(voice, rule, model)
            latency = min(60_000, int(voice * STT_MS_PER_AUDIO_SECOND))
        else:
            model, svc = TTS_MODEL, S_TTS
            rule = R_TTS if rand() < 0.8 else R_TTS_HD
            ok = rand() < model.success
            voice = SYNTH_MS[bits(10)]
            credits = voice_credits_micro(voice, rule, model)
            latency = LATENCY[model.id][lat][bits(10)]
        return (t, org.id, project, user.department_id, user.id, 0, model.id, svc, rule.id,
                task.id, API, 0, credits, inp, out, voice, docs, 0, latency, ok,
                playground)  # fmt: skip

    def document_ingest(self, org: Org, t: int) -> tuple:
        """An agent's knowledge-base document upload (no conversation)."""
        rng = self.rng
        agent = (org.agents_after if t >= org.churn_ms else org.agents_before).pick(rng)
        rule = R_DOC if rng.random() < 0.75 else R_OCR
        docs = 1 + rng.getrandbits(3)
        ok = rng.random() < DOC_MODEL.success
        return (t, org.id, agent.project_id, agent.owner.department_id, agent.owner.id, agent.id,
                DOC_MODEL.id, S_DOC, rule.id, TASK["research"].id, API, 0,
                credits_micro(docs, rule, DOC_MODEL), 0, 0, 0, docs, 0,
                DOC_LATENCY_MS[rng.getrandbits(10)], ok, False)  # fmt: skip

    # --- agent conversations ------------------------------------------------

    def pick_agent(self, org: Org, t: int) -> Agent:
        """An agent of the org by traffic weight (deleted agents only before they were)."""
        return (org.agents_after if t >= org.churn_ms else org.agents_before).pick(self.rng)

    def plan_conversation(self, org: Org, agent: Agent) -> ConversationPlan:
        rng = self.rng
        task = agent.tasks.pick(rng)
        if rng.random() < CONVERSATION_PLAYGROUND:
            exchanges = CHAT_EXCHANGES[rng.getrandbits(10)]
            return ConversationPlan(org, agent, WEB_CHAT, "chat", exchanges, task, playground=True)
        channel = agent.channels.pick(rng)
        kind = agent.conversation_type(channel)
        exchanges = EXCHANGES[kind][rng.getrandbits(10)]
        return ConversationPlan(org, agent, channel, kind, exchanges, task)

    def conversation(
        self, plan: ConversationPlan, conv_id: int, start: int, lat: int, limit: int | None
    ) -> tuple[list[tuple], list[tuple], int | None]:
        """(messages, usage events, ended_at) of a conversation starting at ``start``.

        Every exchange is a user message and an assistant reply (an ``agent``
        usage event, sometimes a knowledge look-up and a tool run; on a call
        also speech-to-text and text-to-speech). Anything at or after ``limit``
        is left out and the conversation stays open (ended_at None): a call in
        progress at ``now``.
        """
        rng = self.rng
        bits, rand = rng.getrandbits, rng.random
        agent, org = plan.agent, plan.org
        o, p, a = org.id, agent.project_id, agent.id
        d, u = agent.owner.department_id, agent.owner.id
        model = agent.model
        m, success, lat_table = model.id, model.success, LATENCY[model.id][lat]
        task, ch, pg, conv = plan.task_id, plan.channel_id, plan.playground, conv_id
        is_call = plan.type == "call"
        gaps = GAPS[plan.type]
        credits = agent.message_credits
        step_credits = credits_micro(1, R_AGENT_STEP, model)
        messages: list[tuple] = []
        events: list[tuple] = []
        add_message, add_event = messages.append, events.append
        t = start
        for _ in range(plan.exchanges):
            add_message((t, conv, o, a, "user", False, None))
            if is_call:
                ms = UTTERANCE_MS[bits(10)]
                add_event((t + 150, o, p, d, u, a, STT_MODEL.id, S_STT, R_REALTIME_STT.id, task,
                           ch, conv, voice_credits_micro(ms, R_REALTIME_STT, STT_MODEL), 0, 0, ms,
                           0, 0, 150 + ms // 20, rand() < STT_MODEL.success, pg))  # fmt: skip
            latency = lat_table[bits(10)]
            ok = rand() < success
            reply = t + latency
            add_event((reply, o, p, d, u, a, m, S_AGENT, R_AGENT_MESSAGE.id, task, ch, conv,
                       credits, AGENT_CONTEXT_TOKENS[bits(10)],
                       AGENT_REPLY_TOKENS[bits(10)] if ok else 0, 0, 0, 0, latency, ok,
                       pg))  # fmt: skip
            if rand() < LOOKUP_PER_EXCHANGE:
                tokens = QUERY_EMBED_TOKENS[bits(10)]
                add_event((t + 40, o, p, d, u, a, EMBEDDING_MODEL.id, S_EMBED, R_EMBED.id, task,
                           ch, conv, credits_micro(tokens, R_EMBED, EMBEDDING_MODEL), tokens, 0,
                           0, 0, 0, LATENCY[EMBEDDING_MODEL.id][lat][bits(10)], True,
                           pg))  # fmt: skip
            if rand() < TOOL_PER_EXCHANGE:
                add_event(self._tool_run(o, p, d, u, a, model, task, ch, conv, reply - 20, pg))
            if rand() < STEP_PER_EXCHANGE:
                add_event((reply - 10, o, p, d, u, a, m, S_AGENT, R_AGENT_STEP.id, task, ch, conv,
                           step_credits, AGENT_CONTEXT_TOKENS[bits(10)], 0, 0, 0, 0,
                           lat_table[bits(10)], True, pg))  # fmt: skip
            if is_call:
                ms = REPLY_SPEECH_MS[bits(10)]
                rule = R_TTS if rand() < 0.8 else R_TTS_HD
                add_event((reply + 60, o, p, d, u, a, TTS_MODEL.id, S_TTS, rule.id, task, ch,
                           conv, voice_credits_micro(ms, rule, TTS_MODEL), 0, 0, ms, 0, 0,
                           LATENCY[TTS_MODEL.id][lat][bits(10)], rand() < TTS_MODEL.success,
                           pg))  # fmt: skip
            add_message((reply, conv, o, a, "assistant", rand() < UNANSWERED, None))
            t = reply + gaps[bits(10)]
        if not pg and not is_call and rand() < FEEDBACK:
            last = messages[-1]
            rating = RATING[m].pick(rng)
            if last[5]:  # an unanswered question is rarely rated well
                rating = min(rating, 2 + bits(1))
            messages[-1] = (*last[:6], (5_000 + rng.randrange(115_000), m, rating))
        end = messages[-1][0]
        if plan.keep_open or (limit is not None and end >= limit):
            cut = limit if limit is not None else end + 1
            messages = [x for x in messages if x[0] < cut]
            events = [x for x in events if x[0] < cut]
            return messages, events, None
        return messages, events, end

    def _tool_run(
        self, o: int, p: int, d: int, u: int, a: int, model: ModelSpec, task: int, channel: int,
        conv: int, t: int, pg: bool
    ) -> tuple:  # fmt: skip
        rng = self.rng
        rule = R_TOOL if rng.random() < 0.7 else R_SEARCH
        runs = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        return (t, o, p, d, u, a, model.id, S_TOOL, rule.id, task, channel, conv,
                credits_micro(runs, rule, model), 0, 0, 0, 0, runs,
                TOOL_LATENCY_MS[rng.getrandbits(10)], rng.random() < 0.97, pg)  # fmt: skip

    def runaway_step(self, agent: Agent, conv_id: int, t: int) -> tuple:
        """One iteration of an agent stuck in a tool loop, its context growing."""
        rng = self.rng
        o, p, a = agent.org_id, agent.project_id, agent.id
        d, u = agent.owner.department_id, agent.owner.id
        roll = rng.random()
        if roll < 0.2:
            return self._tool_run(o, p, d, u, a, agent.model, agent.task_id, WEB_CHAT, conv_id, t,
                                  False)  # fmt: skip
        rule = R_AGENT_STEP if roll < 0.4 else R_AGENT_MESSAGE
        return (t, o, p, d, u, a, agent.model.id, S_AGENT, rule.id, agent.task_id,
                WEB_CHAT, conv_id, credits_micro(1, rule, agent.model),
                AGENT_CONTEXT_TOKENS[rng.getrandbits(10)] * 4, 40, 0, 0, 0,
                LATENCY[agent.model.id][PEAK][rng.getrandbits(10)], True, False)  # fmt: skip

"""Sampling helpers and the distribution tables every sampler shares."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Generic, TypeVar

from credit_exporter.demo.generator.reference import (
    CHAT_MODEL_WEIGHTS,
    LATENCY_CLASS_FACTOR,
    MODEL,
    MODELS,
    TASKS,
    ModelSpec,
    RuleSpec,
)

T = TypeVar("T")


class Weighted(Generic[T]):
    """Pick one of fixed items by weight in O(1): a lookup table of 2**bits slots.

    Weights are quantized to 1/4096; an item with a positive weight always
    keeps at least one slot.
    """

    __slots__ = ("bits", "items", "table")

    def __init__(self, items: Sequence[T], weights: Sequence[float], bits: int = 12) -> None:
        if not items or len(items) != len(weights):
            raise ValueError("need as many weights as items, and at least one")
        size = 1 << bits
        total = float(sum(weights))
        counts = [max(1, int(w / total * size)) if w > 0 else 0 for w in weights]
        order = sorted(range(len(items)), key=lambda i: -weights[i])
        i = 0
        while sum(counts) < size:  # hand the rounding slack to the heaviest items
            counts[order[i % len(order)]] += 1
            i += 1
        while sum(counts) > size:
            j = order[i % len(order)]
            if counts[j] > 1:
                counts[j] -= 1
            i += 1
        self.items = tuple(items)
        self.bits = bits
        self.table = tuple(item for item, n in zip(items, counts, strict=True) for _ in range(n))

    def pick(self, rng: random.Random) -> T:
        return self.table[rng.getrandbits(self.bits)]


def _quantiles(n: int, inv_cdf: Callable[[float], float]) -> list[float]:
    """n values of a distribution at evenly spaced quantiles: a draw-free sample table."""
    return [inv_cdf((i + 0.5) / n) for i in range(n)]


def _lognormal_table(mean: float, sigma: float, n: int = 1024) -> list[float]:
    """Quantiles of a lognormal with the given mean, in a deterministic shuffled order."""
    mu = math.log(mean) - sigma * sigma / 2
    unit = NormalDist()
    values = _quantiles(n, lambda q: math.exp(mu + sigma * unit.inv_cdf(q)))
    random.Random(n).shuffle(values)  # order is irrelevant; keeps neighbours independent
    return values


def _int_table(values: Sequence[float], low: int, high: int) -> tuple[int, ...]:
    return tuple(min(high, max(low, round(v))) for v in values)


def _latency_tables(model: ModelSpec) -> tuple[tuple[int, ...], ...]:
    """Per latency class, 1024 response times in ms: lognormal with a long tail to 60 s."""
    base = _lognormal_table(1.0, 0.55)
    for i in range(0, len(base), 200):  # 0.5% stragglers, 6-15x slower
        base[i] *= 6 + (i // 200) % 10
    out = []
    for factor in LATENCY_CLASS_FACTOR:
        scale = model.latency_s * factor * 1000
        out.append(_int_table([v * scale for v in base], 20, 60_000))
    return tuple(out)


def _rating_weights(mean: float) -> tuple[float, ...]:
    """Weights of ratings 1..5 with the given mean, between a 4.2 and a 4.8 profile."""
    low, high = (0.03, 0.04, 0.1, 0.35, 0.48), (0.005, 0.005, 0.03, 0.1, 0.86)
    w = min(1.0, max(0.0, (mean - 4.21) / (4.805 - 4.21)))
    return tuple(a + (b - a) * w for a, b in zip(low, high, strict=True))


def stochastic_round(x: float, rng: random.Random) -> int:
    """Stochastic rounding: an integer whose expectation is x."""
    n = int(x)
    return n + 1 if rng.random() < x - n else n


def _round_div(a: int, b: int) -> int:
    """a / b rounded half away from zero, as PostgreSQL rounds numerics."""
    if a >= 0:
        return (a + b // 2) // b
    return -((-a + b // 2) // b)


def credits_micro(units: int, rule: RuleSpec, model: ModelSpec) -> int:
    """units x credits_per_unit x multiplier in micro-credits (units in whole units)."""
    return _round_div(units * rule.nano_per_unit * model.multiplier_milli, 1_000_000)


def voice_credits_micro(voice_ms: int, rule: RuleSpec, model: ModelSpec) -> int:
    """Like credits_micro for a rule priced per second, with the seconds given in ms."""
    return _round_div(voice_ms * rule.nano_per_unit * model.multiplier_milli, 1_000_000_000)


def format_credits(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    return f"{sign}{micro // 1_000_000}.{micro % 1_000_000:06d}"


def format_cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(dt: datetime) -> int:
    """Epoch milliseconds of dt (naive means UTC), truncated."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def add_months(dt: datetime, months: int, day: int) -> datetime:
    """dt moved by whole months, on ``day`` of the month (clamped to the month's length)."""
    index = dt.year * 12 + dt.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_first = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    last_day = (next_first - timedelta(days=1)).day
    return dt.replace(year=year, month=month, day=min(day, last_day))


# Distribution tables shared by every sampler (built from quantiles, no draws).
PROMPT_INPUT_TOKENS = _int_table(_lognormal_table(900, 0.8), 8, 60_000)
PROMPT_OUTPUT_TOKENS = _int_table(_lognormal_table(420, 0.7), 4, 8_000)
AGENT_CONTEXT_TOKENS = _int_table(_lognormal_table(1_400, 0.5), 100, 30_000)
AGENT_REPLY_TOKENS = _int_table(_lognormal_table(160, 0.6), 5, 2_000)
EMBED_TOKENS = _int_table(_lognormal_table(2_500, 1.0), 20, 200_000)
QUERY_EMBED_TOKENS = _int_table(_lognormal_table(60, 0.5), 5, 800)
MEETING_AUDIO_MS = _int_table(_lognormal_table(420_000, 0.8), 10_000, 7_200_000)
SYNTH_MS = _int_table(_lognormal_table(45_000, 0.7), 2_000, 900_000)
UTTERANCE_MS = _int_table(_lognormal_table(5_500, 0.5), 700, 60_000)
REPLY_SPEECH_MS = _int_table(_lognormal_table(6_500, 0.5), 800, 60_000)
CHAT_GAP_MS = _int_table(_lognormal_table(35_000, 0.7), 3_000, 300_000)
CALL_GAP_MS = _int_table(_lognormal_table(3_000, 0.5), 500, 20_000)
CAMPAIGN_GAP_MS = _int_table(_lognormal_table(180_000, 0.8), 10_000, 900_000)
TOOL_LATENCY_MS = _int_table(_lognormal_table(1_500, 0.7), 50, 60_000)
DOC_LATENCY_MS = _int_table(_lognormal_table(9_000, 0.8), 500, 60_000)
STT_MS_PER_AUDIO_SECOND = 0.06  # batch transcription time per second of audio
# Exchanges (user message + assistant reply) per conversation.
CHAT_EXCHANGES = _int_table(
    _quantiles(1024, lambda q: 1 + math.floor(math.log(1 - q) / math.log(1 - 0.38))), 1, 12
)
CALL_EXCHANGES = _int_table(
    _quantiles(1024, lambda q: 3 + math.floor(math.log(1 - q) / math.log(1 - 0.3))), 3, 14
)
CAMPAIGN_EXCHANGES = _int_table(_quantiles(1024, lambda q: 1 + (q > 0.6) + (q > 0.85)), 1, 3)
EXCHANGES = {"call": CALL_EXCHANGES, "chat": CHAT_EXCHANGES, "campaign": CAMPAIGN_EXCHANGES}
GAPS = {"call": CALL_GAP_MS, "chat": CHAT_GAP_MS, "campaign": CAMPAIGN_GAP_MS}
LATENCY = {m.id: _latency_tables(m) for m in MODELS}
RATING = {m.id: Weighted((1, 2, 3, 4, 5), _rating_weights(m.rating)) for m in MODELS}
TASK_PICK = Weighted(TASKS, [t.weight for t in TASKS])
TASK_MODELS = {
    t.id: Weighted([MODEL[s] for s, _ in t.models], [w for _, w in t.models]) for t in TASKS
}
AGENT_MODEL_PICK = Weighted(
    [MODEL[s] for s in CHAT_MODEL_WEIGHTS], list(CHAT_MODEL_WEIGHTS.values())
)
# Extra usage events per exchange: a tool run, a knowledge look-up (embedding), an
# extra reasoning step of the agent.
TOOL_PER_EXCHANGE = 0.15
LOOKUP_PER_EXCHANGE = 0.25
STEP_PER_EXCHANGE = 0.1


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)

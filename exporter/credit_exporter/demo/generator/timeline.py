"""The timeline: expected traffic per hour and organization, pools, periods."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from credit_exporter.demo.generator.reference import (
    EVENTS_PER_DAY,
    HOUR_FACTOR,
    MS_PER_DAY,
    MS_PER_HOUR,
    OFF_PEAK,
    PEAK,
    PEAK_HOURS,
    RUNAWAY_HOURS,
    SPIKE_DAYS_AGO,
    SPIKE_FACTOR,
    SPIKE_ORG,
    WEEKDAY_FACTOR,
    WEEKEND,
)
from credit_exporter.demo.generator.sampling import add_months, from_ms, to_ms
from credit_exporter.demo.generator.world import Agent, Org, World


def hour_shape(hour_ms: int) -> tuple[float, int]:
    """(traffic factor, latency class) of the UTC hour starting at hour_ms."""
    day = hour_ms // MS_PER_DAY
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    hour = hour_ms // MS_PER_HOUR % 24
    factor = WEEKDAY_FACTOR[weekday] * HOUR_FACTOR[hour]
    if (weekday == 0 and hour < 12) or (weekday == 4 and hour >= 12):
        factor *= 0.8  # Monday morning, Friday afternoon
    if weekday >= 5:
        return factor, WEEKEND
    return factor, PEAK if hour in PEAK_HOURS else OFF_PEAK


def _mean_hour_factor() -> float:
    week = [hour_shape(h * MS_PER_HOUR)[0] for h in range(7 * 24)]
    return sum(week) / len(week)


EVENTS_PER_HOUR_AT_FACTOR_1 = EVENTS_PER_DAY / 24 / _mean_hour_factor()


@dataclass
class Period:
    start_ms: int
    end_ms: int
    crossing_ms: int | None = None  # from here on, usage draws the topup pool


class Timeline:
    """Hours of [range_start, now) with, per organization, the expected usage
    events, the pool drawn, and the billing periods."""

    def __init__(self, world: World, seed: int, range_start: int, now: int, scale: float) -> None:
        self.world = world
        self.range_start = range_start
        self.now = now
        self.hour0 = range_start // MS_PER_HOUR * MS_PER_HOUR
        self.n_hours = -(-(now - self.hour0) // MS_PER_HOUR)
        rng = random.Random(f"{seed}:timeline")
        self.lat_class: list[int] = []
        self.expected: list[list[float]] = []  # [hour][org index], usage events
        self.spike = self._spike_window()
        self.runaway_start = max(range_start, now - RUNAWAY_HOURS * MS_PER_HOUR)
        self._fill_expected(rng, scale)
        self.periods = [self._periods(org) for org in world.orgs]
        self.pools: list[list[str]] = [["plan"] * (len(world.orgs) + 1) for _ in self.expected]
        for oi, org in enumerate(world.orgs):
            self._place_crossings(oi, org)

    def bounds(self, k: int) -> tuple[int, int]:
        start = self.hour0 + k * MS_PER_HOUR
        return max(start, self.range_start), min(start + MS_PER_HOUR, self.now)

    def hour_of(self, t: int) -> int:
        return (t - self.hour0) // MS_PER_HOUR

    def _spike_window(self) -> tuple[int, int]:
        """The launch day: ~20 days ago, or inside a shorter range; a Tue-Thu when it can."""
        days = (self.now - self.range_start) / MS_PER_DAY
        days_ago = SPIKE_DAYS_AGO if days > SPIKE_DAYS_AGO + 1 else days * 0.55
        target = self.now - int(days_ago * MS_PER_DAY)
        first_day = -(-self.range_start // MS_PER_DAY)
        last_day = self.now // MS_PER_DAY - 1  # whole days only, never the current one
        candidates = [
            d for d in range(first_day, last_day) if (d + 3) % 7 in (1, 2, 3)
        ]  # Tuesday..Thursday
        if candidates:
            day = min(candidates, key=lambda d: (abs(d * MS_PER_DAY + MS_PER_DAY // 2 - target), d))
            return day * MS_PER_DAY, (day + 1) * MS_PER_DAY
        start = max(self.range_start, target - MS_PER_DAY // 4)
        return start, min(self.now - RUNAWAY_HOURS * MS_PER_HOUR, start + MS_PER_DAY // 2)

    def _fill_expected(self, rng: random.Random, scale: float) -> None:
        day_noise: dict[int, list[float]] = {}
        spike_org = next(i for i, o in enumerate(self.world.orgs) if o.slug == SPIKE_ORG)
        for k in range(self.n_hours):
            start, end = self.bounds(k)
            hour_start = self.hour0 + k * MS_PER_HOUR
            factor, lat = hour_shape(hour_start)
            self.lat_class.append(lat)
            day = hour_start // MS_PER_DAY
            if day not in day_noise:
                day_noise[day] = [math.exp(rng.gauss(0, 0.1)) for _ in self.world.orgs]
            base = EVENTS_PER_HOUR_AT_FACTOR_1 * scale * factor * (end - start) / MS_PER_HOUR
            row = []
            for oi, org in enumerate(self.world.orgs):
                x = base * org.profile.traffic_share * day_noise[day][oi]
                x *= math.exp(rng.gauss(0, 0.12))  # hour-to-hour noise
                if oi == spike_org and self.spike[0] <= hour_start < self.spike[1]:
                    x *= SPIKE_FACTOR
                row.append(x)
            self.expected.append(row)

    def _periods(self, org: Org) -> list[Period]:
        """Monthly periods anchored so that ``now`` is period_age_days into the current one."""
        anchor = from_ms(self.now - int(org.profile.period_age_days * MS_PER_DAY))
        anchor = anchor.replace(hour=0, minute=0, second=0, microsecond=0)
        periods = []
        n = 0
        while True:
            start = add_months(anchor, -n, anchor.day)
            end = add_months(anchor, 1 - n, anchor.day)
            periods.append(Period(to_ms(start), to_ms(end)))
            if to_ms(start) <= self.range_start:
                break
            n += 1
        return periods[::-1]

    def current_period(self, oi: int) -> Period:
        return self.periods[oi][-1]

    def _place_crossings(self, oi: int, org: Org) -> None:
        """Hour from which an org draws its topup pool, in each period it exhausts."""
        if org.profile.crossing_milli is None:
            return
        for period in self.periods[oi]:
            current = period is self.periods[oi][-1]
            share = org.profile.crossing_milli / 1000 if current else 0.85
            hours = [
                k
                for k in range(self.n_hours)
                if period.start_ms <= self.hour0 + k * MS_PER_HOUR < period.end_ms
            ]
            total = sum(self.expected[k][oi] for k in hours)
            running = 0.0
            for k in hours:
                running += self.expected[k][oi]
                if running >= share * total:  # the plan pool runs dry during hour k
                    period.crossing_ms = self.bounds(k)[1]
                    for later in hours:
                        if later > k:
                            self.pools[later][org.id] = "topup"
                    break

    def mean_agent_events_per_hour(self, org: Org, agent: Agent) -> float:
        oi = org.id - 1
        mean_org = sum(row[oi] for row in self.expected) / max(1, self.n_hours)
        share = agent.weight / sum(a.weight for a in org.agents)
        return mean_org * org.conversations_per_event * share * agent.mean_events_per_conversation()

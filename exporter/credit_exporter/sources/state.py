"""State queries: each poll turns the query's rows into a gauge snapshot that
replaces the query's previous series set (a row that disappears, disappears).

A failing run leaves the last good snapshot in place and marks the query
down (``credit_exporter_query_up`` 0, last-success time frozen), so dashboards
keep their values and alerts on staleness can tell.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from credit_exporter import catalog
from credit_exporter.config import MetricMapping, QueryConfig
from credit_exporter.db import Database, QueryError, Result, classify
from credit_exporter.health import Health
from credit_exporter.metric_state import LabelValues, MetricState

log = logging.getLogger(__name__)

MAX_LABEL_VALUE_LENGTH = 1024


@dataclass
class Conversion:
    """A query result turned into series, with what had to be skipped and why."""

    snapshot: dict[str, dict[LabelValues, float]]
    dropped: Counter[str] = field(default_factory=Counter)


def to_number(value: object) -> float:
    """A sample value from a result cell; ValueError with a reason when it is not one."""
    if value is None:
        raise ValueError("null_value")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | Decimal):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError("not_a_number") from None
    else:
        raise ValueError("not_a_number")
    if not math.isfinite(number):
        raise ValueError("not_finite")
    return number


def to_label(value: object) -> str:
    if value is None:
        raise ValueError("null_label")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        text = str(value)
    if len(text) > MAX_LABEL_VALUE_LENGTH:
        raise ValueError("label_value_too_long")
    return text


def convert(result: Result, mappings: list[MetricMapping]) -> Conversion:
    """Map rows onto series; raise QueryError(validation) if a named column is missing."""
    index = {name: i for i, name in enumerate(result.columns)}
    for mapping in mappings:
        wanted = [*mapping.labels.values(), *([mapping.value] if mapping.value else [])]
        if missing := [column for column in wanted if column not in index]:
            raise QueryError(
                "validation",
                f"{mapping.metric}: result has no column {', '.join(missing)} "
                f"(columns: {', '.join(result.columns)})",
            )
    conversion = Conversion(snapshot={m.metric: {} for m in mappings})
    for mapping in mappings:
        metric = catalog.get(mapping.metric)
        label_columns = [index[mapping.labels[label]] for label in metric.labels]
        value_column = index[mapping.value] if mapping.value else None
        series = conversion.snapshot[mapping.metric]
        for row in result.rows:
            try:
                labels = tuple(to_label(row[i]) for i in label_columns)
                value = 1.0 if value_column is None else to_number(row[value_column])
            except ValueError as reason:
                conversion.dropped[str(reason)] += 1
                continue
            if labels in series:
                conversion.dropped["duplicate_series"] += 1
                continue
            series[labels] = value
    return conversion


class StateQuery:
    """One configured state query, polled on its own schedule."""

    def __init__(
        self,
        name: str,
        config: QueryConfig,
        database: Database,
        state: MetricState,
        health: Health,
    ) -> None:
        self.name = name
        self.config = config
        self.database = database
        self.state = state
        self.health = health

    async def run_once(self) -> bool:
        """Run the query once and publish its snapshot; True on success."""
        started = time.monotonic()
        try:
            result = await self.database.fetch(self.config.sql, self.config.timeout)
            # off the event loop: 100k rows take ~0.4 s, and scrapes must not wait
            conversion = await asyncio.to_thread(convert, result, self.config.metrics)
        except Exception as exc:
            report_failure(self.health, "query", self.name, started, exc)
            return False
        for reason, count in conversion.dropped.items():
            self.health.dropped_rows.labels(self.name, reason).inc(count)
        self.state.replace(self.name, conversion.snapshot)
        self.health.succeeded(self.name, time.monotonic() - started, len(result.rows))
        return True

    async def run_forever(self, on_poll: asyncio.Event) -> None:
        await poll_forever(self.run_once, self.config.interval, on_poll)


def report_failure(health: Health, kind: str, name: str, started: float, exc: Exception) -> None:
    """Record a failed run. Anything but a QueryError is a bug: log its traceback,
    but count it like any failure so the source keeps polling (an exception out
    of run_once would end the polling task silently)."""
    error = classify(exc)
    health.failed(name, time.monotonic() - started, error.reason, str(error))
    if isinstance(exc, QueryError):
        log.warning("%s %s failed (%s): %s", kind, name, error.reason, error)
    else:
        log.error("%s %s failed unexpectedly: %s", kind, name, error, exc_info=exc)


async def poll_forever(
    run_once: Callable[[], Awaitable[bool]], interval: float, on_poll: asyncio.Event
) -> None:
    """Run at a fixed cadence (not drifting with run time) until cancelled."""
    next_run = time.monotonic()
    while True:
        await run_once()
        on_poll.set()
        next_run += interval
        now = time.monotonic()
        if next_run < now:  # a run overran its interval: skip the missed ticks
            next_run = now + interval - (now - next_run) % interval
        await asyncio.sleep(next_run - now)

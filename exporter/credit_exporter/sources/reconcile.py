"""The background reconcile: settled history compared with the database, chunk by chunk.

A poll reads only rows that are not settled yet, so a row committed later than
its stream's window (``arrives_within``), a value updated later than
``changes_within``, or a settled row deleted would never reach the counters on
their own. The reconcile finds them (docs/event-engine.md):

1. **Checksums.** Settled rows are numbered into chunks of their time column
   (``reconcile.chunk`` wide). Every poll adds what it settles to each chunk's
   checksum: the row count, every sum the stream computes, and a sum of hashes
   of the label columns. A pass reads the same checksums from the database, a
   range of chunks per query, and compares them under the stream's lock (the
   horizon does not move meanwhile). Each pass compares the ``recent`` history,
   where rows arrive and change late, and the next slice of the older history,
   so that all of it is compared every ``full_every``: a pass costs what the
   recent history and one slice cost, not what the whole history costs.
2. **Recompute.** When a chunk differs, the per-series totals of everything
   settled at the horizon of that moment are read again, chunk range by chunk
   range, and the difference from the base as it was then is folded into the
   base. Increases reach the counters at once; decreases are held (a counter
   never goes down within a process) and show in
   ``credit_exporter_counter_excess``.

What was found is logged the moment it is found, with the setting to raise,
and counted (rows late or gone, values changed, by stream) once it is folded in,
so a recompute that fails and is found again is counted once; then alerted on. Both kinds of pass
are paced: after a query that took ``d`` seconds the next waits
``d * (1 / max_db_share - 1)``, so the reconcile's database time stays under
``max_db_share`` of the wall time while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from credit_exporter.config import ReconcileConfig
from credit_exporter.db import DATABASE_OID_SQL
from credit_exporter.sources.state import stop_if_cancelled
from credit_exporter.sources.totals import (
    Aggregates,
    Checksum,
    add_aggregates,
    add_checksums,
    difference,
    magnitude,
    same_checksum,
    subtract_checksums,
)

if TYPE_CHECKING:
    from credit_exporter.sources.events import EventStream

log = logging.getLogger(__name__)

# A query reads about this many settled rows (by the checksums' own counts), and
# never spans more chunks than this (sparse history).
BATCH_ROWS = 50_000
MAX_BATCH_CHUNKS = 24 * 31


@dataclass(frozen=True)
class Batch:
    """Chunks ``first`` to ``last`` (inclusive), or the rows whose time is NULL."""

    first: int = 0
    last: int = 0
    null_time: bool = False

    def chunks(self) -> Iterator[int | None]:
        if self.null_time:
            yield None
        else:
            yield from range(self.first, self.last + 1)


@dataclass(frozen=True)
class Difference:
    """One chunk whose settled rows are not what the polls counted."""

    chunk: int | None
    counted: Checksum | None
    found: Checksum | None

    @property
    def rows(self) -> int:
        """Rows found minus rows counted (``__rows`` is the first checksum column)."""
        return int((self.found or (0,))[0] or 0) - int((self.counted or (0,))[0] or 0)


class Reconciler:
    """Compares one stream's settled history with the database, on a schedule."""

    def __init__(self, stream: EventStream, config: ReconcileConfig) -> None:
        self.stream = stream
        self.config = config
        self.null_times = 0  # rows without a time last seen (streams settled by time)
        self.cursor: int | None = None  # the next chunk of older history to compare

    async def run_forever(self, on_poll: asyncio.Event) -> None:
        """A pass every ``interval`` (from the previous pass's start) until cancelled."""
        next_pass = time.monotonic() + self.config.interval
        while True:
            stop_if_cancelled()  # a cancel swallowed by psycopg_pool on 3.11 (see there)
            await asyncio.sleep(max(0.0, next_pass - time.monotonic()))
            next_pass = time.monotonic() + self.config.interval
            try:
                if await self.run_pass():
                    on_poll.set()  # render the corrected values now
            except Exception as exc:  # a database outage: the next pass tries again
                log.warning("stream %s: reconcile pass failed: %s", self.stream.name, exc)

    async def run_pass(self) -> bool:
        """One pass over settled history; True when a difference was found and folded in."""
        stream = self.stream
        if stream.ordering is None or not stream.ordering.complete(stream.horizon):
            return False  # no poll has settled anything yet
        generation = stream.generation
        if not await self._same_database(generation):
            return False  # the next poll starts the stream over
        if stream.ordering.by_time:
            await self._count_null_times()
        span = await self._span()
        differences: list[Difference] = []
        compared = 0
        for batch in self._batches(self._this_pass(span)):
            found = await self._compare(batch)
            compared += sum(1 for _ in batch.chunks())
            differences += found
        stream.health.reconcile_chunks.labels(stream.name, "same").inc(
            max(0, compared - len(differences))
        )
        if differences:
            self._log_found(differences)
            if not await self._recompute(generation):
                return False
            # counted once folded in: a recompute that fails is found and counted again
            self._count_found(differences)
        stream.health.reconcile_last_success.labels(stream.name).set(time.time())
        return bool(differences)

    # --- the range and the batches ------------------------------------------------------

    async def _span(self) -> tuple[int, int] | None:
        """The first and last chunk holding rows in the database or in the checksums
        (a chunk whose rows were all deleted is only in the latter), or None if none."""
        stream = self.stream
        assert stream.ordering is not None
        column = stream.ordering.time
        chunks = [chunk for chunk in stream.checksums if chunk is not None]
        for statement in (
            stream.plan.top_statement(column.name, lowest=True),
            stream.plan.top_statement(column.name),
        ):
            for (value,) in await self._fetch(statement, {}):
                chunks.append(column.chunk_of(value, stream.chunk_width))
        return (min(chunks), max(chunks)) if chunks else None

    async def _count_null_times(self) -> None:
        """Rows without a time never settle in a stream ordered by time: say how many."""
        stream = self.stream
        ((count,),) = await self._fetch(stream.plan.null_time_statement(), {})
        if count > self.null_times:
            stream.health.dropped_rows.labels(stream.name, "null_time").inc(count - self.null_times)
            log.warning(
                "stream %s: %d rows have no %s, so they are never settled or counted;"
                " leave them out in the stream's SQL or give them a time",
                stream.name, count, stream.config.time,
            )  # fmt: skip
        self.null_times = count

    def _this_pass(self, span: tuple[int, int] | None) -> list[tuple[int, int]]:
        """The chunk ranges one pass compares: the recent history (where rows arrive and
        change late), and the next slice of the older history, a cursor moving through it
        so that all of it is compared every ``full_every``."""
        if span is None:
            return []
        first, last = span
        config = self.config
        recent_first = max(first, last - math.ceil(config.recent / self.stream.chunk_width) + 1)
        ranges = [(recent_first, last)]
        old_last = recent_first - 1
        if old_last >= first:
            width = math.ceil((old_last - first + 1) * config.interval / config.full_every)
            if self.cursor is None or not first <= self.cursor <= old_last:
                self.cursor = first  # a new cycle through the older history
            end = min(self.cursor + width - 1, old_last)
            ranges.append((self.cursor, end))
            self.cursor = end + 1
        return ranges

    def _batches(self, ranges: list[tuple[int, int]]) -> Iterator[Batch]:
        """The chunk ranges cut into batches of about BATCH_ROWS settled rows each, then the
        rows without a time (which only a keyed stream settles)."""
        checksums = self.stream.checksums
        for first, last in ranges:
            start, rows = first, 0
            for chunk in range(first, last + 1):
                counted = checksums.get(chunk)
                rows += int(counted[0] or 0) if counted else 0
                if rows >= BATCH_ROWS or chunk - start + 1 >= MAX_BATCH_CHUNKS or chunk == last:
                    yield Batch(start, chunk)
                    start, rows = chunk + 1, 0
        assert self.stream.ordering is not None
        if not self.stream.ordering.by_time:
            yield Batch(null_time=True)

    def _bounds(self, batch: Batch) -> dict[str, Any]:
        stream = self.stream
        assert stream.ordering is not None
        width, column = stream.chunk_width, stream.ordering.time
        return {
            "lo": column.bound(batch.first * width),
            "hi": column.bound((batch.last + 1) * width),
        }

    # --- checksums --------------------------------------------------------------------------

    async def _compare(self, batch: Batch) -> list[Difference]:
        """The batch's chunks whose database checksum differs from the counted one."""
        stream = self.stream
        async with stream.lock:
            ordering, horizon = stream.ordering, stream.horizon
            assert ordering is not None and horizon is not None
            statement = stream.plan.checksum_statement(ordering, horizon, batch.null_time)
            params = {**stream.params(None, horizon), **self._bounds(batch)}
            rows, elapsed = await self._timed_fetch(statement, params)
            found = {row[0]: tuple(row[1:]) for row in rows}
            chunks = set(batch.chunks()) | found.keys()
            differences = [
                Difference(chunk, stream.checksums.get(chunk), found.get(chunk))
                for chunk in sorted(chunks, key=lambda c: -1 if c is None else c)
                if not same_checksum(stream.checksums.get(chunk), found.get(chunk))
            ]
        await self._pace(elapsed)
        return differences

    def _count_found(self, differences: list[Difference]) -> None:
        stream = self.stream
        health = stream.health
        health.reconcile_chunks.labels(stream.name, "different").inc(len(differences))
        health.reconcile_rows.labels(stream.name, "late").inc(
            sum(d.rows for d in differences if d.rows > 0)
        )
        health.reconcile_rows.labels(stream.name, "deleted").inc(
            -sum(d.rows for d in differences if d.rows < 0)
        )

    def _log_found(self, differences: list[Difference]) -> None:
        """Say what a pass found the moment it is found, and which setting to raise."""
        stream = self.stream
        late = sum(d.rows for d in differences if d.rows > 0)
        gone = -sum(d.rows for d in differences if d.rows < 0)
        changed = sum(1 for d in differences if d.rows == 0)
        config = stream.config
        settings = f"changes_within ({_seconds_text(config.changes_within)})"
        if config.key is None:
            settings = f"arrives_within ({_seconds_text(config.arrives_within)}) or " + settings
        log.warning(
            "stream %s: settled history differs from what was counted in %d chunks from %s:"
            " %d rows committed after their window, %d rows gone, values or labels changed in"
            " %d chunks with the same row count. Recomputing the settled totals. If rows"
            " arrive or change this late by design, raise %s.",
            stream.name, len(differences), self._chunk_text(differences[0].chunk), late, gone,
            changed, settings,
        )  # fmt: skip

    def _chunk_text(self, chunk: int | None) -> str:
        stream = self.stream
        assert stream.ordering is not None
        if chunk is None:
            return "rows without a time"
        return str(stream.ordering.time.bound(chunk * stream.chunk_width))

    # --- the recompute ---------------------------------------------------------------------

    async def _same_database(self, generation: int) -> bool:
        """Whether the stream still reads the database (and the totals) of ``generation``."""
        stream = self.stream
        rows = await self._fetch(DATABASE_OID_SQL, {})
        return stream.generation == generation and rows[0][0] == stream.identity

    async def _recompute(self, generation: int) -> bool:
        """Read the per-series totals of settled history again and fold in the difference;
        False (nothing folded) if the stream started over meanwhile."""
        stream = self.stream
        async with stream.lock:
            ordering, at = stream.ordering, stream.horizon
            assert ordering is not None and at is not None
            base_then: Aggregates = {name: dict(series) for name, series in stream.base.items()}
            checksums_then = dict(stream.checksums)
        span = await self._span()
        fresh: Aggregates = {name: {} for name in stream.base}
        fresh_checksums: dict[int | None, Checksum] = {}
        for batch in self._batches([span] if span is not None else []):
            async with stream.lock:
                statement = stream.plan.history_statement(ordering, at, batch.null_time)
                params = {**stream.params(None, at), **self._bounds(batch)}
                started = time.monotonic()
                async with (
                    stream.database.read_only(stream.config.timeout) as conn,
                    conn.cursor() as cur,
                ):
                    await cur.execute(statement, params)
                    split = await stream.read_split(cur)
                elapsed = time.monotonic() - started
            self._spent(elapsed)
            add_aggregates(fresh, split.settled)
            fresh_checksums.update(split.checksums)
            await self._pace(elapsed)
        if not await self._same_database(generation):
            return False
        async with stream.lock:
            if stream.generation != generation:
                return False
            change = difference(fresh, base_then)
            add_aggregates(stream.base, change)
            for chunk in fresh_checksums.keys() | checksums_then.keys():
                delta = subtract_checksums(fresh_checksums.get(chunk), checksums_then.get(chunk))
                stream.checksums[chunk] = add_checksums(stream.checksums.get(chunk), delta)
            stream.publish()
        self._report_change(change)
        return True

    def _report_change(self, change: Aggregates) -> None:
        stream = self.stream
        for metric, series in change.items():
            up = sum((magnitude(v) for v in series.values() if magnitude(v) > 0), Decimal(0))
            down = -sum((magnitude(v) for v in series.values() if magnitude(v) < 0), Decimal(0))
            stream.health.reconcile_difference.labels(stream.name, metric, "up").inc(float(up))
            stream.health.reconcile_difference.labels(stream.name, metric, "down").inc(float(down))
            log.warning(
                "stream %s: reconcile corrected %s in %d series: +%s folded in, -%s held",
                stream.name, metric, len(series), up, down,
            )  # fmt: skip

    # --- database time --------------------------------------------------------------------

    async def _fetch(self, statement: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows, elapsed = await self._timed_fetch(statement, params)
        await self._pace(elapsed)
        return rows

    async def _timed_fetch(
        self, statement: Any, params: dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]], float]:
        started = time.monotonic()
        result = await self.stream.database.fetch(statement, self.stream.config.timeout, params)
        elapsed = time.monotonic() - started
        self._spent(elapsed)
        return result.rows, elapsed

    def _spent(self, seconds: float) -> None:
        self.stream.health.reconcile_seconds.labels(self.stream.name).inc(seconds)

    async def _pace(self, elapsed: float) -> None:
        """Wait so that ``elapsed`` is at most ``max_db_share`` of the time that passes."""
        share = self.config.max_db_share
        if share < 1:
            await asyncio.sleep(elapsed * (1 / share - 1))


def _seconds_text(seconds: float | None) -> str:
    return "unset" if seconds is None else f"{seconds:g}s"

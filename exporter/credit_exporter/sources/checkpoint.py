"""A stream's settled state kept on disk, so a start-up does not aggregate all of history.

A stream's base (per-series totals of every settled row), its horizon and the
reconcile's per-chunk checksums are what its first poll spends its time
computing; everything after that costs only the rows not settled yet. The
checkpoint is that state, written atomically (a temporary file, fsync, rename)
every ``checkpoint.interval`` and at a clean shutdown, with a sha256 of its
content (docs/event-engine.md, "Checkpoint").

At start-up it is trusted only if all of these hold, else the stream aggregates
its whole history as it always did, and says why (a log line and
``credit_exporter_checkpoint_loads_total{result}``):

- the file is there, readable, and its content matches its sha256 (``missing``,
  ``corrupt``);
- it was written for the same totals: the same SQL, ordering, metrics, label
  mapping and limits, column types and format (a fingerprint), and from the same
  database (its OID and, where readable, the cluster's system identifier)
  (``mismatch``);
- the settled history that may have changed since it was written (the
  reconcile's ``recent`` window plus the time since the write) has the same
  per-chunk checksums in the database as in the file, and a keyed stream's
  highest key is not below the loaded horizon (``verify_failed``).

Older history is compared by the reconcile's normal cycle, whose cursor the
checkpoint carries, so that all of it is still compared every ``full_every``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credit_exporter.config import CheckpointConfig, ReconcileConfig
from credit_exporter.db import DATABASE_OID_SQL
from credit_exporter.health import CHECKPOINT_LOAD_RESULTS, CHECKPOINT_WRITE_RESULTS
from credit_exporter.metric_state import LabelValues
from credit_exporter.sources.ordering import Horizon, Ordering
from credit_exporter.sources.reconcile import BATCH_ROWS, MAX_BATCH_CHUNKS
from credit_exporter.sources.totals import (
    Aggregates,
    Checksum,
    HistogramValue,
    Value,
    same_checksum,
)

if TYPE_CHECKING:
    from credit_exporter.sources.events import Admission, EventStream

log = logging.getLogger(__name__)

# Moves whenever what a checkpoint holds, or how the engine computes it, changes: a
# checkpoint of another version is never trusted.
FORMAT_VERSION = 1
MAGIC = "credit-exporter-checkpoint"
SYSTEM_IDENTIFIER_SQL = "SELECT system_identifier::text FROM pg_control_system()"
# Checksum queries of the start-up comparison run at once (the pool holds at least one
# more connection for the polls' default of four).
VERIFY_CONCURRENCY = 2
# The first write after start-up comes this soon after the stream is ready (a crash in
# the first interval must not cost a whole start-up aggregate again).
FIRST_WRITE_DELAY = 5.0


class Unusable(Exception):
    """A checkpoint that cannot be trusted; ``result`` is a health.CHECKPOINT_LOAD_RESULTS value."""

    def __init__(self, result: str, detail: str) -> None:
        super().__init__(detail)
        self.result = result


# --- encoding: exact, typed, JSON ----------------------------------------------------------


def _encode_scalar(value: Any) -> Any:
    """A horizon value or checksum cell as JSON, its type kept (exactly)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, Decimal):
        return ["decimal", str(value)]
    if isinstance(value, float):
        return ["float", repr(value)]
    if isinstance(value, datetime):
        return ["datetime", value.isoformat()]
    if isinstance(value, date):
        return ["date", value.isoformat()]
    raise TypeError(f"cannot keep a {type(value).__name__} in a checkpoint")


def _decode_scalar(cell: Any) -> Any:
    if cell is None or isinstance(cell, int):
        return cell
    kind, text = cell
    decoders = {"decimal": Decimal, "float": float, "datetime": datetime.fromisoformat,
                "date": date.fromisoformat}  # fmt: skip
    return decoders[kind](text)


def _encode_value(value: Value) -> Any:
    if isinstance(value, HistogramValue):
        return {"buckets": value.buckets, "count": value.count, "sum": str(value.total)}
    return str(value)


def _decode_value(cell: Any) -> Value:
    if isinstance(cell, dict):
        return HistogramValue(
            [int(b) for b in cell["buckets"]], int(cell["count"]), Decimal(cell["sum"])
        )
    return Decimal(cell)


@dataclass
class Snapshot:
    """A stream's settled state at one moment (copied on the event loop, encoded off it)."""

    horizon: Horizon
    base: Aggregates
    checksums: dict[int | None, Checksum]
    admissions: dict[str, tuple[set[LabelValues], bool]]
    identity: dict[str, Any]
    fingerprint: str
    cursor: int | None
    taken: float  # time.time()
    sequence: int

    def encode(self, stream: str) -> bytes:
        body = {
            "stream": stream,
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "database": self.identity,
            "written_at": self.taken,
            "horizon": {
                "key": _encode_scalar(self.horizon.key),
                "time": _encode_scalar(self.horizon.time),
            },
            "base": {
                metric: [[list(labels), _encode_value(value)] for labels, value in series.items()]
                for metric, series in self.base.items()
            },
            "checksums": [
                [chunk, [_encode_scalar(cell) for cell in checksum]]
                for chunk, checksum in self.checksums.items()
            ],
            "admissions": {
                metric: {"admitted": sorted(list(labels) for labels in admitted), "closed": closed}
                for metric, (admitted, closed) in self.admissions.items()
            },
            "reconcile_cursor": self.cursor,
        }
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        header = {"format": MAGIC, "sha256": hashlib.sha256(content).hexdigest()}
        return json.dumps(header).encode() + b"\n" + content


def decode(data: bytes) -> dict[str, Any]:
    """A checkpoint file's body; Unusable("corrupt") if it is torn, altered or not ours."""
    head, newline, content = data.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        raise Unusable("corrupt", "its header is not a checkpoint header") from None
    if not newline or not isinstance(header, dict) or header.get("format") != MAGIC:
        raise Unusable("corrupt", "it is not a credit-exporter checkpoint")
    if hashlib.sha256(content).hexdigest() != header.get("sha256"):
        raise Unusable("corrupt", "its content does not match its sha256 (torn or altered)")
    try:
        body = json.loads(content)
    except ValueError:
        raise Unusable("corrupt", "its content is not JSON") from None
    if not isinstance(body, dict) or body.get("version") != FORMAT_VERSION:
        raise Unusable("mismatch", f"it is of another format version than {FORMAT_VERSION}")
    return body


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader finds the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer
    try:
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)


def fingerprint(stream: EventStream, ordering: Ordering) -> str:
    """sha256 of everything that decides the stream's totals and their layout: its SQL,
    ordering, windows, metrics, label mapping and limits, its columns' types, the chunk
    width, and the format version. Settings that only decide when polls run do not."""
    config = stream.config
    plan = stream.plan
    policies = []
    for mapping in config.metrics:
        policy = mapping.policy
        policies.append({
            "max_series": policy.max_series,
            "max_label_value_length": policy.max_label_value_length,
            "hashed": sorted(policy.hashed),
            "dropped": sorted(policy.dropped),
            "if_null": dict(sorted(policy.if_null.items())),
            # the HMAC key decides hashed label values; kept only as a digest
            "key": hashlib.sha256(b"checkpoint\0" + policy.key).hexdigest() if policy.key else "",
        })  # fmt: skip
    when = {"database", "interval", "timeout", "startup_timeout", "startup_work_mem", "reconcile"}
    time_column = ordering.time
    decided = {
        "version": FORMAT_VERSION,
        "config": config.model_dump(mode="json", exclude=when),
        "policies": policies,
        "ordering": {
            "time": [
                time_column.name,
                time_column.type_name,
                time_column.kind,
                time_column.zone,
                time_column.unit,
            ],
            "key": None if ordering.key is None else [ordering.key.name, ordering.key.type_name],
            "by_time": ordering.by_time,
        },
        "float_columns": sorted(plan.float_columns),
        "non_finite_columns": sorted(plan.non_finite_columns),
        "checksum_columns": list(plan.checksum_columns),
        "chunk_seconds": stream.chunk_width,
    }
    text = json.dumps(decided, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Checkpoint:
    """One stream's checkpoint file: restored once at start-up, written on a schedule."""

    def __init__(self, stream: EventStream, config: CheckpointConfig) -> None:
        self.stream = stream
        self.config = config
        self.path = config.path / f"{stream.name}.checkpoint"
        self.restored = False  # the start-up decision is made (loaded or not)
        self.identity: dict[str, Any] | None = None
        self._sequence = 0
        self._written_sequence = -1
        self._write_lock = threading.Lock()
        health = stream.health
        for result in CHECKPOINT_LOAD_RESULTS:
            health.checkpoint_loads.labels(stream.name, result)
        for result in CHECKPOINT_WRITE_RESULTS:
            health.checkpoint_writes.labels(stream.name, result)

    # --- start-up -----------------------------------------------------------------------

    async def restore(self) -> None:
        """At the first poll (under the stream's lock): install the checkpoint's state if
        it can be trusted, else leave the stream empty for the full aggregate. Database
        errors propagate (the poll fails and the next one tries again)."""
        if self.restored:
            return
        stream = self.stream
        timeout = stream.config.startup_timeout
        if stream.ordering is None:
            stream.ordering = await stream.describe(timeout)
        self.identity = await self._identity(timeout)
        started = time.monotonic()
        try:
            body = self._read()
            self._check(body, stream.ordering)
            self._install(body, stream.ordering)
            installed = time.monotonic()
            try:
                compared = await self._verify(body, stream.ordering, timeout)
            except (TypeError, KeyError, ValueError, ArithmeticError) as exc:
                # values of the wrong type behind a valid sha256: not one we wrote
                raise Unusable("corrupt", f"its content is not a stream state ({exc!r})") from None
            except BaseException:
                stream.reset_settled()
                raise
        except Unusable as unusable:
            stream.reset_settled()
            self._loaded(unusable.result)
            log.warning(
                "stream %s: checkpoint %s not used (%s): %s; aggregating the whole history"
                " instead", stream.name, self.path, unusable.result, unusable,
            )  # fmt: skip
        else:
            self._loaded("loaded")
            # the two timings are what a start-up spends before reading the new rows
            # (benchmarks/cebench/startup.py reports them per run)
            log.info(
                "stream %s: checkpoint %s loaded (written %.0fs ago, horizon %s); read and"
                " installed in %.3fs; %d recent chunks compared with the database in %.3fs"
                " and found the same",
                stream.name, self.path, max(0.0, time.time() - body["written_at"]),
                stream.horizon, installed - started, compared, time.monotonic() - installed,
            )  # fmt: skip
            if stream.reconciler is not None:
                stream.health.reconcile_last_success.labels(stream.name).set(time.time())
        self.restored = True

    def _loaded(self, result: str) -> None:
        self.stream.health.checkpoint_loads.labels(self.stream.name, result).inc()

    async def _identity(self, timeout: float) -> dict[str, Any]:
        """The database's OID, and the cluster's system identifier where this role may
        read it (a restore into another cluster can reuse an OID)."""
        database = self.stream.database
        ((oid,),) = (await database.fetch(DATABASE_OID_SQL, timeout)).rows
        system: str | None = None
        try:
            ((system,),) = (await database.fetch(SYSTEM_IDENTIFIER_SQL, timeout)).rows
        except Exception as exc:  # not readable by this role: the OID alone
            log.debug("stream %s: no system identifier: %s", self.stream.name, exc)
        return {"oid": int(oid), "system_identifier": system}

    def _read(self) -> dict[str, Any]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise Unusable("missing", "no such file") from None
        except OSError as exc:
            raise Unusable("corrupt", f"unreadable: {exc.strerror}") from None
        return decode(data)

    def _check(self, body: dict[str, Any], ordering: Ordering) -> None:
        stream = self.stream
        assert self.identity is not None
        if body.get("stream") != stream.name:
            raise Unusable("mismatch", f"it was written by stream {body.get('stream')!r}")
        if body.get("fingerprint") != fingerprint(stream, ordering):
            raise Unusable(
                "mismatch", "the stream's definition (SQL, ordering, metrics, labels, limits"
                " or column types) is not the one it was written for",
            )  # fmt: skip
        saved = body.get("database") or {}
        if saved.get("oid") != self.identity["oid"]:
            raise Unusable(
                "mismatch", f"it was written from another database (OID {saved.get('oid')},"
                f" now {self.identity['oid']}: dropped and restored, or re-created)",
            )  # fmt: skip
        ours, theirs = self.identity["system_identifier"], saved.get("system_identifier")
        if ours is not None and theirs is not None and ours != theirs:
            raise Unusable("mismatch", "it was written from another PostgreSQL cluster")

    def _install(self, body: dict[str, Any], ordering: Ordering) -> None:
        stream = self.stream
        try:
            horizon = Horizon(
                key=_decode_scalar(body["horizon"]["key"]),
                time=_decode_scalar(body["horizon"]["time"]),
            )
            base: Aggregates = {p.metric.name: {} for p in stream.plan.metrics}
            for metric, series in body["base"].items():
                base[metric] = {tuple(labels): _decode_value(value) for labels, value in series}
            checksums = {
                chunk: tuple(_decode_scalar(cell) for cell in cells)
                for chunk, cells in body["checksums"]
            }
            admitted = {
                metric: ({tuple(labels) for labels in saved["admitted"]}, bool(saved["closed"]))
                for metric, saved in body["admissions"].items()
            }
            cursor = body.get("reconcile_cursor")
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise Unusable("corrupt", f"its content is not a stream state ({exc!r})") from None
        if not ordering.complete(horizon) or base.keys() != stream.base.keys():
            raise Unusable("corrupt", "its horizon or metrics are incomplete")
        stream.horizon = horizon
        stream.base = base
        stream.checksums = checksums
        admissions: dict[str, Admission] = stream.plan.admissions()
        for metric, (labels, closed) in admitted.items():
            if metric in admissions:
                admissions[metric].admitted = labels
                admissions[metric].closed = closed
        stream.admissions = admissions
        stream.identity = self.identity["oid"] if self.identity else None
        stream.backlog = True  # the first poll reads what arrived since: the start-up timeout
        if stream.reconciler is not None:
            stream.reconciler.cursor = cursor if isinstance(cursor, int) else None

    async def _verify(self, body: dict[str, Any], ordering: Ordering, timeout: float) -> int:
        """Compare the settled history that may have changed since the checkpoint was
        written with the database, chunk by chunk; the number of chunks compared."""
        stream = self.stream
        horizon = stream.horizon
        assert horizon is not None
        if ordering.key is not None:
            top = await self._fetch(stream.plan.top_statement(ordering.key.name), {}, timeout)
            highest = top[0][0] if top else None
            if highest is None or highest < horizon.key:
                raise Unusable(
                    "verify_failed", f"the highest {ordering.key.name} is {highest}, below the"
                    f" {horizon.key} it had settled (a restore, or the newest rows deleted)",
                )  # fmt: skip
        width, column = stream.chunk_width, ordering.time
        last = max((c for c in stream.checksums if c is not None), default=None)
        newest = await self._fetch(stream.plan.top_statement(column.name), {}, timeout)
        if newest:
            chunk = column.chunk_of(newest[0][0], width)
            last = chunk if last is None else max(last, chunk)
        recent = (stream.config.reconcile or ReconcileConfig()).recent
        age = max(0.0, time.time() - float(body["written_at"]))
        batches: list[tuple[int, int] | None] = []
        if last is not None:
            # one chunk more: wall-clock chunks of naive times repeat an hour a year
            first = last - math.ceil((recent + age) / width)
            batches += self._batches(first, last)
        if not ordering.by_time:
            batches.append(None)  # rows without a time, which a keyed stream settles
        # a few batches at a time: the database can scan them on several cores
        gate = asyncio.Semaphore(VERIFY_CONCURRENCY)

        async def compare(batch: tuple[int, int] | None) -> int:
            statement = stream.plan.checksum_statement(ordering, horizon, batch is None)
            params = stream.params(None, horizon)
            chunks: list[int | None] = [None]
            if batch is not None:
                params["lo"] = column.bound(batch[0] * width)
                params["hi"] = column.bound((batch[1] + 1) * width)
                chunks = list(range(batch[0], batch[1] + 1))
            async with gate:
                rows = await self._fetch(statement, params, timeout)
            found = {row[0]: tuple(row[1:]) for row in rows}
            for chunk in set(chunks) | found.keys():
                if not same_checksum(stream.checksums.get(chunk), found.get(chunk)):
                    where = "rows without a time" if chunk is None else str(
                        column.bound(chunk * width))  # fmt: skip
                    raise Unusable(
                        "verify_failed",
                        f"settled rows changed since it was written (the chunk from {where})",
                    )
            return len(chunks)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(compare(batch)) for batch in batches]
        except ExceptionGroup as failed:  # the first difference or database error found
            raise failed.exceptions[0] from None
        return sum(task.result() for task in tasks)

    def _batches(self, first: int, last: int) -> list[tuple[int, int]]:
        """Chunks first..last in ranges of about BATCH_ROWS settled rows (by the checksums)."""
        batches, start, rows = [], first, 0
        for chunk in range(first, last + 1):
            counted = self.stream.checksums.get(chunk)
            rows += int(counted[0] or 0) if counted else 0
            if rows >= BATCH_ROWS or chunk - start + 1 >= MAX_BATCH_CHUNKS or chunk == last:
                batches.append((start, chunk))
                start, rows = chunk + 1, 0
        return batches

    async def _fetch(
        self, statement: Any, params: dict[str, Any], timeout: float
    ) -> list[tuple[Any, ...]]:
        """A start-up statement: bounded by the stream's ``startup_timeout`` like the
        aggregate it replaces, not by the database's ``statement_timeout``, and without
        JIT (compiling costs more than these scans of recent rows)."""
        async with (
            self.stream.database.read_only(
                timeout, settings={"jit": "off"}, beyond_statement_timeout=True
            ) as conn,
            conn.cursor() as cur,
        ):
            await cur.execute(statement, params)
            return await cur.fetchall()

    # --- writing ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot | None:
        """The stream's settled state now, or None while it has none it can vouch for.
        Synchronous: every change to that state is made without an await in between."""
        stream = self.stream
        ordering = stream.ordering
        if (not self.restored or ordering is None or not ordering.complete(stream.horizon)
                or self.identity is None or stream.identity != self.identity["oid"]):  # fmt: skip
            return None
        assert stream.horizon is not None
        self._sequence += 1
        return Snapshot(
            horizon=stream.horizon,
            base={metric: dict(series) for metric, series in stream.base.items()},
            checksums=dict(stream.checksums),
            admissions={
                metric: (set(admission.admitted), admission.closed)
                for metric, admission in stream.admissions.items()
            },
            identity=dict(self.identity),
            fingerprint=fingerprint(stream, ordering),
            cursor=stream.reconciler.cursor if stream.reconciler is not None else None,
            taken=time.time(),
            sequence=self._sequence,
        )

    def write(self, snapshot: Snapshot) -> bool:
        """Encode and write ``snapshot`` (in a thread, or at shutdown on the loop); an
        older snapshot than one already written is left out."""
        health, name = self.stream.health, self.stream.name
        try:
            data = snapshot.encode(name)
            with self._write_lock:
                if snapshot.sequence <= self._written_sequence:
                    return True
                write_atomically(self.path, data)
                self._written_sequence = snapshot.sequence
        except (OSError, TypeError, ValueError) as exc:
            health.checkpoint_writes.labels(name, "failed").inc()
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.error(
                "stream %s: cannot write its checkpoint %s (checkpoint.directory: %s): %s;"
                " the next start-up will aggregate the whole history",
                name, self.path, self.config.directory, detail,
            )  # fmt: skip
            return False
        health.checkpoint_writes.labels(name, "ok").inc()
        health.checkpoint_last_write.labels(name).set(snapshot.taken)
        log.debug("stream %s: checkpoint written (%d bytes)", name, len(data))
        return True

    async def run_forever(self) -> None:
        """Write every ``interval`` (the first soon after the stream is ready), and once
        more when cancelled: a clean shutdown or a reload."""
        written = False
        try:
            while True:
                interval = self.config.interval
                await asyncio.sleep(interval if written else min(interval, FIRST_WRITE_DELAY))
                stream = self.stream
                oid = None if self.identity is None else self.identity["oid"]
                if oid is not None and stream.identity not in (None, oid):
                    # the stream started over on another database: vouch for that one
                    self.identity = await self._identity(stream.config.timeout)
                snapshot = self.snapshot()
                if snapshot is not None:
                    written = await asyncio.to_thread(self.write, snapshot) or written
        except asyncio.CancelledError:
            snapshot = self.snapshot()
            if snapshot is not None:
                self.write(snapshot)
            raise

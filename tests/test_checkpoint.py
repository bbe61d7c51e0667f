"""A stream restarted from its checkpoint: exact, equal to a fresh full aggregate, and never
trusted when it does not match.

Each test runs real EventStreams (and once a whole Exporter) against a real PostgreSQL:
one writes the checkpoint, a second starts from it, a third (no checkpoint) aggregates
the whole history for comparison.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from stream_support import InProcessStream, one_stream_config, sql_truth

from credit_exporter.config import CheckpointConfig, Config
from credit_exporter.server import Exporter
from credit_exporter.sources.checkpoint import decode, write_atomically
from credit_exporter.sources.events import EventStream

TABLE = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    org text NOT NULL,
    model text NOT NULL,
    credits numeric(18, 6) NOT NULL,
    latency double precision NOT NULL
);
CREATE INDEX ev_occurred_at ON ev (occurred_at);
"""
SQL = (
    "SELECT id, occurred_at, org, 'p' AS project, 'a' AS agent, 'chat' AS st, model, credits,"
    " latency FROM ev"
)
SPENT = "credit_spent_credits_total"
LATENCY = "credit_response_duration_seconds"
LOADS = "credit_exporter_checkpoint_loads_total"


def _stream_config(keyed: bool = True, sql: str = SQL) -> dict[str, Any]:
    config: dict[str, Any] = {
        "database": "db", "sql": sql, "time": "occurred_at", "interval": "1s", "timeout": "1s",
        "settle": "1s", "reconcile": {"recent": "1d", "chunk": "1h"},
        "metrics": [
            {"metric": SPENT, "value": "credits", "labels": {
                "organization": "org", "project": "project", "agent": "agent",
                "service_type": "st"}},
            {"metric": LATENCY, "value": "latency",
             "labels": {"organization": "org", "gen_ai_request_model": "model"}},
        ],
    }  # fmt: skip
    if keyed:
        config["key"] = "id"
    else:
        config["arrives_within"] = "1m"
    return config


def _insert(
    dsn: str, rows: int, ago: str = "3 hours", credits: str = "1.25", before: str = "1 hour"
) -> None:
    """``rows`` rows spread over the ``ago`` before ``before`` ago."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ev (occurred_at, org, model, credits, latency)"
            " SELECT now() - %s::interval - (%s::interval * i / %s),"
            " CASE WHEN i %% 3 = 0 THEN 'acme' ELSE 'globex' END,"
            " CASE WHEN i %% 2 = 0 THEN 'gpt' ELSE 'claude' END, %s::numeric + i, (i %% 50) * 0.1"
            " FROM generate_series(1, %s) i",
            (before, ago, rows, credits, rows),
        )


class CheckpointedStream(InProcessStream):
    """An InProcessStream whose EventStream keeps a checkpoint in ``directory``."""

    def __init__(self, config: Config, directory: Path | None) -> None:
        super().__init__(config)
        if directory is not None:
            self.stream = EventStream(
                self.name, config.streams[self.name], self.database, self.health,
                checkpoint=CheckpointConfig(directory=str(directory), interval="1s"),
            )  # fmt: skip

    def write(self) -> None:
        checkpoint = self.stream.checkpoint
        assert checkpoint is not None
        snapshot = checkpoint.snapshot()
        assert snapshot is not None
        assert checkpoint.write(snapshot)

    def load_result(self) -> str:
        """The one checkpoint load result counted for this stream."""
        results = {
            result: self.registry.get_sample_value(LOADS, {"query": self.name, "result": result})
            for result in ("loaded", "missing", "corrupt", "mismatch", "verify_failed")
        }
        counted = [result for result, value in results.items() if value]
        assert len(counted) == 1, results
        return counted[0]


@pytest.fixture
def db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(TABLE)
    _insert(empty_db, 400)
    return empty_db


@pytest.fixture
def made() -> Iterator[list[InProcessStream]]:
    streams: list[InProcessStream] = []
    yield streams
    for stream in streams:
        stream.close()


def _start(made: list[InProcessStream], dsn: str, directory: Path | None,
           stream: dict[str, Any] | None = None) -> CheckpointedStream:  # fmt: skip
    started = CheckpointedStream(one_stream_config(dsn, stream or _stream_config()), directory)
    made.append(started)
    started.poll()
    return started


def _written(made: list[InProcessStream], dsn: str, directory: Path,
             stream: dict[str, Any] | None = None) -> None:  # fmt: skip
    """A first run that aggregates the history and writes its checkpoint."""
    first = _start(made, dsn, directory, stream)
    assert first.load_result() == "missing"
    first.write()


def _assert_exact(started: InProcessStream, dsn: str, stream: dict[str, Any]) -> None:
    """Totals equal SQL, and equal what a fresh full aggregate exports (replica agreement),
    down to the reconcile's chunk checksums."""
    config = one_stream_config(dsn, stream)
    truth = sql_truth(dsn, config.streams["s"])
    assert started.total(SPENT) == sum(truth[SPENT].values(), Decimal(0))
    fresh = CheckpointedStream(config, None)
    try:
        fresh.poll()
        for metric in (SPENT, LATENCY):
            assert started.exported(metric) == fresh.exported(metric)
        assert started.stream.checksums == fresh.stream.checksums
    finally:
        fresh.close()


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "by_time"])
def test_a_restart_from_a_checkpoint_equals_sql_and_a_fresh_full_aggregate(
    db: str, tmp_path: Path, made: list[InProcessStream], keyed: bool
) -> None:
    stream = _stream_config(keyed)
    _written(made, db, tmp_path, stream)
    # while the exporter was down: newer than its horizon (the stream's window is 1m)
    _insert(db, 30, ago="20 seconds", credits="0.5", before="5 seconds")
    restarted = _start(made, db, tmp_path, stream)
    assert restarted.load_result() == "loaded"
    _assert_exact(restarted, db, stream)


def test_a_loaded_checkpoint_logs_its_two_start_up_phases_as_the_benchmark_reads_them(
    db: str, tmp_path: Path, made: list[InProcessStream], caplog: pytest.LogCaptureFixture
) -> None:
    """benchmarks/cebench/startup.py reports the checkpoint read and the comparison with
    the database from this line: a change of its wording must not go unnoticed."""
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    from cebench.startup import LOADED_LINE

    _written(made, db, tmp_path)
    with caplog.at_level(logging.INFO, logger="credit_exporter.sources.checkpoint"):
        restarted = _start(made, db, tmp_path)
    assert restarted.load_result() == "loaded"
    match = LOADED_LINE.search(caplog.text)
    assert match is not None, caplog.text
    assert int(match["chunks"]) > 0


def test_the_first_poll_after_loading_reads_only_rows_not_settled_at_the_loaded_horizon(
    db: str, tmp_path: Path, made: list[InProcessStream]
) -> None:
    _written(made, db, tmp_path)
    restarted = CheckpointedStream(one_stream_config(db, _stream_config()), tmp_path)
    made.append(restarted)
    loop = restarted.loop

    async def first_poll() -> Any:
        stream = restarted.stream
        assert stream.checkpoint is not None
        async with stream.lock:
            await stream.checkpoint.restore()
            return await stream.poll()

    _, split = loop.run_until_complete(first_poll())
    assert not split.whole_table
    assert not any(split.settled.values())  # nothing new: the base came from the file


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE ev SET credits = credits + 7 WHERE id = (SELECT max(id) FROM ev)",
        "DELETE FROM ev WHERE id = (SELECT max(id) - 3 FROM ev)",
        "UPDATE ev SET org = 'initech' WHERE id = (SELECT max(id) - 5 FROM ev)",
    ],
    ids=["updated", "deleted", "relabelled"],
)
def test_settled_rows_changed_while_down_are_found_and_the_stream_aggregates_again(
    db: str, tmp_path: Path, made: list[InProcessStream], change: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    _written(made, db, tmp_path)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(change)
    with caplog.at_level(logging.WARNING):
        restarted = _start(made, db, tmp_path)
    assert restarted.load_result() == "verify_failed"
    assert "aggregating the whole history" in caplog.text
    _assert_exact(restarted, db, _stream_config())


def test_a_checkpoint_of_a_dropped_and_recreated_database_is_not_used(
    db: str, pg_admin_dsn: str, tmp_path: Path, made: list[InProcessStream]
) -> None:
    _written(made, db, tmp_path)
    for stream in made:
        stream.close()
    made.clear()
    name = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(TABLE)
    _insert(db, 400)  # the same rows: only the database's identity tells
    restarted = _start(made, db, tmp_path)
    assert restarted.load_result() == "mismatch"
    _assert_exact(restarted, db, _stream_config())


def test_a_checkpoint_of_another_stream_definition_is_not_used(
    db: str, tmp_path: Path, made: list[InProcessStream]
) -> None:
    _written(made, db, tmp_path)
    changed = _stream_config(sql=SQL + " WHERE org <> 'acme'")
    restarted = _start(made, db, tmp_path, changed)
    assert restarted.load_result() == "mismatch"
    _assert_exact(restarted, db, changed)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
def test_a_damaged_checkpoint_is_not_used(
    db: str, tmp_path: Path, made: list[InProcessStream], damage: str
) -> None:
    _written(made, db, tmp_path)
    path = tmp_path / "s.checkpoint"
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        at = len(data) - 40
        data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    else:
        data = b""
    path.write_bytes(data)
    restarted = _start(made, db, tmp_path)
    assert restarted.load_result() == "corrupt"
    _assert_exact(restarted, db, _stream_config())


def test_a_missing_checkpoint_means_the_full_aggregate(
    db: str, tmp_path: Path, made: list[InProcessStream]
) -> None:
    started = _start(made, db, tmp_path / "not-yet")
    assert started.load_result() == "missing"
    _assert_exact(started, db, _stream_config())


def test_a_reader_never_sees_a_partial_checkpoint_while_it_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.checkpoint"
    contents = [b"a" * 300_000, b"b" * 10]
    write_atomically(path, contents[0])
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            write_atomically(path, contents[n % 2])
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            assert path.read_bytes() in contents
    finally:
        stop.set()
        thread.join()
    assert [p.name for p in tmp_path.iterdir()] == ["s.checkpoint"]  # no temporary left


def test_an_exporter_writes_checkpoints_periodically_and_at_shutdown_then_starts_from_them(
    db: str, tmp_path: Path
) -> None:
    config = one_stream_config(db, _stream_config())
    config = config.model_copy(
        update={"checkpoint": CheckpointConfig(directory=str(tmp_path), interval="1s")}
    )
    path = tmp_path / "s.checkpoint"

    async def run(then: str) -> tuple[Exporter, float]:
        exporter = Exporter(config)
        await exporter.start()
        try:
            for _ in range(200):
                if exporter.ready:
                    break
                await asyncio.sleep(0.05)
            assert exporter.ready
            if then == "periodic":
                for _ in range(100):  # the first write comes at most an interval after ready
                    if path.exists():
                        break
                    await asyncio.sleep(0.05)
                assert path.exists()
                path.unlink()
                await asyncio.sleep(1.5)
                assert path.exists()  # written again, an interval later
                path.unlink()
        finally:
            await exporter.stop()
        return exporter, exporter.registry.get_sample_value(
            LOADS, {"query": "s", "result": "loaded"}
        ) or 0.0

    _, loaded = asyncio.run(run("periodic"))
    assert loaded == 0
    assert decode(path.read_bytes())["stream"] == "s"  # written when it stopped
    _insert(db, 20, ago="5 minutes")
    _, loaded = asyncio.run(run("restart"))
    assert loaded == 1
    truth = sql_truth(db, config.streams["s"])
    body = decode(path.read_bytes())  # what the restarted exporter held when it stopped
    saved = sum((Decimal(v) for _, v in body["base"][SPENT]), Decimal(0))
    assert saved == sum(truth[SPENT].values(), Decimal(0))


def test_a_checkpoint_that_cannot_be_written_is_counted_and_logged(
    db: str, tmp_path: Path, made: list[InProcessStream], caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    started = _start(made, db, blocked)
    checkpoint = started.stream.checkpoint
    assert checkpoint is not None
    snapshot = checkpoint.snapshot()
    assert snapshot is not None
    with caplog.at_level(logging.ERROR):
        assert not checkpoint.write(snapshot)
    assert (
        started.sample("credit_exporter_checkpoint_writes_total", query="s", result="failed") == 1
    )
    assert "checkpoint.directory" in caplog.text


def test_older_history_changed_while_down_is_left_to_the_reconcile_cycle(
    db: str, tmp_path: Path, made: list[InProcessStream]
) -> None:
    """Start-up compares only the history that late rows land in (recent + downtime); a
    change older than that is found by the reconcile's cycle, as in a process that never
    restarted."""
    stream = _stream_config()
    stream["reconcile"] = {"recent": "1h", "chunk": "1h", "interval": "1h", "full_every": "1h",
                           "max_db_share": 1}  # fmt: skip
    _insert(db, 200, ago="1 day", before="2 days")
    _written(made, db, tmp_path, stream)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE ev SET credits = credits + 100"
            " WHERE id = (SELECT id FROM ev ORDER BY occurred_at LIMIT 1)"
        )
    restarted = _start(made, db, tmp_path, stream)
    assert restarted.load_result() == "loaded"
    assert restarted.reconcile()  # the next pass finds and folds it in
    _assert_exact(restarted, db, stream)


def test_the_reconcile_cycle_through_older_history_continues_after_a_restart(
    db: str, tmp_path: Path, made: list[InProcessStream]
) -> None:
    first = _start(made, db, tmp_path)
    assert first.stream.reconciler is not None
    first.stream.reconciler.cursor = 123_456  # where the cycle through older history is
    first.write()
    restarted = _start(made, db, tmp_path)
    assert restarted.load_result() == "loaded"
    assert restarted.stream.reconciler is not None
    assert restarted.stream.reconciler.cursor == 123_456


def test_a_checkpoint_with_a_valid_sha256_but_values_of_the_wrong_type_is_not_used(
    db: str, tmp_path: Path, made: list[InProcessStream]
) -> None:
    _written(made, db, tmp_path)
    path = tmp_path / "s.checkpoint"
    body = decode(path.read_bytes())
    body["horizon"]["key"] = ["date", "2020-01-01"]  # a key is an integer
    content = json.dumps(body).encode()
    header = {"format": "credit-exporter-checkpoint", "sha256": hashlib.sha256(content).hexdigest()}
    path.write_bytes(json.dumps(header).encode() + b"\n" + content)
    restarted = _start(made, db, tmp_path)
    assert restarted.load_result() == "corrupt"
    _assert_exact(restarted, db, _stream_config())

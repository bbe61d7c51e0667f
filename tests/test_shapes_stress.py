"""Real processes on schemas that are not ours: writer processes that commit within and
far beyond the stream's window and complete rows by UPDATE, an exporter restarted and a
second replica started mid-run. No scrape ever sees a counter go down, and once the
writers stop and a reconcile has run, both exporters equal SQL exactly."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from stream_support import sql_truth
from support import ExporterProcess, select, start_exporter, wait_until
from test_events_stress import MonotonicWatch

from credit_exporter import catalog
from credit_exporter.config import parse_config
from credit_exporter.demo.shapes import chatbot, gateway

WINDOW = "3s"
RECONCILE = {"interval": "2s", "full_every": "2s", "chunk": "1h", "max_db_share": 1.0}
FAST = {"interval": "500ms", "timeout": "500ms", "settle": "2s", "reconcile": RECONCILE}
WRITING_SECONDS = 20.0


def gateway_writer(dsn: str, seed: int, seconds: float, keys: list[str]) -> None:
    """Batches flushed within the window; now and then a retried batch ten minutes old
    and a spend correction of an old row."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn) as conn:
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.08:
                started = gateway.utc_now() - timedelta(minutes=10)
            else:
                started = gateway.utc_now() - timedelta(seconds=rng.uniform(0, 1.5))
            gateway.log_requests(conn, rng, keys, rng.randint(1, 5), started)
            if 0.08 <= roll < 0.13:
                conn.execute(
                    "UPDATE spend_logs SET spend = spend + 0.25 WHERE request_id = (SELECT"
                    ' request_id FROM spend_logs WHERE "startTime" < %s ORDER BY random() LIMIT 1)',
                    (gateway.utc_now() - timedelta(seconds=5),),
                )
            conn.commit()
            time.sleep(rng.uniform(0.05, 0.3))


def chatbot_writer(dsn: str, seed: int, seconds: float, apps: list[Any]) -> None:
    """Questions answered within the window, and now and then an answer that ends after
    it (its tokens and price arrive when the row is already settled)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn) as conn:
        while time.monotonic() < deadline:
            message = chatbot.ask(conn, rng, apps)
            conn.commit()
            time.sleep(rng.uniform(4.5, 6.0) if rng.random() < 0.15 else rng.uniform(0, 1.5))
            chatbot.answer(conn, rng, message)
            conn.commit()


def _gateway(dsn: str) -> tuple[dict[str, Any], Callable[..., None], list[Any]]:
    gateway.create(dsn)
    with psycopg.connect(dsn) as conn:
        keys = gateway.seed_teams_and_keys(conn, random.Random(1))
        gateway.log_requests(
            conn, random.Random(2), keys, 50, gateway.utc_now() - timedelta(days=1)
        )
    stream = gateway.spend_stream(arrives_within=WINDOW, **FAST)
    return {"databases": {"gateway": {"dsn": dsn}}, "streams": {"spend": stream}}, (
        gateway_writer
    ), keys  # fmt: skip


def _chatbot(dsn: str) -> tuple[dict[str, Any], Callable[..., None], list[Any]]:
    apps = chatbot.create(dsn)
    stream = chatbot.messages_stream(changes_within=WINDOW, arrives_within="1s", **FAST)
    return {"databases": {"chatbot": {"dsn": dsn}}, "streams": {"messages": stream}}, (
        chatbot_writer
    ), apps  # fmt: skip


def expected_samples(dsn: str, config: dict[str, Any]) -> dict[tuple[str, Any], float]:
    """What /metrics must show for the stream's metrics, from plain SQL."""
    parsed = parse_config(config)
    samples: dict[tuple[str, Any], float] = {}
    for stream in parsed.streams.values():
        for name, series in sql_truth(dsn, stream).items():
            labels = catalog.get(name).labels
            for values, value in series.items():
                key = tuple(sorted(zip(labels, values, strict=True)))
                if isinstance(value, tuple):
                    samples[(f"{name}_count", key)] = float(value[0])
                    samples[(f"{name}_sum", key)] = float(value[1])
                else:
                    samples[(name, key)] = float(value)
    return samples


def exported_samples(exporter: ExporterProcess, names: set[str]) -> dict[tuple[str, Any], float]:
    return {key: value for key, value in exporter.samples().items() if key[0] in names}


@pytest.mark.slow
@pytest.mark.parametrize("shape", [_gateway, _chatbot], ids=["gateway", "chatbot"])
def test_late_and_two_step_writers_restarts_and_a_replica_end_equal_to_sql(
    empty_db: str, exporters: list[ExporterProcess], tmp_path: Path, shape: Any
) -> None:
    config, writer, context = shape(empty_db)
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=writer, args=(empty_db, 100 + seed, WRITING_SECONDS, context))
               for seed in range(4)]  # fmt: skip
    first = start_exporter(config, tmp_path / "first")
    exporters.append(first)
    for process in writers:
        process.start()
    with MonotonicWatch(first) as watch_first:
        time.sleep(6)
    first.stop()  # a restart mid-run: the new process must pick up exactly
    restarted = start_exporter(config, tmp_path / "restarted")
    exporters.append(restarted)
    with MonotonicWatch(restarted) as watch_restarted:
        time.sleep(4)
        second = start_exporter(config, tmp_path / "second")
        exporters.append(second)
        with MonotonicWatch(second) as watch_second:
            for process in writers:
                process.join(60)
                assert process.exitcode == 0
            expected = expected_samples(empty_db, config)
            names = {name for name, _ in expected}
            for exporter in (restarted, second):
                try:
                    wait_until(lambda e=exporter: exported_samples(e, names) == expected, 30,
                               "every series == SQL after a reconcile")  # fmt: skip
                except AssertionError:
                    got = exported_samples(exporter, names)
                    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
                    raise AssertionError(
                        f"{list(wrong.items())[:5]}\n{exporter.log()[-2000:]}"
                    ) from None
    for watch in (watch_first, watch_restarted, watch_second):
        assert watch.scrapes > 20
        assert not watch.decreases, watch.decreases[:5]
    # the writers did write beyond the window, and the reconcile is what counted it
    folded = select(restarted.samples(), "credit_exporter_reconcile_difference_total",
                    direction="up")  # fmt: skip
    assert sum(folded.values()) > 0

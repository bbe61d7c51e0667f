"""Schemas that are not ours, under random sequences of what their products do.

Three shapes (exporter/credit_exporter/demo/shapes): an LLM gateway's spend log
(text ids, float spend, naive times, batch-delayed writes), a chatbot's messages
written in two steps (uuid ids, naive times, tokens and price filled in by an
UPDATE) and a prepaid ledger settled by UPDATE (text ids, epoch-second times).
Each step is one thing the product or an operator does: writes on time, writes
far later than the stream's window, completes rows, raises, lowers or deletes
settled rows, restarts the exporter. After every step and a reconcile, every
series equals SQL, or is above it by exactly what credit_exporter_counter_excess
reports (held decreases); no counter ever went down; the reconcile counted every
late and deleted row; a restarted or second exporter equals SQL exactly.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_support import InProcessStream, sql_truth

from credit_exporter.config import parse_config
from credit_exporter.demo.shapes import chatbot, gateway, ledger
from credit_exporter.sources.totals import HistogramValue

WINDOW_SECONDS = 1.0
RECONCILE = {"interval": "1h", "full_every": "1h", "chunk": "1h", "max_db_share": 1.0}
PROPERTY = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _size(value: Any) -> Decimal:
    if isinstance(value, HistogramValue):
        return Decimal(value.count)
    if isinstance(value, tuple):  # sql_truth's (count, sum) of a histogram
        return Decimal(value[0])
    return Decimal(value)


def _same(exported: Any, truth: Any) -> bool:
    if isinstance(exported, HistogramValue):
        return (exported.count, exported.total) == truth
    return bool(exported == truth)


class Checked:
    """One exporter instance of a stream, checked against SQL after every step."""

    def __init__(self, dsn: str, database: str, stream: dict[str, Any]) -> None:
        self.dsn = dsn
        self.config = parse_config(
            {"databases": {database: {"dsn": dsn}}, "streams": {"s": stream}}
        )
        self.instance = self._start()
        self.late = 0  # rows written beyond the window since this instance started
        self.deleted = 0

    def _start(self) -> InProcessStream:
        instance = InProcessStream(self.config)
        instance.poll()
        return instance

    def close(self) -> None:
        self.instance.close()

    def restart(self) -> None:
        """A new process: it must equal SQL exactly, whatever the old one held."""
        self.instance.close()
        self.instance = self._start()
        self.late = self.deleted = 0
        self.assert_equals_sql()

    def step(self) -> None:
        before = {m: dict(series) for m, series in self.instance.stream.exported.items()}
        self.instance.poll()
        self.instance.reconcile()
        self.assert_never_decreased(before)
        self.assert_sql_or_reported_excess()
        s = self.instance
        assert s.sample("credit_exporter_reconcile_rows_total", query="s", reason="late") == (
            self.late
        )
        assert s.sample("credit_exporter_reconcile_rows_total", query="s", reason="deleted") == (
            self.deleted
        )

    def horizon(self) -> Any:
        """The time up to which rows are settled: a row older is late for the polls."""
        horizon = self.instance.stream.horizon
        assert horizon is not None and horizon.time is not None
        return horizon.time

    def truth(self) -> dict[str, dict[tuple[str, ...], Any]]:
        return sql_truth(self.dsn, self.config.streams["s"])

    def assert_never_decreased(self, before: dict[str, dict[Any, Any]]) -> None:
        for metric, series in before.items():
            now = self.instance.stream.exported[metric]
            for labels, value in series.items():
                assert _size(now[labels]) >= _size(value), (metric, labels)

    def assert_sql_or_reported_excess(self) -> None:
        exported = self.instance.stream.exported
        for metric, series in self.truth().items():
            assert set(series) <= set(exported[metric]), (metric, set(series) - set(exported))
            excess = Decimal(0)
            for labels, value in exported[metric].items():
                truth = series.get(labels)
                if truth is not None and _same(value, truth):
                    continue
                above = _size(value) - (_size(truth) if truth is not None else 0)
                assert above >= 0, (metric, labels, value, truth)
                excess += above
            reported = self.instance.sample("credit_exporter_counter_excess", metric=metric)
            assert math.isclose(reported, float(excess), rel_tol=1e-12, abs_tol=1e-9), (
                metric, reported, excess,
            )  # fmt: skip

    def assert_equals_sql(self) -> None:
        exported = self.instance.stream.exported
        for metric, series in self.truth().items():
            got = {k: v for k, v in exported[metric].items()}
            assert set(got) == set(series), metric
            assert all(_same(got[k], series[k]) for k in series), metric

    def assert_second_replica_differs_by_the_excess(self) -> None:
        second = InProcessStream(self.config)
        try:
            second.poll()
            for metric, series in self.instance.stream.exported.items():
                gap = sum(
                    (_size(v) - _size(second.stream.exported[metric].get(k, Decimal(0)))
                     for k, v in series.items()),
                    Decimal(0),
                )  # fmt: skip
                reported = self.instance.sample("credit_exporter_counter_excess", metric=metric)
                assert math.isclose(reported, float(gap), rel_tol=1e-12, abs_tol=1e-9), metric
        finally:
            second.close()


def run(
    checked: Checked, steps: list[tuple[str, int]], actions: dict[str, Callable[[int], None]]
) -> None:
    try:
        for action, number in steps:
            if action == "restart":
                checked.restart()
                continue
            if action == "wait":
                time.sleep(WINDOW_SECONDS + 0.1)
            else:
                actions[action](number)
            checked.step()
        checked.assert_second_replica_differs_by_the_excess()
    finally:
        checked.close()


def steps_of(*actions: str) -> st.SearchStrategy[list[tuple[str, int]]]:
    return st.lists(
        st.tuples(st.sampled_from([*actions, "restart", "wait"]), st.integers(0, 2**16)),
        min_size=1, max_size=8,
    )  # fmt: skip


def execute(dsn: str, statement: str, params: Any = None) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement, params).rowcount


# --- the LLM gateway -----------------------------------------------------------------------


@PROPERTY
@given(steps=steps_of("flush", "late_batch", "raise", "lower", "delete"))
def test_a_gateway_spend_log_equals_sql_after_every_step(make_database, steps) -> None:
    dsn = make_database()
    gateway.create(dsn)
    rng = random.Random(7)
    with psycopg.connect(dsn) as conn:
        keys = gateway.seed_teams_and_keys(conn, rng)
        gateway.log_requests(conn, rng, keys, 20, gateway.utc_now() - timedelta(hours=30))
        gateway.log_requests(conn, rng, keys, 2, gateway.utc_now())  # the horizon reaches now
    checked = Checked(dsn, "gateway", gateway.spend_stream(
        arrives_within=f"{WINDOW_SECONDS:g}s", reconcile=RECONCILE))  # fmt: skip

    def flush(n: int) -> None:
        with psycopg.connect(dsn) as conn:
            gateway.log_requests(conn, rng, keys, 1 + n % 5, gateway.utc_now())

    def late_batch(n: int) -> None:  # a failed flush retried hours later
        count, started = 1 + n % 4, gateway.utc_now() - timedelta(hours=1 + n % 20)
        assert started < checked.horizon()
        with psycopg.connect(dsn) as conn:
            gateway.log_requests(conn, rng, keys, count, started)
        checked.late += count

    def change(factor: str) -> Callable[[int], None]:
        def apply(n: int) -> None:
            execute(dsn, f"UPDATE spend_logs SET spend = spend * {factor} + 0.001 WHERE request_id"
                    " = (SELECT request_id FROM spend_logs ORDER BY request_id OFFSET %s LIMIT 1)",
                    (n % 20,))  # fmt: skip

        return apply

    def delete(n: int) -> None:
        checked.deleted += execute(
            dsn,
            "DELETE FROM spend_logs WHERE request_id = (SELECT request_id FROM spend_logs WHERE"
            ' "startTime" < %s ORDER BY request_id OFFSET %s LIMIT 1)',
            (gateway.utc_now() - timedelta(seconds=5), n % 10),
        )

    run(checked, steps, {"flush": flush, "late_batch": late_batch, "raise": change("2"),
                         "lower": change("0.5"), "delete": delete})  # fmt: skip


# --- the chatbot's two-step messages -----------------------------------------------------------


@PROPERTY
@given(steps=steps_of("ask", "answer", "ask_long_ago", "delete"))
def test_chatbot_messages_written_in_two_steps_equal_sql_after_every_step(
    make_database, steps
) -> None:
    dsn = make_database()
    apps = chatbot.create(dsn)
    rng = random.Random(11)
    with psycopg.connect(dsn) as conn:
        chatbot.answer(conn, rng, chatbot.ask(conn, rng, apps))  # the horizon reaches now
    checked = Checked(dsn, "chatbot", chatbot.messages_stream(
        changes_within=f"{WINDOW_SECONDS:g}s", arrives_within=f"{WINDOW_SECONDS:g}s",
        reconcile=RECONCILE))  # fmt: skip

    def ask(n: int) -> None:
        with psycopg.connect(dsn) as conn:
            for _ in range(1 + n % 3):
                chatbot.ask(conn, rng, apps)

    def ask_long_ago(n: int) -> None:  # an import of old conversations: far beyond the window
        with psycopg.connect(dsn) as conn:
            for _ in range(1 + n % 3):
                asked = chatbot.old(timedelta(hours=2 + n % 5))
                assert asked < checked.horizon()
                chatbot.ask(conn, rng, apps, asked)
                checked.late += 1

    def answer(n: int) -> None:  # the oldest unanswered question, young or old
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT id FROM messages WHERE total_price IS NULL ORDER BY created_at, id"
                " OFFSET %s LIMIT 1", (n % 3,),
            ).fetchone()  # fmt: skip
            if row is not None:
                chatbot.answer(conn, rng, row[0])

    def delete(n: int) -> None:
        checked.deleted += execute(
            dsn,
            "DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE created_at < %s"
            " ORDER BY id OFFSET %s LIMIT 1)",
            (chatbot.old(timedelta(seconds=5)), n % 5),
        )

    run(checked, steps, {"ask": ask, "answer": answer, "ask_long_ago": ask_long_ago,
                         "delete": delete})  # fmt: skip


# --- the prepaid ledger --------------------------------------------------------------------


@PROPERTY
@given(steps=steps_of("open", "settle", "open_long_ago", "delete"))
def test_a_ledger_settled_by_update_equals_sql_after_every_step(make_database, steps) -> None:
    dsn = make_database()
    ledger.create(dsn)
    rng = random.Random(13)
    with psycopg.connect(dsn) as conn:
        ledger.open_transaction(conn, rng)  # the horizon reaches now
    checked = Checked(dsn, "ledger", ledger.transactions_stream(
        changes_within=f"{WINDOW_SECONDS:g}s", arrives_within=f"{WINDOW_SECONDS:g}s",
        reconcile=RECONCILE))  # fmt: skip

    def open_(n: int) -> None:
        with psycopg.connect(dsn) as conn:
            for _ in range(1 + n % 3):
                ledger.open_transaction(conn, rng)

    def open_long_ago(n: int) -> None:
        with psycopg.connect(dsn) as conn:
            for _ in range(1 + n % 3):
                created = int(time.time()) - 3600 * (1 + n % 30)
                assert created < checked.horizon()
                ledger.open_transaction(conn, rng, created)
                checked.late += 1

    def settle(n: int) -> None:  # a pending transaction clears, whatever its age
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT id FROM credit_transactions WHERE status = 'pending' ORDER BY created, id"
                " OFFSET %s LIMIT 1", (n % 3,),
            ).fetchone()  # fmt: skip
            if row is not None:
                ledger.settle(conn, rng, row[0])

    def delete(n: int) -> None:
        checked.deleted += execute(
            dsn,
            "DELETE FROM credit_transactions WHERE id = (SELECT id FROM credit_transactions"
            " WHERE created < %s ORDER BY id OFFSET %s LIMIT 1)",
            (int(time.time()) - 5, n % 5),
        )

    run(checked, steps, {"open": open_, "settle": settle, "open_long_ago": open_long_ago,
                         "delete": delete})  # fmt: skip

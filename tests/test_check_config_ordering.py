"""check-config --connect judges each stream's key and time columns before deployment.

One database holds every table shape. The real command runs twice, at once:
over the streams that must pass (notes at most) and over those that must fail
(plus one good stream). Each test reads the lines of its own stream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import yaml

from credit_exporter import catalog
from credit_exporter.sources.ordering import DATE_OID, time_column
from credit_exporter.sources.ordering_check import time_reading

SCHEMA = """
CREATE TABLE serial_events (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON serial_events (at);
INSERT INTO serial_events (at) VALUES ('2026-12-03 14:10:00+00');

CREATE TABLE identity_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                              at timestamptz NOT NULL);
CREATE INDEX ON identity_events (at);

CREATE TABLE text_keyed (request_id text PRIMARY KEY, at timestamptz NOT NULL);
CREATE INDEX ON text_keyed (at);

CREATE TABLE uuid_keyed (id uuid PRIMARY KEY, at timestamptz NOT NULL);
CREATE INDEX ON uuid_keyed (at);

CREATE TABLE app_ids (id integer PRIMARY KEY, at timestamptz NOT NULL);
CREATE INDEX ON app_ids (at);

CREATE SEQUENCE cached_ids CACHE 20;
CREATE TABLE cached (id bigint PRIMARY KEY DEFAULT nextval('cached_ids'),
                     at timestamptz NOT NULL);
CREATE INDEX ON cached (at);

CREATE TABLE spend_log (request_id text PRIMARY KEY, "startTime" timestamp NOT NULL);
CREATE INDEX ON spend_log ("startTime");
INSERT INTO spend_log VALUES ('a', '2026-12-03 14:10:00');

CREATE TABLE text_dates (id bigserial PRIMARY KEY, date text NOT NULL);
CREATE INDEX ON text_dates (date);

CREATE TABLE unindexed (request_id text, at timestamptz NOT NULL);

CREATE TABLE nullable (request_id text, at timestamptz);
CREATE INDEX ON nullable (at);

CREATE TABLE keyed_unindexed_time (id bigserial PRIMARY KEY, at timestamptz NOT NULL);

CREATE TABLE unindexed_key (id bigserial, at timestamptz NOT NULL);
CREATE INDEX ON unindexed_key (at);

CREATE TABLE text_both (request_id text PRIMARY KEY, date text NOT NULL);

CREATE VIEW serial_view AS SELECT id, at, id * 2 AS doubled FROM serial_events;
"""


# every stream of one config needs a metric of its own; its labels are constants
COUNTERS = iter(m for m in catalog.event_metrics() if m.type is catalog.MetricType.COUNTER)


def stream(columns: str, table: str, time: str = "at", **settings: Any) -> dict[str, Any]:
    """``SELECT columns FROM table`` as a stream, with constant label columns."""
    metric = next(COUNTERS)
    labels = ", ".join(f"'x' AS {label}" for label in metric.labels)
    return {"database": "billing", "sql": f"SELECT {columns}, {labels} FROM {table}",
            "time": time, **settings,
            "metrics": [{"metric": metric.name, "labels": list(metric.labels)}]}  # fmt: skip


PASSING = {
    "bigserial": stream("id, at", "serial_events", key="id"),
    "identity": stream("id, at", "identity_events", key="id"),
    "expression_key": stream("id * 1 AS id, at", "serial_events", key="id"),
    "view_key": stream("id, at", "serial_view", key="id"),
    "view_computed_key": stream("doubled, at", "serial_view", key="doubled"),
    "unindexed_key": stream("id, at", "unindexed_key", key="id"),
    "spend_log": stream('"startTime"', "spend_log", time="startTime", arrives_within="2m"),
    "unindexed_time": stream("at", "unindexed"),
    "nullable_time": stream("at", "nullable"),
    "keyed_unindexed_time": stream("id, at", "keyed_unindexed_time", key="id"),
}
FAILING = {
    "text_key": stream("request_id, at", "text_keyed", key="request_id"),
    "uuid_key": stream("id, at", "uuid_keyed", key="id"),
    "app_ids": stream("id, at", "app_ids", key="id"),
    "cache_20": stream("id, at", "cached", key="id"),
    "text_time": stream("id, date", "text_dates", time="date", key="id"),
    "text_both": stream("request_id, date", "text_both", time="date", key="request_id"),
    "good_among_failing": stream("id, at", "serial_events", key="id"),
}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str

    def stream(self, name: str) -> list[str]:
        """A stream's lines: its ok/FAIL line and the indented lines under it."""
        lines = self.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line[5:].startswith(f"{name}: "))
        end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] != " "), len(lines))
        return lines[start:end]

    def status(self, name: str) -> str:
        return self.stream(name)[0]

    def notes(self, name: str) -> list[str]:
        return [line.removeprefix("     note: ") for line in self.stream(name)[1:]
                if line.startswith("     note: ")]  # fmt: skip


@pytest.fixture(scope="module")
def runs(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Run]:
    """``check-config --connect`` over the passing and over the failing streams."""
    dsn = make_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
    directory = tmp_path_factory.mktemp("configs")
    processes = {}
    for name, streams in (("passing", PASSING), ("failing", FAILING)):
        path = directory / f"{name}.yaml"
        config = {"databases": {"billing": {"dsn_env": "BILLING_DSN"}}, "streams": streams}
        path.write_text(yaml.safe_dump(config))
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "credit_exporter", "check-config", "--connect", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "BILLING_DSN": dsn},
        )  # fmt: skip
    return {name: Run(process.wait(60), process.communicate()[0])
            for name, process in processes.items()}  # fmt: skip


@pytest.fixture(scope="module")
def passing(runs: dict[str, Run]) -> Run:
    return runs["passing"]


@pytest.fixture(scope="module")
def failing(runs: dict[str, Run]) -> Run:
    return runs["failing"]


def test_a_bigserial_key_is_ok_and_names_its_sequence(passing: Run) -> None:
    assert passing.status("bigserial").startswith(
        'ok   bigserial: stream ordered by key "id" (bigint, from sequence'
        ' public.serial_events_id_seq) with time "at" (timestamp with time zone); newest 1, '
    ), passing.stdout
    assert passing.notes("bigserial") == []


def test_an_identity_key_is_ok_and_names_its_sequence(passing: Run) -> None:
    status = passing.status("identity")
    assert status.startswith("ok   identity: "), passing.stdout
    assert 'key "id" (bigint, identity, sequence public.identity_events_id_seq)' in status
    assert "; no rows yet, " in status
    assert passing.notes("identity") == []


def test_a_text_key_fails_and_says_to_order_by_time(failing: Run) -> None:
    status = failing.status("text_key")
    assert status.startswith(
        "FAIL text_key: validation: key column 'request_id' (public.text_keyed.request_id)"
        " is of type text;"
    ), failing.stdout
    assert "remove `key` and let the stream be ordered by `time`, with `arrives_within`" in status


def test_a_uuid_key_fails_and_says_to_order_by_time(failing: Run) -> None:
    status = failing.status("uuid_key")
    assert status.startswith(
        "FAIL uuid_key: validation: key column 'id' (public.uuid_keyed.id) is of type uuid;"
    ), failing.stdout
    assert "remove `key` and let the stream be ordered by `time`, with `arrives_within`" in status


def test_an_integer_key_no_sequence_feeds_fails(failing: Run) -> None:
    status = failing.status("app_ids")
    assert status.startswith(
        'FAIL app_ids: ordering: key "id" (public.app_ids.id, integer, no default) is fed by no'
        " sequence or identity column: ids the application assigns are not in commit order"
    ), failing.stdout
    assert "remove `key` and let the stream be ordered by `time`, with `arrives_within`" in status


def test_a_key_sequence_with_cache_20_fails(failing: Run) -> None:
    status = failing.status("cache_20")
    assert status.startswith(
        'FAIL cache_20: ordering: key "id" (public.cached.id) is fed by sequence'
        " public.cached_ids with CACHE 20:"
    ), failing.stdout
    assert "ALTER SEQUENCE public.cached_ids CACHE 1, or remove `key`" in status


def test_an_unusable_key_and_time_are_both_named(failing: Run) -> None:
    lines = failing.stream("text_both")
    assert lines[0].startswith(
        "FAIL text_both: validation: time column 'date' (public.text_both.date) is of type text;"
    ), failing.stdout
    assert lines[1].startswith(
        "     fail: validation: key column 'request_id' (public.text_both.request_id) is of"
        " type text;"
    ), failing.stdout


def test_a_key_no_index_starts_with_gets_a_note(passing: Run) -> None:
    assert passing.status("unindexed_key").startswith("ok   unindexed_key: "), passing.stdout
    assert passing.notes("unindexed_key") == [
        'no index on public.unindexed_key starts with key "id" (public.unindexed_key.id): every'
        " poll would scan the table; CREATE INDEX ON public.unindexed_key (id)"
    ]


def test_a_key_from_an_expression_cannot_be_verified_and_is_only_a_note(passing: Run) -> None:
    assert passing.status("expression_key").startswith(
        'ok   expression_key: stream ordered by key "id" (bigint, not verified)'
    ), passing.stdout
    [note] = passing.notes("expression_key")
    assert note.startswith(
        'key "id" is an expression, not a table column: that a sequence feeds it in commit'
        " order cannot be verified"
    )


def test_a_view_column_is_traced_to_its_table_and_sequence(passing: Run) -> None:
    status = passing.status("view_key")
    assert 'key "id" (bigint, from sequence public.serial_events_id_seq)' in status
    assert passing.notes("view_key") == []


def test_a_views_computed_key_cannot_be_verified(passing: Run) -> None:
    [note] = passing.notes("view_computed_key")
    assert note.startswith('key "doubled" is a computed column of view public.serial_view:')
    assert "cannot be verified" in note


def test_a_naive_timestamp_time_is_ok_and_read_in_utc(passing: Run) -> None:
    assert passing.status("spend_log").startswith(
        'ok   spend_log: stream ordered by time "startTime" (timestamp without time zone,'
        " read in UTC), settled 2m after its time; newest 2026-12-03 14:10:00, "
    ), passing.stdout
    assert passing.notes("spend_log") == []


def test_a_text_time_column_fails_naming_its_type(failing: Run) -> None:
    assert failing.status("text_time").startswith(
        "FAIL text_time: validation: time column 'date' (public.text_dates.date) is of type text;"
        " it must be timestamptz, timestamp, date, or an epoch number"
    ), failing.stdout


def test_a_time_ordered_stream_without_a_time_index_gets_a_note(passing: Run) -> None:
    assert passing.notes("unindexed_time") == [
        'no index on public.unindexed starts with time "at" (public.unindexed.at): steady polls'
        " and the reconcile would scan the table; CREATE INDEX ON public.unindexed (at)"
    ]


def test_a_nullable_time_gets_a_note(passing: Run) -> None:
    [note] = passing.notes("nullable_time")
    assert note.startswith(
        'time "at" (public.nullable.at) is nullable: rows with a NULL time are never settled'
        " by time;"
    )


def test_a_keyed_stream_without_a_time_index_gets_a_reconcile_note(passing: Run) -> None:
    assert passing.notes("keyed_unindexed_time") == [
        'no index on public.keyed_unindexed_time starts with time "at"'
        " (public.keyed_unindexed_time.at): the background reconcile chunks settled history by"
        " it and will scan the table; CREATE INDEX ON public.keyed_unindexed_time (at)"
    ]


def test_notes_alone_exit_0(passing: Run) -> None:
    assert passing.code == 0, passing.stdout
    assert not [line for line in passing.stdout.splitlines() if "FAIL" in line]


def test_a_failing_stream_exits_1_and_the_others_still_report(failing: Run) -> None:
    assert failing.code == 1, failing.stdout
    assert failing.status("good_among_failing").startswith("ok   good_among_failing: ")


def test_a_date_time_is_read_as_whole_days_in_the_stream_zone() -> None:
    time = time_column("day", DATE_OID, "date", "Europe/Berlin", "s")
    assert time_reading(time) == "date, whole days in Europe/Berlin"


def test_an_epoch_time_is_read_in_its_unit() -> None:
    time = time_column("ts", 20, "bigint", "UTC", "ms")
    assert time_reading(time) == "bigint epoch in ms"

"""``credit-exporter demo-data``: demo data into a database the user runs (Compose seeds
its PostgreSQL with it), then optionally live traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from credit_exporter.cli import main


def _events(dsn: str) -> tuple[int, object]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), max(id) FROM usage_events").fetchone()
    assert row is not None
    return int(row[0]), row[1]


def test_loads_the_schema_and_days_of_demo_data_into_an_empty_database(
    empty_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-data", "--dsn", empty_db, "--days", "2"]) == 0
    with psycopg.connect(empty_db) as conn:
        span = conn.execute(
            "SELECT extract(epoch FROM max(occurred_at) - min(occurred_at)) / 86400, count(*)"
            " FROM usage_events"
        ).fetchone()
    assert span is not None and 1.9 < float(span[0]) <= 2 and span[1] > 1000
    assert f"{span[1]:,} usage events" in capsys.readouterr().out


def test_keep_existing_leaves_loaded_data_untouched(
    empty_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-data", "--dsn", empty_db, "--days", "1"]) == 0
    before = _events(empty_db)
    assert main(["demo-data", "--dsn", empty_db, "--days", "3", "--keep-existing"]) == 0
    assert _events(empty_db) == before
    assert "already loaded; kept" in capsys.readouterr().out


def test_dsn_comes_from_the_environment_variable_the_example_config_uses(
    empty_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDIT_EXPORTER_DSN", empty_db)
    assert main(["demo-data", "--days", "1"]) == 0
    assert _events(empty_db)[0] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "0"], "--days: must be at least 1, got 0"),
        (["--live-speed", "0"], "--live-speed: must be positive"),
        ([], "--dsn: no database given"),
    ],
    ids=["days", "live-speed", "no-dsn"],
)
def test_bad_arguments_exit_2_naming_the_flag(
    args: list[str],
    message: str,
    empty_db: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDIT_EXPORTER_DSN", raising=False)
    dsn = [] if message.startswith("--dsn") else ["--dsn", empty_db]
    assert main(["demo-data", *dsn, *args]) == 2
    assert message in capsys.readouterr().err


def test_live_keeps_adding_events_until_sigterm_then_exits_0(empty_db: str) -> None:
    assert main(["demo-data", "--dsn", empty_db, "--days", "1"]) == 0
    before = _events(empty_db)[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "credit_exporter", "demo-data", "--dsn", empty_db,
         "--keep-existing", "--live", "--live-speed", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _events(empty_db)[0] <= before and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _events(empty_db)[0] > before, "no live events written"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output.decode()

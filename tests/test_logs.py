"""--log.format and --log.level: every stderr line of the real exporter is one parseable event."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import Service, launch, wait_until

from credit_exporter.logs import LogfmtFormatter

LEVELS = {"debug", "info", "warn", "error"}
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)(?:\s+|$)')
FAILING_QUERY = {
    "database": "billing", "interval": "1s", "timeout": "1s",
    "sql": "SELECT * FROM no_such_table",
    "metrics": [{"metric": "credit_model_multiplier_ratio", "value": "multiplier",
                 "labels": ["gen_ai_request_model", "gen_ai_provider_name", "tier"]}],
}  # fmt: skip


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse one logfmt line strictly: the pairs must cover the whole line."""
    fields: dict[str, str] = {}
    position = 0
    for match in LOGFMT_PAIR.finditer(line):
        assert match.start() == position, f"not logfmt at column {position}: {line!r}"
        key, value = match.groups()
        if value.startswith('"'):
            value = json.loads(value)  # logfmt's escapes are a subset of JSON's
        fields[key] = value
        position = match.end()
    assert position == len(line), f"not logfmt at column {position}: {line!r}"
    return fields


def run_exporter(dsn: str, workdir: Path, *flags: str) -> list[str]:
    """Run the exporter until its failing query has been logged; return its stderr lines."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "databases": {"billing": {"dsn": dsn}}, "queries": {"broken": FAILING_QUERY},
    }))  # fmt: skip
    process, url, log_path = launch(
        "exporter",
        lambda port: [sys.executable, "-m", "credit_exporter", "run", "--config", str(config),
                      "--listen", f"127.0.0.1:{port}", *flags],
        workdir, "/-/healthy",
    )  # fmt: skip
    service = Service(process, url, log_path)
    try:
        wait_until(lambda: "no_such_table" in service.log(), 20, "the failing query to be logged")
    finally:
        service.stop()
    return [line for line in service.log().splitlines() if line]


def _check_event(event: dict[str, Any], line: str) -> None:
    assert {"time", "level", "logger", "msg"} <= set(event), line
    assert TIME.match(event["time"]), line
    assert event["level"] in LEVELS, line


def test_json_format_writes_one_json_object_per_line(schema_db: str, tmp_path: Path) -> None:
    lines = run_exporter(schema_db, tmp_path, "--log.format", "json")
    events = []
    for line in lines:
        event = json.loads(line)
        assert isinstance(event, dict), line
        _check_event(event, line)
        events.append(event)
    assert any(e["level"] == "info" and e["msg"].startswith("serving /metrics") for e in events)
    failure = next(e for e in events if "no_such_table" in e["msg"])
    assert failure["level"] == "warn"
    assert failure["logger"] == "credit_exporter.sources.state"
    assert 'relation "no_such_table" does not exist' in failure["msg"]


def test_logfmt_is_the_default_and_quotes_values(schema_db: str, tmp_path: Path) -> None:
    lines = run_exporter(schema_db, tmp_path)
    events = [parse_logfmt(line) for line in lines]
    for event, line in zip(events, lines, strict=True):
        _check_event(event, line)
    assert list(events[0])[:4] == ["time", "level", "logger", "msg"]
    failure = next(e for e in events if "no_such_table" in e["msg"])
    assert 'relation "no_such_table" does not exist' in failure["msg"]


@pytest.mark.parametrize("flag", ["--log.level", "--log-level"])
def test_level_flag_drops_less_severe_events(schema_db: str, tmp_path: Path, flag: str) -> None:
    lines = run_exporter(schema_db, tmp_path, flag, "warn", "--log.format", "json")
    levels = {json.loads(line)["level"] for line in lines}
    assert levels == {"warn"}, lines  # the info line "serving /metrics" is gone


def _format(message: str, exc: bool = False) -> str:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, None, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    return LogfmtFormatter().format(record)


@pytest.mark.parametrize(
    "message",
    ["plain", "two words", 'a "quoted" word', "back\\slash", "key=value", "line\nbreak",
     "tab\there", "", "ünïcode ✓", "nul\x00bell\x07"],
)  # fmt: skip
def test_logfmt_values_round_trip(message: str) -> None:
    line = _format(message)
    assert "\n" not in line
    assert parse_logfmt(line)["msg"] == message


def test_logfmt_puts_a_traceback_on_the_same_line() -> None:
    line = _format("failed", exc=True)
    assert "\n" not in line
    assert "ValueError: boom" in parse_logfmt(line)["exc"]


def test_debug_level_logs_each_state_poll_with_its_rows_and_time(
    empty_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    from test_bad_values import run_state_query

    with caplog.at_level(logging.DEBUG, logger="credit_exporter.sources.state"):
        run_state_query(empty_db, "VALUES ('a', 'plan', 1), ('b', 'plan', 2)")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("query q:")]
    assert re.fullmatch(r"query q: 2 rows in \d+\.\d{3}s, 2 series", line), line

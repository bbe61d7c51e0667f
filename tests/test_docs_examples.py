"""The example configs in docs/examples are the shapes' own mappings, and they work."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from stream_support import sql_truth
from support import select, start_exporter, wait_until

from credit_exporter import catalog
from credit_exporter.config import Config, parse_config
from credit_exporter.demo.shapes import chatbot, gateway, ledger

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _gateway_db(dsn: str) -> None:
    gateway.create(dsn)
    rng = random.Random(3)
    with psycopg.connect(dsn) as conn:
        keys = gateway.seed_teams_and_keys(conn, rng)
        gateway.log_requests(conn, rng, keys, 40, gateway.utc_now() - timedelta(hours=5))
        gateway.log_requests(conn, rng, keys, 10, gateway.utc_now())


def _chatbot_db(dsn: str) -> None:
    apps = chatbot.create(dsn)
    rng = random.Random(5)
    with psycopg.connect(dsn) as conn:
        for _ in range(12):
            chatbot.answer(conn, rng, chatbot.ask(conn, rng, apps))
        chatbot.ask(conn, rng, apps)  # a question still unanswered


def _ledger_db(dsn: str) -> None:
    ledger.create(dsn)
    rng = random.Random(9)
    with psycopg.connect(dsn) as conn:
        for _ in range(12):
            ledger.settle(conn, rng, ledger.open_transaction(conn, rng))


# example file, its database and DSN variable, the shape's own mappings, a loader
CASES: list[tuple[str, str, str, dict[str, Any], Callable[[str], None]]] = [
    ("gateway.yaml", "gateway", "GATEWAY_DSN",
     {"queries": gateway.BUDGET_QUERIES, "streams": {"spend": gateway.spend_stream()}},
     _gateway_db),
    ("chatbot.yaml", "chatbot", "CHATBOT_DSN",
     {"streams": {"messages": chatbot.messages_stream()}}, _chatbot_db),
    ("ledger.yaml", "ledger", "LEDGER_DSN",
     {"streams": {"transactions": ledger.transactions_stream()}}, _ledger_db),
]  # fmt: skip
IDS = [case[0] for case in CASES]


def _comparable(config: Config) -> dict[str, Any]:
    """The parsed sources, SQL compared word by word (the docs may lay it out freely)."""
    dumped = config.model_dump(include={"queries", "streams"})
    for kind in ("queries", "streams"):
        for source in dumped[kind].values():
            source["sql"] = " ".join(source["sql"].split())
    return dumped


@pytest.mark.parametrize(("name", "database", "variable", "shape", "load"), CASES, ids=IDS)
def test_an_example_config_is_the_shapes_own_mapping(
    name: str, database: str, variable: str, shape: dict[str, Any], load: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, "dbname=x")
    documented = parse_config(yaml.safe_load((EXAMPLES / name).read_text()))
    tested = parse_config({"databases": {database: {"dsn_env": variable}}, **shape})
    assert _comparable(documented) == _comparable(tested)


@pytest.mark.parametrize(("name", "database", "variable", "shape", "load"), CASES, ids=IDS)
def test_check_config_connect_passes_an_example_on_its_schema(
    empty_db: str, name: str, database: str, variable: str, shape: dict[str, Any], load: Any
) -> None:
    load(empty_db)
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", str(EXAMPLES / name),
         "--connect"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin", variable: empty_db},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout and "note:" not in run.stdout, run.stdout


def test_the_gateway_example_serves_every_series_equal_to_sql(
    empty_db: str, tmp_path: Path
) -> None:
    _gateway_db(empty_db)
    config = yaml.safe_load((EXAMPLES / "gateway.yaml").read_text())
    config["databases"]["gateway"] = {"dsn": empty_db}
    exporter = start_exporter(config, tmp_path)
    try:
        truth = sql_truth(empty_db, parse_config(config).streams["spend"])
        expected = {
            (name, tuple(sorted(zip(catalog.get(name).labels, labels, strict=True)))): float(v)
            for name, series in truth.items()
            if catalog.get(name).type is catalog.MetricType.COUNTER
            for labels, v in series.items()
        }

        def served() -> dict[Any, float]:
            samples = exporter.samples()
            return {k: v for name in truth for k, v in _named(samples, name).items()}

        wait_until(lambda: served() == expected, 20, "every counter series == SQL")
        assert select(exporter.samples(), "credit_budget_limit_credits") == {}  # none set
    finally:
        exporter.stop()


def _named(samples: dict[Any, float], name: str) -> dict[Any, float]:
    if catalog.get(name).type is not catalog.MetricType.COUNTER:
        return {}
    return {(name, key): value for key, value in select(samples, name).items()}

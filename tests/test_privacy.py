"""Privacy: user identifiers hashed with a keyed HMAC, and labels dropped, per metric.

A real exporter runs config.example.yaml over the demo database with the user
label hashed (and the budgets' scope_id, which holds e-mails for user budgets)
and the user label dropped from one counter; the test recomputes every value
from SQL and HMAC itself.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support import ExporterProcess, http_get, select, start_exporter, wait_until

from credit_exporter.config import ConfigError, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
KEY = "test-hmac-key-0123456789abcdef"
KEY_ENV = "CREDIT_EXPORTER_TEST_HMAC_KEY"


def expected_hash(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def private_config() -> dict[str, Any]:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["privacy"] = {"hmac_key_env": KEY_ENV}
    for source in [*config["queries"].values(), *config["streams"].values()]:
        for mapping in source["metrics"]:
            if mapping["metric"] == "credit_spent_by_user_credits_total":
                mapping["hash_labels"] = ["user"]
            elif mapping["metric"] == "credit_user_requests_total":
                mapping["drop_labels"] = ["user"]
            elif mapping["metric"].startswith("credit_budget_"):
                mapping["hash_labels"] = ["scope_id"]
    return config


@pytest.fixture(scope="module")
def private_exporter(demo_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    exporter = start_exporter(
        private_config(), tmp_path_factory.mktemp("privacy"),
        env={"CREDIT_EXPORTER_DSN": demo_db, KEY_ENV: KEY},
    )  # fmt: skip
    try:
        wait_until(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 90, "ready")
        yield exporter
    finally:
        exporter.stop()


def stream_rows(demo_db: str, sql: str) -> list[tuple[Any, ...]]:
    stream_sql = yaml.safe_load(EXAMPLE.read_text())["streams"]["usage_events"]["sql"]
    with psycopg.connect(demo_db) as conn:
        return conn.execute(sql.format(stream=stream_sql)).fetchall()


def test_no_email_address_appears_anywhere_in_metrics(private_exporter: ExporterProcess) -> None:
    body = private_exporter.metrics_text()
    assert "credit_spent_by_user_credits_total{" in body
    assert "@" not in body


def test_hashed_users_are_the_hmac_of_the_email_and_totals_equal_sql(
    private_exporter: ExporterProcess, demo_db: str
) -> None:
    rows = stream_rows(
        demo_db,
        "SELECT organization, department, user_email, model, sum(spent)"
        " FROM ({stream}) s GROUP BY 1, 2, 3, 4",
    )
    expected = {(o, d, expected_hash(u), m): float(total) for o, d, u, m, total in rows}
    exported = {
        (k["organization"], k["department"], k["user"], k["gen_ai_request_model"]): value
        for key, value in select(
            private_exporter.samples(), "credit_spent_by_user_credits_total"
        ).items()
        for k in [dict(key)]
    }
    assert exported == expected
    assert len({labels[2] for labels in exported}) > 10


def test_a_dropped_label_is_summed_over_exactly(
    private_exporter: ExporterProcess, demo_db: str
) -> None:
    rows = stream_rows(
        demo_db,
        "SELECT organization, department, model, sum(request) FROM ({stream}) s GROUP BY 1, 2, 3",
    )
    expected = {(o, d, "", m): float(total) for o, d, m, total in rows}
    exported = {
        (k["organization"], k["department"], k.get("user", ""), k["gen_ai_request_model"]): value
        for key, value in select(private_exporter.samples(), "credit_user_requests_total").items()
        for k in [dict(key)]
    }
    assert exported == expected
    total = sum((Decimal(repr(v)) for v in exported.values()), Decimal(0))
    [(requests,)] = stream_rows(demo_db, "SELECT sum(request) FROM ({stream}) s")
    assert total == requests


def test_user_budget_scope_ids_are_hashed_in_state_gauges(
    private_exporter: ExporterProcess, demo_db: str
) -> None:
    with psycopg.connect(demo_db) as conn:
        emails = [row[0] for row in conn.execute("SELECT email FROM users").fetchall()]
    hashed = {expected_hash(email) for email in emails}
    scope_ids = {
        dict(key)["scope_id"]
        for key in select(private_exporter.samples(), "credit_budget_limit_credits", scope="user")
    }
    assert scope_ids and scope_ids <= hashed


def test_the_key_is_never_logged(private_exporter: ExporterProcess) -> None:
    assert KEY not in private_exporter.log()


def test_hashing_without_a_privacy_section_names_the_missing_key() -> None:
    config = private_config()
    del config["privacy"]
    with pytest.raises(ConfigError) as error:
        parse_config(config)
    assert error.value.problems == [
        "privacy: required by queries.budgets.metrics[0].hash_labels"
        " (set hmac_key_env or hmac_key_file)"
    ]


def test_an_unset_key_variable_fails_check_config_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(private_config()))
    result = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", str(path)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"privacy.hmac_key_env: environment variable {KEY_ENV} is not set" in (
        result.stdout + result.stderr
    )


def test_a_short_key_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("short-secret\n")
    config = private_config()
    config["privacy"] = {"hmac_key_file": str(key_file)}
    with pytest.raises(ConfigError) as error:
        parse_config(config)
    assert error.value.problems == ["privacy.hmac_key_file: the key must be at least 16 bytes long"]
    assert "short-secret" not in str(error.value)


def test_a_state_query_cannot_drop_a_label() -> None:
    config = private_config()
    config["queries"]["budgets"]["metrics"][0]["drop_labels"] = ["scope_id"]
    config["queries"]["budgets"]["metrics"][0]["hash_labels"] = []
    with pytest.raises(ConfigError) as error:
        parse_config({**config, "privacy": {"hmac_key_file": "/nonexistent"}})
    assert any(
        p.startswith("queries.budgets.metrics[0].drop_labels: only streams can drop a label")
        for p in error.value.problems
    ), error.value.problems

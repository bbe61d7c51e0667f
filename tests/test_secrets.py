"""A database password never appears in anything the exporter writes.

Every test makes a run fail on purpose with the distinctive password below in
the DSN (given as dsn, dsn_env or dsn_file), checks that the failure was
reported (so the test would notice a run that silently did nothing), and
greps every byte of stdout, stderr, the landing page and /metrics for it.
The PostgreSQL here checks passwords (scram-sha-256), unlike the shared
trust-auth test server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import REPO, skip_or_fail
from support import http_get, start_exporter, wait_until

from credit_exporter import redact
from credit_exporter.demo.embedded import EmbeddedPostgres
from credit_exporter.demo.schema import apply_migrations

SECRET = "s3cr3t-Pa55-XYZ"
ROLE, RIGHT_PASSWORD = "billing_reader", "the-right-one-42"
ENV = "CE_TEST_BILLING_DSN"
# a PostgreSQL of its own and some twenty exporter and CLI runs: about 40 s
pytestmark = pytest.mark.slow
MODELS_QUERY = {
    "database": "billing", "interval": "2s", "timeout": "1s",
    "sql": "SELECT slug AS gen_ai_request_model, provider AS gen_ai_provider_name, tier, "
    "multiplier FROM models",
    "metrics": [{"metric": "credit_model_multiplier_ratio", "value": "multiplier",
                 "labels": ["gen_ai_request_model", "gen_ai_provider_name", "tier"]}],
}  # fmt: skip


@dataclass
class PasswordServer:
    port: int

    def dsn(self, password: str = SECRET, port: int | None = None) -> str:
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{port or self.port}/billing"


@pytest.fixture(scope="module")
def password_pg() -> Iterator[PasswordServer]:
    """An embedded PostgreSQL where ROLE must log in with RIGHT_PASSWORD over TCP."""
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="ce-secrets-pg-")))
    try:
        server.start()
    except Exception as exc:
        skip_or_fail(f"embedded PostgreSQL failed to start: {exc}")
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{RIGHT_PASSWORD}'")
            conn.execute("CREATE DATABASE billing")
        apply_migrations(server.dsn("billing"))
        with psycopg.connect(server.dsn("billing"), autocommit=True) as conn:
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}")
        hba = server.pgdata / "pg_hba.conf"
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        right = PasswordServer(server.port).dsn(RIGHT_PASSWORD)
        wait_until(lambda: _can_connect(right), 10, "the role to log in with its password")
        assert not _can_connect(PasswordServer(server.port).dsn()), "wrong password accepted"
        yield PasswordServer(server.port)
    finally:
        server.remove()


def _can_connect(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def _database(source: str, dsn: str, workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The databases.billing entry giving ``dsn`` by ``source``, and the environment it needs."""
    if source == "dsn":
        return {"dsn": dsn}, {}
    if source == "dsn_env":
        return {"dsn_env": ENV}, {ENV: dsn}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "billing.dsn"
    path.write_text(dsn + "\n")
    return {"dsn_file": str(path)}, {}


def _config(database: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"databases": {"billing": database}, "queries": {"models": MODELS_QUERY}, **extra}


def _cli(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "credit_exporter", *args], capture_output=True,
        env={**os.environ, **env}, timeout=timeout,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert SECRET.encode() not in output, output.decode(errors="replace")
    return result.returncode, output.decode(errors="replace")


def _assert_served_without_secret(
    config: dict[str, Any], env: dict[str, str], workdir: Path, expected: str
) -> None:
    """Run the exporter until the landing page reports ``expected``; grep all it wrote."""
    exporter = start_exporter(config, workdir, env=env)
    try:

        def reported() -> bool:
            return expected in http_get(exporter.url + "/")[1].decode()

        wait_until(reported, 20, f"the landing page to report {expected!r}")
        pages = {path: http_get(exporter.url + path)[1] for path in ("/", "/metrics")}
        assert exporter.value("credit_exporter_query_up", query="models") == 0
    finally:
        exporter.stop()
    log = exporter.log_path.read_bytes()
    assert expected.encode() in log, log.decode(errors="replace")
    for where, body in [*pages.items(), ("log", log)]:
        assert SECRET.encode() not in body, (where, body.decode(errors="replace"))


# --- run --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["dsn", "dsn_env", "dsn_file"])
def test_wrong_password_is_reported_without_the_password(
    password_pg: PasswordServer, tmp_path: Path, source: str
) -> None:
    database, env = _database(source, password_pg.dsn(), tmp_path)
    _assert_served_without_secret(
        _config(database), env, tmp_path / "run", "password authentication failed"
    )


def test_unreachable_port_is_reported_without_the_password(
    password_pg: PasswordServer, tmp_path: Path
) -> None:
    from credit_exporter.demo.embedded import free_port

    database, env = _database("dsn_env", password_pg.dsn(port=free_port()), tmp_path)
    _assert_served_without_secret(_config(database), env, tmp_path / "run", "Connection refused")


@pytest.mark.parametrize("source", ["dsn_env", "dsn_file"])
@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://{ROLE}:{SECRET}%zz@127.0.0.1:1/billing",  # libpq quotes bad %-escapes
        f"host=127.0.0.1 port=1 password={SECRET} {SECRET}",  # and words without '='
    ],
    ids=["bad-percent-escape", "word-without-equals"],
)
def test_malformed_dsn_from_env_or_file_is_reported_without_its_text(
    tmp_path: Path, source: str, dsn: str
) -> None:
    database, env = _database(source, dsn, tmp_path)
    _assert_served_without_secret(
        _config(database), env, tmp_path / "run", "not a valid libpq connection string"
    )


def test_malformed_literal_dsn_is_a_config_error_without_its_text(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config({"dsn": f"postgresql://u:{SECRET}%zz@h/db"})))
    for args in (["run", "--config", str(config)], ["check-config", str(config)]):
        code, output = _cli(args, {})
        assert code == 2, output
        assert "databases.billing.dsn: not a valid libpq connection string" in output


def test_malformed_demo_dsn_is_refused_without_its_text(tmp_path: Path) -> None:
    code, output = _cli(["demo", "--dsn", f"postgresql://u:{SECRET}%zz@127.0.0.1/db"], {})
    assert code == 2, output
    assert "--dsn: not a valid libpq connection string" in output


def test_config_errors_elsewhere_in_the_file_do_not_echo_the_password(tmp_path: Path) -> None:
    """pydantic's own error text quotes input values; the exporter's never does."""
    config = tmp_path / "config.yaml"
    database = {"dsn": f"postgresql://u:{SECRET}@127.0.0.1/db", "password": SECRET,
                "pool_size": SECRET, "application_name": [SECRET]}  # fmt: skip
    bad_query = {**MODELS_QUERY, "metrics": [{"metric": "no_such_metric", "value": SECRET}]}
    other = {"dsn": f"password={SECRET}", "dsn_env": SECRET}
    config.write_text(yaml.safe_dump(
        {"databases": {"billing": database, "other": other}, "queries": {"models": bad_query}}
    ))  # fmt: skip
    for args in (["run", "--config", str(config)], ["check-config", str(config), "--connect"]):
        code, output = _cli(args, {})
        assert code == 2, output
        for key in (
            "databases.billing.password: unknown key",
            "databases.billing.pool_size",
            "databases.billing.application_name",
            "databases.other: give exactly one",
        ):
            assert key in output, (key, output)  # fmt: skip


# --- check-config --connect and backfill ------------------------------------------------------


@pytest.mark.parametrize("source", ["dsn", "dsn_env", "dsn_file"])
def test_check_config_connect_reports_wrong_password_without_it(
    password_pg: PasswordServer, tmp_path: Path, source: str
) -> None:
    database, env = _database(source, password_pg.dsn(), tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(database)))
    code, output = _cli(["check-config", str(config), "--connect"], env)
    assert code == 1, output
    assert "password authentication failed" in output
    said_once = r"FAIL database \w+: connection: .*\n     not checked: models\n"
    assert re.search(said_once, output), output


def test_check_config_connect_succeeds_with_the_right_password(
    password_pg: PasswordServer, tmp_path: Path
) -> None:
    """The counterpart of the failing runs: the same set-up with the right password works."""
    database, env = _database("dsn_env", password_pg.dsn(RIGHT_PASSWORD), tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(database)))
    result = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", str(config), "--connect"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   models: 0 rows" in result.stdout


def test_backfill_reports_wrong_password_without_it(
    password_pg: PasswordServer, tmp_path: Path
) -> None:
    example = yaml.safe_load((REPO / "config.example.yaml").read_text())
    database, env = _database("dsn_file", password_pg.dsn(), tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(
        {"databases": {"billing": database}, "streams": {"topups": example["streams"]["topups"]}}
    ))  # fmt: skip
    code, output = _cli(
        ["backfill", "--config", str(config), "--from", "now-1h", "--no-blocks", "--quiet",
         "--output", str(tmp_path / "out")], env,
    )  # fmt: skip
    assert code == 1, output
    assert "password authentication failed" in output


# --- the scrubber itself ----------------------------------------------------------------------


def test_scrub_masks_passwords_it_was_never_told_about() -> None:
    text = (
        "postgresql://me:hunter2-abc@db/x and host=db password='it is hunter3' port=1 "
        "and password=hunter4,"
    )
    scrubbed = redact.scrub(text)
    for secret in ("hunter2-abc", "it is hunter3", "hunter4"):
        assert secret not in scrubbed
    assert "postgresql://me:********@db/x" in scrubbed and "port=1" in scrubbed


def test_scrub_masks_a_registered_password_anywhere() -> None:
    redact.checked_dsn("host=db user=u password=Zq9-registered-only")
    assert redact.scrub("oops: Zq9-registered-only leaked") == "oops: ******** leaked"

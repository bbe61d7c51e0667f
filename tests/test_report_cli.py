"""`credit-exporter report` as a command: bad input exits 2 with a clear message, and the
JSON document reaches a webhook (a real HTTP server on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from report_support import config_for

from credit_exporter import cli


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credit_exporter", "report", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("period", "message"),
    [
        ("November", "--period: cannot parse 'November'"),
        ("2026-13", "--period: '2026-13' is not a real date"),
    ],
)
def test_unknown_period_exits_2_naming_the_flag(
    schema_db: str, tmp_path: Path, period: str, message: str
) -> None:
    result = _run("--config", str(config_for(schema_db, tmp_path)), "--format", "json",
                  "--period", period)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr


def test_unknown_organization_exits_2(demo_db: str, tmp_path: Path) -> None:
    result = _run("--config", str(config_for(demo_db, tmp_path)), "--format", "json",
                  "--period", "2026-01", "--organization", "no-such-org")  # fmt: skip
    assert result.returncode == 2
    assert "--organization: unknown organization 'no-such-org'" in result.stderr


def test_unknown_format_exits_2(schema_db: str, tmp_path: Path) -> None:
    result = _run("--config", str(config_for(schema_db, tmp_path)), "--format", "xml",
                  "--period", "2026-01")  # fmt: skip
    assert result.returncode == 2
    assert "--format: invalid choice: 'xml'" in result.stderr


def test_bad_report_section_exits_2_naming_the_key(schema_db: str, tmp_path: Path) -> None:
    config = config_for(schema_db, tmp_path, report={"min_prompts": 0})
    result = _run("--config", str(config), "--format", "json", "--period", "2026-01")
    assert result.returncode == 2
    assert "report.min_prompts" in result.stderr


def test_to_before_from_exits_2(schema_db: str, tmp_path: Path) -> None:
    result = _run("--config", str(config_for(schema_db, tmp_path)), "--format", "json",
                  "--from", "2026-02-01", "--to", "2026-01-01")  # fmt: skip
    assert result.returncode == 2
    assert "--to" in result.stderr and "must be after --from" in result.stderr


def test_webhook_receives_the_json_document(demo_db: str, tmp_path: Path) -> None:
    received: list[tuple[str, dict[str, Any]]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        output = tmp_path / "report.json"
        code = cli.main(
            ["report", "--config", str(config_for(demo_db, tmp_path)), "--format", "json",
             "--from", "now-2d", "--to", "now", "--output", str(output),
             "--webhook", f"http://127.0.0.1:{server.server_port}/hook"]
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    ((content_type, document),) = received
    assert content_type == "application/json"
    assert document == json.loads(output.read_text())
    assert document["summary"]["prompts"] > 0

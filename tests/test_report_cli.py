"""`credit-exporter report` as a command: bad input exits 2 with a clear message, and the
JSON document reaches a webhook (a real HTTP server on loopback)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def webhook(status: int) -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """A loopback webhook answering ``status``: its URL, and what it received."""
    received: list[tuple[str, dict[str, Any]]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], json.loads(body)))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_receives_the_json_document(demo_db: str, tmp_path: Path) -> None:
    output = tmp_path / "report.json"
    with webhook(204) as (url, received):
        code = cli.main(
            ["report", "--config", str(config_for(demo_db, tmp_path)), "--format", "json",
             "--from", "now-2d", "--to", "now", "--output", str(output), "--webhook", url]
        )  # fmt: skip
    assert code == 0
    ((content_type, document),) = received
    assert content_type == "application/json"
    assert document == json.loads(output.read_text())
    assert document["summary"]["prompts"] > 0


def test_help_for_from_and_to_matches_what_the_parser_accepts(
    schema_db: str, tmp_path: Path
) -> None:
    help_text = " ".join(_run("--help").stdout.split())
    assert "needs --to" not in help_text  # --to is optional: it defaults to now
    assert "default: now" in help_text
    alone = _run("--config", str(config_for(schema_db, tmp_path)), "--format", "json",
                 "--from", "now-1d", "--output", str(tmp_path / "r.json"))  # fmt: skip
    assert alone.returncode == 0, alone.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_webhook_exits_1_with_one_plain_line_and_keeps_the_file(
    schema_db: str, tmp_path: Path
) -> None:
    output = tmp_path / "report.json"
    url = f"http://127.0.0.1:{_free_port()}/hook/s3cr3t-token"
    result = _run("--config", str(config_for(schema_db, tmp_path)), "--format", "json",
                  "--period", "2026-01", "--output", str(output), "--webhook", url)  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "urlopen" not in line and "Errno" not in line
    assert line.startswith("credit-exporter report: --webhook: could not connect to 127.0.0.1:")
    assert "s3cr3t-token" not in line  # a webhook URL's path is often its secret
    assert json.loads(output.read_text())["period"]["label"] == "2026-01"


def test_webhook_that_is_not_an_http_url_exits_2_before_reading(
    schema_db: str, tmp_path: Path
) -> None:
    output = tmp_path / "report.json"
    result = _run("--config", str(config_for(schema_db, tmp_path)), "--format", "json",
                  "--period", "2026-01", "--output", str(output),
                  "--webhook", "hooks.example")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "credit-exporter report: --webhook: 'hooks.example' is not an http:// or https:// URL"
    )
    assert not output.exists()


def test_webhook_answering_an_error_status_names_it(demo_db: str, tmp_path: Path) -> None:
    with webhook(503) as (url, _):
        result = _run("--config", str(config_for(demo_db, tmp_path)), "--format", "json",
                      "--from", "now-1d", "--output", str(tmp_path / "r.json"),
                      "--webhook", url)  # fmt: skip
    port = url.split(":")[2].split("/")[0]
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"credit-exporter report: --webhook: 127.0.0.1:{port} answered HTTP 503"
    )


def test_pdf_without_matplotlib_says_which_pip_command_installs_it(
    schema_db: str, tmp_path: Path
) -> None:
    output = tmp_path / "report.pdf"
    blocked = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from credit_exporter.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked, "report", "--config", str(config_for(schema_db, tmp_path)),
         "--format", "pdf", "--period", "2026-01", "--output", str(output)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "pip install 'credit-exporter[report]'" in line
    assert not output.exists()


def test_the_demo_venv_installs_what_the_pdf_needs() -> None:
    """scripts/demo builds the venv the README's commands run in: its extras hold matplotlib."""
    import re
    import tomllib

    from report_support import REPO

    demo = (REPO / "scripts" / "demo").read_text()
    match = re.search(r'^EXTRAS="\[([a-z,]+)\]"', demo, re.MULTILINE)
    assert match, "scripts/demo sets no EXTRAS"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    requirements = [r for extra in match[1].split(",") for r in extras[extra]]
    assert any(r.startswith("matplotlib") for r in requirements)

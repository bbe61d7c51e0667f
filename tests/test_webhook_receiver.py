"""deploy/webhook_receiver.py: the example receiver logs and records each notification."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import http_get, wait_until

from credit_exporter.demo.embedded import free_port

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "webhook_receiver.py"
NOTIFICATION = {
    "status": "firing",
    "receiver": "pager-critical",
    "alerts": [{"status": "firing", "labels": {"alertname": "CreditPoolExhausted",
                                                "severity": "critical"}}],
}  # fmt: skip


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    port = free_port()
    record = tmp_path / "notifications.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--listen", f"127.0.0.1:{port}", "--record", str(record)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return http_get(f"{url}/-/healthy")[0] == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 10, "the webhook receiver")
        yield url, record, process
    finally:
        process.terminate()
        process.wait(10)


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_notification_is_logged_and_recorded_under_its_receiver_path(
    receiver: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, record, process = receiver
    assert _post(f"{url}/pager-critical", json.dumps(NOTIFICATION).encode()) == 200
    (entry,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert entry["receiver"] == "pager-critical" and entry["body"] == NOTIFICATION
    process.terminate()
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 0, "SIGTERM stops it cleanly (it runs as PID 1 in Compose)"
    assert ("notification receiver=pager-critical status=firing alerts=1 "
            "names=CreditPoolExhausted/critical") in output  # fmt: skip


def test_a_body_that_is_not_a_json_object_gets_400_and_is_not_recorded(
    receiver: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, record, _ = receiver
    assert _post(f"{url}/team-channel", b"not json") == 400
    assert _post(f"{url}/team-channel", b"[1, 2]") == 400
    assert not record.exists()

#!/usr/bin/env python3
"""An example Alertmanager webhook receiver: logs every notification it gets.

Standard library only, so it runs in any Python 3.11+ (the Compose stack runs it
in the exporter image; deploy/native_stack.py runs it directly). Alertmanager's
receiver name is the URL path (deploy/stack_config.py points each receiver of
the example configuration at ``/<receiver name>``). Each notification is logged
as one line on stdout and, with ``--record FILE``, appended to FILE as one JSON
object per line: ``{"receiver": ..., "received_at": ..., "body": <payload>}``.

    python deploy/webhook_receiver.py --listen 0.0.0.0:5001 [--record FILE]

Replace it by your paging or chat integration: it only shows what Alertmanager
would send.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def summary(receiver: str, body: dict[str, object]) -> str:
    """One log line: receiver, status, and the alerts by name and severity."""
    alerts = body.get("alerts") or []
    names = sorted(
        {
            f"{a.get('labels', {}).get('alertname', '?')}/{a.get('labels', {}).get('severity', '')}"
            for a in alerts
            if isinstance(a, dict)
        }
    )
    return (
        f"notification receiver={receiver} status={body.get('status')} "
        f"alerts={len(alerts)} names={','.join(names)}"
    )


def make_handler(record: Path | None) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                self.send_error(400, "body is not JSON")
                return
            if not isinstance(body, dict):
                self.send_error(400, "body is not a JSON object")
                return
            receiver = self.path.strip("/") or "default"
            line = summary(receiver, body)
            with lock:
                print(line, flush=True)
                if record is not None:
                    entry = {"receiver": receiver, "received_at": time.time(), "body": body}
                    with record.open("a") as out:
                        out.write(json.dumps(entry) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            ok = self.path == "/-/healthy"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"OK\n" if ok else b"POST Alertmanager notifications to /<receiver>\n")

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per notification is printed above; no access log

    return Handler


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Log Alertmanager webhook notifications.")
    parser.add_argument("--listen", default="0.0.0.0:5001", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--record", type=Path, help="append each notification to FILE (JSON lines)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        parser.error(f"--listen: expected HOST:PORT, got {args.listen!r}")
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), make_handler(args.record))
    print(f"webhook receiver listening on {args.listen}", flush=True)
    # as PID 1 in a container SIGTERM is ignored unless handled
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render the committed previews, dashboards/preview/*.png, in one command:

    .venv/bin/python -m dashboards.render_previews [--days 7] [--output dashboards/preview]

It starts deploy/native_stack.py (demo data; the whole history backfilled at
5-minute steps with the recording rules over all of it, so the long-range panels
have every day; the demo's balances and budgets over it, --state-history;
Alertmanager with --fast-alerts; live demo traffic), waits until
Prometheus serves the recorded history, renders every dashboard over its own
default time range with ``dashboards.preview`` (Agent analytics on the paid agent
that earned most, so its revenue panels have data), then stops the stack. Each
PNG says under its title what history it was drawn from.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from dashboards import preview
from dashboards.grafana import resolve_defaults

REPO = Path(__file__).resolve().parent.parent
NATIVE_STACK = REPO / "deploy" / "native_stack.py"
RECORDED = "organization_agent:credit_spent_credits:increase1m"  # a recording rule
STEP = "5m"  # the backfill step: at most the 5-minute lookback the rules evaluate with


def ready_addresses(log: str) -> dict[str, str] | None:
    """The Prometheus URL and database DSN native_stack.py prints once it is ready,
    or None before it has."""
    if "Stack ready" not in log:
        return None
    prometheus = re.search(r"^\s*Prometheus\s+(\S+)", log, re.M)
    database = re.search(r"^\s*database\s+(.+)$", log, re.M)
    if not prometheus or not database:
        raise RuntimeError(f"native_stack.py ready, but no URL or DSN in:\n{log}")
    return {"prometheus": prometheus.group(1), "postgres": database.group(1).strip()}


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return list(json.loads(response.read())["data"]["result"])


def wait_for(what: str, check: Any, timeout: float, process: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"native_stack.py exited {process.returncode} waiting for {what}")
        if found := check():
            return found
        time.sleep(2)
    raise RuntimeError(f"no {what} after {timeout:.0f}s")


def top_paid_agent(prometheus: str) -> str | None:
    """The default organization's paid agent with the most revenue, as the preview's
    Agent analytics agent (the default, the first agent by name, may be a free one)."""
    dashboard = json.loads((preview.GENERATED / "credit-agent-analytics.json").read_text())
    source = preview.Source(prometheus, None, 86400)
    organization = resolve_defaults(dashboard, source.series)[0]["organization"]
    top = query(prometheus, "topk(1, sum by (agent) (credit_paid_agent_revenue_total"
                            f'{{organization="{organization}"}}))')  # fmt: skip
    return top[0]["metric"]["agent"] if top else None


def stack_argv(days: int, work: Path, ports: list[str]) -> list[str]:
    """native_stack.py with the whole history as the recent tier (5-minute steps), so
    the recording rules are backfilled over all of it, the demo's balance and budget
    gauges over it too, and alerts that fire at once."""
    return [sys.executable, str(NATIVE_STACK), "--days", str(days), "--workdir", str(work),
            "--fast-alerts", "--state-history", "--backfill-recent-days", str(days),
            "--backfill-recent-step", STEP, "--exporter-port", ports[0],
            "--prometheus-port", ports[1], "--alertmanager-port", ports[2],
            "--webhook-port", ports[3]]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="days of demo history (default 7)")
    parser.add_argument("--output", type=Path, default=REPO / "dashboards" / "preview")
    parser.add_argument("--workdir", type=Path, help="the stack's (default: a new temp dir)")
    args = parser.parse_args(argv)
    from credit_exporter.demo.embedded import free_port

    started = time.monotonic()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="credit-previews-"))
    log_path = work.parent / f"{work.name}.log"
    ports = [str(free_port("127.0.0.1")) for _ in range(4)]
    argv_stack = stack_argv(args.days, work, ports)
    print(f"Starting the native stack ({args.days} days); its output: {log_path}", flush=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv_stack, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        at = wait_for("ready stack", lambda: ready_addresses(log_path.read_text()), 3600,
                      process)  # fmt: skip
        stack_ready = time.monotonic()
        print(f"Stack ready after {stack_ready - started:.0f}s", flush=True)
        # the recorded blocks load at Prometheus's next block reload (within a minute)
        oldest = f"count({RECORDED} offset {args.days - 1}d)"
        wait_for("recorded history", lambda: query(at["prometheus"], oldest), 300, process)
        agent = top_paid_agent(at["prometheus"])
        note = (f"Demo data (seed 42): {args.days} days of history backfilled every "
                f"{STEP} (balances and budgets recomputed from the rows), recording rules "
                "over all of it, then live traffic. Other gauges (seats, quotas, exporter "
                "health) start with the stack.")  # fmt: skip
        render = ["--prometheus", at["prometheus"], "--postgres", at["postgres"],
                  "--output", str(args.output), "--note", note]  # fmt: skip
        if agent:
            render += ["--var", f"credit-agent-analytics:agent={agent}"]
        code = preview.main(render)
        print(f"Rendered in {time.monotonic() - stack_ready:.0f}s after the stack was "
              f"ready; {time.monotonic() - started:.0f}s in all", flush=True)  # fmt: skip
        return code
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # native_stack.py stops its children
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if args.workdir is None:  # ours: the database and Prometheus data go with it
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

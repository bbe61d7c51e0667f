#!/usr/bin/env python3
"""The docker-compose.yml topology without Docker, from Debian packages and the
embedded PostgreSQL:

    embedded PostgreSQL + demo data (credit-exporter demo-data --days N)
    -> backfill of the history into Prometheus's data directory (promtool blocks;
       with --state-history also the demo's balance and budget gauges)
    -> webhook receiver, Alertmanager (the example routing, receivers to the webhook),
       credit-exporter run, live demo traffic, Prometheus (alert + recording rules)
    -> the recording rules over the recent backfilled tier (promtool, from Prometheus)

    .venv/bin/python deploy/native_stack.py [--days 90] [--workdir DIR] [--fast-alerts]
        [--backfill-recent-days 1] [--backfill-recent-step 1m]

Needs the package installed (scripts/demo or pip install -e .), and Debian's
``prometheus`` (prometheus, promtool) and ``prometheus-alertmanager``. Prometheus
and Alertmanager get the configuration deploy/stack_config.py renders for Compose,
with loopback addresses. Grafana is not started (no Grafana package here): point
one at the printed Prometheus URL and database DSN with dashboards/provisioning/.
Every start is fresh (the work directory is emptied). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

DEPLOY = Path(__file__).resolve().parent
sys.path.insert(0, str(DEPLOY))

import demo_state_history  # noqa: E402  (sibling files, not a package)
import stack_config  # noqa: E402

REPO = stack_config.REPO
EXAMPLE_CONFIG = REPO / "config.example.yaml"
DATABASE = "billing"
OWN_MARKER = ".credit-exporter-native-stack"  # what may be emptied at the next start
STATE_STEP_SECONDS = 300  # --state-history: within the 5m lookback rules evaluate with
FAST_FOR = "1s"  # --fast-alerts: every alert's `for`, so a demo shows notifications now


def fast_alert_overrides(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides for alert_rules/settings.yml that set every ``for`` it has to FAST_FOR,
    wherever it is nested (levels, exporter alerts, projections: all of them)."""
    overrides: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "for":
            overrides[key] = FAST_FOR
        elif isinstance(value, Mapping) and (nested := fast_alert_overrides(value)):
            overrides[key] = nested
    return overrides


class StackError(RuntimeError):
    """A piece of the stack could not start."""


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(
        f"{' or '.join(names)} not found on PATH (Debian: apt-get install prometheus "
        "prometheus-alertmanager)"
    )


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Stack:
    """The processes started, stopped in reverse order."""

    logs: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches this script only; it stops the rest
        )  # fmt: skip
        self.processes.append((name, process))

    def wait_ready(self, name: str, url: str, timeout: float = 120) -> None:
        process = dict(self.processes)[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(f"{name} exited {process.returncode}; see {self.logs}/{name}.log")
            if _get_ok(url):
                return
            time.sleep(0.3)
        raise StackError(f"{name} not ready at {url} after {timeout:.0f}s")

    def exited(self) -> str | None:
        for name, process in self.processes:
            if process.poll() is not None:
                return f"{name} exited {process.returncode}"
        return None

    def stop(self) -> None:
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for _name, process in reversed(self.processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _alert_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "alert_rules_generate", REPO / "alert_rules" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rule_files(workdir: Path, fast_alerts: bool) -> tuple[str, ...]:
    """The repository's rule files, or with ``fast_alerts`` the alert rules re-rendered
    from alert_rules/settings.yml with every ``for`` at 1s (recording rules as they are)."""
    alerts, recording = stack_config.RULE_FILES
    if fast_alerts:
        generate = _alert_generator()
        defaults = generate.load_settings()
        settings = generate.with_overrides(defaults, fast_alert_overrides(defaults))
        alerts = workdir / "credit-exporter.rules.yml"
        alerts.write_text(generate.render(settings))
    return (str(alerts), str(recording))


COMPOSE_SCRIPTS = stack_config.COMPOSE_DIR


def backfill_series(env: dict[str, str], args: argparse.Namespace, data: Path,
                    instance: str) -> None:  # fmt: skip
    """deploy/compose/backfill.sh, as the Compose one-shot runs it, into ``data``."""
    subprocess.run(
        ["sh", str(COMPOSE_SCRIPTS / "backfill.sh")],
        env={**os.environ, **env, "BACKFILL_OUTPUT": str(data),
             "CREDIT_EXPORTER_CONFIG": str(EXAMPLE_CONFIG), "BACKFILL_DAYS": str(args.days),
             "BACKFILL_STEP": args.backfill_step, "BACKFILL_RECENT_STEP": args.backfill_recent_step,
             "BACKFILL_RECENT_DAYS": str(args.backfill_recent_days),
             "BACKFILL_INSTANCE": instance,
             # the credit-exporter command of this interpreter's environment
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        check=True,
    )  # fmt: skip


def backfill_rules(prometheus_url: str, data: Path, log_path: Path) -> None:
    """deploy/compose/backfill-rules.sh: the recording rules over the recent backfilled tier,
    evaluated by the running Prometheus; it loads the blocks within a minute. promtool
    logs a line per rule and group: that goes to ``log_path``, not the console."""
    rules = " ".join(str(path) for path in stack_config.RULE_FILES)
    with log_path.open("wb") as log:
        done = subprocess.run(
            ["sh", str(COMPOSE_SCRIPTS / "backfill-rules.sh")],
            env={**os.environ, "PROMETHEUS_DATA": str(data), "PROMETHEUS_URL": prometheus_url,
                 "RULE_FILES": rules},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if done.returncode != 0:
        raise StackError(f"backfill-rules.sh exited {done.returncode}; see {log_path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),  # the first paragraph, whole
    )
    default_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    parser.add_argument("--days", type=int, default=90, help="days of demo history (default 90)")
    parser.add_argument("--seed", type=int, default=42, help="demo generator seed (default 42)")
    parser.add_argument(
        "--workdir", type=Path, default=default_dir / "credit-exporter" / "native-stack",
        help="data and logs; emptied at every start (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    parser.add_argument("--exporter-port", type=int, default=stack_config.EXPORTER_PORT)
    parser.add_argument("--prometheus-port", type=int, default=stack_config.PROMETHEUS_PORT)
    parser.add_argument("--alertmanager-port", type=int, default=stack_config.ALERTMANAGER_PORT)
    parser.add_argument("--webhook-port", type=int, default=stack_config.WEBHOOK_PORT)
    parser.add_argument("--postgres-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--scrape-interval", default="15s", help="and rule evaluation interval")
    parser.add_argument("--backfill-step", default="1h",
                        help="history older than --backfill-recent-days")  # fmt: skip
    parser.add_argument(
        "--backfill-recent-days", type=int, default=1,
        help="the recent tier, at --backfill-recent-step, with the recording rules "
        "backfilled over it (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--backfill-recent-step", default="1m",
        help="the recent tier; at most 5m, the lookback the recording rules are evaluated with",
    )  # fmt: skip
    parser.add_argument(
        "--state-history", action="store_true",
        help="also backfill the demo's balance and budget gauges over the recent tier "
        "(deploy/demo_state_history.py; the exporter's backfill writes counters only)",
    )  # fmt: skip
    parser.add_argument("--live-speed", type=float, default=1.0, help="live traffic multiplier")
    parser.add_argument(
        "--fast-alerts", action="store_true",
        help="alert `for` 1s and Alertmanager group waits 1s (see alerts now)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error(f"--days: must be at least 1, got {args.days}")
    if args.backfill_recent_days < 1:
        parser.error(f"--backfill-recent-days: must be at least 1, got {args.backfill_recent_days}")
    work = args.workdir
    if work.exists() and any(work.iterdir()) and not (work / OWN_MARKER).exists():
        parser.error(f"--workdir {work}: not empty and not a native stack's; refusing to "
                     "empty it (give a new or empty directory)")  # fmt: skip
    return args


def run(args: argparse.Namespace, stopping: Callable[[], bool]) -> int:
    from credit_exporter.demo.embedded import EmbeddedPostgres, free_port
    from credit_exporter.demo.runner import _ensure_database

    prometheus_bin = _binary("prometheus")
    alertmanager_bin = _binary("prometheus-alertmanager", "alertmanager")
    _binary("promtool")
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    (work / OWN_MARKER).touch()
    host = args.host
    at = {name: f"{host}:{getattr(args, f'{name}_port')}"
          for name in ("exporter", "prometheus", "alertmanager", "webhook")}  # fmt: skip
    cli = [sys.executable, "-m", "credit_exporter"]
    postgres = EmbeddedPostgres(work / "postgres", port=args.postgres_port or free_port(host))
    stack = Stack(work / "logs")
    try:
        started = time.monotonic()
        print(f"Starting embedded PostgreSQL on {host}:{postgres.port} ...", flush=True)
        postgres.start()
        dsn = _ensure_database(postgres.dsn(), DATABASE)
        env = {"CREDIT_EXPORTER_DSN": dsn}
        print(f"Loading {args.days} days of demo data ...", flush=True)
        subprocess.run([*cli, "demo-data", "--days", str(args.days), "--seed", str(args.seed)],
                       env={**os.environ, **env}, check=True)  # fmt: skip
        print("Backfilling the history into Prometheus's data directory ...", flush=True)
        backfill_series(env, args, work / "prometheus", at["exporter"])
        if args.state_history:
            end = datetime.now(UTC)
            written = demo_state_history.backfill(
                dsn, EXAMPLE_CONFIG, work / "prometheus",
                end - timedelta(days=min(args.days, args.backfill_recent_days)), end,
                timedelta(seconds=STATE_STEP_SECONDS),
                {"job": stack_config.JOB, "instance": at["exporter"]},
            )  # fmt: skip
            print(f"Backfilled {written:,} samples of balance and budget gauges", flush=True)

        rules = rule_files(work, args.fast_alerts)
        hosts = stack_config.Hosts(
            exporter=at["exporter"], alertmanager=at["alertmanager"], webhook=at["webhook"],
            rule_files=rules, scrape_interval=args.scrape_interval,
        )  # fmt: skip
        prometheus_yml = work / "prometheus.yml"
        prometheus_yml.write_text(stack_config.dump(stack_config.prometheus_config(hosts)))
        alertmanager_yml = work / "alertmanager.yml"
        wait = "1s" if args.fast_alerts else None
        alertmanager_yml.write_text(
            stack_config.dump(stack_config.alertmanager_config(hosts, wait=wait))
        )

        stack.start("webhook", [sys.executable, str(DEPLOY / "webhook_receiver.py"),
                                "--listen", at["webhook"],
                                "--record", str(work / "notifications.jsonl")])  # fmt: skip
        stack.wait_ready("webhook", f"http://{at['webhook']}/-/healthy")
        stack.start("alertmanager", [alertmanager_bin, f"--config.file={alertmanager_yml}",
                                     f"--storage.path={work / 'alertmanager'}",
                                     f"--web.listen-address={at['alertmanager']}",
                                     "--cluster.listen-address="])  # fmt: skip
        stack.start("exporter", [*cli, "run", "--config", str(EXAMPLE_CONFIG),
                                 "--listen", at["exporter"]], env=env)  # fmt: skip
        stack.start("traffic", [*cli, "demo-data", "--keep-existing", "--live", "--seed",
                                str(args.seed), "--live-speed", str(args.live_speed)],
                    env=env)  # fmt: skip
        stack.start("prometheus", [prometheus_bin, f"--config.file={prometheus_yml}",
                                   f"--storage.tsdb.path={work / 'prometheus'}",
                                   f"--storage.tsdb.retention.time={stack_config.RETENTION}",
                                   "--web.enable-lifecycle",
                                   f"--web.listen-address={at['prometheus']}"])  # fmt: skip
        stack.wait_ready("alertmanager", f"http://{at['alertmanager']}/-/ready")
        stack.wait_ready("exporter", f"http://{at['exporter']}/-/ready", timeout=300)
        stack.wait_ready("prometheus", f"http://{at['prometheus']}/-/ready")
        print(f"Backfilling the recording rules over the last {args.backfill_recent_days} "
              "day(s) ...", flush=True)  # fmt: skip
        backfill_rules(
            f"http://{at['prometheus']}", work / "prometheus", work / "logs" / "backfill-rules.log"
        )
        print(
            f"Stack ready in {time.monotonic() - started:.0f}s:\n"
            f"  Prometheus    http://{at['prometheus']}\n"
            f"  Alertmanager  http://{at['alertmanager']}\n"
            f"  exporter      http://{at['exporter']}/metrics\n"
            f"  webhook       http://{at['webhook']} (log: {work / 'logs' / 'webhook.log'})\n"
            f"  database      {postgres.dsn(DATABASE)}\n"
            "  Grafana is not started: no Grafana package on this machine. To use one,\n"
            "  provision dashboards/provisioning/ with PROMETHEUS_URL="
            f"http://{at['prometheus']} BILLING_DB_HOST={host}:{postgres.port} "
            f"BILLING_DB_NAME={DATABASE} BILLING_DB_USER=postgres BILLING_DB_SSLMODE=disable.\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping():
            if problem := stack.exited():
                raise StackError(f"{problem}; logs in {work / 'logs'}")
            time.sleep(0.5)
        return 0
    finally:
        print("Stopping ...", flush=True)
        stack.stop()
        try:
            postgres.stop()
        except subprocess.CalledProcessError as error:
            print(f"native_stack: stopping PostgreSQL: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        return run(args, lambda: stop["requested"])
    except (StackError, subprocess.CalledProcessError) as error:
        stderr = getattr(error, "stderr", None)
        detail = f"\n{stderr.decode(errors='replace')}" if isinstance(stderr, bytes) else ""
        print(f"native_stack: {error}{detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

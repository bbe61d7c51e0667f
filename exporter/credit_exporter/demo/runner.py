"""``credit-exporter demo``: a database with realistic data, the exporter on top, live traffic.

Without ``--dsn`` an embedded PostgreSQL is started in the data directory and
reused on the next start; data older than an hour is reloaded so the history
always ends now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from credit_exporter.config import load_config
from credit_exporter.demo.embedded import EmbeddedPostgres, free_port

if TYPE_CHECKING:
    from credit_exporter.lifecycle import Exporter
    from credit_exporter.webconfig import WebConfig

DSN_ENV = "CREDIT_EXPORTER_DSN"
DEMO_DATABASE = "billing"
PREFERRED_PORT = 54329
STALE_AFTER_SECONDS = 3600


@dataclass(frozen=True)
class DemoOptions:
    listen: str
    dsn: str | None
    data_dir: Path | None
    days: int
    seed: int
    fresh: bool
    config_path: Path
    live_speed: float = 1.0
    web_config: WebConfig | None = None
    pg_port: int | None = None  # pin the embedded PostgreSQL's port (--pg-port)


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "credit-exporter" / "demo-postgres"


def redact(dsn: str) -> str:
    """The DSN with any password replaced, for printing."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    if info.get("password"):
        info["password"] = "********"
    return psycopg.conninfo.make_conninfo(**info)


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        # as PostgreSQL binds it: a port our last run left in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


PORT_FILE = "port"  # in the data directory: the port the last run used


def choose_port(data_dir: Path, pinned: int | None) -> int:
    """The embedded PostgreSQL's port, stable across runs so the DSN printed stays valid:
    ``--pg-port`` if given (an error if taken), else the port this data directory used
    last, else 54329, else any free port (remembered for the next run)."""
    if pinned is not None:
        if not _port_is_free(pinned):
            raise SystemExit(f"--pg-port {pinned}: the port is in use on 127.0.0.1")
        port = pinned
    else:
        remembered = data_dir / PORT_FILE
        last = remembered.read_text().strip() if remembered.is_file() else ""
        candidates = [int(last)] if last.isdigit() else []
        port = (
            next((p for p in [*candidates, PREFERRED_PORT] if _port_is_free(p)), None)
            or free_port()
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PORT_FILE).write_text(f"{port}\n")
    return port


async def announce_when_ready(exporter: Exporter, started: float) -> None:
    """Say "Ready" when /-/ready would answer 200, not when the socket opens."""
    while not exporter.ready:
        await asyncio.sleep(0.1)
    print(
        f"Ready in {time.monotonic() - started:.1f}s after start. Ctrl-C stops the demo.",
        flush=True,
    )


def _ensure_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def _reset_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _data_age_seconds(dsn: str) -> float | None:
    """Seconds since the newest usage event, or None when there is no demo data."""
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM now() - max(occurred_at)) FROM usage_events"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None or row[0] is None else float(row[0])


def _load(dsn: str, options: DemoOptions) -> None:
    from credit_exporter.demo.generator import load_demo

    started = time.monotonic()
    print(f"Loading {options.days} days of demo data (seed {options.seed})...", file=sys.stderr)
    summary = load_demo(dsn, days=options.days, seed=options.seed, progress=True)
    print(
        f"Loaded {summary.usage_events:,} usage events in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )


def prepare_database(dsn: str, options: DemoOptions, admin_dsn: str | None = None) -> None:
    """Make sure ``dsn`` holds fresh demo data (reloading stale data when we own the db)."""
    age = _data_age_seconds(dsn)
    if age is not None and not options.fresh and age < STALE_AFTER_SECONDS:
        print(f"Reusing demo data (newest event {age:.0f}s old).", file=sys.stderr)
        return
    if age is not None and admin_dsn is None:
        raise SystemExit(
            "the database already holds data; refusing to overwrite a database given with --dsn"
            " (use an empty database)"
        )
    if age is not None and admin_dsn is not None:
        _reset_database(admin_dsn, DEMO_DATABASE)
        _ensure_database(admin_dsn, DEMO_DATABASE)
    _load(dsn, options)


async def run_demo(options: DemoOptions) -> int:
    from credit_exporter.demo.live import run_live_writer
    from credit_exporter.lifecycle import Exporter
    from credit_exporter.server import serve

    started = time.monotonic()
    server: EmbeddedPostgres | None = None
    try:
        if options.dsn:
            dsn, admin_dsn = options.dsn, None
        else:
            data_dir = options.data_dir or default_data_dir()
            port = choose_port(data_dir, options.pg_port)
            server = EmbeddedPostgres(data_dir, port=port)
            print(f"Starting embedded PostgreSQL in {data_dir} ...", file=sys.stderr)
            await asyncio.to_thread(server.start)
            admin_dsn = server.dsn()
            dsn = _ensure_database(admin_dsn, DEMO_DATABASE)
        await asyncio.to_thread(prepare_database, dsn, options, admin_dsn)

        os.environ[DSN_ENV] = dsn
        config = load_config(options.config_path)
        exporter = Exporter(config, options.config_path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)

        writer = asyncio.create_task(
            run_live_writer(dsn, seed=options.seed, stop=stop, speed=options.live_speed)
        )
        host, _, port_text = options.listen.rpartition(":")
        scheme = options.web_config.scheme if options.web_config else "http"
        url = f"{scheme}://{host or '127.0.0.1'}:{port_text}/metrics"
        banner = (
            f"Metrics:  {url}\n"
            f"Database: {redact(dsn)}\n"
            "Waiting for the first poll of every query..."
        )
        announcer = asyncio.create_task(announce_when_ready(exporter, started))
        try:
            await serve(
                exporter, options.listen, stop, on_ready=banner, web_config=options.web_config
            )
        finally:
            stop.set()
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return 0
    finally:
        if server is not None:
            print("Stopping embedded PostgreSQL.", file=sys.stderr)
            server.stop()

"""``credit-exporter demo-data``: demo billing data in a database you run, without the exporter.

The Compose stack and the native stack script use it: one run loads the
reference schema and ``--days`` of demo data into ``--dsn`` (then exits, so a
backfill can read a settled history), another keeps writing live traffic
(``--live``) while the exporter serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time

import psycopg

from credit_exporter.demo.runner import DSN_ENV, redact

EXIT_BAD_INPUT = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo-data",
        help="load demo billing data into a database (and optionally keep writing live traffic)",
        description=(
            "Apply the reference schema and load --days of demo data ending now into --dsn "
            f"(default: ${DSN_ENV}). Existing rows of the reference tables are replaced, "
            "unless --keep-existing finds demo data already there. With --live, keep "
            "writing live traffic afterwards until SIGINT or SIGTERM."
        ),
    )
    parser.add_argument("--dsn", help=f"target database (default: ${DSN_ENV})")
    parser.add_argument("--days", type=int, default=90, help="days of history (default 90)")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    parser.add_argument(
        "--keep-existing", action="store_true",
        help="do nothing if the database already holds demo data",
    )  # fmt: skip
    parser.add_argument("--live", action="store_true", help="then write live traffic until stopped")
    parser.add_argument(
        "--live-speed", type=float, default=1.0, help="multiply the live traffic rate (default 1)"
    )
    parser.set_defaults(func=cmd_demo_data)


def _fail(message: str) -> int:
    print(f"credit-exporter demo-data: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


async def _write_live(dsn: str, seed: int, speed: float) -> None:
    from credit_exporter.demo.live import run_live_writer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"Writing live demo traffic into {redact(dsn)}; stop with SIGINT or SIGTERM.")
    sys.stdout.flush()
    await run_live_writer(dsn, seed=seed, stop=stop, speed=speed)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from credit_exporter.demo.generator import demo_loaded, load_demo

    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        return _fail(f"--dsn: no database given (pass --dsn or set ${DSN_ENV})")
    if args.days < 1:
        return _fail(f"--days: must be at least 1, got {args.days}")
    if args.live_speed <= 0:
        return _fail(f"--live-speed: must be positive, got {args.live_speed}")
    try:
        if args.keep_existing and demo_loaded(dsn):
            print(f"{redact(dsn)}: demo data already loaded; kept as it is")
        else:
            started = time.monotonic()
            summary = load_demo(dsn, days=args.days, seed=args.seed)
            print(
                f"{redact(dsn)}: loaded {args.days} days of demo data (seed {args.seed}): "
                f"{summary.usage_events:,} usage events in {time.monotonic() - started:.1f}s"
            )
        sys.stdout.flush()
        if args.live:
            asyncio.run(_write_live(dsn, args.seed, args.live_speed))
    except psycopg.Error as error:
        print(f"credit-exporter demo-data: {redact(dsn)}: {error}", file=sys.stderr)
        return 1
    return 0

"""The ``credit-exporter`` command: demo, run, check-config, catalog.

Exit codes: 0 success, 1 runtime failure, 2 bad input (config, arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import platform
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from credit_exporter import __version__, catalog
from credit_exporter.config import Config, ConfigError, StreamConfig, load_config
from credit_exporter.db import Database, QueryError
from credit_exporter.sharding import Shard
from credit_exporter.sharding import apply as apply_shard

if TYPE_CHECKING:
    from credit_exporter.sources.ordering_check import StreamCheck
    from credit_exporter.webconfig import WebConfig

EXIT_BAD_INPUT = 2
DEFAULT_LISTEN = "127.0.0.1:9187"
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "config.example.yaml"


def _setup_logging(level: str, fmt: str = "logfmt") -> None:
    from credit_exporter import logs

    logs.setup(level, fmt)


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    """--log.level and --log.format (Prometheus spelling; --log-level kept as an alias)."""
    from credit_exporter import logs

    parser.add_argument(
        "--log.level", "--log-level", dest="log_level", default="info", choices=list(logs.LEVELS),
        help="least severe level logged (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=list(logs.FORMATS),
        help="log line format on stderr (default %(default)s)",
    )  # fmt: skip


def _add_web_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web.config.file", dest="web_config_file", metavar="PATH",
        help="TLS and basic auth in the exporter-toolkit format (see docs/security.md)",
    )  # fmt: skip


def _load_web_config(args: argparse.Namespace) -> WebConfig | int | None:
    """The --web.config.file, None without one, or the exit code after reporting it bad."""
    from credit_exporter.webconfig import WebConfigError, load_web_config

    if not args.web_config_file:
        return None
    try:
        return load_web_config(args.web_config_file)
    except WebConfigError as error:
        print(f"{args.web_config_file}: invalid web configuration:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _print_config_error(path: str | Path, error: ConfigError) -> int:
    print(f"{path}: invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_catalog(args: argparse.Namespace) -> int:
    sys.stdout.write(catalog.to_json() if args.format == "json" else catalog.to_markdown())
    return 0


async def _check_stream(database: Database, stream: StreamConfig) -> tuple[StreamCheck, str]:
    """Judge a stream's columns and ordering (sources/ordering_check.py); when nothing fails,
    also read its newest key or time."""
    from credit_exporter.sources import columns
    from credit_exporter.sources.events import StreamPlan
    from credit_exporter.sources.ordering_check import check_stream

    plan = StreamPlan(stream)
    async with database.read_only(stream.timeout) as conn:
        ordering_columns = {stream.time, *([stream.key] if stream.key else [])}
        result = await columns.result_columns(conn, plan.shape_statement(), ordering_columns)
        names = await columns.type_names(conn, {c.type_oid for c in result})
    check = check_stream(stream, result, names)
    if check.failures:
        return check, ""
    top = await database.fetch(plan.top_statement(stream.key or stream.time), stream.timeout)
    return check, f"newest {top.rows[0][0]}" if top.rows else "no rows yet"


async def _unreachable(databases: dict[str, Database], config: Config) -> dict[str, str]:
    """The databases that cannot be connected to, with why, each said once (not once per
    query: an unset DSN variable would otherwise repeat for every query)."""
    unreachable: dict[str, str] = {}
    for name, database in databases.items():
        timeout = max(
            (s.timeout for s in [*config.queries.values(), *config.streams.values()]
             if s.database == name),
            default=10.0,
        )  # fmt: skip
        try:
            async with database.read_only(timeout) as conn:
                await conn.execute("SELECT 1")
        except QueryError as error:
            unreachable[name] = f"{error.reason}: {error}"
    return unreachable


async def _check_queries(config: Config) -> int:
    """Run every state query once, and check every stream's columns and ordering."""
    from credit_exporter.sources.state import convert

    databases = {name: Database(name, db) for name, db in config.databases.items()}
    failures = 0
    try:
        unreachable = await _unreachable(databases, config)
        for name, why in unreachable.items():
            sources = [
                source for source, c in [*config.queries.items(), *config.streams.items()]
                if c.database == name
            ]  # fmt: skip
            failures += 1
            print(f"FAIL database {name}: {why}")
            print(f"     not checked: {', '.join(sources)}")
        for name, query in config.queries.items():
            if query.database in unreachable:
                continue
            started = time.monotonic()
            try:
                result = await databases[query.database].fetch(query.sql, query.timeout)
                conversion = convert(result, query.metrics)
            except QueryError as error:
                failures += 1
                print(f"FAIL {name}: {error.reason}: {error}")
                continue
            elapsed = time.monotonic() - started
            dropped = sum(conversion.dropped.values())
            note = f", {dropped} rows dropped ({dict(conversion.dropped)})" if dropped else ""
            print(f"ok   {name}: {len(result.rows)} rows in {elapsed * 1000:.0f} ms{note}")
        for name, stream in config.streams.items():
            if stream.database in unreachable:
                continue
            started = time.monotonic()
            try:
                check, newest = await _check_stream(databases[stream.database], stream)
            except QueryError as error:
                failures += 1
                print(f"FAIL {name}: {error.reason}: {error}")
                continue
            if check.failures:
                failures += 1
                (reason, message), *more = check.failures
                print(f"FAIL {name}: {reason}: {message}")
                for reason, message in more:
                    print(f"     fail: {reason}: {message}")
            else:
                elapsed = time.monotonic() - started
                print(f"ok   {name}: {check.summary}; {newest}, {elapsed * 1000:.0f} ms")
            for note in check.notes:
                print(f"     note: {note}")
    finally:
        for database in databases.values():
            await database.close()
    return 1 if failures else 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as error:
        return _print_config_error(args.file, error)
    print(
        f"{args.file}: valid ({len(config.queries)} queries, {len(config.streams)} streams,"
        f" {len(config.databases)} databases)"
    )
    if not args.connect:
        return 0
    _setup_logging("warn")  # scrubbed, one line per event, like the server's
    return asyncio.run(_check_queries(config))


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def _run(
    config: Config,
    config_path: Path,
    listen: str,
    web_config: WebConfig | None = None,
    shard: Shard | None = None,
) -> None:
    from credit_exporter.lifecycle import Exporter
    from credit_exporter.server import serve

    stop = asyncio.Event()
    _stop_on_signals(stop)
    exporter = Exporter(config, config_path, shard)
    await serve(exporter, listen, stop, web_config=web_config)


def _shard_argument(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_format)
    web_config = _load_web_config(args)
    if isinstance(web_config, int):
        return web_config
    try:
        config = load_config(args.config)
        apply_shard(config, args.shard)  # fail now, before serving, if it cannot be split
    except ConfigError as error:
        return _print_config_error(args.config, error)
    if args.shard is not None:
        logging.getLogger(__name__).info(
            "shard %s: exporting the organizations whose label hashes to bucket %d of %d",
            args.shard, args.shard.index - 1, args.shard.count,
        )  # fmt: skip
    asyncio.run(_run(config, Path(args.config), args.listen, web_config, args.shard))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_format)
    from credit_exporter.demo.runner import DemoOptions, run_demo

    web_config = _load_web_config(args)
    if isinstance(web_config, int):
        return web_config
    if args.dsn:
        from credit_exporter import redact

        try:
            redact.checked_dsn(args.dsn)  # also masks its password in every later message
        except ValueError as error:
            print(f"--dsn: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        from credit_exporter.demo import embedded

        if not embedded.installed():
            print(embedded.NOT_INSTALLED, file=sys.stderr)
            return EXIT_BAD_INPUT

    options = DemoOptions(
        listen=args.listen,
        dsn=args.dsn,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        days=args.days,
        seed=args.seed,
        fresh=args.fresh,
        config_path=Path(args.config) if args.config else EXAMPLE_CONFIG,
        live_speed=args.live_speed,
        web_config=web_config,
        pg_port=args.pg_port,
    )
    try:
        return asyncio.run(run_demo(options))
    except ConfigError as error:
        return _print_config_error(options.config_path, error)


def cmd_backfill(args: argparse.Namespace) -> int:
    import os
    import shutil
    from datetime import UTC, datetime

    import psycopg

    from credit_exporter import backfill, redact

    _setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        return _print_config_error(args.config, error)
    now = datetime.now(UTC)
    try:
        start = backfill.parse_time(args.start, now, "--from")
        end = backfill.parse_time(args.end, now, "--to")
        if end > now:
            raise backfill.BackfillError(
                f"--to ({end.isoformat()}) is in the future; the live exporter covers it"
            )
        steps = backfill.Steps.between(start, end, backfill.parse_step(args.step))
        labels = backfill.parse_labels(args.label)
        chunk_bytes = backfill.parse_size(args.chunk_size)
        if args.jobs is not None and args.jobs < 1:
            raise backfill.BackfillError(f"--jobs: must be at least 1, got {args.jobs}")
        promtool = None
        if args.blocks:
            promtool = args.promtool or shutil.which("promtool")
            if promtool is None:
                raise backfill.BackfillError(
                    "promtool not found on PATH: install prometheus (Debian: apt-get install "
                    "prometheus), pass --promtool PATH, or use --no-blocks"
                )
        summary = backfill.run(
            config,
            steps,
            Path(args.output),
            extra_labels=labels,
            promtool=promtool,
            keep_openmetrics=args.keep_openmetrics,
            jobs=args.jobs or min(4, os.cpu_count() or 1),
            chunk_bytes=chunk_bytes,
            progress=not args.quiet,
            say=(lambda _message: None) if args.quiet else None,
        )
    except backfill.BackfillError as error:
        print(f"credit-exporter backfill: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (psycopg.Error, OSError, RuntimeError) as error:
        print(f"credit-exporter backfill: {redact.scrub(str(error))}", file=sys.stderr)
        return 1
    print(
        f"{args.output}: {summary.series:,} series ({summary.histogram_series:,} of them "
        f"histograms' _bucket, _count and _sum), {summary.samples:,} samples at "
        f"{steps.count:,} steps from {steps.at(0).isoformat()} to "
        f"{steps.at(steps.count - 1).isoformat()}; {summary.bytes:,} bytes of OpenMetrics "
        f"in {summary.chunks:,} files of at most {summary.largest_chunk:,} bytes, "
        f"from {summary.rows:,} grouped rows (query {summary.query_seconds:.1f}s, "
        f"write {summary.write_seconds:.1f}s)"
    )
    if promtool is not None:
        print(
            f"  {len(summary.blocks)} TSDB blocks (then waited "
            f"{summary.blocks_seconds:.1f}s for promtool)"
        )
    for path in summary.files:
        print(f"  {path}")
    if summary.skipped_rows:
        print(f"  {summary.skipped_rows:,} rows skipped for a NULL or over-long label")
    if summary.held:
        print(f"  {summary.held:,} times a counter would have gone down and was held")
    if summary.duplicates:
        print(f"  {summary.duplicates:,} series skipped: label text repeats another series")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from credit_exporter.report.run import run_report

    return run_report(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credit-exporter",
        description="Prometheus metrics for AI platforms that meter usage in credits.",
    )
    parser.add_argument(
        "--version", action="version",
        version=f"credit-exporter {__version__} (python {platform.python_version()})",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="serve metrics from generated demo data")
    demo.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s)")
    demo.add_argument("--dsn", help="load the demo into this database instead of an embedded one")
    demo.add_argument("--data-dir", help="embedded PostgreSQL directory (default: user cache)")
    demo.add_argument(
        "--pg-port", type=int, metavar="PORT",
        help="embedded PostgreSQL port (default: the one this data directory used last, "
        "else 54329, else a free one)",
    )  # fmt: skip
    demo.add_argument("--days", type=int, default=90, help="days of history (default 90)")
    demo.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    demo.add_argument("--fresh", action="store_true", help="reload the data even if present")
    demo.add_argument(
        "--live-speed", type=float, default=1.0,
        help="multiply the live traffic rate (default 1: the data's own hourly rate)",
    )  # fmt: skip
    demo.add_argument("--config", help="config to serve (default: config.example.yaml)")
    _add_log_flags(demo)
    _add_web_config_flag(demo)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="serve metrics from a billing database (production)")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s)")
    _add_log_flags(run)
    _add_web_config_flag(run)
    run.add_argument(
        "--shard", type=_shard_argument, metavar="N/M",
        help="export only the organizations of shard N of M (docs/scaling.md)",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.add_argument(
        "--connect", action="store_true", help="also run every query once, read-only"
    )
    check.set_defaults(func=cmd_check_config)

    backfill = sub.add_parser(
        "backfill",
        help="write past counter and histogram values as OpenMetrics and TSDB blocks",
        description=(
            "Write, for every counter and histogram of every configured stream, the value "
            "the live exporter would have exported at each step in [--from, --to]: the "
            "total of all rows with time <= T. Times are RFC 3339 (2024-05-01T00:00:00Z), "
            "'now', or relative like now-90d / now-1h30m. Sample times are the multiples "
            "of --step inside the range. The output is written in chunks of about "
            "--chunk-size, one OpenMetrics file each; unless --no-blocks, promtool turns "
            "each into a Prometheus TSDB block in --output. State gauges are NOT backfilled: state "
            "queries read the current state only and the schema keeps no history of it. "
            "See docs/backfill.md."
        ),
    )
    backfill.add_argument("--config", required=True, help="YAML config file")
    backfill.add_argument("--from", dest="start", required=True, help="first time (e.g. now-90d)")
    backfill.add_argument("--to", dest="end", default="now", help="last time (default: now)")
    backfill.add_argument("--step", default="1m", help="sample spacing (default %(default)s)")
    backfill.add_argument(
        "--output", default="credit-exporter-backfill",
        help="directory for the OpenMetrics files and the blocks (default %(default)s)",
    )  # fmt: skip
    backfill.add_argument(
        "--blocks", action=argparse.BooleanOptionalAction, default=True,
        help="run promtool to create TSDB blocks (default: yes)",
    )  # fmt: skip
    backfill.add_argument(
        "--label", action="append", default=[], metavar="NAME=VALUE",
        help="add a label to every series; give the job and instance labels Prometheus "
        "attaches to the live exporter so that its series continue the backfilled ones",
    )  # fmt: skip
    backfill.add_argument(
        "--keep-openmetrics", action="store_true",
        help="keep the OpenMetrics files after the blocks are created",
    )  # fmt: skip
    backfill.add_argument("--promtool", help="promtool binary (default: from PATH)")
    backfill.add_argument(
        "--chunk-size", default="256MiB",
        help="target size of each temporary OpenMetrics file: the range is written and "
        "turned into blocks chunk by chunk, so the temporary disk stays near "
        "(--jobs + 1) x this (default %(default)s)",
    )  # fmt: skip
    backfill.add_argument(
        "--jobs", type=int, default=None,
        help="promtool processes at a time (default: the number of CPUs, at most 4)",
    )  # fmt: skip
    backfill.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    _add_log_flags(backfill)
    backfill.set_defaults(func=cmd_backfill)

    from credit_exporter.report.run import add_report_parser

    add_report_parser(sub, cmd_report)
    from credit_exporter.demo import data_command

    data_command.add_parser(sub)
    from credit_exporter import notify_test

    notify_test.add_parser(sub)

    cat = sub.add_parser("catalog", help="print the metric catalogue")
    cat.add_argument("--format", choices=["json", "markdown"], default="json")
    cat.set_defaults(func=cmd_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from credit_exporter.logs import install_excepthook

    install_excepthook()
    args = build_parser().parse_args(argv)
    return int(args.func(args))

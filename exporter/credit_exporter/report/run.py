"""The ``report`` subcommand: arguments, and one run from config to files or a webhook."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from credit_exporter.config import ConfigError, load_config
from credit_exporter.report.period import (
    GRANULARITIES,
    ReportInputError,
    parse_period,
    parse_range,
)

EXIT_BAD_INPUT = 2
FORMATS = ("csv", "json", "pdf")
PDF_NEEDS = (
    "--format pdf needs matplotlib, which is not installed: pip install "
    "'credit-exporter[report]' (in a checkout: .venv/bin/pip install -e '.[report]')"
)


def add_report_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    report = sub.add_parser(
        "report",
        help="credit report with recommendations as CSV, JSON or PDF",
        description=(
            "Read a period's usage from the billing database through the config's stream "
            "and query SQL and write a credit report: totals, plan versus additional credits, "
            "tiers, models, users, timeline, task categories, budgets, an efficiency "
            "leaderboard and recommendations. Times are UTC. See docs/report.md."
        ),
    )
    report.add_argument("--config", required=True, help="YAML config file")
    when = report.add_mutually_exclusive_group(required=True)
    when.add_argument("--period", help="a month 2026-11, a day 2026-11-05 or an ISO week 2026-W45")
    when.add_argument(
        "--from", dest="start", help="instead of --period: start (RFC 3339, a date, now-30d)"
    )
    report.add_argument(
        "--to", dest="end", help="with --from: end, exclusive (RFC 3339, a date, now; default: now)"
    )
    report.add_argument("--organization", help="one organization (its label value); default all")
    report.add_argument(
        "--granularity", default="day", choices=GRANULARITIES,
        help="timeline buckets (default %(default)s)",
    )  # fmt: skip
    report.add_argument(
        "--format", required=True, choices=FORMATS,
        help="pdf needs matplotlib: pip install 'credit-exporter[report]'",
    )  # fmt: skip
    report.add_argument(
        "--output",
        help="file (json, pdf) or directory / .zip (csv); json defaults to stdout, pdf and "
        "csv to credit-report-<period>.pdf / credit-report-<period>/",
    )
    report.add_argument("--webhook", help="also POST the JSON document to this http(s) URL")
    report.add_argument(
        "--prometheus", metavar="URL",
        help="read each budget's and pool's time to exhaustion (Runs out) from this "
        "Prometheus, which evaluates alert_rules/ (default: report.prometheus in the config; "
        "without either the report has no Runs out)",
    )  # fmt: skip
    report.set_defaults(func=func)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"credit-exporter report: {message}", file=sys.stderr)
    return code


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_report(args: argparse.Namespace) -> int:
    from credit_exporter.report import build, data, exhaustion, writers

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"{args.config}: invalid configuration:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.webhook is not None and not writers.is_http_url(args.webhook):
        return _fail(f"--webhook: {args.webhook!r} is not an http:// or https:// URL")
    prometheus = args.prometheus or config.report.prometheus
    if prometheus is not None and not writers.is_http_url(prometheus):
        return _fail(f"--prometheus: {prometheus!r} is not an http:// or https:// URL")
    if args.format == "pdf" and not _has_matplotlib():
        return _fail(PDF_NEEDS)
    now = datetime.now(UTC)
    try:
        if args.period is not None:
            if args.end is not None:
                raise ReportInputError("--to: give either --period or --from/--to, not both")
            period = parse_period(args.period)
        else:
            period = parse_range(args.start, args.end or "now", now)
        raw = data.read_report(config, period, args.organization)
    except ReportInputError as error:
        return _fail(str(error))
    except ConfigError as error:
        return _fail("; ".join(error.problems))
    except psycopg.Error as error:
        return _fail(f"database: {str(error).strip().splitlines()[0]}", 1)
    report = build.build(raw, period, args.granularity, config.report, now)
    if prometheus is not None:
        recorded = None
        if exhaustion.is_current(report):
            try:
                recorded = exhaustion.read(prometheus, args.organization, now)
            except exhaustion.PrometheusError as error:
                return _fail(f"--prometheus: {error}", 1)
        exhaustion.attach(report, prometheus, recorded)
    suffix = f"-{args.organization}" if args.organization else ""
    default = Path(f"credit-report-{period.label}{suffix}")
    try:
        if args.format == "json":
            body = writers.json_bytes(report)
            if args.output:
                Path(args.output).write_bytes(body)
                print(args.output)
            elif not args.webhook:
                sys.stdout.buffer.write(body)
        elif args.format == "csv":
            for path in writers.write_csv(report, Path(args.output or default)):
                print(path)
        else:
            try:
                from credit_exporter.report.pdf import write_pdf
            except ImportError:
                return _fail(PDF_NEEDS)

            output = Path(args.output or default.with_suffix(".pdf"))
            write_pdf(report, output)
            print(output)
        if args.webhook:
            status = writers.post_webhook(report, args.webhook)
            print(f"posted to webhook: HTTP {status}", file=sys.stderr)
    except writers.WebhookError as error:
        return _fail(f"--webhook: {error}", 1)
    except OSError as error:
        return _fail(str(error), 1)
    return 0

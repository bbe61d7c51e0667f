"""Benchmarks of credit-exporter against the product targets (see benchmarks/README.md).

    python benchmarks/run.py                 # full: 1M and 10M usage events (30-40 min)
    python benchmarks/run.py --quick         # smoke check: 100k events, 10k series (~2 min)
    python benchmarks/run.py --sizes 1000000,10000000
    python benchmarks/run.py --scrape-only   # only /metrics under load (~2 min)
    python benchmarks/run.py --intake-only   # only the loads, 1M and 10M (~6 min)
    python benchmarks/run.py --window-only   # only the one-hour-window stream and reconcile
    python benchmarks/run.py --memory-only   # only resident memory per series (~5 min)
    python benchmarks/run.py --peers-only    # only query-exporter and sql_exporter side by side
    python benchmarks/run.py --startup-only  # only start-up with/without a checkpoint
    python benchmarks/run.py --startup-only --per-day 11111 --sizes 1000000,10000000,30000000 \
        --baseline-reps 3,1,1   # start-up as history grows at one write rate (~30 min)
    python benchmarks/run.py --steady-only --sizes 10000000  # only the steady poll, old vs new

Prints the results as Markdown and writes them to benchmarks/RESULTS.md
(``--quick``: benchmarks/out/RESULTS-quick.md). Needs a PostgreSQL where it may
create and drop ``ce_bench_*`` databases (``--admin-dsn``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from cebench import machine, memory, peers, report, startup, steady, suite

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short loads")
    parser.add_argument("--sizes", help="usage_events counts, e.g. 1000000,10000000")
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN, help="%(default)s")
    parser.add_argument("--output", type=Path, help="where to write the Markdown")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--scrape-only", action="store_true", help="only the /metrics load (section 4)"
    )
    only.add_argument("--intake-only", action="store_true", help="only the loads (section 3)")
    only.add_argument(
        "--window-only",
        action="store_true",
        help="only the time-ordered stream with a one-hour window and its reconcile (section 5)",
    )
    only.add_argument(
        "--memory-only",
        action="store_true",
        help="only resident memory per series, spread over metrics in several ways (section 6)",
    )
    only.add_argument(
        "--peers-only",
        action="store_true",
        help="only query-exporter and sql_exporter on the same queries, side by side",
    )
    only.add_argument("--startup-only", action="store_true", help="only start-up, checkpoint")
    only.add_argument(
        "--steady-only", action="store_true", help="only the steady poll, prepared vs old way"
    )
    parser.add_argument(
        "--reps", type=int, default=3,
        help="exporter processes per memory case, or starts with a checkpoint (%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--per-day", type=int,
        help="--startup-only: usage events a day at every size (the history grows with the"
        " size); default: 90 days at every size (the write rate grows)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-reps",
        help="--startup-only: starts without a checkpoint (full aggregates) per size, one"
        " number or one per size; the run that writes the first checkpoint counts (--reps)",
    )
    return parser.parse_args(argv)


def choose_plan(args: argparse.Namespace) -> suite.Plan:
    plan = suite.QUICK if args.quick else suite.FULL
    if args.sizes:
        sizes = tuple(sorted(int(s.replace("_", "")) for s in args.sizes.split(",")))
        plan = dataclasses.replace(plan, sizes=sizes)
    return plan


def baseline_reps(args: argparse.Namespace, sizes: Sequence[int]) -> list[int]:
    """--baseline-reps per size: one number for all, or one per size; default --reps."""
    if not args.baseline_reps:
        return [args.reps] * len(sizes)
    reps = [int(r) for r in args.baseline_reps.split(",")]
    if len(reps) == 1:
        return reps * len(sizes)
    if len(reps) != len(sizes):
        raise SystemExit("--baseline-reps: one number, or one per size")
    return reps


def output_path(args: argparse.Namespace) -> Path:
    if args.output:
        return args.output
    if args.scrape_only:
        return suite.OUT / "RESULTS-scrape.md"
    if args.intake_only:
        return suite.OUT / "RESULTS-intake.md"
    if args.window_only:
        return suite.OUT / "RESULTS-window.md"
    if args.memory_only:
        return suite.OUT / "RESULTS-memory.md"
    if args.peers_only:
        return suite.OUT / "RESULTS-peers.md"
    if args.startup_only:
        return suite.OUT / "RESULTS-startup.md"
    if args.steady_only:
        return suite.OUT / "RESULTS-steady.md"
    return suite.OUT / "RESULTS-quick.md" if args.quick else BENCH_DIR / "RESULTS.md"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the ce_bench_* databases and subprocesses are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = choose_plan(args)
    command = "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    suite.OUT.mkdir(exist_ok=True)
    log = suite.Log()
    described = machine.describe(args.admin_dsn)
    path = output_path(args)

    def finish(text: str) -> int:
        print(text)
        path.write_text(text, encoding="utf-8")
        log(f"wrote {path}")
        return 0

    if args.scrape_only:
        log(f"/metrics with {plan.series:,} series:")
        return finish(report.scrape_document(described, command.strip(), suite.measure_scrape(
            args.admin_dsn, plan, log)))  # fmt: skip
    if args.intake_only:
        loaded = [suite.measure_intake(args.admin_dsn, events, plan, log) for events in plan.sizes]
        return finish(report.intake_document(described, command.strip(), loaded))
    if args.window_only:
        windowed = [suite.measure_window(args.admin_dsn, n, plan, log) for n in plan.sizes]
        return finish(report.window_document(described, command.strip(), windowed))
    if args.memory_only:
        scale = 0.1 if args.quick else 1.0
        measured = memory.measure(args.admin_dsn, args.reps, scale, suite.OUT, log)
        return finish(memory.document(described, command.strip(), measured))
    if args.peers_only:
        measured = [peers.measure(args.admin_dsn, n, plan, suite.OUT, log) for n in plan.sizes]
        return finish(peers.document(described, command.strip(), measured))
    if args.startup_only:
        fulls = baseline_reps(args, plan.sizes)
        runs = [startup.measure(args.admin_dsn, n, args.reps, full, args.per_day, log)
                for n, full in zip(plan.sizes, fulls, strict=True)]  # fmt: skip
        return finish(startup.document(described, command.strip(), args.per_day, runs))
    if args.steady_only:
        measured = [steady.measure(args.admin_dsn, n, plan.steady_reps, plan.new_events, log)
                    for n in plan.sizes]  # fmt: skip
        return finish(steady.document(described, command.strip(), plan.steady_reps, measured))
    sizes = [suite.measure_size(args.admin_dsn, events, plan, log) for events in plan.sizes]
    log(f"/metrics with {plan.series:,} series:")
    scraped = suite.measure_scrape(args.admin_dsn, plan, log)
    windowed = [suite.measure_window(args.admin_dsn, n, plan, log) for n in plan.sizes]
    return finish(report.document(described, plan, command.strip(), sizes, scraped, windowed))


if __name__ == "__main__":
    sys.exit(main())

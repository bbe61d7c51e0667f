"""The demo's balance and budget gauges over its backfilled history, for
deploy/native_stack.py --state-history (the preview render uses it).

``credit-exporter backfill`` writes counters only: the reference schema keeps no
history of balances or budgets (docs/backfill.md). The demo database, though,
keeps what is needed to recompute them at a past time T inside each
organization's current billing period:

- a budget's used credits are the budgets query of config.example.yaml run as of
  T: the period that contains T, and only the usage rows up to T;
- a pool's balance at T is today's balance plus what was drawn from it after T
  (credit_exporter/demo/live.py keeps ``balance = allocation - drawn``), minus,
  for the top-up pool, the top-ups bought after T (which also raised its
  allocation); the plan pool's allocation is the period's grant.

Before a period starts nothing is written (the previous period's pools are not
kept). The values are what the live exporter would have exported had it run
then; they are written with its job and instance labels, so the live series
continue them. Demo only: another schema needs its own history tables.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

BUDGETS_CUTOFF = "AND ue.occurred_at < cp.ends_at"  # where the rows up to T are cut


def as_of(sql: str, at: str = "%(t)s::timestamptz") -> str:
    """A state query of config.example.yaml run as of time ``at`` (an SQL expression)
    instead of now: the period that holds it, and (budgets) the usage rows up to it."""
    if "now()" not in sql:
        raise ValueError("not a query of the current period (no now())")
    shifted = sql.replace("%", "%%").replace("now()", at)
    if "usage_events" in sql:
        if BUDGETS_CUTOFF not in sql:
            raise ValueError(f"budgets query without {BUDGETS_CUTOFF!r}: update as_of()")
        shifted = shifted.replace(BUDGETS_CUTOFF, f"{BUDGETS_CUTOFF} AND ue.occurred_at <= {at}")
    return shifted


def at_steps(sql: str) -> str:
    """``sql`` (with ``now()`` for the time) run at every step of ``%(first)s`` to
    ``%(last)s`` by ``%(step)s`` in one statement: the step time, then its columns."""
    return ("SELECT steps.t, q.* FROM generate_series(%(first)s::timestamptz, "
            "%(last)s::timestamptz, %(step)s::interval) AS steps (t) "
            f"CROSS JOIN LATERAL ({as_of(sql, 'steps.t')}) AS q")  # fmt: skip


POOLS = """
WITH current_period AS (
  SELECT DISTINCT ON (organization_id) organization_id, starts_at
  FROM billing_periods WHERE starts_at <= %(now)s AND %(now)s < ends_at
  ORDER BY organization_id, starts_at DESC
)
SELECT o.slug, cp.pool, cp.allocation, cp.balance, p.starts_at,
       coalesce((SELECT sum(ue.credits) FROM usage_events ue
                 WHERE ue.organization_id = cp.organization_id AND ue.pool = cp.pool
                   AND NOT ue.playground AND ue.occurred_at > %(t)s
                   AND ue.occurred_at <= %(now)s), 0) AS drawn_after,
       CASE cp.pool WHEN 'topup' THEN
         coalesce((SELECT sum(tu.credits) FROM topups tu
                   WHERE tu.organization_id = cp.organization_id
                     AND tu.occurred_at > %(t)s AND tu.occurred_at <= %(now)s), 0)
       ELSE 0 END AS bought_after
FROM credit_pools cp
JOIN organizations o ON o.id = cp.organization_id
JOIN current_period p ON p.organization_id = cp.organization_id
"""


def steps(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    """The multiples of ``step`` from the epoch in [start, end], as the backfill's."""
    seconds = int(step.total_seconds())
    at = -(-int(start.timestamp()) // seconds) * seconds
    while at <= end.timestamp():
        yield datetime.fromtimestamp(at, UTC)
        at += seconds


def pool_samples(row: tuple[Any, ...]) -> dict[str, Decimal]:
    """credit_allocation_credits and credit_balance_credits of one pool row of POOLS."""
    _, _, allocation, balance, _, drawn_after, bought_after = row
    return {
        "credit_allocation_credits": allocation - bought_after,
        "credit_balance_credits": balance + drawn_after - bought_after,
    }


def _labels(names: dict[str, str]) -> str:
    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    quoted = (f'{k}="{escaped(v)}"' for k, v in sorted(names.items()))
    return "{" + ",".join(quoted) + "}"


def samples(conn: Any, config: dict[str, Any], start: datetime, end: datetime,
            step: timedelta) -> dict[str, list[tuple[str, Decimal, float]]]:  # fmt: skip
    """Per gauge, (labels, value, time) at every step in [start, end] (``end`` is now:
    the pools are recomputed back from their balances at ``end``)."""
    times = list(steps(start, end, step))
    span = {"first": times[0], "last": times[-1], "step": step}
    out: dict[str, list[tuple[str, Decimal, float]]] = {}
    for name in ("budgets", "billing_periods"):
        query = config["queries"][name]
        cursor = conn.execute(at_steps(query["sql"]), span)
        columns = [c.name for c in cursor.description]
        for row in cursor.fetchall():
            record = dict(zip(columns, row, strict=True))
            for metric in query["metrics"]:
                value = record[metric["value"]]
                if isinstance(value, datetime):
                    value = Decimal(value.timestamp())
                names = {label: str(record[label]) for label in metric["labels"]}
                out.setdefault(metric["metric"], []).append(
                    (_labels(names), value, record["t"].timestamp())
                )
    pools = ("SELECT steps.t, q.* FROM generate_series(%(first)s::timestamptz, "
             "%(last)s::timestamptz, %(step)s::interval) AS steps (t) CROSS JOIN LATERAL ("
             + POOLS.replace("%(t)s", "steps.t") + ") AS q")  # fmt: skip
    for t, *row in conn.execute(pools, {**span, "now": end}).fetchall():
        if t < row[4]:
            continue  # before the current period: not known
        for metric, value in pool_samples(tuple(row)).items():
            names = {"organization": row[0], "pool": row[1]}
            out.setdefault(metric, []).append((_labels(names), value, t.timestamp()))
    return out


def openmetrics(gauges: dict[str, list[tuple[str, Decimal, float]]],
                extra: dict[str, str]) -> str:  # fmt: skip
    """The samples as one OpenMetrics document, each series in time order, with the
    ``extra`` labels (job, instance) added."""
    tail = ",".join(f'{k}="{v}"' for k, v in sorted(extra.items()))
    lines = []
    for metric, points in sorted(gauges.items()):
        lines.append(f"# TYPE {metric} gauge")
        for labels, value, t in sorted(points, key=lambda p: (p[0], p[2])):
            joined = labels[:-1] + ("," if labels != "{}" else "") + tail + "}"
            lines.append(f"{metric}{joined} {value} {t:.0f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def backfill(dsn: str, config_path: Path, output: Path, start: datetime, end: datetime,
             step: timedelta, extra: dict[str, str]) -> int:  # fmt: skip
    """Write the gauges' history as TSDB blocks into ``output``; returns the samples."""
    import psycopg

    config = yaml.safe_load(config_path.read_text())
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        gauges = samples(conn, config, start, end, step)
    text = output / "credit-exporter-state-history.om"
    text.write_text(openmetrics(gauges, extra))
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(text),
                    str(output)], check=True, capture_output=True)  # fmt: skip
    text.unlink()
    return sum(len(points) for points in gauges.values())

"""``credit-exporter backfill``: past values of every stream's counters and
histograms as OpenMetrics and TSDB blocks, against a real PostgreSQL, the
real promtool and a real Prometheus."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import require_binary
from stream_support import InProcessStream
from support import start_exporter, start_prometheus, wait_until

from credit_exporter import catalog
from credit_exporter.backfill import to_ms
from credit_exporter.cli import main
from credit_exporter.config import parse_config
from credit_exporter.sources.events import HistogramValue, le_text

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
HOUR = 3_600_000
LONG_RETENTION = ["--storage.tsdb.retention.time=3650d"]
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _backfill(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["backfill", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _example_config(dsn: str, path: Path) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["databases"]["billing"] = {"dsn": dsn}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _samples_at(files: list[Path], names: set[str], ts_ms: int) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value of the lines stamped ``ts_ms`` in the files."""
    stamp = f" {ts_ms // 1000}\n"
    found: dict[tuple, float] = {}
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.endswith(stamp) or line.split("{", 1)[0] not in names:
                    continue
                name_labels, value, _ = line.rsplit(" ", 2)
                name, _, labels = name_labels.partition("{")
                key = (name, tuple(sorted(_PAIR.findall(labels))))
                assert key not in found, f"two samples for {key} at {ts_ms}"
                found[key] = float(value)
    return found


def _sql_totals(dsn: str, stream_sql: str, at: datetime) -> dict[tuple, float]:
    """What the live exporter exports at ``at``, computed independently with plain SQL:
    credit_spent_credits_total per label set and the response-duration histogram."""
    expected: dict[tuple, float] = {}
    with psycopg.connect(dsn) as conn:
        for org, project, agent, service_type, spent in conn.execute(
            f"SELECT organization, project, agent, service_type, sum(spent) FROM ({stream_sql}) e"
            " WHERE occurred_at <= %s GROUP BY 1, 2, 3, 4",
            (at,),
        ):
            labels = {"organization": org, "project": project, "agent": agent,
                      "service_type": service_type}  # fmt: skip
            expected[("credit_spent_credits_total", tuple(sorted(labels.items())))] = float(spent)
        bounds = catalog.get("credit_response_duration_seconds").buckets
        buckets = ", ".join(
            f"count(*) FILTER (WHERE latency_seconds <= {Decimal(repr(b))})" for b in bounds
        )
        for org, model, count, total, *counts in conn.execute(
            f"SELECT organization, model, count(latency_seconds), sum(latency_seconds), {buckets}"
            f" FROM ({stream_sql}) e WHERE occurred_at <= %s GROUP BY 1, 2",
            (at,),
        ):
            base = {"organization": org, "gen_ai_request_model": model}
            name = "credit_response_duration_seconds"
            labels = tuple(sorted(base.items()))
            expected[(f"{name}_count", labels)] = float(count)
            expected[(f"{name}_sum", labels)] = float(total or 0)
            les = [f"{b:g}" if b != int(b) else f"{b:.1f}" for b in bounds] + ["+Inf"]
            for le, value in zip(les, [*counts, count], strict=True):
                key = tuple(sorted({**base, "le": le}.items()))
                expected[(f"{name}_bucket", key)] = float(value)
    return expected


CHECKED = {
    "credit_spent_credits_total",
    "credit_response_duration_seconds_bucket",
    "credit_response_duration_seconds_count",
    "credit_response_duration_seconds_sum",
}


@dataclass
class DemoBackfill:
    config: Path
    output: Path  # OpenMetrics files (kept) and TSDB blocks
    files: list[Path]
    first_ms: int
    last_ms: int
    step_ms: int


@pytest.fixture(scope="module")
def demo_backfill(demo_db: str, tmp_path_factory: pytest.TempPathFactory) -> DemoBackfill:
    """Three days of the demo week at 1h steps, with blocks, keeping the OpenMetrics files."""
    require_binary("promtool")
    work = tmp_path_factory.mktemp("backfill-demo")
    config = _example_config(demo_db, work / "config.yaml")
    output = work / "prometheus" / "data"  # start_prometheus's storage path
    to = datetime.now(UTC)
    start = to - timedelta(days=3)
    code = main(["backfill", "--quiet", "--config", str(config), "--from", start.isoformat(),
                 "--to", to.isoformat(), "--step", "1h", "--output", str(output),
                 "--keep-openmetrics"])  # fmt: skip
    assert code == 0
    files = sorted(output.glob("credit-exporter-backfill-*.om"))
    assert files
    first, last = -(-to_ms(start) // HOUR) * HOUR, to_ms(to) // HOUR * HOUR
    return DemoBackfill(config, output, files, first, last, HOUR)


def test_backfilled_value_at_a_step_is_the_sql_total_of_rows_up_to_it(
    demo_backfill: DemoBackfill, demo_db: str
) -> None:
    stream_sql = yaml.safe_load(EXAMPLE.read_text())["streams"]["usage_events"]["sql"]
    # the first step (the base alone), one inside, the last
    for ts_ms in (demo_backfill.first_ms, demo_backfill.first_ms + 37 * HOUR,
                  demo_backfill.last_ms):  # fmt: skip
        written = _samples_at(demo_backfill.files, CHECKED, ts_ms)
        expected = _sql_totals(demo_db, stream_sql, datetime.fromtimestamp(ts_ms / 1000, UTC))
        assert expected, "the demo has rows before every step"
        assert written == expected, f"at {_rfc3339(ts_ms)}"


def test_promtool_blocks_answer_a_past_instant_query_in_prometheus(
    demo_backfill: DemoBackfill, demo_db: str
) -> None:
    """promtool accepted every file (the fixture ran it), and a Prometheus started on the
    blocks answers an instant query at a past step with the backfilled value."""
    assert any(p.is_dir() and len(p.name) == 26 for p in demo_backfill.output.iterdir())
    prometheus = start_prometheus(
        demo_backfill.output.parent, [], extra_args=LONG_RETENTION
    )  # fmt: skip
    try:
        ts_ms = demo_backfill.first_ms + 50 * HOUR
        query = urllib.parse.urlencode(
            {"query": "credit_spent_credits_total", "time": f"{ts_ms / 1000:.3f}"}
        )
        result = prometheus.api(f"/api/v1/query?{query}")["result"]
        served = {
            ("credit_spent_credits_total",
             tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__"))):
            float(r["value"][1])
            for r in result
        }  # fmt: skip
        stream_sql = yaml.safe_load(EXAMPLE.read_text())["streams"]["usage_events"]["sql"]
        expected = {  # Prometheus drops empty labels (agent="" for direct prompts)
            (key[0], tuple((k, v) for k, v in key[1] if v)): value
            for key, value in _sql_totals(
                demo_db, stream_sql, datetime.fromtimestamp(ts_ms / 1000, UTC)
            ).items()
            if key[0] == "credit_spent_credits_total"
        }
        assert served == expected
    finally:
        prometheus.stop()


ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


class ScratchWatch:
    """Polls a backfill's output directory while it runs: the peak bytes of the backfill's
    temporary OpenMetrics and scratch files, and the OpenMetrics files seen. Blocks are
    left out, finished or not (promtool preallocates 512 MiB for an unfinished block's
    chunk file, whatever the chunk size: docs/backfill.md)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.peak = 0
        self.files: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _size(self) -> int:
        total = 0
        for root, dirs, files in os.walk(self.output):
            if root == str(self.output):
                dirs[:] = [d for d in dirs if not ULID.match(d[:26])]
                self.files.update(f for f in files if f.endswith(".om"))
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    total += os.stat(os.path.join(root, name)).st_size
        return total

    def _poll(self) -> None:
        while not self._stop.is_set():
            if self.output.is_dir():
                self.peak = max(self.peak, self._size())
            time.sleep(0.005)

    def __enter__(self) -> ScratchWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class ChunkedBackfill:
    output: Path
    watch: ScratchWatch
    chunk_bytes: int
    first_ms: int
    last_ms: int
    blocks: list[tuple[int, int]]  # (minTime, maxTime) of each block, sorted


CHUNK_BYTES = 2_000_000


@pytest.fixture(scope="module")
def chunked_backfill(demo_db: str, tmp_path_factory: pytest.TempPathFactory) -> ChunkedBackfill:
    """Two hours of the demo at 5m steps (about 25 MB of OpenMetrics) in 2 MB chunks,
    promtool one at a time."""
    require_binary("promtool")
    work = tmp_path_factory.mktemp("backfill-chunked")
    config = _example_config(demo_db, work / "config.yaml")
    output = work / "prometheus" / "data"  # start_prometheus's storage path
    to = datetime.now(UTC)
    start = to - timedelta(hours=2)
    with ScratchWatch(output) as watch:
        code = main(["backfill", "--quiet", "--config", str(config), "--from", start.isoformat(),
                     "--to", to.isoformat(), "--step", "5m", "--output", str(output),
                     "--jobs", "1", "--chunk-size", str(CHUNK_BYTES)])  # fmt: skip
    assert code == 0
    assert not list(output.glob("*.om")), "the OpenMetrics files are deleted"
    step = 300_000
    first, last = -(-to_ms(start) // step) * step, to_ms(to) // step * step
    metas = [json.loads((p / "meta.json").read_text())
             for p in output.iterdir() if ULID.match(p.name)]  # fmt: skip
    blocks = sorted((m["minTime"], m["maxTime"]) for m in metas)
    return ChunkedBackfill(output, watch, CHUNK_BYTES, first, last, blocks)


def test_the_temporary_disk_stays_within_jobs_plus_two_chunks(
    chunked_backfill: ChunkedBackfill, demo_db: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The range is written and turned into blocks chunk by chunk: the temporary disk
    peak is bounded by the chunk size (one file being written and assembled, one being
    read by promtool), not by the range, which writes many times that."""
    config = _example_config(demo_db, tmp_path / "config.yaml")
    code, out, _ = _backfill(
        capsys, "--config", str(config), "--from", _rfc3339(chunked_backfill.first_ms),
        "--to", _rfc3339(chunked_backfill.last_ms), "--step", "5m", "--no-blocks",
        "--output", str(tmp_path / "om"),
    )  # fmt: skip
    assert code == 0
    whole = int(re.search(r"; ([\d,]+) bytes of OpenMetrics", out)[1].replace(",", ""))
    bound = (1 + 2) * chunked_backfill.chunk_bytes
    assert whole > 4 * bound, "the range must write far more than the bound"
    watch = chunked_backfill.watch
    assert len(watch.files) > 4, "written in several chunks"
    assert 0 < watch.peak <= bound, f"peak {watch.peak:,} bytes > {bound:,}"


def test_chunks_make_blocks_whose_time_ranges_do_not_overlap(
    chunked_backfill: ChunkedBackfill,
) -> None:
    ranges = chunked_backfill.blocks
    assert len(ranges) == len(chunked_backfill.watch.files), "one block a chunk"
    assert ranges[0][0] == chunked_backfill.first_ms
    assert ranges[-1][1] == chunked_backfill.last_ms + 1
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges)), ranges


def test_chunked_blocks_answer_every_step_with_the_sql_total(
    chunked_backfill: ChunkedBackfill, demo_db: str
) -> None:
    """Across the chunk seams, every step's value in Prometheus is the SQL total."""
    prometheus = start_prometheus(
        chunked_backfill.output.parent, [], extra_args=LONG_RETENTION
    )  # fmt: skip
    stream_sql = yaml.safe_load(EXAMPLE.read_text())["streams"]["usage_events"]["sql"]
    try:
        for ts_ms in range(chunked_backfill.first_ms, chunked_backfill.last_ms + 1, 300_000):
            query = urllib.parse.urlencode(
                {"query": "credit_spent_credits_total", "time": f"{ts_ms / 1000:.3f}"}
            )
            served = {
                tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")):
                float(r["value"][1])
                for r in prometheus.api(f"/api/v1/query?{query}")["result"]
            }  # fmt: skip
            expected = {
                tuple((k, v) for k, v in key[1] if v): value
                for key, value in _sql_totals(
                    demo_db, stream_sql, datetime.fromtimestamp(ts_ms / 1000, UTC)
                ).items()
                if key[0] == "credit_spent_credits_total"
            }
            assert served == expected, _rfc3339(ts_ms)
    finally:
        prometheus.stop()


# --- a small hand-made stream ------------------------------------------------------------

EV_SCHEMA = """
CREATE TABLE ev (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    org text,
    credits numeric(18, 6) NOT NULL,
    latency numeric(10, 3)
);
CREATE INDEX ev_occurred_at ON ev (occurred_at);
"""
EV_SQL = (
    "SELECT occurred_at, org, 'p' AS project, '' AS agent, 'chat' AS st, credits, latency FROM ev"
)


def _ev_config(dsn: str) -> dict[str, Any]:
    labels = {"organization": "org", "project": "project", "agent": "agent", "service_type": "st"}
    return {
        "databases": {"billing": {"dsn": dsn}},
        "streams": {
            "ev": {
                "database": "billing",
                "time": "occurred_at",
                "interval": "1s",
                "timeout": "1s",
                "settle": "1s",
                "sql": EV_SQL,
                "metrics": [
                    {"metric": "credit_spent_credits_total", "value": "credits",
                     "labels": labels},
                    {"metric": "credit_requests_total", "labels": labels},
                    {"metric": "credit_response_duration_seconds", "value": "latency",
                     "labels": {"organization": "org", "gen_ai_request_model": "st"}},
                ],
            }
        },
    }  # fmt: skip


@pytest.fixture
def ev_db(make_database: Callable[[], str]) -> str:
    dsn = make_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EV_SCHEMA)
    return dsn


def _insert(dsn: str, rows: list[tuple[datetime, str | None, str, str | None]]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ev (occurred_at, org, credits, latency) VALUES (%s, %s, %s, %s)", rows
        )


def _write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_row_stamped_exactly_at_a_step_counts_at_that_step(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The boundary: value at T = rows with time <= T; a series starts at its first row's step."""
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    minute = timedelta(minutes=1)
    _insert(ev_db, [
        (t0 - minute, "a", "1", "0.5"),                          # the base
        (t0 + minute, "a", "2", "1"),                            # exactly at step 1
        (t0 + minute + timedelta(microseconds=1), "a", "4", "3"),  # just after: step 2
        (t0 + 2 * minute, "b", "8", None),                       # b starts at step 2
        (t0 + 3 * minute, None, "16", None),                     # NULL label: skipped
    ])  # fmt: skip
    config = _write_config(_ev_config(ev_db), tmp_path / "config.yaml")
    code, out, _ = _backfill(capsys, "--config", str(config), "--from", t0.isoformat(),
                             "--to", (t0 + 3 * minute).isoformat(), "--no-blocks",
                             "--output", str(tmp_path / "out"))  # fmt: skip
    assert code == 0
    assert "3 rows skipped" in out  # per metric, as credit_exporter_dropped_rows_total
    # a: 4 steps, b: 2 steps; two counters and a histogram (17 series) each
    assert "38 series (34 of them histograms' _bucket, _count and _sum), 114 samples" in out
    text = "".join(p.read_text() for p in sorted((tmp_path / "out").glob("*.om")))
    series: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        if line.startswith("credit_spent_credits_total{"):
            org = _PAIR.findall(line)[0][1]
            _, value, stamp = line.rsplit(" ", 2)
            series.setdefault(org, []).append((stamp, value))
    start = to_ms(t0) // 1000
    assert series == {
        "a": [(str(start), "1.0"), (str(start + 60), "3.0"), (str(start + 120), "7.0"),
              (str(start + 180), "7.0")],
        "b": [(str(start + 120), "8.0"), (str(start + 180), "8.0")],
    }  # fmt: skip


def test_output_is_openmetrics_a_strict_parser_accepts(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Families contiguous, counters as _total, canonical le, integer counts, # EOF last:
    the Python client's OpenMetrics parser (stricter than Prometheus's) reads it back."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    window = 54 * HOUR  # inside one block window, so one file
    end = datetime.fromtimestamp((1_714_564_800_000 // window * window + 10 * HOUR) / 1000, UTC)
    _insert(ev_db, [(end - timedelta(minutes=m), f"o{m % 3}", str(m), f"{m / 7:.3f}")
                    for m in range(1, 200)])  # fmt: skip
    config = _write_config(_ev_config(ev_db), tmp_path / "config.yaml")
    start = end - timedelta(hours=2)
    code, _, _ = _backfill(capsys, "--config", str(config), "--from", start.isoformat(),
                           "--to", end.isoformat(), "--step", "5m", "--no-blocks",
                           "--output", str(tmp_path / "out"))  # fmt: skip
    assert code == 0
    [path] = (tmp_path / "out").glob("*.om")
    text = path.read_text()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    # prometheus_client 0.26 drops a histogram's samples after its first timestamp
    # (its duplicate check is not reset per timestamp): give it the histogram's last step
    last = f" {to_ms(end) // 1000}"
    text = "".join(
        line for line in text.splitlines(keepends=True)
        if not line.startswith("credit_response_duration_seconds_") or line.rstrip().endswith(last)
    )  # fmt: skip
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"credit_spent_credits", "credit_requests",
                             "credit_response_duration_seconds"}  # fmt: skip
    assert families["credit_spent_credits"].type == "counter"
    assert len(families["credit_spent_credits"].samples) == 3 * 25  # 3 orgs x 25 steps
    assert families["credit_response_duration_seconds"].type == "histogram"
    assert all(s.timestamp is not None for f in families.values() for s in f.samples)


def test_live_exporter_continues_the_backfilled_series_without_a_jump(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backfill up to now (with the live scrape's job and instance labels), insert rows,
    then a Prometheus on the blocks that scrapes the live exporter sees one series whose
    first live sample is the last backfilled one plus exactly the rows after that step."""
    require_binary("promtool")
    now = datetime.now(UTC)
    _insert(ev_db, [(now - timedelta(seconds=29 * k), "a", f"{k}.25", "0.3")
                    for k in range(1, 240)])  # fmt: skip
    config = _ev_config(ev_db)
    exporter = start_exporter(config, tmp_path / "exporter")
    prometheus = None
    try:
        instance = exporter.url.removeprefix("http://")
        to = datetime.now(UTC)
        output = tmp_path / "prometheus" / "data"
        code, _, err = _backfill(
            capsys, "--config", str(exporter.config_path), "--from", "now-2h",
            "--to", to.isoformat(), "--step", "1m", "--output", str(output),
            "--label", "job=credit-exporter", "--label", f"instance={instance}",
        )  # fmt: skip
        assert code == 0, err
        last_ms = to_ms(to) // 60_000 * 60_000
        inserted = datetime.now(UTC)
        _insert(ev_db, [(inserted, "a", "100", "1"), (inserted, "a", "0.5", None)])
        with psycopg.connect(ev_db) as conn:
            before, after = conn.execute(
                "SELECT sum(credits) FILTER (WHERE occurred_at <= %(t)s),"
                " sum(credits) FILTER (WHERE occurred_at > %(t)s) FROM ev",
                {"t": datetime.fromtimestamp(last_ms / 1000, UTC)},
            ).fetchone()  # fmt: skip
        total = float(before + after)
        wait_until(
            lambda: exporter.value("credit_spent_credits_total", organization="a") == total,
            20, "the exporter to count the new rows",
        )  # fmt: skip
        prometheus = start_prometheus(tmp_path / "prometheus", [instance],
                                      extra_args=LONG_RETENTION)  # fmt: skip
        selector = 'credit_spent_credits_total{organization="a"}'
        wait_until(
            lambda: any(float(v[0]) * 1000 > last_ms
                        for r in prometheus.query(f"{selector}[3h]") for v in r["values"]),
            30, "a live sample after the backfilled ones",
        )  # fmt: skip
        result = prometheus.query(f"{selector}[3h]")
        assert len(result) == 1, "backfilled and live samples must be one series"
        assert result[0]["metric"]["instance"] == instance
        values = [(float(t) * 1000, float(v)) for t, v in result[0]["values"]]
        backfilled = [v for t, v in values if t <= last_ms]
        live = [v for t, v in values if t > last_ms]
        assert len(backfilled) >= 100 and live
        assert backfilled[-1] == float(before)
        assert live[0] == float(before) + float(after)
        series = backfilled + live
        assert all(a <= b for a, b in itertools.pairwise(series))
        assert prometheus.query(f"resets({selector}[3h])")[0]["value"][1] == "0"
    finally:
        if prometheus is not None:
            prometheus.stop()
        exporter.stop()


def test_the_summary_counts_each_histogram_bucket_count_and_sum_as_a_series(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary's series are the series Prometheus stores: one a counter, and for a
    histogram one per ``le`` (+Inf included) plus ``_count`` and ``_sum``; the distinct
    series in the written file are the same number."""
    _insert(ev_db, [(T0 - MINUTE, "a", "1", "0.5"), (T0, "b", "2", None)])
    out, files = _backfill_ev(capsys, _ev_config(ev_db), tmp_path)
    series = {
        line.rsplit(" ", 2)[0]
        for path in files for line in path.read_text().splitlines() if not line.startswith("#")
    }  # fmt: skip
    histogram = {s for s in series if s.startswith("credit_response_duration_seconds_")}
    buckets = len(catalog.get("credit_response_duration_seconds").buckets)
    assert len(histogram) == 2 * (buckets + 3)  # organizations a and b
    assert len(series) == 2 * 2 + len(histogram)  # and two counters each
    assert f"{len(series)} series ({len(histogram)} of them histograms'" in out


def test_a_failed_run_leaves_no_output_directory_it_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(_ev_config("postgresql://nobody@127.0.0.1:1/none"),
                           tmp_path / "config.yaml")  # fmt: skip
    output = tmp_path / "new" / "backfill"
    code, _, err = _backfill(capsys, "--config", str(config), "--from", "now-1h",
                             "--no-blocks", "--output", str(output))  # fmt: skip
    assert code == 1
    assert "127.0.0.1" in err
    assert not (tmp_path / "new").exists()


def test_a_failed_run_keeps_the_directory_it_was_given_and_what_was_in_it(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The database fails on the third one-step chunk, after promtool started on the
    first two: the run's own blocks and files go; the directory the user gave, and the
    blocks and files already in it, stay."""
    require_binary("promtool")
    _insert(ev_db, [*EV_ROWS, (T0 + 2 * MINUTE, "boom", "1", None)])
    output = tmp_path / "data"
    (output / "01HZZZZZZZZZZZZZZZZZZZZZZZ").mkdir(parents=True)
    (output / "notes.txt").write_text("mine")
    config = _ev_config(ev_db)
    config["streams"]["ev"]["sql"] = EV_SQL.replace(
        "credits,", "credits / (CASE org WHEN 'boom' THEN 0 ELSE 1 END) AS credits,"
    )
    path = _write_config(config, tmp_path / "config.yaml")
    code, _, err = _backfill(capsys, "--config", str(path), "--from", T0.isoformat(),
                             "--to", (T0 + 3 * MINUTE).isoformat(), "--chunk-size", "1KiB",
                             "--jobs", "2", "--output", str(output))  # fmt: skip
    assert code == 1
    assert "division by zero" in err
    assert sorted(p.name for p in output.iterdir()) == ["01HZZZZZZZZZZZZZZZZZZZZZZZ", "notes.txt"]
    assert (output / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "now-1h", "--to", "now-2h"], "is after --to"),
        (["--from", "yesterday"], "cannot parse 'yesterday'"),
        (["--from", "2024-05-01T00:00:00"], "has no UTC offset"),
        (["--from", "now-1h", "--step", "0.5s"], "--step"),
        (["--from", "now-1h", "--to", "now+1h"], "is in the future"),
    ],
    ids=["from-after-to", "unparseable-time", "no-offset", "sub-second-step", "future-to"],
)
def test_bad_times_exit_2_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(_ev_config("postgresql://nobody@127.0.0.1:1/none"),
                           tmp_path / "config.yaml")  # fmt: skip
    code, _, err = _backfill(capsys, "--config", str(config), "--no-blocks",
                             "--output", str(tmp_path / "out"), *args)  # fmt: skip
    assert code == 2
    assert message in err
    assert not (tmp_path / "out").exists()


def test_unknown_config_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    code, _, err = _backfill(capsys, "--config", str(missing), "--from", "now-1h")
    assert code == 2
    assert f"{missing}: cannot read" in err


# --- the labels are the live exporter's: if_null, hash_labels, drop_labels ------------------

EV_SAMPLES = {
    "credit_spent_credits_total",
    "credit_requests_total",
    *(f"credit_response_duration_seconds_{part}" for part in ("bucket", "count", "sum")),
}
EV_KEY_ENV = "CREDIT_EXPORTER_TEST_HMAC_KEY"


def _live_samples(config: dict[str, Any]) -> dict[tuple, float]:
    """What the live exporter exports for stream ``ev`` after one in-process poll, keyed
    like ``_samples_at``."""
    live = InProcessStream(parse_config(config), "ev")
    try:
        live.poll()
    finally:
        live.close()
    samples: dict[tuple, float] = {}
    for name, series in live.stream.exported.items():
        metric = catalog.get(name)
        for values, value in series.items():
            labels = dict(zip(metric.labels, values, strict=True))
            key = tuple(sorted(labels.items()))
            if not isinstance(value, HistogramValue):
                samples[(name, key)] = float(value)
                continue
            les = [*map(le_text, metric.buckets), "+Inf"]
            for le, count in zip(les, [*value.buckets, value.count], strict=True):
                samples[(f"{name}_bucket", tuple(sorted({**labels, "le": le}.items())))] = count
            samples[(f"{name}_count", key)] = value.count
            samples[(f"{name}_sum", key)] = float(value.total)
    return samples


def _with_organization(config: dict[str, Any], entry: Any) -> dict[str, Any]:
    """``config`` with every mapping's organization label given by ``entry``."""
    for mapping in config["streams"]["ev"]["metrics"]:
        mapping["labels"] = {**mapping["labels"], "organization": entry}
    return config


T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# NULL and 'unknown' organizations on both sides of other groups and steps
EV_ROWS = [
    (T0 - MINUTE, None, "1", "0.5"),
    (T0 + MINUTE, "unknown", "2", "1"),
    (T0 + 2 * MINUTE, None, "4", None),
    (T0 + 2 * MINUTE, "a", "8", "2"),
    (T0 + 3 * MINUTE, "unknown", "16", "3"),
]


def _backfill_ev(
    capsys: pytest.CaptureFixture[str], config: dict[str, Any], tmp_path: Path
) -> tuple[str, list[Path]]:
    """Backfill ``config`` over T0..T0+3m at 1m steps; its summary and OpenMetrics files."""
    path = _write_config(config, tmp_path / "config.yaml")
    code, out, err = _backfill(capsys, "--config", str(path), "--from", T0.isoformat(),
                               "--to", (T0 + 3 * MINUTE).isoformat(), "--no-blocks",
                               "--output", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    return out, sorted((tmp_path / "out").glob("*.om"))


def test_backfill_merges_a_null_label_into_its_if_null_series_as_sql_coalesce_does(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _insert(ev_db, EV_ROWS)
    config = _with_organization(_ev_config(ev_db), {"column": "org", "if_null": "unknown"})
    out, files = _backfill_ev(capsys, config, tmp_path)
    assert "skipped" not in out
    with psycopg.connect(ev_db) as conn:
        for step in range(4):
            at = T0 + step * MINUTE
            expected = dict(conn.execute(
                "SELECT coalesce(org, 'unknown'), sum(credits)::float8 FROM ev"
                " WHERE occurred_at <= %s GROUP BY 1", (at,),
            ).fetchall())  # fmt: skip
            written = _samples_at(files, {"credit_spent_credits_total"}, to_ms(at))
            assert {dict(k[1])["organization"]: v for k, v in written.items()} == expected, at


def test_backfill_writes_what_the_live_exporter_exports_for_a_label_with_if_null(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _insert(ev_db, EV_ROWS)
    config = _with_organization(_ev_config(ev_db), {"column": "org", "if_null": "unknown"})
    _, files = _backfill_ev(capsys, config, tmp_path)
    assert _samples_at(files, EV_SAMPLES, to_ms(T0 + 3 * MINUTE)) == _live_samples(config)


def test_backfill_hashes_a_label_with_if_null_as_the_live_exporter_does(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(EV_KEY_ENV, "backfill-test-key-0123456789abcdef")
    _insert(ev_db, EV_ROWS)
    config = _with_organization(_ev_config(ev_db), {"column": "org", "if_null": "unknown"})
    config["privacy"] = {"hmac_key_env": EV_KEY_ENV}
    for mapping in config["streams"]["ev"]["metrics"]:
        mapping["hash_labels"] = ["organization"]
    _, files = _backfill_ev(capsys, config, tmp_path)
    written = _samples_at(files, EV_SAMPLES, to_ms(T0 + 3 * MINUTE))
    assert {dict(k[1])["organization"] for k in written} == {
        hmac.new(b"backfill-test-key-0123456789abcdef", org.encode(), hashlib.sha256)
        .hexdigest()[:16] for org in ("a", "unknown")
    }  # fmt: skip
    assert written == _live_samples(config)


def test_backfill_exports_a_dropped_label_empty_as_the_live_exporter_does(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _insert(ev_db, [(t, org or "b", credits, latency) for t, org, credits, latency in EV_ROWS])
    config = _ev_config(ev_db)
    config["streams"]["ev"]["metrics"][0]["drop_labels"] = ["project"]
    _, files = _backfill_ev(capsys, config, tmp_path)
    written = _samples_at(files, EV_SAMPLES, to_ms(T0 + 3 * MINUTE))
    assert {dict(k[1])["project"] for k in written if k[0] == "credit_spent_credits_total"} == {""}
    assert written == _live_samples(config)


def test_backfill_spreads_values_over_their_label_as_the_live_exporter_does(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _insert(ev_db, [(t, org or "b", credits, latency) for t, org, credits, latency in EV_ROWS])
    config = _ev_config(ev_db)
    config["streams"]["ev"]["metrics"].append(
        {"metric": "credit_tokens_total",
         "labels": {"organization": "org", "project": "project", "gen_ai_request_model": "st"},
         "values": {"gen_ai_token_type": {"input": "credits", "output": "latency"}}}
    )  # fmt: skip
    _, files = _backfill_ev(capsys, config, tmp_path)
    written = _samples_at(files, {*EV_SAMPLES, "credit_tokens_total"}, to_ms(T0 + 3 * MINUTE))
    types = {dict(k[1])["gen_ai_token_type"] for k in written if k[0] == "credit_tokens_total"}
    assert types == {"input", "output"}
    assert written == _live_samples(config)


def test_the_live_exporter_meets_a_backfill_that_counted_late_rows_without_a_decrease(
    ev_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backfill reads every row now, late ones included; the live exporter that missed a
    late row finds it at its next reconcile, so the seam never reads as a reset."""
    now = datetime.now(UTC)
    _insert(ev_db, [(now - timedelta(hours=2), "a", "1", "0.5"), (now, "a", "2", "1")])
    config = _ev_config(ev_db)
    config["streams"]["ev"]["reconcile"] = {"interval": "1h", "max_db_share": 1.0}
    live = InProcessStream(parse_config(config), "ev")
    try:
        live.poll()
        time.sleep(1.2)
        live.poll()
        _insert(ev_db, [(now - timedelta(minutes=90), "a", "40", "1")])  # far beyond settle
        live.poll()
        assert live.total("credit_spent_credits_total") == 3  # a poll cannot see it
        path = _write_config(config, tmp_path / "config.yaml")
        out = str(tmp_path / "out")
        code, _, err = _backfill(capsys, "--config", str(path), "--from", "now-3h", "--to", "now",
                                 "--step", "1m", "--no-blocks", "--output", out)  # fmt: skip
        assert code == 0, err
        files = sorted((tmp_path / "out").glob("*.om"))
        last = max(
            int(line.rsplit(" ", 1)[1])
            for f in files for line in f.read_text().splitlines()
            if line.startswith("credit_spent_credits_total{")
        )  # fmt: skip
        backfilled = _samples_at(files, {"credit_spent_credits_total"}, last * 1000)
        at_last_step = 41.0 if last * 1000 < to_ms(now) else 43.0  # the late row is in it
        assert list(backfilled.values()) == [at_last_step]
        assert live.reconcile() is True
        assert live.total("credit_spent_credits_total") == 43  # after the seam, never below
    finally:
        live.close()


@pytest.fixture(autouse=True)
def _no_leftover_scratch(tmp_path: Path) -> Iterator[None]:
    yield
    assert not list(tmp_path.rglob(".backfill-*")), "scratch files left behind"

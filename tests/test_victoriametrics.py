"""Beyond one Prometheus: a real Prometheus remote_writes to a real VictoriaMetrics.

The exporter runs on a week of demo data, Prometheus scrapes it, evaluates the
recording and alert rules and remote_writes everything (scraped series, recorded
series, ALERTS) to VictoriaMetrics single-node. Then every dashboard query and
every rule expression runs on both /api/v1/query at the same evaluation time and
the answers are compared: same series, same values, except where MetricsQL is
documented to compute differently (docs/scaling.md, "VictoriaMetrics").
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import skip_or_fail
from dashboard_support import (
    builtins,
    for_panel,
    functions,
    interpolate,
    is_prometheus,
    load_dashboards,
    panels,
    parse,
    resolve_defaults,
    write_fresh_usage,
)
from support import Service, http_get, launch, start_exporter, start_prometheus, wait_until

from credit_exporter.demo.generator import load_demo
from dashboards import recording

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
ALERT_RULES = REPO / "alert_rules" / "credit-exporter.rules.yml"
DASHBOARDS = load_dashboards()
PROM_TARGETS = [
    (panel, target)
    for dashboard in DASHBOARDS.values()
    for panel in panels(dashboard)
    for target in panel.targets
    if is_prometheus(target)
]
# Values equal when within this relative difference: both evaluate in float64, so only
# the order of the additions in an aggregation may differ.
TOLERANCE = 1e-9
# A Unix time stored in VictoriaMetrics keeps about 15 significant digits (10 µs).
TIMESTAMP_TOLERANCE = 1e-5
SCRAPE_INTERVAL = "1s"
CANCELLATION_TOLERANCE = 1e-6  # credits, far below the exporter's micro-credit precision
# The dashboards' recording rules evaluated every scrape instead of every minute: the
# same expressions, and the usage written a few seconds after Prometheus starts is
# recorded (a once-a-minute increase needs a sample a minute old).
RECORDING_RULES = yaml.safe_load(recording.render(interval=SCRAPE_INTERVAL))
# After the new usage is written these must have moved before the comparison.
# the new usage in raw counters, and in a recorded increase (recorded once, at the jump)
MOVED = [
    *(f"sum(increase({metric}[1m])) > 0"
      for metric in ("credit_spent_credits_total", "credit_model_requests_total",
                     "credit_conversations_total")),
    f"max(max_over_time({recording.SPENT_BY_AGENT.name}[5m])) > 0",
]  # fmt: skip


def remote_write(url: str) -> dict[str, Any]:
    """The remote_write section docs/scaling.md shows (valid on Prometheus 2 and 3):
    a short batch deadline only so that the test's samples arrive within a second."""
    return {
        "url": url,
        "name": "victoriametrics",
        "queue_config": {"batch_send_deadline": "1s", "min_backoff": "100ms", "max_backoff": "1s"},
    }


@dataclass
class Backend:
    """One PromQL-compatible HTTP API: Prometheus or VictoriaMetrics."""

    name: str
    service: Service
    extra: dict[str, str]  # query arguments this backend always gets

    def instant(self, expr: str, at: float) -> dict[str, Any]:
        params = {"query": expr, "time": f"{at:.3f}", **self.extra}
        status, body, _ = http_get(
            f"{self.service.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        )
        answer = json.loads(body)
        answer["http_status"] = status
        return answer

    def series(self, selector: str) -> list[dict[str, str]]:
        query = urllib.parse.urlencode({"match[]": selector})
        status, body, _ = http_get(f"{self.service.url}/api/v1/series?{query}")
        assert status == 200, (self.name, status, body[:300])
        return list(json.loads(body)["data"])


@dataclass
class Pair:
    prometheus: Backend
    victoria: Backend
    at: float  # the evaluation time of every comparison

    def backends(self) -> tuple[Backend, Backend]:
        return self.prometheus, self.victoria


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} not on PATH: apt-get install {package}")
    assert path is not None
    return path


def start_victoria_metrics(workdir: Path) -> Service:
    binary = _binary("victoria-metrics", "victoria-metrics")
    process, url, log_path = launch(
        "victoria-metrics",
        lambda port: [binary, f"-storageDataPath={workdir / 'data'}",
                      f"-httpListenAddr=127.0.0.1:{port}", "-search.latencyOffset=0s",
                      "-search.disableCache", "-loggerLevel=WARN"],
        workdir, "/health",
    )  # fmt: skip
    return Service(process, url, log_path)


def start_prometheus_writing_to(workdir: Path, target: str, write_url: str) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    recording_rules = workdir / "recording_rules.yml"
    recording_rules.write_text(yaml.safe_dump(RECORDING_RULES, sort_keys=False))
    return start_prometheus(
        workdir,
        [target],
        rule_files=[recording_rules, ALERT_RULES],
        interval=SCRAPE_INTERVAL,
        remote_write=[remote_write(write_url)],
    )


Key = tuple[tuple[str, str], ...]


def _vector(answer: dict[str, Any]) -> dict[Key, float]:
    data = answer["data"]
    if data["resultType"] == "scalar":
        return {(): float(data["result"][1])}
    values = {
        tuple(sorted(item["metric"].items())): float(item["value"][1]) for item in data["result"]
    }
    # MetricsQL drops NaN samples from every answer where PromQL returns them (for example
    # histogram_quantile over buckets that did not move): compared without them
    return {key: value for key, value in values.items() if not math.isnan(value)}


def _scraped_samples(backend: Backend, at: float) -> float:
    answer = backend.instant('sum(count_over_time(up{job="credit-exporter"}[10m]))', at)
    return sum(_vector(answer).values())


@pytest.fixture(scope="module")
def pair(make_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Exporter on a fresh week of demo data; Prometheus scraping it every second with the
    rules, remote_writing to VictoriaMetrics; new usage written once the scrapes run, so
    that counters move inside the queries' windows."""
    work = tmp_path_factory.mktemp("victoriametrics")
    victoria = start_victoria_metrics(work / "victoria-metrics")
    services = [victoria]
    try:
        dsn = make_database()
        load_demo(dsn, days=7, seed=42)
        config = yaml.safe_load(EXAMPLE.read_text())
        for query in config["queries"].values():
            query.update(interval="2s", timeout="2s")
        for stream in config["streams"].values():
            stream.update(interval="2s", timeout="2s", settle="1s")
        exporter = start_exporter(config, work / "exporter", env={"CREDIT_EXPORTER_DSN": dsn})
        services.append(exporter)
        wait_until(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 60, "exporter ready")
        prometheus = start_prometheus_writing_to(
            work / "prometheus",
            exporter.url.removeprefix("http://"),
            f"{victoria.url}/api/v1/write",
        )
        services.append(prometheus)
        backends = Pair(
            Backend("prometheus", prometheus, {}),
            Backend("victoriametrics", victoria, {"nocache": "1"}),
            0.0,
        )
        wait_until(
            lambda: _scraped_samples(backends.prometheus, time.time()) >= 5, 60, "five scrapes"
        )
        write_fresh_usage(dsn)
        for probe in MOVED:
            wait_until(
                lambda probe=probe: _vector(backends.prometheus.instant(probe, time.time())),
                150,
                f"the new usage in {probe}",
            )
        time.sleep(5)  # several scrapes and rule evaluations after the jump
        backends.at = round(time.time() - 2, 3)  # the API takes milliseconds
        # the same samples up to the evaluation time in both (remote_write is batched)
        wait_until(
            lambda: (
                _scraped_samples(backends.victoria, backends.at)
                == _scraped_samples(backends.prometheus, backends.at)
            ),
            30,
            "VictoriaMetrics to hold every scraped sample up to the evaluation time",
        )
        yield backends
    finally:
        for service in reversed(services):
            service.stop()


def dashboard_queries(pair: Pair) -> list[tuple[str, str]]:
    """(id, expression) of every dashboard query, variables at their defaults as
    Prometheus resolves them, Grafana's intervals as tests/test_dashboards.py sets them."""
    out = []
    resolved = {
        uid: resolve_defaults(dashboard, pair.prometheus.series)
        for uid, dashboard in DASHBOARDS.items()
    }
    for panel, target in PROM_TARGETS:
        values, options = resolved[panel.dashboard]
        values = for_panel(panel, values, options)
        expr = interpolate(
            target["expr"],
            DASHBOARDS[panel.dashboard],
            values,
            builtins(panel, values, range_seconds=3600, rate_interval="1m"),
        )
        out.append((f"{panel.dashboard} / {panel.title} / {target['refId']}", expr))
    return out


def rule_queries() -> list[tuple[str, str]]:
    out = []
    files = {"recording_rules.yml": RECORDING_RULES,
             ALERT_RULES.name: yaml.safe_load(ALERT_RULES.read_text())}  # fmt: skip
    for name_of_file, document in files.items():
        for group in document["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                out.append((f"{name_of_file} / {name}", rule["expr"]))
    return out


@dataclass
class Compared:
    ident: str
    expr: str
    prometheus: dict[Key, float]
    victoria: dict[Key, float]

    @property
    def same_series(self) -> bool:
        return set(self.prometheus) == set(self.victoria)

    def agree(self) -> bool:
        """Same series, values within TOLERANCE; within TIMESTAMP_TOLERANCE seconds where
        the query subtracts a stored Unix time from time()."""
        if set(self.prometheus) != set(self.victoria):
            return False
        # a sum taken in another order rounds differently: a difference of two equal
        # sums is 0 in one store and about 1e-13 in the other
        absolute = TIMESTAMP_TOLERANCE if "time()" in self.expr else CANCELLATION_TOLERANCE
        return all(
            math.isclose(value, self.victoria[key], rel_tol=TOLERANCE, abs_tol=absolute)
            for key, value in self.prometheus.items()
        )


def compare(pair: Pair, queries: list[tuple[str, str]]) -> list[Compared]:
    out = []
    for ident, expr in queries:
        answers = [backend.instant(expr, pair.at) for backend in (pair.prometheus, pair.victoria)]
        for backend, answer in zip((pair.prometheus, pair.victoria), answers, strict=True):
            assert answer["http_status"] == 200 and answer["status"] == "success", (
                backend.name, ident, expr, answer.get("error"),
            )  # fmt: skip
        out.append(Compared(ident, expr, _vector(answers[0]), _vector(answers[1])))
    return out


# Functions over a counter's window, where MetricsQL computes differently (no
# extrapolation; the sample before the window; a series starting in the window).
WINDOW_FUNCTIONS = frozenset({"rate", "irate", "increase", "delta", "idelta", "deriv",
                              "predict_linear"})  # fmt: skip
# Filters whose kept series depend on the values (a different value can keep another series).
VALUE_FILTER = re.compile(r"\b(topk|bottomk|limitk)\b|[<>]=?\s*[\d(]")


# `q > 0 or on () fallback`: MetricsQL's `or` fills the points the comparison removed from
# q's series with the fallback's value instead of dropping those series.
OR_ON_FALLBACK = re.compile(r">\s*0\s+or\s+on\s*\(\s*\)")


def windowed(expr: str) -> bool:
    return any(name in WINDOW_FUNCTIONS for name, _ in functions(parse(expr)))


@pytest.fixture(scope="module")
def comparisons(pair: Pair) -> list[Compared]:
    return compare(pair, dashboard_queries(pair) + rule_queries())


def summary(comparisons: list[Compared]) -> str:
    """The counts docs/scaling.md quotes (shown with pytest -s)."""
    plain = [c for c in comparisons if not windowed(c.expr)]
    counted = [c for c in comparisons if windowed(c.expr)]
    ratios = sorted(
        abs(v - c.victoria[k]) / max(abs(v), abs(c.victoria[k]))
        for c in counted
        for k, v in c.prometheus.items()
        if k in c.victoria and (v or c.victoria[k])
    )
    return (
        f"{len(comparisons)} queries ({len(PROM_TARGETS)} dashboard targets,"
        f" {len(comparisons) - len(PROM_TARGETS)} rule expressions),"
        f" {sum(1 for c in comparisons if c.prometheus)} with data in Prometheus;"
        f" no counter window: {len(plain)}, equal {sum(1 for c in plain if c.agree())};"
        f" counter windows: {len(counted)}, equal {sum(1 for c in counted if c.agree())},"
        f" same series {sum(1 for c in counted if c.same_series)};"
        f" relative difference of the {len(ratios)} non-zero pairs: median"
        f" {ratios[len(ratios) // 2]:.3f}, max {ratios[-1]:.3f}"
    )


def test_every_dashboard_query_and_rule_is_compared(comparisons: list[Compared]) -> None:
    assert len(comparisons) == len(PROM_TARGETS) + len(rule_queries()) >= 170
    # a daily bar reads the counters a day ago, which a minutes-old Prometheus does not hold
    today = [c for c in comparisons if "offset 1d" not in c.expr]
    assert sum(1 for c in today if c.prometheus) >= 0.85 * len(today)
    print(summary(comparisons))


def test_queries_without_counter_windows_agree(comparisons: list[Compared]) -> None:
    plain = [c for c in comparisons
             if not windowed(c.expr) and not OR_ON_FALLBACK.search(c.expr)]  # fmt: skip
    assert len(plain) >= 60
    differing = [(c.ident, c.expr, c.prometheus, c.victoria) for c in plain
                 if not c.agree()]  # fmt: skip
    assert not differing, differing


def test_or_on_fallback_keeps_the_filtered_series_at_the_fallback_value_in_metricsql(
    comparisons: list[Compared],
) -> None:
    """Prometheus answers the series that passed the filter, or only the fallback row;
    VictoriaMetrics answers the same values plus every filtered series at the fallback's
    value (0), and the fallback row only when the left side has no series at all."""
    fallbacks = [c for c in comparisons
                 if not windowed(c.expr) and OR_ON_FALLBACK.search(c.expr)]  # fmt: skip
    assert fallbacks
    for c in fallbacks:
        passed = {k: v for k, v in c.prometheus.items() if v > 0}
        assert {k: c.victoria.get(k) for k in passed} == passed, c.ident
        extra = {k: v for k, v in c.victoria.items() if k not in c.prometheus}
        assert all(v == 0 for v in extra.values()), (c.ident, extra)


def test_counter_window_queries_keep_their_series_unless_filtered_by_value(
    comparisons: list[Compared],
) -> None:
    counted = [c for c in comparisons if windowed(c.expr)]
    assert len(counted) >= 60
    differing = [
        (c.ident, c.expr, sorted(set(c.prometheus) ^ set(c.victoria))[:3])
        for c in counted
        if not c.same_series and not VALUE_FILTER.search(c.expr)
    ]
    assert not differing, differing


def test_every_exported_series_reaches_victoriametrics_with_the_same_value(pair: Pair) -> None:
    """Remote-written samples keep their float64 value: every billing series of the
    exporter (credits, counts, budgets) answers the same in both, to the last bit.

    VictoriaMetrics stores a non-integer value as a decimal of about 12 significant
    digits (15 above 10^6): exact for the exporter's credit values, which are decimals
    of a few places, not for every float (see the next test)."""
    selector = '{__name__=~"credit_.+", __name__!~"credit_exporter_.+", job="credit-exporter"}'
    prometheus, victoria = (_vector(b.instant(selector, pair.at)) for b in pair.backends())
    assert len(prometheus) >= 1000
    assert victoria.keys() == prometheus.keys()
    differing = {k: (v, victoria[k]) for k, v in prometheus.items() if victoria[k] != v}
    assert not differing, list(differing.items())[:5]


def test_other_floats_keep_twelve_significant_digits(pair: Pair) -> None:
    selector = '{__name__=~"credit_exporter_.+", job="credit-exporter"}'
    prometheus, victoria = (_vector(b.instant(selector, pair.at)) for b in pair.backends())
    assert victoria.keys() == prometheus.keys()
    for key, value in prometheus.items():
        assert math.isclose(victoria[key], value, rel_tol=1e-12), (key, value, victoria[key])


# --- the documented differences, computed from the raw samples ---------------------


def _raw_samples(pair: Pair, selector: str, window: str) -> dict[Key, list[tuple[float, float]]]:
    answer = pair.prometheus.instant(f"{selector}[{window}]", pair.at)
    return {
        tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__")): [
            (float(t), float(v)) for t, v in item["values"]
        ]
        for item in answer["data"]["result"]
    }


def promql_increase(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """PromQL's increase(): the first-to-last difference extrapolated towards the window's
    edges (by at most half a sampling interval where the series starts or stops inside
    it, and never below zero). Times in milliseconds, as Prometheus counts them."""
    (first_t, first_v), (last_t, last_v) = samples[0], samples[-1]
    millis = [round(t * 1000) for t in (first_t, last_t, start, end)]
    delta = last_v - first_v
    sampled = (millis[1] - millis[0]) / 1000
    average = sampled / (len(samples) - 1)
    to_start, to_end = (millis[0] - millis[2]) / 1000, (millis[3] - millis[1]) / 1000
    if delta > 0 and first_v >= 0:
        to_start = min(to_start, sampled * first_v / delta)
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return delta * interval / sampled


def metricsql_increase(samples: list[tuple[float, float]]) -> float:
    """MetricsQL's increase() of a series that starts inside the window (no sample before
    it), as VictoriaMetrics 1.79 computes it: no extrapolation; the first sample counts
    from zero when it is below ten times its first step plus one (a new counter),
    otherwise it is the base (a counter that started before the data)."""
    values = [v for _, v in samples]
    step = values[1] - values[0] if len(values) > 1 else 0.0
    base = 0.0 if abs(values[0]) < 10 * (abs(step) + 1) else values[0]
    return values[-1] - base


def metricsql_rate(samples: list[tuple[float, float]]) -> float:
    """MetricsQL's rate() of a series that starts inside the window: the first-to-last
    difference over the time between them, not over the window."""
    (first_t, first_v), (last_t, last_v) = samples[0], samples[-1]
    return (last_v - first_v) / ((round(last_t * 1000) - round(first_t * 1000)) / 1000)


SERIES = 'credit_conversations_total{organization="acme"}'


def test_increase_differs_by_promqls_extrapolation_and_metricsqls_first_sample(
    pair: Pair,
) -> None:
    raw = _raw_samples(pair, SERIES, "1h")
    assert len(raw) >= 10
    expr = f"increase({SERIES}[1h])"
    prometheus, victoria = (_vector(b.instant(expr, pair.at)) for b in pair.backends())
    start = pair.at - 3600
    modelled = {k: (promql_increase(s, start, pair.at), metricsql_increase(s))
                for k, s in raw.items() if len(s) >= 2}  # fmt: skip
    assert modelled.keys() == prometheus.keys() == victoria.keys()
    for key, (promql, metricsql) in modelled.items():
        assert math.isclose(prometheus[key], promql, rel_tol=TOLERANCE), (key, raw[key])
        assert math.isclose(victoria[key], metricsql, rel_tol=TOLERANCE), (key, raw[key])
    # both rules matter on this data: small counters counted from zero, the others not
    counted_from_zero = [k for k, s in raw.items() if metricsql_increase(s) == s[-1][1]]
    assert 0 < len(counted_from_zero) < len(raw)


def test_rate_divides_by_the_window_in_promql_and_by_the_samples_span_in_metricsql(
    pair: Pair,
) -> None:
    raw = _raw_samples(pair, SERIES, "30m")
    expr = f"rate({SERIES}[30m])"
    prometheus, victoria = (_vector(b.instant(expr, pair.at)) for b in pair.backends())
    start = pair.at - 1800
    for key, samples in raw.items():
        if len(samples) < 2:
            continue
        promql = promql_increase(samples, start, pair.at) / 1800
        assert math.isclose(prometheus[key], promql, rel_tol=TOLERANCE), (key, samples)
        assert math.isclose(victoria[key], metricsql_rate(samples), rel_tol=TOLERANCE), key


def documented_remote_write() -> dict[str, Any]:
    """The prometheus.yml block of docs/scaling.md's VictoriaMetrics section."""
    text = (REPO / "docs" / "scaling.md").read_text()
    blocks = re.findall(
        r"```yaml\n(# prometheus\.yml \(Prometheus 2\.x and 3\.x.*?)```", text, re.S
    )
    assert len(blocks) == 1, "docs/scaling.md: the VictoriaMetrics prometheus.yml block"
    return dict(yaml.safe_load(blocks[0]))


def test_the_documented_remote_write_is_the_tested_one() -> None:
    documented = documented_remote_write()["remote_write"]
    assert documented == [remote_write("http://victoriametrics:8428/api/v1/write")]


def test_the_documented_remote_write_passes_promtool(tmp_path: Path) -> None:
    promtool = _binary("promtool", "prometheus")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(documented_remote_write()))
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

"""Series that leave and come back never show as spikes, in any dashboard query that
reads the recorded increases or a counter's growth between bucket boundaries, nor in
the alert rules' spend rates.

A real Prometheus scrapes a small /metrics endpoint this test controls: two agents
of one organization spend steadily; then one agent's series vanish (an exporter
restarting, a shard moving) and come back a few seconds later at a new, higher
absolute total (what it spent meanwhile). Taking rate() of a recorded sum reads the
drop as a counter reset and shows the whole remaining total as new spend; the test
first checks that this scenario does produce that spike, then that no shipped query
or rule does.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from dashboard_support import (
    ALL,
    REPO,
    interpolate,
    is_prometheus,
    load_dashboards,
    offline_values,
    panels,
)
from support import PrometheusProcess, start_prometheus, wait_until

from credit_exporter import catalog
from dashboards import recording

# every counter of the catalogue, so that every spend query finds its series
COUNTERS = sorted(m.name for m in catalog.METRICS if m.type is catalog.MetricType.COUNTER)
LABELS = 'organization="acme",agent="{agent}",project="p-{agent}",service_type="text_generation",department="d1",user="{agent}"'  # noqa: E501
CREDITS_PER_SECOND = 10.0  # each agent, each counter
STEADY_START = 2_000_000.0  # absolute totals since the first billing row
MOVER_START = 1_000_000.0
GAP_SECONDS = 4.0
ALERT_RULES = REPO / "alert_rules" / "credit-exporter.rules.yml"
BUCKET = {"$__interval": "2s", "$__range": "6s", "$__rate_interval": "4s",
          "$__range_s": "6", "$__interval_ms": "2000"}  # fmt: skip
BUCKET_SECONDS = 6


@dataclass
class Exposition:
    """What /metrics serves: every counter for two agents, one of which can vanish."""

    started: float = field(default_factory=time.time)
    mover_hidden: bool = False

    def value(self, start: float) -> float:
        return start + CREDITS_PER_SECOND * (time.time() - self.started)

    def text(self) -> str:
        agents = {"steady": STEADY_START}
        if not self.mover_hidden:
            agents["mover"] = MOVER_START
        lines = []
        for counter in COUNTERS:
            lines.append(f"# TYPE {counter.removesuffix('_total')} counter")
            for agent, start in agents.items():
                labels = LABELS.format(agent=agent)
                lines.append(f"{counter}{{{labels}}} {self.value(start)}")
        return "\n".join(lines) + "\n"


def serve(exposition: Exposition) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition.text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@dataclass
class Timeline:
    prometheus: PrometheusProcess
    vanished_at: float
    returned_at: float
    ended_at: float


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timeline]:
    work = tmp_path_factory.mktemp("series-changes")
    rules = work / "recording_rules.yml"
    rules.write_text(recording.render(interval="1s"))
    exposition = Exposition()
    server, target = serve(exposition)
    prometheus = start_prometheus(work / "prometheus", [target], rule_files=[rules, ALERT_RULES])
    try:
        recorded = recording.SPENT_BY_AGENT.name
        wait_until(lambda: len(prometheus.query(f"count_over_time({recorded}[1m]) >= 8")) == 2,
                   60, "eight evaluations of both agents")  # fmt: skip
        vanished_at = time.time()
        exposition.mover_hidden = True
        time.sleep(GAP_SECONDS)
        exposition.mover_hidden = False  # back at its new absolute total
        returned_at = time.time()
        time.sleep(BUCKET_SECONDS + 4)
        yield Timeline(prometheus, vanished_at, returned_at, time.time())
    finally:
        prometheus.stop()
        server.shutdown()


def query_range(prometheus: PrometheusProcess, expr: str, start: float, end: float
                ) -> list[dict[str, Any]]:  # fmt: skip
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}",
                                     "end": f"{end:.3f}", "step": "1"})  # fmt: skip
    return prometheus.api(f"/api/v1/query_range?{params}")["result"]


def highest(series: list[dict[str, Any]]) -> float:
    return max((float(v) for s in series for _, v in s["values"]), default=float("nan"))


def spend_queries() -> list[tuple[str, str]]:
    """(panel, expression) of every dashboard query that adds up recorded increases or
    reads a counter's growth between bucket boundaries, Grafana variables set to the
    test's organization and its agents; ratios are left out (not a spend figure)."""
    recorded = {rule.name for rule in recording.RULES}
    queries = []
    for uid, dashboard in load_dashboards().items():
        values = offline_values(dashboard)
        values["organization"] = "acme"
        if "agent" in values and values["agent"] is not ALL:
            values["agent"] = "mover"  # a single agent's dashboard: the one that returns
        for panel in panels(dashboard):
            for target in filter(is_prometheus, panel.targets):
                expr = interpolate(target["expr"], dashboard, values, BUCKET)
                reads = any(name in expr for name in recorded) or "offset 2s" in expr
                if reads and "/" not in expr:
                    queries.append((f"{uid}: {panel.title}", expr))
    return queries


def test_the_scenario_spikes_a_rate_of_recorded_sums(timeline: Timeline) -> None:
    """Control: the increase of a sum of counters jumps by the steady agent's whole
    total when the other agent's series leave the sum."""
    summed = "sum by (organization) (credit_spent_credits_total)"
    spiked = highest(query_range(timeline.prometheus, f"increase(({summed})[6s:1s])",
                                 timeline.vanished_at, timeline.ended_at))  # fmt: skip
    assert spiked > STEADY_START / 2


def test_no_dashboard_spend_query_spikes_when_a_series_vanishes_and_returns(
    timeline: Timeline,
) -> None:
    queries = spend_queries()
    assert len(queries) >= 20, len(queries)
    # both agents' spend over one panel range, with a scrape and an evaluation of slack
    bound = 2 * CREDITS_PER_SECOND * (BUCKET_SECONDS + 2)
    spikes, empty = [], []
    for where, expr in queries:
        answer = query_range(timeline.prometheus, expr, timeline.vanished_at, timeline.ended_at)
        top = highest(answer)
        if not answer:
            empty.append(where)
        elif top > bound:
            spikes.append((where, top, expr))
    assert not spikes, spikes
    assert not empty, empty


def test_alert_rule_spend_rates_do_not_spike_when_a_series_vanishes_and_returns(
    timeline: Timeline,
) -> None:
    rules = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    rates = [r["record"] for g in rules for r in g["rules"]
             if "record" in r and re.search(r"credit_spent_credits_total", r["expr"])]  # fmt: skip
    assert rates
    for record in rates:
        answer = query_range(timeline.prometheus, record, timeline.vanished_at, timeline.ended_at)
        assert answer, record
        # per second: the two agents' steady spend, with slack for rate()'s extrapolation
        assert highest(answer) <= 2 * CREDITS_PER_SECOND * 1.5, (record, answer)


def test_recorded_increases_add_up_to_the_spend_outside_the_gap(timeline: Timeline) -> None:
    """Over the whole run, the recorded increases count the steady agent fully and the
    returning one minus its gap (a gap, never a spike)."""
    window = int(timeline.ended_at - timeline.vanished_at)
    expr = f"sum by (agent) (sum_over_time({recording.SPENT_BY_AGENT.name}[{window}s]))"
    params = urllib.parse.urlencode({"query": expr, "time": f"{timeline.ended_at:.3f}"})
    answer = timeline.prometheus.api(f"/api/v1/query?{params}")["result"]
    found = {r["metric"]["agent"]: float(r["value"][1]) for r in answer}
    expected = CREDITS_PER_SECOND * window
    assert found["steady"] == pytest.approx(expected, abs=3 * CREDITS_PER_SECOND)
    missed = CREDITS_PER_SECOND * GAP_SECONDS
    assert found["mover"] == pytest.approx(expected - missed, abs=4 * CREDITS_PER_SECOND)

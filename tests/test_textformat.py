"""The direct text renderer writes what prometheus_client and promtool read back."""

from __future__ import annotations

import math
import subprocess
from decimal import Decimal

from conftest import require_binary
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from credit_exporter import catalog
from credit_exporter.metric_state import MetricState, StateRenderer
from credit_exporter.sources.events import EventStream, HistogramValue, StreamRenderer
from credit_exporter.textformat import LabelText, format_value

BUDGET = catalog.get("credit_budget_used_credits")
label_values = st.text(min_size=0, max_size=12)  # any Unicode, quotes, backslashes, newlines


def sample_key(
    name: str, label_names: tuple[str, ...], values: tuple[str, ...], *extra: tuple[str, str]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted([*zip(label_names, values, strict=True), *extra]))


def joined(rendered: tuple[list[bytes], dict[str, int]]) -> tuple[str, dict[str, int]]:
    """A renderer's chunks as one text."""
    chunks, counts = rendered
    return b"".join(chunks).decode(), counts


def parsed_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.tuples(label_values, label_values, label_values),
        st.floats(allow_nan=False, width=64),
        max_size=20,
    )
)
def test_state_gauges_round_trip_through_the_reference_parser(
    series: dict[tuple[str, str, str], float],
) -> None:
    state = MetricState()
    state.replace("budgets", {BUDGET.name: series})
    text, counts = joined(StateRenderer(state).render())
    expected = {sample_key(BUDGET.name, BUDGET.labels, k): v for k, v in series.items()}
    assert parsed_samples(text) == expected
    assert counts == {BUDGET.name: len(series)}


def test_special_values_use_the_spelling_prometheus_parses() -> None:
    assert [format_value(v) for v in (math.inf, -math.inf, math.nan)] == ["+Inf", "-Inf", "NaN"]
    assert float(format_value(0.1 + 0.2)) == 0.1 + 0.2  # repr keeps every bit
    assert float(format_value(1e22)) == 1e22


def test_a_new_snapshot_replaces_the_cached_text() -> None:
    state = MetricState()
    state.replace("budgets", {BUDGET.name: {("acme", "user", "u1"): 1.0}})
    renderer = StateRenderer(state)
    first, _ = joined(renderer.render())
    assert joined(renderer.render())[0] == first
    state.replace("budgets", {BUDGET.name: {("acme", "user", "u1"): 2.0}})
    changed, _ = joined(renderer.render())
    assert (
        parsed_samples(changed)[sample_key(BUDGET.name, BUDGET.labels, ("acme", "user", "u1"))]
        == 2.0
    )


def test_label_values_that_need_escaping_are_escaped() -> None:
    text = LabelText(("organization", "user"))
    assert text(("acme", "u1")) == '{organization="acme",user="u1"}'
    assert text(('a"c\\me', "line\nbreak")) == '{organization="a\\"c\\\\me",user="line\\nbreak"}'
    assert text(("100%", "%s")) == '{organization="100%",user="%s"}'
    assert LabelText(())(()) == ""


def test_streams_render_exact_counters_and_cumulative_histograms() -> None:
    spent = catalog.get("credit_spent_credits_total")
    latency = catalog.get("credit_response_duration_seconds")
    stream = EventStream.__new__(EventStream)  # only `exported` is read by the renderer
    buckets = list(range(1, len(latency.buckets) + 1))
    stream.exported = {
        spent.name: {("acme", "web", "bot", "chat"): Decimal("12345678901.123456")},
        latency.name: {
            ("acme", "gpt-4o"): HistogramValue(buckets, count=buckets[-1] + 1, total=Decimal(7))
        },
    }
    text, counts = joined(StreamRenderer({"usage": stream}).render())
    samples = parsed_samples(text)
    spent_key = sample_key(spent.name, spent.labels, ("acme", "web", "bot", "chat"))
    assert samples[spent_key] == float(Decimal("12345678901.123456"))
    inf_bucket = sample_key(
        f"{latency.name}_bucket", latency.labels, ("acme", "gpt-4o"), ("le", "+Inf")
    )
    assert samples[inf_bucket] == buckets[-1] + 1
    assert counts[latency.name] == len(latency.buckets) + 3
    assert f"# TYPE {latency.name} histogram" in text


def test_promtool_accepts_a_rendered_body() -> None:
    promtool = require_binary("promtool")
    state = MetricState()
    state.replace("budgets", {BUDGET.name: {('a"c\\me', "user", "line\nbreak"): 3.5}})
    text, _ = joined(StateRenderer(state).render())
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    # exit 0: parsed and no lint problems; lint findings exit 3 with the problem printed
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()

"""Memory per series: what a render keeps and allocates, counted by tracemalloc.

tracemalloc counts Python's own allocations, so these bounds do not depend on
the allocator, the machine or other load (unlike RSS). The RSS each case costs
end to end is measured by ``python benchmarks/run.py --memory-only`` and
documented in docs/limits.md.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from credit_exporter import catalog
from credit_exporter.exposition import Exposition
from credit_exporter.health import Health
from credit_exporter.limits import LabelPolicy
from credit_exporter.sources.events import EventStream, StreamRenderer

SERIES = 50_000
SPENT = catalog.get("credit_spent_by_user_credits_total")


def user_series(n: int) -> dict[tuple[str, ...], Decimal]:
    return {
        ("acme", f"d{i % 20}", f"user{i:07d}@example.com", f"m{i % 3}"): Decimal(i) / 7
        for i in range(n)
    }


def streams_exporting(series: dict[tuple[str, ...], Decimal]) -> dict[str, EventStream]:
    stream = EventStream.__new__(EventStream)  # only `exported` is read by the renderer
    stream.exported = {SPENT.name: series}  # type: ignore[dict-item]
    return {"usage": stream}


@pytest.fixture
def traced() -> Iterator[None]:
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_rendering_keeps_nothing_per_series(traced: None) -> None:
    streams = streams_exporting(user_series(SERIES))
    before, _ = tracemalloc.get_traced_memory()
    renderer = StreamRenderer(streams)
    for _ in range(2):
        chunks, _counts = renderer.render()
        del chunks
    gc.collect()
    kept, _ = tracemalloc.get_traced_memory()
    # a cache of every series' label text kept ~190 bytes per series (9.5 MB here)
    assert kept - before < 10 * SERIES, f"{(kept - before) / SERIES:.0f} bytes per series kept"


def test_a_render_holds_the_body_at_most_about_twice_at_its_peak(traced: None) -> None:
    registry = CollectorRegistry()
    exposition = Exposition(
        registry, Health(registry), [StreamRenderer(streams_exporting(user_series(SERIES)))]
    )
    exposition.render()  # the previous body, held while the next is built
    gc.collect()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    body = len(exposition.render().body)
    _, peak = tracemalloc.get_traced_memory()
    # the chunks and the body they are joined into, plus the sorted keys; the text
    # built as lines, a str, its encoding and a concatenation peaked at ~5x the body
    assert peak - before < 2.5 * body, f"render peak {(peak - before) / body:.1f}x the body"


@pytest.mark.skipif(
    sys.version_info[:2] == (3, 12), reason="3.12 interns for ever: label texts are not interned"
)
def test_a_repeated_label_value_is_kept_once() -> None:
    policy = LabelPolicy()
    cells = ["".join(["ac", "me"]) for _ in range(3)]  # distinct str objects, as a driver's
    assert len({id(policy.label("organization", cell)) for cell in cells}) == 1

"""Render /metrics once per poll, not per scrape.

A scrape only copies bytes that were rendered (and gzipped) when the last poll
published; any number of concurrent scrapers cost no database time and almost
no CPU. The exporter's own metrics come from prometheus_client's registry; the
business metrics, which can number 100k series, from the sources' own text
renderers (see textformat.py).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from credit_exporter.health import Health

# The classic text format every Prometheus (2.x and 3.x) parses; all catalogue
# names are valid classic names, so no escaping scheme needs negotiating.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class TextSource(Protocol):
    def render(self) -> tuple[list[bytes], dict[str, int]]:
        """Encoded text of the source's metric families (in chunks, joined once into the
        body), and sample lines per family."""
        ...


@dataclass(frozen=True)
class Rendered:
    body: bytes
    gzipped: bytes
    complete: bool = False  # every source had published when this body was rendered


def _series_per_metric(body: bytes) -> dict[str, int]:
    """Count series per metric family from the text exposition (HELP/TYPE aside)."""
    counts: dict[str, int] = {}
    family = ""
    for line in body.split(b"\n"):
        if line.startswith(b"# TYPE "):
            family = line.split(b" ", 3)[2].decode()
            counts[family] = 0
        elif line and not line.startswith(b"#"):
            counts[family] = counts.get(family, 0) + 1
    return counts


class Exposition:
    """The current /metrics body; ``render`` replaces it."""

    def __init__(
        self, registry: CollectorRegistry, health: Health, sources: Sequence[TextSource] = ()
    ) -> None:
        self._registry = registry
        self._health = health
        self._sources = list(sources)
        self.current = Rendered(b"", gzip.compress(b""))

    def render(self) -> Rendered:
        complete = self._health.ready  # read first: sources publish before they report
        own = generate_latest(self._registry)
        counts = _series_per_metric(own)
        chunks = [own]
        for source in self._sources:
            source_chunks, source_counts = source.render()
            chunks += source_chunks
            counts.update(source_counts)
        # one copy of the text besides its chunks: no str of the whole body, no
        # concatenation of its parts
        body = b"".join(chunks)
        del chunks
        rendered = Rendered(body, gzip.compress(body, compresslevel=5), complete)
        # sizes describe the body just rendered; they appear in the next one
        self._health.exposition_bytes.set(len(body))
        for family, count in counts.items():
            if family.startswith("credit_"):
                self._health.exposition_series.labels(family).set(count)
        self.current = rendered
        return rendered

    async def render_on_poll(self, polled: asyncio.Event) -> None:
        """Re-render whenever a poll has published, coalescing bursts, until cancelled."""
        while True:
            await polled.wait()
            polled.clear()
            await asyncio.to_thread(self.render)

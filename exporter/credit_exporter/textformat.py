"""The classic text exposition format (0.0.4), written directly.

prometheus_client's ``generate_latest`` builds a namedtuple per sample and
escapes every label on every call: about 1.1 s for 100k series on this
project's benchmark machine, all of it holding the GIL while scrapes wait.
The business metrics are plain label tuples and numbers, so they are written
here instead, each series' ``{label="value"}`` text from a per-metric template.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from credit_exporter import catalog

LabelValues = tuple[str, ...]


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it (Go's spelling of the special values)."""
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def header(metric: catalog.Metric) -> str:
    """HELP and TYPE lines; ``_info`` metrics are gauges in the classic format."""
    kind = "gauge" if metric.type is catalog.MetricType.INFO else metric.type.value
    return f"# HELP {metric.name} {escape_help(metric.help)}\n# TYPE {metric.name} {kind}\n"


class LabelText:
    """``{a="x",b="y"}`` for the label sets of one metric.

    Nothing is kept per label set: a cache of every series' text cost about
    190 bytes per series (200k series: 37 MB) to save about 0.1 µs per line.
    Values that need no escaping (nearly all) go through one ``%`` format of a
    template made once per metric; the others are escaped.
    """

    __slots__ = ("_names", "_quotes", "_template")

    def __init__(self, names: Sequence[str]) -> None:
        self._names = tuple(names)
        self._template = "{" + ",".join(f'{name}="%s"' for name in self._names) + "}"
        if not self._names:
            self._template = ""
        self._quotes = 2 * len(self._names)

    def __call__(self, labels: LabelValues) -> str:
        text = self._template % labels
        if text.count('"') != self._quotes or "\\" in text or "\n" in text:
            return self.render(labels)  # a value holds a quote, backslash or newline
        return text

    def render(self, labels: LabelValues) -> str:
        pairs = [
            f'{name}="{escape_label_value(value)}"'
            for name, value in zip(self._names, labels, strict=True)
        ]
        return "{" + ",".join(pairs) + "}" if pairs else ""


# Lines are encoded in batches of this many: the body is built from bytes chunks
# without ever holding a whole family as a list of lines or as one str.
BATCH_LINES = 2048


def simple_family(
    metric: catalog.Metric,
    series: Mapping[LabelValues, float | Decimal],
    labels: LabelText,
) -> list[bytes]:
    """One gauge or counter family, series sorted by label values, as encoded chunks.

    Values may be exact ``Decimal`` sums: they become floats only here, one at a
    time, so no float copy of the series is made.
    """
    name = metric.name
    chunks = [header(metric).encode()]
    keys = sorted(series)
    for start in range(0, len(keys), BATCH_LINES):
        chunks.append(
            "".join(
                [
                    f"{name}{labels(key)} {format_value(float(series[key]))}\n"
                    for key in keys[start : start + BATCH_LINES]
                ]
            ).encode()
        )
    return chunks


def histogram_lines(
    name: str,
    label_text: str,
    bounds: Iterable[str],
    cumulative: Iterable[int],
    count: int,
    total: float,
) -> list[str]:
    """The _bucket (with +Inf), _count and _sum lines of one histogram series.

    ``label_text`` is the series' ``{...}`` text, or "" for a series without labels.
    """
    inner = label_text[1:-1] + "," if label_text else ""
    lines = [
        f'{name}_bucket{{{inner}le="{bound}"}} {float(value)!r}\n'
        for bound, value in zip(bounds, cumulative, strict=True)
    ]
    lines.append(f'{name}_bucket{{{inner}le="+Inf"}} {float(count)!r}\n')
    lines.append(f"{name}_count{label_text} {float(count)!r}\n")
    lines.append(f"{name}_sum{label_text} {format_value(total)}\n")
    return lines

"""The stderr progress bar that backfill and the demo data load draw."""

from __future__ import annotations

import io

from credit_exporter.progress import ProgressBar


def test_a_bar_on_a_log_file_ends_with_one_full_line() -> None:
    out = io.StringIO()
    with ProgressBar(200, label="events", unit="rows", stream=out) as bar:
        bar.update(50)
        bar.advance(150)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("events [" + "#" * 30 + "] 100%  200/200 rows")


def test_a_disabled_bar_writes_nothing() -> None:
    out = io.StringIO()
    with ProgressBar(10, enabled=False, stream=out) as bar:
        bar.advance(10)
    assert out.getvalue() == ""

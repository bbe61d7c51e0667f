"""A tiny progress bar for long loads, written to stderr, no third-party dependency."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[#######-------]  52%  130,000/250,000 events  98,000/s  eta 1s``

    Redraws at most every ``interval`` seconds so that updating it from a hot
    loop costs next to nothing. A disabled bar does nothing at all.
    """

    def __init__(
        self,
        total: float,
        *,
        label: str = "",
        unit: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
        width: int = 30,
        interval: float = 0.1,
    ) -> None:
        self.total = max(float(total), 1.0)
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        self.done = 0.0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._closed = False
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if not self._tty:
            self.interval = max(interval, 5.0)  # a log file gets a line every few seconds

    def update(self, done: float) -> None:
        """Set the amount done so far (absolute, not an increment)."""
        self.done = min(float(done), self.total)
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= self.interval:
            self._last_draw = now
            self._draw(now)

    def advance(self, amount: float = 1.0) -> None:
        self.update(self.done + amount)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.monotonic())
            if self._tty:
                self.stream.write("\n")
            self.stream.flush()

    def render(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        fraction = self.done / self.total
        filled = round(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        unit = f" {self.unit}" if self.unit else ""
        label = f"{self.label} " if self.label else ""
        return (
            f"{label}[{bar}] {fraction:4.0%}  {self.done:,.0f}/{self.total:,.0f}{unit}"
            f"  {rate:,.0f}/s  eta {eta:,.0f}s"
        )

    def _draw(self, now: float) -> None:
        if self._tty:
            self.stream.write("\r" + self.render(now) + "\x1b[K")
        else:
            self.stream.write(self.render(now) + "\n")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

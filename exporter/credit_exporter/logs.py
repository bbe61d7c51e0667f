"""Structured log lines on stderr: logfmt (default) or JSON, one event per line.

Every line carries ``time`` (RFC 3339, UTC, milliseconds), ``level`` (debug,
info, warn, error), ``logger`` and ``msg``; an exception adds ``exc`` (the
traceback as one string). Every line is passed through ``redact.scrub`` so a
password that reaches a message from a library is masked there too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from credit_exporter import redact

FORMATS = ("logfmt", "json")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}  # fmt: skip
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
                logging.ERROR: "error", logging.CRITICAL: "error"}  # fmt: skip
_BARE = re.compile(r"^[^\s\"=\\\x00-\x1f\x7f]+$")


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    fields = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
        "logger": record.name,
        "msg": redact.scrub(record.getMessage()),
    }
    if record.exc_info:
        fields["exc"] = redact.scrub(formatter.formatException(record.exc_info))
    return fields


def logfmt_value(value: str) -> str:
    """A logfmt value: bare when it has no space, quote, '=', backslash or control
    character, else double-quoted with JSON's escapes (which logfmt parsers accept)."""
    if value and _BARE.match(value):
        return value
    return json.dumps(value, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self)
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=False)


class RepeatFilter(logging.Filter):
    """Lets at most ``burst`` lines with the same logger, level and message text through
    per ``window`` seconds; the first line after a window that dropped some says how many.

    A failure that repeats in a tight loop (asyncio's ``accept()`` at the open-file limit
    logs one per attempt) would otherwise write gigabytes.
    """

    def __init__(self, burst: int = 10, window: float = 60.0, max_keys: int = 1024) -> None:
        super().__init__()
        self.burst, self.window, self.max_keys = burst, window, max_keys
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}  # start, sent, dropped

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()  # the whole text: "query %s failed" differs by query
        except Exception:  # a bad format string: the handler reports it
            text = str(record.msg)
        key = (record.name, record.levelno, text)
        now = record.created
        start, sent, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window:
            if dropped:
                record.msg = f"{record.msg} [{dropped} more like this dropped in {self.window:g}s]"
            start, sent, dropped = now, 0, 0
        if sent >= self.burst:
            self._seen[key] = (start, sent, dropped + 1)
            return False
        if len(self._seen) >= self.max_keys and key not in self._seen:
            self._seen.clear()
        self._seen[key] = (start, sent + 1, dropped)
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    """Route every logger (and Python warnings) to one stderr handler in ``fmt``.

    Calling it again replaces the handler it installed before, and only that one.
    """
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _StderrHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)
    # the pool logs every failed attempt; db.py reports outages once, without noise
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


def install_excepthook() -> None:
    """Uncaught tracebacks are printed scrubbed of secrets, like log lines."""
    import traceback

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(redact.scrub(text))

    sys.excepthook = hook

"""The report's time range: ``--period`` or ``--from``/``--to``, and its granularity.

All times are UTC. A range is half-open, ``[start, end)``, like the billing
periods of the reference schema, so two adjacent reports never count an event
twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from credit_exporter.backfill import BackfillError, parse_time

GRANULARITIES = ("hour", "day", "week", "month")


class ReportInputError(Exception):
    """Bad report input (flag, period, organization); the CLI exits 2 with the message."""


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    label: str  # "2026-11", "2026-11-05", "2026-W45" or "<from>_<to>"

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def _month_after(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_period(text: str) -> Period:
    """``2026-11`` (a month), ``2026-11-05`` (a day) or ``2026-W45`` (an ISO week)."""
    value = text.strip()
    try:
        if match := _MONTH.match(value):
            first = date(int(match[1]), int(match[2]), 1)
            return Period(_midnight(first), _midnight(_month_after(first)), value)
        if match := _DAY.match(value):
            day = date(int(match[1]), int(match[2]), int(match[3]))
            return Period(_midnight(day), _midnight(day + timedelta(days=1)), value)
        if match := _WEEK.match(value):
            monday = date.fromisocalendar(int(match[1]), int(match[2]), 1)
            return Period(_midnight(monday), _midnight(monday + timedelta(days=7)), value)
    except ValueError as error:
        raise ReportInputError(f"--period: {text!r} is not a real date: {error}") from None
    raise ReportInputError(
        f"--period: cannot parse {text!r} (expected a month 2026-11, a day 2026-11-05 "
        "or an ISO week 2026-W45)"
    )


def parse_range(start: str, end: str, now: datetime) -> Period:
    """``--from``/``--to``: RFC 3339, a date (midnight UTC), ``now`` or ``now-7d``."""
    bounds = []
    for flag, text in (("--from", start), ("--to", end)):
        if _DAY.match(text.strip()):
            text = f"{text.strip()}T00:00:00Z"
        try:
            bounds.append(parse_time(text, now, flag).astimezone(UTC))
        except BackfillError as error:
            raise ReportInputError(str(error)) from None
    if bounds[1] <= bounds[0]:
        raise ReportInputError(f"--to ({bounds[1].isoformat()}) must be after --from")
    label = "_".join(b.strftime("%Y%m%dT%H%M%SZ") for b in bounds)
    return Period(bounds[0], bounds[1], label)


def bucket_start(moment: datetime, granularity: str) -> datetime:
    """The start of the timeline bucket holding ``moment`` (weeks start on Monday)."""
    moment = moment.astimezone(UTC)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    if granularity == "month":
        return day.replace(day=1)
    raise ReportInputError(f"--granularity: unknown {granularity!r} ({', '.join(GRANULARITIES)})")

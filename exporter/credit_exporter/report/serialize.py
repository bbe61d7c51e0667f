"""Plain JSON-ready values: decimal strings at 6 decimals for credits, ISO 8601 for times."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from credit_exporter.report.model import TABLES, Report, columns

SCHEMA_VERSION = 3
MICRO = Decimal("0.000001")  # the credit precision: numeric(18, 6) in the reference schema
_WIDE = Context(prec=60)  # quantize never overflows the default 28 digits


def plain(value: Any) -> Any:
    """A value as JSON carries it: Decimal -> "123.456000" (6 decimals, half up; exact for
    credits of the reference schema), datetime -> ISO 8601."""
    if isinstance(value, Decimal):
        return format(value.quantize(MICRO, rounding=ROUND_HALF_UP, context=_WIDE), "f")
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def row_dict(row: Any) -> dict[str, Any]:
    return {f.name: plain(getattr(row, f.name)) for f in dataclasses.fields(row)}


def to_document(report: Report) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": plain(report.generated_at),
        "period": {
            "label": report.period_label,
            "start": plain(report.period_start),
            "end": plain(report.period_end),
            "to_date": report.to_date,
            "granularity": report.granularity,
        },
        "organization": report.organization,
        "source": report.source,
        "summary": row_dict(report.summary),
        "time_to_exhaustion": row_dict(report.time_to_exhaustion),
        "tables": {name: [row_dict(row) for row in report.tables.get(name, [])] for name in TABLES},
    }


def table_columns() -> dict[str, list[str]]:
    return {name: columns(row_type) for name, row_type in TABLES.items()}

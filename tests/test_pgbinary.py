"""The binary COPY encoders of the demo's bulk load, read back by a real PostgreSQL.

Every value is written with ``pgbinary`` through COPY (FORMAT binary) and
compared with what the server prints for it: a field the server would store
as anything but the intended value fails here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from credit_exporter.demo import pgbinary


def _copy_and_read(dsn: str, column_type: str, fields: Sequence[bytes]) -> list[str | None]:
    """COPY one row per field into a temporary table; the values as the server prints them."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TEMP TABLE t (n integer, v {column_type})")
        body = b"".join(pgbinary.row(pgbinary.int4(n), f) for n, f in enumerate(fields))
        with cur.copy("COPY t FROM STDIN WITH (FORMAT binary)") as copy:
            copy.write(pgbinary.SIGNATURE + body + pgbinary.TRAILER)
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute("SELECT v::text FROM t ORDER BY n")
        return [r[0] for r in cur.fetchall()]


@pytest.fixture
def read_back(empty_db: str) -> Callable[[str, Sequence[bytes]], list[str | None]]:
    return lambda column_type, fields: _copy_and_read(empty_db, column_type, fields)


# around the base-10000 digit boundaries, 17 digits, and powers of ten
NUMERIC_EDGES = [0, 1, 9, 10, 9_999, 10_000, 10_001, 99_990_000, 100_000_000, 123_456_789,
                 10**17 - 1, 5, 50, 500, 5_000, 50_000, 500_000, 1_000_000]  # fmt: skip


@pytest.mark.parametrize("scale", [0, 1, 2, 3, 4, 5, 6, 8, 9])
def test_numeric_fields_read_back_as_the_exact_decimal_with_its_scale(
    read_back: Callable[[str, Sequence[bytes]], list[str | None]], scale: int
) -> None:
    rng = random.Random(scale)
    values = NUMERIC_EDGES + [-v for v in NUMERIC_EDGES]
    values += [rng.randrange(-(10**15), 10**15) for _ in range(500)]
    values += [rng.randrange(-(10**6), 10**6) for _ in range(500)]
    got = read_back("numeric", [pgbinary.numeric(v, scale) for v in values])
    expected = [format(Decimal(v).scaleb(-scale), "f") for v in values]
    assert got == expected


def test_numeric_field_fits_the_schema_typmods(
    read_back: Callable[[str, Sequence[bytes]], list[str | None]],
) -> None:
    # credits numeric(18, 6) as the bulk load writes it: display scale 6, no rounding
    got = read_back("numeric(18, 6)", [pgbinary.numeric(-12_345_678_901, 6)])
    assert got == ["-12345.678901"]


def test_timestamptz_fields_keep_the_millisecond(
    read_back: Callable[[str, Sequence[bytes]], list[str | None]],
) -> None:
    instants = [
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),  # before PostgreSQL's epoch
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 20, 13, 17, 5, 123_000, tzinfo=UTC),
        datetime(2038, 1, 19, 3, 14, 8, 1_000, tzinfo=UTC),
    ]
    ms = [(t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) for t in instants]
    got = read_back("timestamptz", [pgbinary.timestamptz(m) for m in ms])
    assert got == [
        "2000-01-01 00:00:00+00",
        "1999-12-31 23:59:59.999+00",
        "1970-01-01 00:00:00+00",
        "2026-11-20 13:17:05.123+00",
        "2038-01-19 03:14:08.001+00",
    ]


def test_integer_text_boolean_and_null_fields(
    read_back: Callable[[str, Sequence[bytes]], list[str | None]],
) -> None:
    assert read_back("smallint", [pgbinary.int2(v) for v in (0, -5, 32_767)]) == [
        "0", "-5", "32767"]  # fmt: skip
    assert read_back("integer", [pgbinary.int4(v) for v in (0, -1, 2**31 - 1)]) == [
        "0", "-1", "2147483647"]  # fmt: skip
    assert read_back("bigint", [pgbinary.int8(v) for v in (1, -(2**63), 2**63 - 1)]) == [
        "1", str(-(2**63)), str(2**63 - 1)]  # fmt: skip
    assert read_back("text", [pgbinary.text(v) for v in ("topup", "", "Zoë +1 555")]) == [
        "topup", "", "Zoë +1 555"]  # fmt: skip
    assert read_back("boolean", [pgbinary.boolean(True), pgbinary.FALSE, pgbinary.NULL]) == [
        "true", "false", None]  # fmt: skip

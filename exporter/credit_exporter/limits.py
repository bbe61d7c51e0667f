"""What may become a label value or a sample, and how many series a metric may have.

One ``LabelPolicy`` per metric mapping (resolved from the config's ``limits``,
``privacy`` and the mapping's own overrides) turns result cells into label
values: a NULL becomes the label's ``if_null`` text when it declares one and is
refused otherwise, non-UTF-8 bytes are refused, hashed labels become a keyed
HMAC, and a value longer than the cap is refused. ``to_number`` turns a cell
into a finite float or refuses it. Every refusal is a ``Refused`` whose
``reason`` is the ``reason`` label of ``credit_exporter_dropped_rows_total``.
docs/limits.md is the table of outcomes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

DEFAULT_MAX_SERIES = 100_000
DEFAULT_MAX_LABEL_VALUE_LENGTH = 1024
# The label values of the one series a capped counter folds its overflow into.
OVERFLOW = "__overflow__"
# Hashed label values: this many hex digits of HMAC-SHA256 (64 bits).
HASH_HEX_DIGITS = 16
MIN_HMAC_KEY_BYTES = 16

# A text cell is a number only when it is a plain decimal literal: no "nan",
# "inf", "1_000", hex or surrounding text that float() would also accept.
_DECIMAL_LITERAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class Refused(ValueError):
    """A cell that cannot be exported; ``reason`` names why (a dropped_rows reason)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def to_number(value: object) -> float:
    """A sample value from a result cell: a finite float, or ``Refused``."""
    if value is None:
        raise Refused("null_value")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL_LITERAL.fullmatch(text):
            raise Refused("not_a_number")
        value = Decimal(text)
    if isinstance(value, Decimal) and not value.is_finite():
        raise Refused("not_finite")  # numeric 'NaN', 'Infinity', '-Infinity'
    if not isinstance(value, int | float | Decimal):
        raise Refused("not_a_number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise Refused("out_of_range") from None
    if math.isnan(number) or (math.isinf(number) and isinstance(value, float)):
        raise Refused("not_finite")
    if math.isinf(number):  # a finite numeric or int beyond float range, e.g. 1e400
        raise Refused("out_of_range")
    return number


def hmac_label(key: bytes, text: str) -> str:
    """The exported form of a hashed label value (same input and key: same output)."""
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:HASH_HEX_DIGITS]


@dataclass(frozen=True)
class LabelPolicy:
    """How one metric mapping turns cells into label values, and its series cap."""

    max_series: int = DEFAULT_MAX_SERIES
    max_label_value_length: int = DEFAULT_MAX_LABEL_VALUE_LENGTH
    hashed: frozenset[str] = frozenset()  # catalogue label names
    dropped: frozenset[str] = frozenset()  # catalogue label names (streams only)
    key: bytes = field(default=b"", repr=False)
    # catalogue label name -> the text a NULL cell stands for (the label's if_null)
    if_null: Mapping[str, str] = field(default_factory=dict, hash=False)

    def label(self, name: str, value: object) -> str:
        """The label value of a cell for label ``name``, or ``Refused``.

        A NULL with an ``if_null`` replacement goes on as that text, so it is
        capped and hashed exactly like a cell holding it.

        The text is interned (``_intern``): the driver makes a new string for every
        cell, and a value repeated over rows and metrics (an organization, a model,
        a user in two metrics) is then kept once, however many series hold it.
        """
        if value is None:
            value = self.if_null.get(name)  # still None without a replacement: refused
        text = to_label_text(value)
        if name in self.hashed:
            return _intern(hmac_label(self.key, text))
        if len(text) > self.max_label_value_length:
            raise Refused("label_value_too_long")
        return _intern(text)


def _keep(text: str) -> str:
    return text


# On Python 3.12 an interned string is immortal: users who come and go would leak their
# label texts for the life of the process (measured: +108 MB per million distinct
# values dropped again, against +16 MB on 3.11 and 3.13). There the texts are not
# interned, and the same value in two series is two strings.
_intern = _keep if sys.version_info[:2] == (3, 12) else sys.intern


DEFAULT_POLICY = LabelPolicy()


def to_label_text(value: object) -> str:
    """A cell as label text, before hashing and the length cap."""
    if value is None:
        raise Refused("null_label")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("invalid_utf8") from None
    if isinstance(value, list | tuple | dict | set | frozenset):
        raise Refused("unsupported_type")  # arrays, json: not an identifier
    if isinstance(value, str):
        # PostgreSQL text cannot hold these, but a lone surrogate must never
        # reach the UTF-8 encoder of /metrics
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused("invalid_utf8") from None
        return value
    return str(value)


def overflow_labels(labels: tuple[str, ...], dropped: frozenset[str]) -> tuple[str, ...]:
    """The label values of the overflow series (dropped labels stay empty)."""
    return tuple("" if name in dropped else OVERFLOW for name in labels)

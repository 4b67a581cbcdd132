"""Kubernetes resource quantities, parsed exactly.

GPU and MIG counts are extended resources, which Kubernetes requires to be whole numbers; a quantity such as
"1000m" is whole (it is 1) while "0.5" or "500m" is not. Parsing into a `Fraction` keeps that distinction exact,
which floating point would not. Text that no Kubernetes quantity could be (infinite, NaN, hundreds of digits, an
exponent in the millions) is refused before any arithmetic, so a hostile value cannot make the parse slow or raise
anything but `QuantityError`. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_QUANTITY_CHARS = 64
"""Longer text is not a quantity: Kubernetes serializes any quantity it accepts in at most ~20 characters."""
_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[a-zA-Z]*|[eE][+-]?[0-9]{1,3})$"
)
_EXPONENT = re.compile(r"[eE][+-]?[0-9]{1,3}")

MAX_WHOLE = 2**63 - 1
"""Kubernetes caps every quantity at this (int64); larger whole numbers read as this many."""

_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity."""


def parse_quantity(value: object) -> Fraction:
    """Return the exact value of a Kubernetes quantity given as a JSON string or number."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"{value!r} is not a quantity")
        return Fraction(value)
    if not isinstance(value, str) or len(value) > MAX_QUANTITY_CHARS:
        raise QuantityError(f"{quoted(value)} is not a quantity")
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise QuantityError(f"{value!r} is not a quantity")
    number = Fraction(match["number"])
    if match["sign"] == "-":
        number = -number
    return number * _scale(match["suffix"], value)


def _scale(suffix: str, original: str) -> Fraction:
    if suffix in _DECIMAL_SUFFIXES:
        return Fraction(10) ** _DECIMAL_SUFFIXES[suffix]
    if suffix in _BINARY_SUFFIXES:
        return Fraction(2) ** _BINARY_SUFFIXES[suffix]
    if _EXPONENT.fullmatch(suffix):
        return Fraction(10) ** int(suffix[1:])
    raise QuantityError(f"{original!r} has an unknown suffix {suffix!r}")


def quoted(value: object, *, limit: int = MAX_QUANTITY_CHARS) -> str:
    """A user's value as messages quote it: `repr`, cut after `limit` characters.

    Messages go back to the user and into the webhook's log; a megabyte annotation must not travel with them.
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def whole_number(value: object) -> int | None:
    """The value as a non-negative whole number, or None when it is fractional, negative or not a quantity."""
    try:
        parsed = parse_quantity(value)
    except QuantityError:
        return None
    if parsed.denominator != 1 or parsed < 0:
        return None
    return min(int(parsed), MAX_WHOLE)

"""Kubernetes resource quantities, parsed exactly.

GPU and MIG counts are extended resources, which Kubernetes requires to be whole numbers; a quantity such as
"1000m" is whole (it is 1) while "0.5" or "500m" is not. Parsing into a `Fraction` keeps that distinction exact,
which floating point would not. Pure: no I/O.
"""

from __future__ import annotations

import re
from fractions import Fraction

_QUANTITY = re.compile(r"^(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[a-zA-Z]*|[eE][+-]?[0-9]+)$")

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
        return Fraction(value)
    if not isinstance(value, str):
        raise QuantityError(f"{value!r} is not a quantity")
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
    if suffix[:1] in ("e", "E"):
        return Fraction(10) ** int(suffix[1:])
    raise QuantityError(f"{original!r} has an unknown suffix {suffix!r}")


def whole_number(value: object) -> int | None:
    """The value as a non-negative whole number, or None when it is fractional, negative or not a quantity."""
    try:
        parsed = parse_quantity(value)
    except QuantityError:
        return None
    if parsed.denominator != 1 or parsed < 0:
        return None
    return int(parsed)

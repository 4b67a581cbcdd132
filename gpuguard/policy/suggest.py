""""Did you mean ...?" for a misspelt key, value or MIG profile: the closest known spellings, case-insensitively. Pure."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, choices: Iterable[str], *, n: int = 1) -> list[str]:
    """Up to `n` of `choices` that `word` was probably meant to be, best first; [] when none is close."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    wanted = word.lower()
    if wanted in by_lower:
        return [by_lower[wanted]]
    return [by_lower[found] for found in difflib.get_close_matches(wanted, list(by_lower), n=n, cutoff=0.6)]


def did_you_mean(word: object, choices: Iterable[str], *, n: int = 1) -> str:
    """`"; did you mean 'mode'?"`, or "" when nothing is close (or `word` is not text)."""
    if not isinstance(word, str) or not word:
        return ""
    matches = close_matches(word, choices, n=n)
    if not matches:
        return ""
    quoted = [repr(match) for match in matches]
    options = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {options}?"

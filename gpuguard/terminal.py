"""How a command's human output looks where it is printed: the terminal's width, and colour only on a terminal.

Colour is used when the stream is a terminal, `TERM` is not `dumb` and `NO_COLOR` is unset or empty (no-color.org);
`--color always|never` overrides the guess. Piped output is plain and wraps at `PIPED_WIDTH` so logs and tests read the
same everywhere. Pure apart from asking the stream whether it is a terminal and how wide it is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TextIO

ColourChoice = Literal["auto", "always", "never"]
Role = Literal["good", "bad", "warn", "heading"]

PIPED_WIDTH = 110
MIN_WIDTH = 60
"""Narrower terminals still get 60 columns: the tables' fixed columns need that much."""

_CODES: dict[Role, str] = {"good": "32", "bad": "1;31", "warn": "33", "heading": "1"}


@dataclass(frozen=True, slots=True)
class Style:
    width: int = PIPED_WIDTH
    colour: bool = False

    def paint(self, text: str, role: Role) -> str:
        """`text` in the role's colour (SGR codes), or unchanged when colour is off."""
        return f"\x1b[{_CODES[role]}m{text}\x1b[0m" if self.colour and text else text


PLAIN = Style()


def style_for(stream: TextIO, *, choice: ColourChoice = "auto", environ: Mapping[str, str] | None = None) -> Style:
    environ = os.environ if environ is None else environ
    tty = _isatty(stream)
    return Style(width=_width(stream) if tty else PIPED_WIDTH, colour=_colour(tty, choice, environ))


def _colour(tty: bool, choice: ColourChoice, environ: Mapping[str, str]) -> bool:
    if choice != "auto":
        return choice == "always"
    return tty and not environ.get("NO_COLOR") and environ.get("TERM", "") != "dumb"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = shutil.get_terminal_size((PIPED_WIDTH, 24)).columns
    return max(MIN_WIDTH, columns)

"""Human output adapts to where it goes: a terminal's width and colour, plain and fixed-width when piped."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios
from collections.abc import Iterator

import pytest

from gpuguard.terminal import MIN_WIDTH, PIPED_WIDTH, Style, style_for


@pytest.fixture
def terminal() -> Iterator[io.TextIOWrapper]:
    """The writing end of a real pseudo-terminal, 132 columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
    stream = open(slave, "w", encoding="utf-8")  # closed below
    yield stream
    stream.close()
    os.close(master)


def test_a_terminal_gets_its_width_and_colour(terminal: io.TextIOWrapper) -> None:
    assert style_for(terminal, environ={"TERM": "xterm"}) == Style(width=132, colour=True)


@pytest.mark.parametrize("environ", [{"NO_COLOR": "1", "TERM": "xterm"}, {"TERM": "dumb"}])
def test_no_color_and_a_dumb_terminal_turn_colour_off(terminal: io.TextIOWrapper, environ: dict[str, str]) -> None:
    assert style_for(terminal, environ=environ) == Style(width=132, colour=False)


def test_an_empty_no_color_does_not_count(terminal: io.TextIOWrapper) -> None:
    assert style_for(terminal, environ={"NO_COLOR": "", "TERM": "xterm"}).colour


def test_piped_output_is_plain_and_fixed_width() -> None:
    assert style_for(io.StringIO(), environ={"TERM": "xterm"}) == Style(width=PIPED_WIDTH, colour=False)


def test_the_colour_flag_overrides_the_guess(terminal: io.TextIOWrapper) -> None:
    assert style_for(io.StringIO(), choice="always", environ={}).colour
    assert not style_for(terminal, choice="never", environ={"TERM": "xterm"}).colour


def test_a_very_narrow_terminal_still_gets_the_minimum_width() -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 20, 0, 0))
    with open(slave, "w", encoding="utf-8") as stream:
        assert style_for(stream, environ={}).width == MIN_WIDTH
    os.close(master)


def test_paint_wraps_text_in_sgr_codes_only_when_colour_is_on() -> None:
    assert Style(colour=True).paint("DENIED", "bad") == "\x1b[1;31mDENIED\x1b[0m"
    assert Style(colour=False).paint("DENIED", "bad") == "DENIED"

"""Every `gpuguard` command's `--help` says what the command does and shows how to run it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gpuguard.cli import build_parser
from tests.conftest import ROOT


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf command (`demo`, `policy check`, ...) with its parser."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # argparse's own registry
    if not actions:
        yield path, parser
    for action in actions:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


LEAVES = dict(commands(build_parser()))


def test_every_command_is_found() -> None:
    assert {" ".join(path) for path in LEAVES} == {
        "webhook", "mutate", "validate", "extender", "policy check", "policy schema", "certs ensure", "certs check",
        "agent", "demo", "simulate", "dra templates", "mig-layouts",
    }


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_each_command_has_a_description_and_an_example(path: tuple[str, ...]) -> None:
    text = LEAVES[path].format_help()
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 15, f"a paragraph on what `{' '.join(path)}` does, not only its usage"
    examples = text.split("examples:\n", 1)[1].splitlines()
    assert examples and all(line.startswith(f"  gpuguard {' '.join(path)}") or "| gpuguard" in line
                            for line in examples if line.strip())


def test_the_top_level_help_has_examples_through_the_real_command() -> None:
    result = subprocess.run([sys.executable, "-m", "gpuguard", "--help"], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0
    assert "examples:\n  gpuguard demo\n" in result.stdout


@pytest.mark.parametrize("path", [("validate",), ("policy", "check"), ("demo",)], ids=" ".join)
def test_subcommand_help_through_the_real_command(path: tuple[str, ...]) -> None:
    result = subprocess.run([sys.executable, "-m", "gpuguard", *path, "--help"], cwd=ROOT, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "examples:" in result.stdout

"""The layering and typing rules of the code base, checked on every test run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    """The tool from the interpreter's own environment, so the check runs with the project's pinned packages."""
    beside = Path(sys.executable).with_name(name)
    return [str(beside)] if beside.exists() else [shutil.which(name) or name]


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [*_tool("lint-imports"), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""Shared fixtures: the canonical payloads in tests/data and the default policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpuguard.policy.loading import default_policy
from gpuguard.policy.model import Policy

DATA = Path(__file__).parent / "data"


def load_data(name: str) -> Any:
    return json.loads((DATA / name).read_text())


@pytest.fixture(scope="session")
def policy() -> Policy:
    return default_policy()

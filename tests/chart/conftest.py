"""Fixtures of the chart tests; the helpers are in tests/chart/helm.py."""

from __future__ import annotations

import pytest

from tests.chart.helm import Rendered, render


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    """The chart with its default values, for Kubernetes 1.29."""
    return render()

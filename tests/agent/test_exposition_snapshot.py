"""The full exposition of the 8 x H100 MIG node with GPM and pod attribution, pinned to a recorded scrape.

The fake libnvidia-ml.so.1 serves tests/data/agent/nvml-8xh100-mig.json through the real pynvml, a real gRPC
server stands in for the kubelet with tests/data/agent/podresources-8xh100-mig.json, and the second scrape (GPM
needs two reads) is compared with tests/data/agent/exposition-8xh100-mig.txt after parsing both with
prometheus_client's own text parser: every family's name, type and help, and every sample's name, labels and value,
in order. Only the scrape's own duration and counters' creation times differ from run to run; for those the sample
must be there, its value is not compared. Any change to how samples are collected or rendered must leave this
unchanged; the file is regenerated (the probe's `metrics` of the second step) only for an intended change of the
metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DATA, load_agent_data
from .kubelet import FakeKubelet
from .test_nvml_backend import probe

SNAPSHOT = DATA / "exposition-8xh100-mig.txt"
VOLATILE = ("gpuguard_agent_scrape_duration_seconds",)
"""Samples whose value is a measurement of the scrape itself (plus every `_created` timestamp)."""

Family = tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float | None]]]


def structure(exposition: str) -> list[Family]:
    """Families in order, each with its samples in order; volatile values as None."""
    families = []
    for family in text_string_to_metric_families(exposition):
        samples = [(s.name, tuple(sorted(s.labels.items())),
                    None if s.name in VOLATILE or s.name.endswith("_created") else s.value)
                   for s in family.samples]
        families.append((family.name, family.type, family.documentation, samples))
    return families


@pytest.fixture(scope="module")
def exposition(fake_nvml: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("snapshot")
    node = load_agent_data("nvml-8xh100-mig.json")
    with FakeKubelet(work / "kubelet.sock", load_agent_data("podresources-8xh100-mig.json")) as kubelet:
        steps: list[dict[str, Any]] = [node, node]
        readings = probe(steps, fake_nvml=fake_nvml, tmp_path=work, podresources=kubelet.socket)
    text: str = readings[-1]["metrics"]
    return text


def test_the_mig_node_exposes_exactly_the_recorded_families_labels_and_values(exposition: str) -> None:
    recorded = structure(SNAPSHOT.read_text())
    now = structure(exposition)
    assert [f[0] for f in now] == [f[0] for f in recorded]
    for current, expected in zip(now, recorded, strict=True):
        assert current == expected, f"family {expected[0]} differs from {SNAPSHOT.name}"


def test_the_recorded_scrape_is_the_whole_attributed_node(exposition: str) -> None:
    """The snapshot is worth pinning: every MIG device with activity and a pod, every GPU with its pci_bus_id."""
    samples = [s for family in text_string_to_metric_families(SNAPSHOT.read_text()) for s in family.samples]
    engine = [s for s in samples if s.name == "DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
    assert len(engine) == 8 * 7
    assert all(s.labels.get("pod") and s.labels["namespace"] and s.labels["container"] for s in engine)
    assert len({s.labels["pci_bus_id"] for s in samples if "UUID" in s.labels}) == 8
    assert sum(len(f[3]) for f in structure(exposition)) == len(samples) == 311

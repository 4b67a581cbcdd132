"""The fake backend (GPU files in the annotation schema) and the null backend (no GPU, no crash-loop)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from node_agent.app import open_backend
from node_agent.backend import BackendUnavailable
from node_agent.fake import FakeBackend, gpu_reading, parse_fake_gpus
from node_agent.null import NullBackend
from node_agent.settings import AgentSettings

from .conftest import ROOT

EXAMPLES = sorted((ROOT / "examples" / "fake-gpus").glob("*.yaml"))
T4 = """
gpus:
  - {index: 0, uuid: GPU-t4, product: Tesla-T4, memoryMiB: 15360, utilPercent: 21, temperatureC: 47}
"""


def rewrite(path: Path, text: str) -> None:
    """Replace the file as a ConfigMap volume update does (new inode), so the change is seen at once."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_example_gpu_files_load(example: Path) -> None:
    snapshot = FakeBackend(example).read()
    assert snapshot.gpus and not snapshot.errors
    assert len({g.uuid for g in snapshot.gpus}) == len(snapshot.gpus)
    for gpu in snapshot.gpus:
        assert gpu.temperature_c is not None and gpu.power_w is not None
        assert (gpu.util_percent is None) == gpu.mig_enabled


def test_the_examples_cover_mig_a100_and_t4() -> None:
    names = {g.name for example in EXAMPLES for g in FakeBackend(example).read().gpus}
    assert names == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla T4"}


def test_an_annotation_can_be_replayed_as_a_gpu_file(tmp_path: Path) -> None:
    annotation = ('{"v":1,"ts":"2026-05-01T12:00:00Z","driver":"550.54.15","gpus":[{"index":0,"uuid":"GPU-1",'
                  '"product":"NVIDIA-H100-80GB-HBM3","memoryMiB":81559,"utilPercent":null,"memoryUsedMiB":1024,'
                  '"mig":{"enabled":true,"devices":[{"profile":"3g.40gb","start":4,"size":4,"uuid":"MIG-1",'
                  '"busy":true}]}}]}')
    (tmp_path / "gpus.json").write_text(annotation)
    [gpu] = FakeBackend(tmp_path / "gpus.json").read().gpus
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert [(m.profile, m.start, m.size, m.busy) for m in gpu.mig_devices] == [("3g.40gb", 4, 4, True)]
    assert gpu.temperature_c is None  # not in the annotation: unknown, like an unsupported sensor


def test_utilization_in_the_file_is_ignored_while_mig_is_enabled() -> None:
    content = parse_fake_gpus("gpus: [{index: 0, uuid: G, product: P, memoryMiB: 1, utilPercent: 50, "
                              "mig: {enabled: true}}]")
    assert content.gpus[0].util_percent == 50
    assert gpu_reading(content.gpus[0]).util_percent is None


@pytest.mark.parametrize(("text", "where"), [
    ("gpus: [{index: 0, uuid: G, product: P, memoryMiB: 1, temperatur: 40}]", "gpus[0].temperatur"),
    ("gpus: [{index: 0, uuid: G, product: P, memoryMiB: -1}]", "gpus[0].memoryMiB"),
    ("gpus: [{index: 0, uuid: G, product: P}]", "gpus[0].memoryMiB"),
    ("v: 2\ngpus: []", "v"),
    ("gpus: [{index: 0, uuid: G, product: P, memoryMiB: 1, mig: {enabled: true, devices: [{profile: 1g.10gb}]}}]",
     "gpus[0].mig.devices[0].start"),
    ("gpus: [", "not valid YAML"),
])
def test_a_broken_gpu_file_is_refused_naming_the_field(text: str, where: str, tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(text)
    with pytest.raises(BackendUnavailable, match=r"gpus\.yaml") as refused:
        FakeBackend(path)
    assert where in str(refused.value)


def test_the_file_is_re_read_when_it_changes_and_a_broken_edit_keeps_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(T4)
    backend = FakeBackend(path)
    rewrite(path, T4.replace("utilPercent: 21", "utilPercent: 88"))
    assert backend.read().gpus[0].util_percent == 88
    rewrite(path, "gpus: [{index: 0}]")
    with caplog.at_level(logging.ERROR):
        broken = backend.read()
        backend.read()
    assert broken.gpus[0].util_percent == 88
    assert [(e.function, e.error) for e in broken.errors] == [("readFakeGpuFile", "Invalid")]
    assert len([r for r in caplog.records if "refused" in r.message]) == 1


def test_the_null_backend_reports_no_gpu_and_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        backend = NullBackend("no NVIDIA driver on this node")
        reads = [backend.read() for _ in range(3)]
    assert all(r.gpus == () and r.errors == () for r in reads)
    assert [r.message for r in caplog.records] == ["no GPU backend: no NVIDIA driver on this node; reporting zero GPUs"]


def test_the_fake_backend_needs_its_file() -> None:
    with pytest.raises(BackendUnavailable, match="--fake-gpus"):
        open_backend(AgentSettings(node_name="n", backend="fake"))


def test_a_replayed_annotation_sizes_its_mig_devices_from_the_catalog(tmp_path: Path) -> None:
    annotation = ('{"v":1,"ts":"2026-05-01T12:00:00Z","gpus":[{"index":0,"uuid":"GPU-1",'
                  '"product":"NVIDIA-H100-80GB-HBM3","memoryMiB":81559,"mig":{"enabled":true,"devices":['
                  '{"profile":"3g.40gb","start":4,"size":4,"uuid":"MIG-1","busy":true},'
                  '{"profile":"1g.10gb","start":0,"size":1,"uuid":"MIG-2","busy":false,"utilPercent":15},'
                  '{"profile":"9g.99gb","start":1,"size":1,"uuid":"MIG-3","busy":false}]}}]}')
    (tmp_path / "gpus.json").write_text(annotation)
    [gpu] = FakeBackend(tmp_path / "gpus.json").read().gpus
    busy, idle, unknown = gpu.mig_devices
    assert (busy.memory_total_mib, busy.memory_used_mib) == (40 * 1024, None)  # in use, but how much is unknown
    assert (idle.memory_total_mib, idle.memory_used_mib, idle.memory_free_mib) == (10 * 1024, 0, 10 * 1024)
    assert unknown.memory_total_mib is None  # a profile the catalog does not know: no invented size
    assert idle.activity is not None and idle.activity.graphics == pytest.approx(0.15)
    assert busy.activity is None


def test_fake_gpus_carry_a_pci_bus_id_and_gpm_activity_where_the_file_gives_it() -> None:
    gpus = FakeBackend(ROOT / "examples" / "fake-gpus" / "h100-mig.yaml").read().gpus
    assert [g.pci_bus_id for g in gpus] == ["00000000:19:00.0", "00000000:3B:00.0", "00000000:4C:00.0",
                                           "00000000:5D:00.0"]
    assert gpus[0].activity is None  # MIG: the instances carry it
    assert gpus[2].activity is not None and (gpus[2].activity.graphics, gpus[2].activity.sm) == (0.74, 0.58)
    assert [m.activity.graphics if m.activity else None for m in gpus[0].mig_devices] == [0.61, 0.35, 0.0, 0.88]
    default = gpu_reading(parse_fake_gpus("gpus: [{index: 4, uuid: G, product: P, memoryMiB: 1}]").gpus[0])
    assert default.pci_bus_id == "00000000:05:00.0"

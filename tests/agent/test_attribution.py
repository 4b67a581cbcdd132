"""Device ids from the kubelet matched to the snapshot's GPUs and MIG devices, as dcgm-exporter matches them."""

from __future__ import annotations

import pytest

from node_agent.attribution import Allocation, DeviceRef, Holder, holders, parse_device_id
from node_agent.backend import GpuReading, MigReading, Snapshot

H100 = "GPU-6f2d4c1e-8a3b-4f7e-9c1d-2b5e7a9f0c31"
SNAPSHOT = Snapshot(gpus=(
    GpuReading(index=0, uuid=H100, name="NVIDIA H100 80GB HBM3", mig_enabled=True, mig_devices=(
        MigReading(2, "3g.40gb", 4, 4, "MIG-3e0c", True), MigReading(13, "1g.10gb", 2, 1, "MIG-1c8a", True))),
    GpuReading(index=1, uuid="GPU-whole", name="NVIDIA H100 80GB HBM3"),
))


@pytest.mark.parametrize(("device_id", "expected"), [
    ("GPU-whole", DeviceRef(uuid="GPU-whole")),
    ("GPU-whole::3", DeviceRef(uuid="GPU-whole", replica="3")),  # NVIDIA device plugin time-slicing replica
    ("MIG-3e0c", DeviceRef(uuid="MIG-3e0c")),
    ("MIG-3e0c::1", DeviceRef(uuid="MIG-3e0c", replica="1")),  # a time-sliced MIG device
    (f"MIG-{H100}/13/0", DeviceRef(uuid=H100, gpu_instance=13)),  # MIG naming before driver R470
    ("nvidia1", DeviceRef(index=1)),  # GKE
    ("nvidia1/vgpu4", DeviceRef(index=1, replica="4")),
    ("nvidia0/gi2", DeviceRef(index=0, gpu_instance=2)),
    ("nvidia0/gi2/vgpu0", DeviceRef(index=0, gpu_instance=2, replica="0")),
])
def test_device_ids_of_each_plugin_are_understood(device_id: str, expected: DeviceRef) -> None:
    assert parse_device_id(device_id) == expected


@pytest.mark.parametrize("device_id", ["MIG-3e0c", f"MIG-{H100}/2/0", "nvidia0/gi2"])
def test_every_spelling_of_a_mig_device_finds_the_same_instance(device_id: str) -> None:
    found = holders([Allocation("p", "ns", "c", "nvidia.com/mig-3g.40gb", device_id)], SNAPSHOT)
    assert found == {"MIG-3e0c": (Holder("p", "ns", "c"),)}


def test_replicas_of_one_gpu_are_held_by_each_sharing_container() -> None:
    found = holders([Allocation("a", "ns", "c", "nvidia.com/gpu.shared", "GPU-whole::0"),
                     Allocation("b", "ns", "c", "nvidia.com/gpu.shared", "nvidia1/vgpu1")], SNAPSHOT)
    assert found == {"GPU-whole": (Holder("a", "ns", "c", "0"), Holder("b", "ns", "c", "1"))}


@pytest.mark.parametrize(("resource", "device_id"), [
    ("nvidia.com/gpu", "GPU-elsewhere"),  # not on this node (a stale kubelet entry)
    ("nvidia.com/gpu", "nvidia9"),
    ("nvidia.com/mig-1g.10gb", "nvidia0/gi99"),
    ("example.com/gpu", "GPU-whole"),  # another vendor's plugin reusing an id format
])
def test_ids_that_name_no_device_here_attribute_nothing(resource: str, device_id: str) -> None:
    assert holders([Allocation("p", "ns", "c", resource, device_id)], SNAPSHOT) == {}


def test_a_holder_names_itself_with_dcgm_exporters_labels() -> None:
    assert Holder("p", "ns", "c").labels() == {"pod": "p", "namespace": "ns", "container": "c"}
    assert Holder("p", "ns", "c", "2").labels()["vgpu"] == "2"

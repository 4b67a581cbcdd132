"""The demo's built-in cluster: six nodes written as a cluster-state file, and fake GPUs for their node agents.

Two H100 nodes under the MIG "mixed" strategy (each: one GPU in the GPU Operator's all-balanced layout, one in
all-1g.10gb, two whole GPUs), the first busy and the second nearly idle; two A100 nodes with whole GPUs, again one busy
and one idle; one T4 node that the default policy time-slices four ways; and one CPU-only node. The labels and
allocatable resources are what GPU Feature Discovery and the NVIDIA device plugin publish for such nodes, so the
extender reads them exactly as it would in a cluster; the fake GPU files follow the node-annotation schema the agents
report from. Pure data: the caller writes the files.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from gpuguard.policy import mig

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
T4 = "Tesla-T4"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# (profile, start) placements of the GPU Operator's all-balanced and all-1g.10gb layouts on an 80 GB H100.
BALANCED = (("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3), ("3g.40gb", 4))
ALL_1G = tuple(("1g.10gb", start) for start in range(7))


@dataclass(frozen=True, slots=True)
class Gpu:
    """One fake GPU: whole (utilization known) or MIG (one busy flag per instance)."""

    product: str
    name: str
    memory_mib: int
    util_percent: float | None = None
    mig: tuple[tuple[str, int], ...] = ()
    busy: tuple[bool, ...] = ()
    temperature_c: float = 40.0
    power_w: float = 100.0
    power_limit_w: float = 400.0


@dataclass(frozen=True, slots=True)
class DemoNode:
    name: str
    role: str
    """One line for the demo's output: what this node is."""
    gpus: tuple[Gpu, ...] = ()
    extra_labels: dict[str, str] = field(default_factory=dict)
    shared_replicas: int = 1


def _h100(util: tuple[float, float], busy_balanced: tuple[bool, ...], busy_1g: tuple[bool, ...]) -> tuple[Gpu, ...]:
    name = "NVIDIA H100 80GB HBM3"
    return (
        Gpu(H100, name, 81559, mig=BALANCED, busy=busy_balanced, temperature_c=44, power_w=212, power_limit_w=700),
        Gpu(H100, name, 81559, mig=ALL_1G, busy=busy_1g, temperature_c=41, power_w=150, power_limit_w=700),
        Gpu(H100, name, 81559, util_percent=util[0], temperature_c=38 + util[0] / 3, power_w=90 + 5 * util[0],
            power_limit_w=700),
        Gpu(H100, name, 81559, util_percent=util[1], temperature_c=38 + util[1] / 3, power_w=90 + 5 * util[1],
            power_limit_w=700),
    )


def _a100(utils: tuple[float, ...]) -> tuple[Gpu, ...]:
    return tuple(Gpu(A100, "NVIDIA A100-SXM4-80GB", 81920, util_percent=u, temperature_c=32 + u / 3,
                     power_w=60 + 3.3 * u) for u in utils)


NODES: tuple[DemoNode, ...] = (
    DemoNode("h100-mig-a", "4x H100 80GB, MIG mixed, whole GPUs busy",
             _h100((85, 90), (True, True, False, True), (True, True, True, False, False, False, False))),
    DemoNode("h100-mig-b", "4x H100 80GB, MIG mixed, nearly idle",
             _h100((5, 10), (False, False, False, False), (True, False, False, False, False, False, False))),
    DemoNode("a100-a", "4x A100 80GB, busy", _a100((88, 91, 84, 86))),
    DemoNode("a100-b", "4x A100 80GB, idle", _a100((4, 0, 7, 2))),
    DemoNode("t4-shared", "1x T4, time-sliced 4 ways by the agent",
             (Gpu(T4, "Tesla T4", 15360, util_percent=20, temperature_c=47, power_w=32, power_limit_w=70),),
             extra_labels={"nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/gpu.replicas": "4"},
             shared_replicas=4),
    DemoNode("cpu-1", "CPU only"),
)


def node_object(node: DemoNode) -> dict[str, Any]:
    """The Node as the API server would hold it after GFD and the device plugin labelled and sized it."""
    allocatable: dict[str, str] = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", **node.extra_labels}
    spec: dict[str, Any] = {}
    if node.gpus:
        allocatable.update(_gpu_allocatable(node))
        labels.update(_gpu_labels(node))
        spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels, "annotations": {}},
        "spec": spec,
        "status": {"capacity": dict(allocatable), "allocatable": allocatable},
    }


def _gpu_allocatable(node: DemoNode) -> dict[str, str]:
    counts: dict[str, int] = {}
    for gpu in node.gpus:
        if not gpu.mig:
            counts["nvidia.com/gpu"] = counts.get("nvidia.com/gpu", 0) + node.shared_replicas
        for profile, _start in gpu.mig:
            name = mig.mig_resource_name(profile)
            counts[name] = counts.get(name, 0) + 1
    return {name: str(count) for name, count in counts.items()}


def _gpu_labels(node: DemoNode) -> dict[str, str]:
    first = node.gpus[0]
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": first.product + ("-SHARED" if node.shared_replicas > 1 else ""),
        "nvidia.com/gpu.count": str(len(node.gpus)),
        "nvidia.com/gpu.memory": str(first.memory_mib),
    }
    if any(gpu.mig for gpu in node.gpus):
        labels.update({"nvidia.com/mig.capable": "true", "nvidia.com/mig.strategy": "mixed"})
    return labels


def fake_gpus(node: DemoNode) -> dict[str, Any]:
    """The node agent's `--fake-gpus` document for this node."""
    return {"driver": "550.54.15", "gpus": [_fake_gpu(node.name, index, gpu) for index, gpu in enumerate(node.gpus)]}


def _fake_gpu(node: str, index: int, gpu: Gpu) -> dict[str, Any]:
    used = 0 if gpu.util_percent is None else int(gpu.memory_mib * min(gpu.util_percent, 90) / 100)
    entry: dict[str, Any] = {
        "index": index,
        "uuid": f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node}/{index}')}",
        "product": gpu.product,
        "name": gpu.name,
        "memoryMiB": gpu.memory_mib,
        "memoryUsedMiB": used,
        "utilPercent": gpu.util_percent,
        "temperatureC": round(gpu.temperature_c, 1),
        "powerDrawW": round(gpu.power_w, 1),
        "powerLimitW": gpu.power_limit_w,
        "smClockMHz": 1980 if gpu.product == H100 else 1410,
    }
    if gpu.mig:
        entry["mig"] = {"enabled": True, "devices": [
            _mig_device(node, index, profile, start, busy)
            for (profile, start), busy in zip(gpu.mig, gpu.busy, strict=True)
        ]}
    return entry


def _mig_device(node: str, index: int, profile: str, start: int, busy: bool) -> dict[str, Any]:
    model = mig.model_for_product(H100)
    assert model is not None
    entry = model.profile(profile)
    assert entry is not None
    return {"profile": profile, "start": start, "size": entry.size, "busy": busy,
            "uuid": f"MIG-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node}/{index}/{start}')}"}

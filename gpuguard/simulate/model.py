"""The simulated cluster and the arrival trace `gpuguard simulate` replays. Pure and seeded: same seed, same run.

Cluster, for N nodes (at least one of each kind): 40 % whole-GPU nodes of 8 H100 80GB, 20 % of 8 A100 80GB, 15 % of
8 H100 80GB under the MIG mixed strategy, 10 % of 8 B200 under the MIG mixed strategy (on both MIG pools, half the
GPUs in the GPU Operator's all-1g layout, half in all-balanced, placed by the catalog's start slots), 15 % of 4 T4s
time-sliced 4 ways. Each whole-GPU node gets a background utilization drawn from 5/20/40/60/85 % (other tenants'
load, which the utilization weighting should steer around; it stays static).

Trace, M pods arriving one per second on average (exponential gaps), each living an exponentially distributed time
(mean `lifetime`): 40 % whole-GPU LLM servers (1, 2, 4 or 8 GPUs with weights 10, 8, 12, 10, so 22 % of all pods ask
for 4 or 8 GPUs; 70 % pin H100, 30 % A100 through the product selector the webhook's rules add), 45 % small models on
one MIG slice (60 % on H100: 1g.10gb 30, 2g.20gb 10, 3g.40gb 5; 40 % on B200: 1g.23gb 30,
2g.45gb 10, 3g.90gb 5), 15 % development models on one time-sliced T4 share.

Multi-node LLM groups (`llm_groups`, off by default): that many groups of 2 or 4 pods of 8 H100 GPUs each (one model
sharded by pipeline parallelism across nodes, as a LeaderWorkerSet group or a multi-node predictor), arriving at
random times over the trace, their pods one after another 10 ms apart, sharing one lifetime. The whole-GPU nodes are
labelled with an NVLink clique (`nvidia.com/gpu.clique`, as GPU Feature Discovery sets it) of `CLIQUE_SIZE` nodes
each, per product; a group whose pods end up in more than one clique is split.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuguard.policy import mig
from gpuguard.policy.catalog import GpuModel
from gpuguard.policy.migconfig import DEFAULT_CONFIGS, ConfigEntry, gpu_layouts
from gpuguard.policy.gpustate import (
    GpuRequest,
    GpuSample,
    MigSlice,
    NodeGpuState,
    NodeUtilization,
    catalog_gpu,
    gpu_request,
    place_instances,
)

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
T4 = "Tesla-T4"
B200 = "NVIDIA-B200"
T4_SHARED = "Tesla-T4-SHARED"
"""GPU Feature Discovery's product label on a time-sliced node (renameByDefault: false)."""
GPU = "nvidia.com/gpu"
PRODUCT = "nvidia.com/gpu.product"
CLIQUE = "nvidia.com/gpu.clique"
CLIQUE_SIZE = 8
GROUP_SIZES = (2, 4)
GROUP_GAP = 0.01
"""Seconds between the pods of one group: the LeaderWorkerSet creates them together."""
SHARING = "nvidia.com/gpu.sharing-strategy"
NOT_SHARED = {"key": SHARING, "operator": "NotIn", "values": ["time-slicing", "mps"]}
BACKGROUND = (5.0, 20.0, 40.0, 60.0, 85.0)
NODE_MIX = (("h100", 0.40), ("a100", 0.20), ("h100-mig", 0.15), ("b200-mig", 0.10), ("t4", 0.15))
MIG_POOLS = {
    # product: (the all-1g profile, the all-balanced layout, the trace's profile weights), names as the catalog has them
    H100: ("1g.10gb", {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}, {"1g.10gb": 30, "2g.20gb": 10, "3g.40gb": 5}),
    B200: ("1g.23gb", {"1g.23gb": 2, "2g.45gb": 1, "3g.90gb": 1}, {"1g.23gb": 30, "2g.45gb": 10, "3g.90gb": 5}),
}
MIG_CONFIGS = {
    # product: the GPU Operator's default mig-parted names (gpuguard/policy/mig-parted-config.yaml) per start kind
    H100: {"all-1g": "all-1g.10gb", "all-2g": "all-2g.20gb", "all-3g": "all-3g.40gb", "all-balanced": "all-balanced"},
    B200: {"all-1g": "all-1g.23gb", "all-2g": "all-2g.45gb", "all-3g": "all-3g.90gb", "all-balanced": "all-balanced"},
}
MIG_STARTS = ("mixed", "all-1g", "all-2g", "all-3g", "all-balanced")
"""Named starting layouts for the MIG nodes (`build_cluster(mig_start=...)`): one mig-parted name per node, as the
MIG manager applies them; `mixed` alternates all-1g and all-balanced nodes."""
MIG_SHARE = {H100: 0.6, B200: 0.4}
"""Of the MIG pods, the share for each pool (its share of the MIG nodes)."""
MIG_CHOICES = tuple((product, profile) for product, pool in MIG_POOLS.items() for profile in pool[2])
MIG_WEIGHTS = tuple(MIG_SHARE[product] * MIG_POOLS[product][2][profile] for product, profile in MIG_CHOICES)


@dataclass(frozen=True, slots=True)
class SimPod:
    index: int
    kind: str
    """llm, mig or dev."""
    request: GpuRequest
    arrival: float
    lifetime: float
    group: str = ""
    """The multi-node group the pod belongs to ("" for single pods)."""

    @property
    def gpus(self) -> int:
        return self.request.count(GPU)


@dataclass(frozen=True, slots=True)
class SimCluster:
    states: tuple[NodeGpuState, ...]
    utilization: dict[str, NodeUtilization]
    background: dict[str, float]
    """Mean background utilization of each whole-GPU node (percent)."""
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each node's GPU product and, for whole-GPU nodes, NVLink clique label."""
    mig_configs: dict[str, str] = field(default_factory=dict)
    """Each MIG node's `nvidia.com/mig.config` when it was built from a named layout."""


def node_counts(nodes: int) -> dict[str, int]:
    counts = {kind: max(1, round(nodes * share)) for kind, share in NODE_MIX}
    counts["h100"] += nodes - sum(counts.values())
    return counts


def build_cluster(nodes: int, seed: int, *, mig_start: str | None = None) -> SimCluster:
    """`mig_start` None: each MIG node has half its GPUs all-1g, half all-balanced (a custom layout); else every MIG
    node takes one name of the default mig-parted config (`MIG_STARTS`), recorded in `SimCluster.mig_configs`."""
    rnd = random.Random(f"cluster-{seed}")
    states: list[NodeGpuState] = []
    utilization: dict[str, NodeUtilization] = {}
    background: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    configs: dict[str, str] = {}
    for kind, count in node_counts(nodes).items():
        for i in range(count):
            name = f"{kind}-{i:03d}"
            if kind.endswith("-mig") and mig_start is not None:
                product = H100 if kind == "h100-mig" else B200
                start = mig_start if mig_start != "mixed" else ("all-1g", "all-balanced")[i % 2]
                configs[name] = MIG_CONFIGS[product][start]
                states.append(named_mig_node(name, product, configs[name]))
            else:
                states.append(_node(kind, name))
            labels[name] = {PRODUCT: states[-1].product}
            if kind in ("h100", "a100"):
                labels[name][CLIQUE] = f"{kind}-clique-{i // CLIQUE_SIZE}"
            if kind in ("h100", "a100", "t4"):
                level = rnd.choice(BACKGROUND)
                gpus = 4 if kind == "t4" else 8
                samples = tuple(GpuSample(f"{name}/{g}", min(99.0, max(0.0, level + rnd.uniform(-5, 5))), 0.0)
                                for g in range(gpus))
                utilization[name] = NodeUtilization(samples)
                background[name] = sum(s.percent for s in samples) / gpus
    return SimCluster(tuple(states), utilization, background, labels=labels, mig_configs=configs)


def _node(kind: str, name: str) -> NodeGpuState:
    if kind == "h100":
        return NodeGpuState(name, H100, {GPU: 8}, {}, physical_gpus=8)
    if kind == "a100":
        return NodeGpuState(name, A100, {GPU: 8}, {}, physical_gpus=8)
    if kind == "t4":
        return NodeGpuState(name, T4_SHARED, {GPU: 16}, {}, physical_gpus=4, sharing="time-slicing")
    return _mig_node(name, H100 if kind == "h100-mig" else B200)


def _mig_node(name: str, product: str) -> NodeGpuState:
    model = mig.model_for_product(product)
    assert model is not None
    one_g, balanced, _ = MIG_POOLS[product]
    layouts = (_layout(model, {one_g: 7}), _layout(model, balanced))
    gpus = tuple(catalog_gpu(model, i, f"{name}/{i}", layouts[i >= 4]) for i in range(8))
    allocatable: dict[str, int] = {}
    for gpu in gpus:
        for piece in gpu.slices:
            resource = mig.mig_resource_name(piece.profile)
            allocatable[resource] = allocatable.get(resource, 0) + 1
    return NodeGpuState(name, product, allocatable, {}, mig_gpus=gpus, physical_gpus=8)


def named_mig_node(name: str, product: str, config: str,
                   configs: Mapping[str, tuple[ConfigEntry, ...]] = DEFAULT_CONFIGS) -> NodeGpuState:
    """A MIG node of 8 GPUs, each as the MIG manager lays it out for mig-parted name `config`."""
    model = mig.model_for_product(product)
    assert model is not None
    counts = gpu_layouts(config, model, 8, configs)
    assert counts is not None, f"{config} does not apply to {model.name}"
    return mig_node_of(name, product, [_layout(model, c) for c in counts])


def mig_node_of(name: str, product: str, layouts: Sequence[tuple[MigSlice, ...]],
                held: Sequence[tuple[bool, ...]] | None = None) -> NodeGpuState:
    """A MIG node with these instances per GPU (`held`: which of them pods hold; none when not given)."""
    model = mig.model_for_product(product)
    assert model is not None
    gpus = tuple(catalog_gpu(model, i, f"{name}/{i}", slices) for i, slices in enumerate(layouts))
    flags = tuple(held) if held is not None else tuple((False,) * len(g.slices) for g in gpus)
    allocatable: dict[str, int] = {}
    used: dict[str, int] = {}
    for gpu, on in zip(gpus, flags, strict=True):
        for piece, h in zip(gpu.slices, on, strict=True):
            resource = mig.mig_resource_name(piece.profile)
            allocatable[resource] = allocatable.get(resource, 0) + 1
            used[resource] = used.get(resource, 0) + h
    return NodeGpuState(name, product, allocatable, used, mig_gpus=gpus, physical_gpus=len(gpus), held=flags)


def _layout(model: GpuModel, counts: Mapping[str, int]) -> tuple[MigSlice, ...]:
    placed = place_instances(model, counts)
    assert placed is not None, f"{counts} does not fit one {model.name}"
    return placed


def build_trace(pods: int, seed: int, *, lifetime: float = 900.0, llm_groups: int = 0) -> tuple[SimPod, ...]:
    rnd = random.Random(f"trace-{seed}")
    now = 0.0
    trace: list[SimPod] = []
    for index in range(pods):
        now += rnd.expovariate(1.0)
        kind = rnd.choices(("llm", "mig", "dev"), (40, 45, 15))[0]
        trace.append(SimPod(index, kind, _request(kind, rnd), now, rnd.expovariate(1.0 / lifetime)))
    if llm_groups:
        trace = _with_groups(trace, llm_groups, seed, lifetime=lifetime)
    return tuple(trace)


def _with_groups(trace: list[SimPod], groups: int, seed: int, *, lifetime: float) -> list[SimPod]:
    """The trace with `groups` multi-node groups mixed in by arrival time, every pod re-indexed in order."""
    rnd = random.Random(f"groups-{seed}")
    span = trace[-1].arrival if trace else 1.0
    request = gpu_request(admitted_pod({GPU: 8}, {PRODUCT: H100}, [NOT_SHARED]))
    extra = []
    for g in range(groups):
        start, size, life = rnd.uniform(0, span), rnd.choice(GROUP_SIZES), rnd.expovariate(1.0 / lifetime)
        extra += [SimPod(-1, "group", request, start + k * GROUP_GAP, life, f"group-{g}") for k in range(size)]
    merged = sorted([*trace, *extra], key=lambda p: p.arrival)
    return [SimPod(i, p.kind, p.request, p.arrival, p.lifetime, p.group) for i, p in enumerate(merged)]


def _request(kind: str, rnd: random.Random) -> GpuRequest:
    """The request of a pod shaped as gpuguard's webhook admits it, read through the same GPU-demand model the
    extender uses (so the simulator and the extender can never count a pod differently)."""
    if kind == "llm":
        count = rnd.choices((1, 2, 4, 8), (10, 8, 12, 10))[0]
        product = H100 if rnd.random() < 0.7 else A100
        return gpu_request(admitted_pod({GPU: count}, {PRODUCT: product}, [NOT_SHARED]))
    if kind == "mig":
        product, profile = rnd.choices(MIG_CHOICES, MIG_WEIGHTS)[0]  # one draw, as for the other kinds
        return gpu_request(admitted_pod({mig.mig_resource_name(profile): 1}, {PRODUCT: product}, []))
    shared_t4 = {"key": PRODUCT, "operator": "In", "values": [T4, T4_SHARED]}
    return gpu_request(admitted_pod({GPU: 1}, {SHARING: "time-slicing"}, [shared_t4]))


def admitted_pod(limits: dict[str, int], selector: dict[str, str], expressions: list[dict[str, Any]]) -> dict[str, Any]:
    """A predictor pod after admission: the GPU on kserve-container, the node selector and required affinity."""
    spec: dict[str, Any] = {
        "containers": [{"name": "kserve-container", "resources": {"limits": {k: str(v) for k, v in limits.items()}}},
                       {"name": "queue-proxy"}],
        "nodeSelector": selector,
    }
    if expressions:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}
    return {"apiVersion": "v1", "kind": "Pod", "spec": spec}


def offered_whole_load(cluster: SimCluster, trace: Sequence[SimPod]) -> float:
    """GPU-seconds the whole-GPU pods ask for over the trace, per GPU-second of the whole-GPU nodes (1.0: exactly
    full if packing were perfect and nothing waited; above 1 some pods cannot be placed whatever the scheduler)."""
    gpus = sum(s.allocatable.get(GPU, 0) for s in cluster.states if s.product in (H100, A100) and not s.mig_gpus)
    span = trace[-1].arrival if trace else 0.0
    asked = sum(p.gpus * p.lifetime for p in trace if p.kind == "llm")
    return asked / (gpus * span) if gpus and span else 0.0


MIG_PHASES = ((80, 15, 5), (10, 15, 75), (15, 75, 10), (45, 30, 25))
"""The mixed MIG trace's profile weights (smallest, middle, largest profile of each pool) in its four phases."""
MIG_SLOTS = {"1g": 1, "2g": 2, "3g": 4}
"""Memory slots of each profile size on the 8-slot H100 and B200 grids (the catalog's memorySlices)."""


def build_mig_trace(pods: int, seed: int, *, nodes: int, lifetime: float = 900.0, load: float = 1.0
                    ) -> tuple[SimPod, ...]:
    """A trace of MIG pods only whose profile mix drifts: four equal phases (`MIG_PHASES`), 60 % of the pods on the
    H100 pool and 40 % on B200 (their shares of the MIG nodes). Arrivals are paced so that the pods ask, on average
    over the phases, for `load` times the instances an all-1g layout of every MIG GPU would offer."""
    rnd = random.Random(f"mig-trace-{seed}")
    counts = node_counts(nodes)
    gpus = 8 * (counts["h100-mig"] + counts["b200-mig"])
    mean_slots = sum(sum(w * s for w, s in zip(p, MIG_SLOTS.values(), strict=True)) / sum(p) for p in MIG_PHASES)
    rate = load * gpus * 7 / (mean_slots / len(MIG_PHASES) * lifetime)
    now = 0.0
    trace: list[SimPod] = []
    for index in range(pods):
        now += rnd.expovariate(rate)
        weights = MIG_PHASES[min(index * len(MIG_PHASES) // pods, len(MIG_PHASES) - 1)]
        product = H100 if rnd.random() < MIG_SHARE[H100] else B200
        profile = rnd.choices(tuple(MIG_POOLS[product][2]), weights)[0]
        request = gpu_request(admitted_pod({mig.mig_resource_name(profile): 1}, {PRODUCT: product}, []))
        trace.append(SimPod(index, "mig", request, now, rnd.expovariate(1.0 / lifetime)))
    return tuple(trace)

"""From a Node object to its GPU state: allocatable, GFD labels and the node agent's inventory annotation.

Allocatable is the truth about what exists (GFD's labels once disagreed with resource names, domain.md 2.3); the
labels give the product, the MIG strategy and the physical GPU count; the annotation, when present and valid, gives
MIG placements (start, size, busy), GPU UUIDs and utilization. Without an annotation, MIG placements are synthesized
from allocatable counts with the catalog's start slots. Pure: a bad annotation becomes a `problem` to report, not an
exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpuguard.contracts.extender import node_name
from gpuguard.contracts.node_inventory import (
    ANNOTATION,
    GpuInventory,
    InvalidInventory,
    NodeInventory,
    parse_inventory,
)
from gpuguard.policy import mig
from gpuguard.policy.gpustate import (
    PRODUCT_LABEL,
    WHOLE_GPU,
    GpuSample,
    MigGpu,
    MigSlice,
    NodeGpuState,
    NodeUtilization,
    mig_gpu_sample,
    synthesize_layout,
)
from gpuguard.policy.podspec import is_gpu_resource, mapping
from gpuguard.policy.quantity import whole_number

STRATEGY_LABEL = "nvidia.com/mig.strategy"
COUNT_LABEL = "nvidia.com/gpu.count"


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What one Node object says about its GPUs; `state` has `used=None` (pods not yet applied)."""

    name: str
    version: str
    """metadata.resourceVersion ("" when absent): equal versions mean equal facts."""
    state: NodeGpuState
    problem: str = ""
    """Why the inventory annotation was ignored, if it was."""


def node_facts(node: dict[str, Any]) -> NodeFacts:
    metadata = mapping(node.get("metadata"))
    name = node_name(node)
    labels = mapping(metadata.get("labels"))
    inventory, problem = _inventory(mapping(metadata.get("annotations")).get(ANNOTATION))
    product = str(labels.get(PRODUCT_LABEL) or "")
    allocatable = _gpu_allocatable(mapping(mapping(node.get("status")).get("allocatable")))
    physical = whole_number(labels.get(COUNT_LABEL)) or 0
    state = NodeGpuState(
        name=name,
        product=product,
        allocatable=allocatable,
        used=None,
        mig_gpus=_mig_gpus(inventory, product, allocatable, physical),
        whole_gpus=tuple(g.uuid for g in inventory.gpus if not g.mig.enabled) if inventory else (),
        physical_gpus=physical,
        mig_single=labels.get(STRATEGY_LABEL) == "single",
        reported=_reported(inventory),
    )
    return NodeFacts(name, str(metadata.get("resourceVersion") or ""), state, problem)


def _inventory(text: object) -> tuple[NodeInventory | None, str]:
    if not isinstance(text, str):
        return None, ""
    try:
        return parse_inventory(text), ""
    except InvalidInventory as error:
        return None, str(error)


def _gpu_allocatable(allocatable: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, value in allocatable.items():
        count = whole_number(value) if is_gpu_resource(name) else None
        if count:
            counts[name] = count
    return counts


def _mig_gpus(
    inventory: NodeInventory | None, product: str, allocatable: dict[str, int], physical: int
) -> tuple[MigGpu, ...]:
    reported = tuple(_reported_mig_gpu(g) for g in inventory.gpus if g.mig.enabled) if inventory else ()
    if reported:
        return reported
    counts = {p: n for r, n in allocatable.items() if (p := mig.profile_from_resource(r))}
    model = mig.model_for_product(product)
    if not counts or model is None:
        return ()
    gpus = physical - allocatable.get(WHOLE_GPU, 0) if physical else 0
    return synthesize_layout(model, counts, gpus=max(gpus, 1))


def _reported_mig_gpu(gpu: GpuInventory) -> MigGpu:
    model = mig.model_for_product(gpu.product)
    slices = tuple(MigSlice(d.profile, d.start, d.size, d.busy) for d in gpu.mig.devices)
    return MigGpu(gpu.index, gpu.uuid, model.name if model else "", tuple(sorted(slices, key=lambda s: s.start)))


def _reported(inventory: NodeInventory | None) -> NodeUtilization | None:
    """Utilization the agent measured: per whole GPU, and per MIG GPU folded from its instances' engine activity
    (the same weighting as Prometheus' `DCGM_FI_PROF_GR_ENGINE_ACTIVE` samples get)."""
    if inventory is None:
        return None
    at = inventory.ts.timestamp()
    samples = [GpuSample(g.uuid, g.util_percent, at) for g in inventory.gpus
               if g.util_percent is not None and not g.mig.enabled]
    samples += [s for g in inventory.gpus if g.mig.enabled and (s := _reported_mig_sample(g, at)) is not None]
    return NodeUtilization(tuple(samples)) if samples else None


def _reported_mig_sample(gpu: GpuInventory, at: float) -> GpuSample | None:
    model = mig.model_for_product(gpu.product)
    instances = []
    for device in gpu.mig.devices:
        profile = model.profile(device.profile) if model is not None else None
        if device.util_percent is not None:
            instances.append((device.util_percent, profile.compute_slices if profile else 1))
    total = model.compute_slices if model is not None else 0
    return mig_gpu_sample(gpu.uuid, instances, compute_slices=total, at=at)

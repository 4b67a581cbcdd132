"""From a Node object to its GPU state: allocatable, GFD labels and the node agent's inventory annotation.

Allocatable is the truth about what exists (GFD's labels once disagreed with resource names); the
labels give the product, the MIG strategy and the physical GPU count; the annotation, when present and valid, gives
MIG placements (start, size, busy), GPU UUIDs and utilization. Every MIG fact goes through the GPU's own model in the
catalog in force (the policy's, `Policy.catalog`): reported placements that follow the model's geometry use it; those
of a model the catalog lacks, or that do not follow its start slots, are taken as reported (start and size per
device), never refused. Without an annotation, placements are synthesized from allocatable counts with the model's
start slots. The parsed annotation stays in the facts, so they can be rebuilt when the catalog changes
(`with_catalog`). Pure: a bad annotation becomes a `problem` to report, not an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.gpustate import (
    PRODUCT_LABEL,
    SHARING_LABEL,
    WHOLE_GPU,
    GpuSample,
    MigGpu,
    MigSlice,
    NodeGpuState,
    NodeUtilization,
    catalog_gpu,
    follows_catalog,
    observed_geometry,
    mig_gpu_sample,
    synthesize_layout,
)
from gpuguard.policy.podspec import mapping
from gpuguard.policy.quantity import whole_number
from gpuguard.policy.resources import is_gpu_resource

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
    inventory: NodeInventory | None = None
    """The valid annotation, if any: what the MIG layout is rebuilt from for another catalog."""


def node_facts(node: dict[str, Any], *, catalog: MigCatalog = mig.BUILTIN) -> NodeFacts:
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
        mig_gpus=_mig_gpus(inventory, product, allocatable, physical, catalog),
        whole_gpus=tuple(g.uuid for g in inventory.gpus if not g.mig.enabled) if inventory else (),
        physical_gpus=physical,
        mig_single=labels.get(STRATEGY_LABEL) == "single",
        reported=_reported(inventory, catalog),
        sharing=str(labels.get(SHARING_LABEL) or ""),
    )
    return NodeFacts(name, str(metadata.get("resourceVersion") or ""), state, problem, inventory)


def with_catalog(facts: NodeFacts, catalog: MigCatalog) -> NodeFacts:
    """The same node's facts with its MIG layout resolved through another catalog (a policy added a model)."""
    state = facts.state
    layout = _mig_gpus(facts.inventory, state.product, dict(state.allocatable), state.physical_gpus, catalog)
    reported = _reported(facts.inventory, catalog)
    return replace(facts, state=replace(state, mig_gpus=layout, held=None, reported=reported))


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
    inventory: NodeInventory | None, product: str, allocatable: dict[str, int], physical: int, catalog: MigCatalog
) -> tuple[MigGpu, ...]:
    reported = [g for g in inventory.gpus if g.mig.enabled] if inventory else []
    if reported:
        return _reported_layout(reported, catalog)
    counts = {p: n for r, n in allocatable.items() if (p := mig.profile_from_resource(r))}
    model = catalog.model_for_product(product)
    if not counts or model is None:
        return ()
    gpus = physical - allocatable.get(WHOLE_GPU, 0) if physical else 0
    return synthesize_layout(model, counts, gpus=max(gpus, 1))


def _reported_layout(gpus: Sequence[GpuInventory], catalog: MigCatalog) -> tuple[MigGpu, ...]:
    """Each GPU in its model's geometry where its placements follow it; otherwise as reported, with the placements
    of every such GPU of that product on this node as the geometry they share."""
    slices = [tuple(MigSlice(d.profile, d.start, d.size, d.busy) for d in g.mig.devices) for g in gpus]
    models = [catalog.model_for_product(g.product) for g in gpus]
    fits = [m is not None and follows_catalog(m, s) for m, s in zip(models, slices)]
    seen: dict[str, list[MigSlice]] = {}
    for gpu, pieces, fit in zip(gpus, slices, fits):
        if not fit:
            seen.setdefault(gpu.product, []).extend(pieces)
    geometries = {product: observed_geometry(pieces) for product, pieces in seen.items()}
    return tuple(
        catalog_gpu(model, gpu.index, gpu.uuid, pieces) if fit and model is not None
        else MigGpu(gpu.index, gpu.uuid, "", tuple(sorted(pieces, key=lambda s: s.start)), geometries[gpu.product])
        for gpu, pieces, model, fit in zip(gpus, slices, models, fits)
    )


def _reported(inventory: NodeInventory | None, catalog: MigCatalog) -> NodeUtilization | None:
    """Utilization the agent measured: per whole GPU, and per MIG GPU folded from its instances' engine activity
    (the same weighting as Prometheus' `DCGM_FI_PROF_GR_ENGINE_ACTIVE` samples get)."""
    if inventory is None:
        return None
    at = inventory.ts.timestamp()
    samples = [GpuSample(g.uuid, g.util_percent, at) for g in inventory.gpus
               if g.util_percent is not None and not g.mig.enabled]
    samples += [s for g in inventory.gpus if g.mig.enabled and (s := _reported_mig_sample(g, at, catalog)) is not None]
    return NodeUtilization(tuple(samples)) if samples else None


def _reported_mig_sample(gpu: GpuInventory, at: float, catalog: MigCatalog) -> GpuSample | None:
    model = catalog.model_for_product(gpu.product)
    instances = []
    for device in gpu.mig.devices:
        profile = model.profile(device.profile) if model is not None else None
        if device.util_percent is not None:
            instances.append((device.util_percent, profile.compute_slices if profile else 1))
    total = model.compute_slices if model is not None else 0
    return mig_gpu_sample(gpu.uuid, instances, compute_slices=total, at=at)

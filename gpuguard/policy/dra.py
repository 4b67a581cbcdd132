"""Dynamic Resource Allocation (`resource.k8s.io/v1`) as gpuguard reads it: NVIDIA's devices, claims, and shapes.

On a DRA cluster a node's GPUs are not in `status.allocatable`: the NVIDIA DRA driver publishes them as
ResourceSlices, pods ask for them through ResourceClaims, and kube-scheduler's DynamicResources plugin allocates
devices to claims. This module turns those objects into the vocabulary the rest of gpuguard already speaks, so one
model of fit and utilization serves both kinds of node:
- a node's devices (`node_devices`) become a `NodeGpuState` (`dra_state`): whole GPUs count as `nvidia.com/gpu`,
  MIG devices as `nvidia.com/mig-<profile>` placed on their parent GPU at the memory slices they occupy, and the
  devices that allocated claims hold are held;
- a pod's claims (`claim_resources`) become (resource, count) pairs in the same names.

Facts, and where they come from:
- NVIDIA/k8s-dra-driver-gpu `cmd/gpu-kubelet-plugin/deviceinfo.go`: driver `gpu.nvidia.com`; a whole GPU is a
  device `gpu-<minor>` with attributes `type: gpu`, `uuid`, `productName` (the NVML name, e.g. `NVIDIA H100 80GB
  HBM3`), `architecture`, ... and capacity `memory`; a MIG device `gpu-<minor>-mig-<giProfileId>-<start>-<size>` has
  `type: mig`, `uuid`, `parentUUID`, `profile` (`1g.10gb`), its parent's `productName` and `architecture`, capacities
  `memory`, `multiprocessors`, ... and `memorySlice<i>: 1` for each placement unit i it occupies.
- The driver's DeviceClasses `gpu.nvidia.com` and `mig.nvidia.com` select on that `type`; claims pin a profile
  with `device.attributes['gpu.nvidia.com'].profile == '1g.10gb'` (the driver's demo specs).
- Kubernetes `resource.k8s.io/v1` (the schemas kubernetes-validate ships for 1.34+): ResourceSlice `spec.driver`,
  `spec.pool {name, generation, resourceSliceCount}`, `spec.nodeName` (or a node selector / all nodes, for devices
  not local to one node), `spec.devices[] {name, attributes {<name>: {string|int|bool|version}}, capacity {<name>:
  {value}}}`; a claim's `spec.devices.requests[] {name, exactly {deviceClassName, selectors[].cel.expression,
  allocationMode, count} | firstAvailable}`; its `status.allocation.devices.results[] {request, driver, pool,
  device}`. Consumers use only a pool's newest generation.

Where a claim cannot be read for certain (`firstAvailable`, `allocationMode: All`, a MIG request without a profile,
a selector with `||`), its shape is unknown and the pod is judged as asking for nothing: neutral, never refused.
Pure: plain JSON in, frozen values out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from gpuguard.policy import mig
from gpuguard.policy.catalog import GpuModel, MigCatalog
from gpuguard.policy.gpustate import (
    WHOLE_GPU,
    GpuRequest,
    MigGpu,
    MigSlice,
    NodeGpuState,
    catalog_gpu,
    follows_catalog,
    gpu_request,
    place_instances,
)
from gpuguard.policy.model import Policy
from gpuguard.policy.podspec import JsonObject, mapping, sequence, spec_of
from gpuguard.policy.quantity import whole_number

DRIVER = "gpu.nvidia.com"
GPU_CLASS = "gpu.nvidia.com"
MIG_CLASS = "mig.nvidia.com"
MEMORY_SLICE = "memorySlice"
SHARING_STRATEGIES = ("TimeSlicing", "MPS")

DeviceKind = Literal["gpu", "mig", "other"]
DeviceKey = tuple[str, str]
"""(pool, device name): with the driver, what an allocation result names."""


@dataclass(frozen=True, slots=True)
class DraClasses:
    """The DeviceClasses that hand out NVIDIA whole GPUs and MIG devices (the driver's own names unless the admin
    made others)."""

    gpu: str = GPU_CLASS
    mig: str = MIG_CLASS


DEFAULT_CLASSES = DraClasses()


def policy_classes(policy: Policy) -> DraClasses:
    classes = policy.dra.device_classes
    return DraClasses(gpu=classes.gpu, mig=classes.mig)


# ---------------------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True, slots=True)
class DraDevice:
    """One device of the NVIDIA driver's ResourceSlices."""

    pool: str
    name: str
    kind: DeviceKind
    uuid: str = ""
    parent: str = ""
    """MIG: the UUID of the GPU it is carved from."""
    product: str = ""
    """`productName`: the NVML name (`NVIDIA H100 80GB HBM3`)."""
    profile: str = ""
    slots: tuple[int, ...] = ()
    """MIG: the placement units (`memorySlice<i>`) it occupies, ascending; empty when the driver does not say."""

    @property
    def key(self) -> DeviceKey:
        return (self.pool, self.name)


def _attribute(attributes: JsonObject, name: str) -> str:
    """A string attribute by its short name or its name qualified with the driver's domain."""
    entry = mapping(attributes.get(name) or attributes.get(f"{DRIVER}/{name}"))
    value = entry.get("string", entry.get("version"))
    return value if isinstance(value, str) else ""


def _slots(capacity: JsonObject) -> tuple[int, ...]:
    found = []
    for name in capacity:
        suffix = name.rpartition("/")[2]
        if suffix.startswith(MEMORY_SLICE) and suffix[len(MEMORY_SLICE):].isdigit():
            found.append(int(suffix[len(MEMORY_SLICE):]))
    return tuple(sorted(found))


def read_device(pool: str, body: JsonObject) -> DraDevice | None:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        return None
    attributes = mapping(body.get("attributes"))
    kind = _attribute(attributes, "type")
    return DraDevice(
        pool=pool,
        name=name,
        kind=kind if kind in ("gpu", "mig") else "other",  # type: ignore[arg-type]
        uuid=_attribute(attributes, "uuid"),
        parent=_attribute(attributes, "parentUUID"),
        product=_attribute(attributes, "productName"),
        profile=_attribute(attributes, "profile"),
        slots=_slots(mapping(body.get("capacity"))),
    )


@dataclass(frozen=True, slots=True)
class SliceFacts:
    """What one ResourceSlice of the driver says: its node, pool, generation and devices."""

    node: str
    pool: str
    generation: int
    devices: tuple[DraDevice, ...]


def slice_facts(obj: JsonObject) -> SliceFacts | None:
    """The slice's devices when the NVIDIA driver publishes them for one node; None for any other slice (another
    driver, or devices reachable from several nodes, which no node's GPUs include)."""
    spec = spec_of(obj)
    node, pool = spec.get("nodeName"), mapping(spec.get("pool"))
    if spec.get("driver") != DRIVER or not isinstance(node, str) or not node:
        return None
    pool_name = str(pool.get("name") or node)
    devices = (read_device(pool_name, mapping(d)) for d in sequence(spec.get("devices")))
    return SliceFacts(node, pool_name, whole_number(pool.get("generation")) or 0,
                      tuple(d for d in devices if d is not None))


def node_devices(slices: Iterable[SliceFacts]) -> dict[str, tuple[DraDevice, ...]]:
    """Each node's devices from its slices, each pool taken at its newest generation only (as kube-scheduler does)."""
    facts = list(slices)
    newest: dict[str, int] = {}
    for s in facts:
        newest[s.pool] = max(newest.get(s.pool, 0), s.generation)
    found: dict[str, list[DraDevice]] = {}
    for s in facts:
        if s.generation == newest[s.pool]:
            found.setdefault(s.node, []).extend(s.devices)
    return {node: tuple(devices) for node, devices in found.items()}


def allocated_devices(claim: JsonObject) -> tuple[DeviceKey, ...]:
    """The driver's devices an allocated claim holds (none while it is unallocated)."""
    allocation = mapping(mapping(claim.get("status")).get("allocation"))
    results = sequence(mapping(allocation.get("devices")).get("results"))
    return tuple(
        (str(r.get("pool")), str(r.get("device"))) for r in map(mapping, results) if r.get("driver") == DRIVER
    )


# ------------------------------------------------------------------------------------------------------- node state


@dataclass(frozen=True, slots=True)
class _Placed:
    device: DraDevice
    held: bool


def dra_state(
    base: NodeGpuState, devices: Iterable[DraDevice], held: frozenset[DeviceKey], *, catalog: MigCatalog = mig.BUILTIN
) -> NodeGpuState:
    """The node's GPUs as its slices publish them, with what allocated claims hold.

    A whole GPU and the MIG devices carved from it exclude each other (a driver may publish both): the GPU is free
    only while none of its MIG devices is held, and its MIG devices are held while the GPU is. Labels (product,
    sharing) and reported utilization stay the Node's; the product falls back to the devices' `productName`.
    """
    all_devices = [d for d in devices if d.kind != "other"]
    whole = [d for d in all_devices if d.kind == "gpu"]
    migs = [d for d in all_devices if d.kind == "mig" and d.profile]
    held_whole = {d.uuid for d in whole if d.key in held and d.uuid}
    held_parents = {d.parent for d in migs if d.key in held}
    free_whole = [d for d in whole if d.key not in held and d.uuid not in held_parents]
    allocatable: dict[str, int] = {WHOLE_GPU: len(whole)} if whole else {}
    used: dict[str, int] = {WHOLE_GPU: len(whole) - len(free_whole)} if whole else {}
    by_parent: dict[str, list[_Placed]] = {}
    for d in migs:
        resource = mig.mig_resource_name(d.profile)
        taken = d.key in held or d.parent in held_whole
        allocatable[resource] = allocatable.get(resource, 0) + 1
        used[resource] = used.get(resource, 0) + taken
        by_parent.setdefault(d.parent, []).append(_Placed(d, taken))
    product = base.product or next((mig.product_label_from_name(d.product) for d in all_devices if d.product), "")
    gpus = [_mig_gpu(i, parent, placed, catalog) for i, (parent, placed) in enumerate(sorted(by_parent.items()))]
    return NodeGpuState(
        name=base.name,
        product=product,
        allocatable=allocatable,
        used=used,
        mig_gpus=tuple(g for g, _ in gpus),
        whole_gpus=tuple(d.uuid for d in whole if d.uuid and d.uuid not in by_parent),
        physical_gpus=len({d.uuid for d in whole} | set(by_parent)),
        reported=base.reported,
        held=tuple(h for _, h in gpus),
        sharing=base.sharing,
        dra=True,
    )


def _mig_gpu(index: int, parent: str, placed: list[_Placed], catalog: MigCatalog) -> tuple[MigGpu, tuple[bool, ...]]:
    """One MIG-enabled GPU: its instances where their memory slices say, else where the catalog can place them."""
    product = mig.product_label_from_name(placed[0].device.product)
    model = catalog.model_for_product(product)
    if all(p.device.slots for p in placed):
        pieces = [(MigSlice(p.device.profile, p.device.slots[0], len(p.device.slots)), p.held) for p in placed]
    else:
        pieces = _synthesized_pieces(placed, model)
    pieces.sort(key=lambda item: (item[0].start, item[0].profile))
    slices = tuple(s for s, _ in pieces)
    held = tuple(h for _, h in pieces)
    if model is not None and follows_catalog(model, slices):
        return catalog_gpu(model, index, parent, slices), held
    return MigGpu(index, parent, "", slices), held


def _synthesized_pieces(placed: list[_Placed], model: GpuModel | None) -> list[tuple[MigSlice, bool]]:
    """Placements for devices that do not publish their memory slices: the catalog's, or one unit each in a row."""
    counts: dict[str, int] = {}
    for p in placed:
        counts[p.device.profile] = counts.get(p.device.profile, 0) + 1
    layout = place_instances(model, counts) if model is not None else None
    if layout is None:
        return [(MigSlice(p.device.profile, i, 1), p.held) for i, p in enumerate(placed)]
    waiting = {name: [p.held for p in placed if p.device.profile == name] for name in counts}
    return [(s, waiting[s.profile].pop()) for s in layout]


# ----------------------------------------------------------------------------------------------------------- claims


_TERM = re.compile(
    r"""^\(*\s*device\.attributes\[\s*(['"])(?P<domain>[^'"]+)\1\s*\]\.(?P<name>\w+)\s*==\s*(['"])(?P<value>[^'"]*)\4\s*\)*$"""
)
_DRIVER_TERM = re.compile(r"""^\(*\s*device\.driver\s*==\s*(['"])(?P<value>[^'"]*)\1\s*\)*$""")


def selector_terms(expressions: Iterable[str]) -> dict[str, str] | None:
    """The `attribute == 'value'` conditions ANDed in CEL selectors (the driver's own attributes), or None when an
    expression is not such a conjunction (`||`, `!`, functions): then nothing about it is certain."""
    found: dict[str, str] = {}
    for expression in expressions:
        if "||" in expression:
            return None
        for term in expression.split("&&"):
            text = term.strip()
            if (d := _DRIVER_TERM.match(text)) is not None:
                if d.group("value") != DRIVER:
                    return None
                continue
            m = _TERM.match(text)
            if m is None or m.group("domain") != DRIVER:
                continue  # another condition (capacity, version): narrows devices, does not change the shape
            found[m.group("name")] = m.group("value")
    return found


@dataclass(frozen=True, slots=True)
class ClaimShape:
    """The GPU part of a claim spec: (resource, count) pairs, or unknown."""

    resources: tuple[tuple[str, int], ...] = ()
    known: bool = True


def claim_shape(spec: JsonObject, classes: DraClasses = DEFAULT_CLASSES) -> ClaimShape:
    """What a ResourceClaim spec asks of NVIDIA's classes, in extended-resource names; other classes count nothing."""
    counts: dict[str, int] = {}
    for request in map(mapping, sequence(mapping(spec.get("devices")).get("requests"))):
        exactly = request.get("exactly")
        if exactly is None:
            if request.get("firstAvailable") is not None:
                return ClaimShape(known=False)  # one of several alternatives: which one is the scheduler's choice
            continue
        body = mapping(exactly)
        resource = _request_resource(body, classes)
        if resource is None:
            continue
        exact = body.get("allocationMode", "ExactCount") == "ExactCount"  # All: every matching device, count unknown
        count = whole_number(body.get("count", 1)) if exact else None
        if not resource or not count:
            return ClaimShape(known=False)
        counts[resource] = counts.get(resource, 0) + count
    return ClaimShape(tuple(sorted(counts.items())))


def _request_resource(exactly: JsonObject, classes: DraClasses) -> str | None:
    """`nvidia.com/gpu`, `nvidia.com/mig-<profile>`, "" for a NVIDIA request of unknown shape, None for another
    class."""
    name = exactly.get("deviceClassName")
    if name not in (classes.gpu, classes.mig):
        return None
    expressions = [str(mapping(mapping(s).get("cel")).get("expression", "")) for s in sequence(exactly.get("selectors"))]
    terms = selector_terms(expressions)
    if name == classes.gpu:
        return WHOLE_GPU if terms is not None and terms.get("type", "gpu") == "gpu" else ""
    profile = (terms or {}).get("profile")
    return mig.mig_resource_name(profile) if profile else ""


def claim_sharing(spec: JsonObject) -> str:
    """The NVIDIA driver's GPU sharing strategy a claim configures (`TimeSlicing`, `MPS`), "" when none.

    The driver reads it from an opaque config for `gpu.nvidia.com` whose parameters carry `sharing.strategy`
    (`GpuSharing` / `MigDeviceSharing`, NVIDIA/k8s-dra-driver-gpu api/nvidia.com/resource/v1beta1/sharing.go, whose
    strategies are TimeSlicing, MPS and Fabric; Fabric is not sharing a GPU between workloads).
    """
    for entry in map(mapping, sequence(mapping(spec.get("devices")).get("config"))):
        opaque = mapping(entry.get("opaque"))
        if opaque.get("driver") == DRIVER:
            strategy = mapping(mapping(opaque.get("parameters")).get("sharing")).get("strategy")
            if strategy in SHARING_STRATEGIES:
                return str(strategy)
    return ""


ClaimKey = tuple[str, str]
"""(namespace, name)."""


@dataclass(frozen=True, slots=True)
class ClaimBook:
    """Claim and template specs by (namespace, name), as the extender's cache knows them."""

    claims: Mapping[ClaimKey, JsonObject] = field(default_factory=dict)
    """ResourceClaim `spec`s."""
    templates: Mapping[ClaimKey, JsonObject] = field(default_factory=dict)
    """ResourceClaimTemplate `spec.spec`s (the claim spec each pod's claim is made from)."""
    classes: DraClasses = DEFAULT_CLASSES


EMPTY_BOOK = ClaimBook()


def pod_claim_specs(pod: JsonObject, book: ClaimBook) -> list[JsonObject | None]:
    """Each of the pod's `spec.resourceClaims` as a claim spec: the named claim, the claim made for the pod from its
    template (`status.resourceClaimStatuses`), else the template; None when the cache knows none of them."""
    metadata, spec = mapping(pod.get("metadata")), spec_of(pod)
    namespace = str(metadata.get("namespace") or "default")
    generated = {
        str(s.get("name")): str(s.get("resourceClaimName"))
        for s in map(mapping, sequence(mapping(pod.get("status")).get("resourceClaimStatuses")))
        if s.get("resourceClaimName")
    }
    found: list[JsonObject | None] = []
    for entry in map(mapping, sequence(spec.get("resourceClaims"))):
        claim, template = entry.get("resourceClaimName"), entry.get("resourceClaimTemplateName")
        made = generated.get(str(entry.get("name")))
        if isinstance(claim, str):
            found.append(book.claims.get((namespace, claim)))
        elif made is not None and (namespace, made) in book.claims:
            found.append(book.claims[(namespace, made)])
        else:
            found.append(book.templates.get((namespace, str(template))) if isinstance(template, str) else None)
    return found


def claim_resources(pod: JsonObject, book: ClaimBook) -> ClaimShape:
    """Every GPU the pod's claims ask for, summed; unknown when one of them cannot be read."""
    counts: dict[str, int] = {}
    for spec in pod_claim_specs(pod, book):
        shape = claim_shape(spec, book.classes) if spec is not None else ClaimShape(known=False)
        if not shape.known:
            return shape
        for resource, count in shape.resources:
            counts[resource] = counts.get(resource, 0) + count
    return ClaimShape(tuple(sorted(counts.items())))


def pod_request(pod: JsonObject, book: ClaimBook = EMPTY_BOOK) -> GpuRequest:
    """`gpu_request` with the pod's claims read through the cache: what the extender judges a pod by.

    A pod with `spec.resourceClaims` is a claim pod (never refused for capacity); what its claims ask of NVIDIA's
    classes joins its extended resources when every claim can be read, and is left out (neutral) otherwise.
    """
    request = gpu_request(pod)
    if not sequence(spec_of(pod).get("resourceClaims")):
        return request
    shape = claim_resources(pod, book)
    counts = dict(request.resources)
    for resource, count in shape.resources if shape.known else ():
        counts[resource] = counts.get(resource, 0) + count
    return replace(request, resources=tuple(sorted(counts.items())), claims=True)

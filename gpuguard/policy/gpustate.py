"""Per-node GPU state for scheduling: what a node offers, what its pods hold, and where its MIG slices sit.

Shared by the scheduler extender (which builds states from Node and Pod objects) and by anything that replays pod
arrivals and departures in memory (which builds and updates states directly). A `NodeGpuState` is immutable and
carries its own summary (free devices per resource, the best MIG slice per profile), computed once when the state is
made; `bind` and `release` return a new state for that one node, so placing or removing a pod is a cheap pure update
and scoring a node reads precomputed numbers.

Whole GPUs, time-sliced replicas and other vendors' GPUs are counted like kube-scheduler counts extended resources:
allocatable minus what the node's non-terminated pods request. MIG (the device plugin's `mixed` strategy) is modelled
as placements, not counts: each MIG-enabled GPU is a row of placement units (8 memory slots on A100/H100/B200, 4 on
an A30, 12 units on an RTX PRO 6000) and each GPU instance occupies `size` consecutive units from one of its profile's
allowed start slots. Every geometric fact comes from the GPU's own model in the catalog (`MigGeometry`, built by
`geometry_of`); a GPU the catalog does not describe keeps the placements its node agent reported (`observed_geometry`).
Which instance a new pod would take is decided by how many units stay free on that GPU and how large a MIG block could
still be carved from them, so slices go where they strand the least. Instances are fixed once the admin has
partitioned a GPU (the device plugin advertises only existing instances), so the model never invents new ones.

Pure: no I/O, no clock (callers pass `now`), no logging. Kubernetes object layout is read only for a pod's resource
requests and its GPU-product node selector; everything node-side arrives as plain values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache

from gpuguard.policy import mig
from gpuguard.policy.catalog import GpuModel, MigProfile
from gpuguard.policy.demand import pod_demand
from gpuguard.policy.podspec import JsonObject, mapping, sequence, spec_of

PRODUCT_LABEL = "nvidia.com/gpu.product"
SHARING_LABEL = "nvidia.com/gpu.sharing-strategy"
WHOLE_GPU = "nvidia.com/gpu"
PERCENT_STEP = 5.0
"""Utilization is compared in 5 % steps: the node agent rounds to 5 %, and smaller differences are noise."""

# --------------------------------------------------------------------------------------------------- the pod's request


@dataclass(frozen=True, slots=True)
class ProductTerm:
    """The `nvidia.com/gpu.product` part of one required node-affinity term (terms are ORed, as Kubernetes does)."""

    allowed: frozenset[str] | None = None
    """`In`: the product must be one of these; None when the term has no `In` on the key."""
    denied: frozenset[str] = frozenset()
    """`NotIn`."""
    exists: bool | None = None
    """`Exists` (True) or `DoesNotExist` (False)."""

    def admits(self, product: str) -> bool:
        if self.exists is not None and self.exists != bool(product):
            return False
        if self.allowed is not None and product not in self.allowed:
            return False
        return product not in self.denied


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """What one pod asks of a node's GPUs."""

    resources: tuple[tuple[str, int], ...] = ()
    """(resource name, count) for each GPU resource the pod requests, sorted by name; counts are positive."""
    product: str | None = None
    """The pod's `nvidia.com/gpu.product` node selector, if any."""
    product_terms: tuple[ProductTerm, ...] = ()
    """Required node-affinity terms, reduced to the product key; empty when affinity does not mention it."""
    problem: str = ""
    """Why the request cannot be judged (a GPU quantity that is not a whole number); empty when fine."""
    avoid_sharing: frozenset[str] = frozenset()
    """`nvidia.com/gpu.sharing-strategy` values the pod's required node affinity excludes in every term (whole-GPU
    pods exclude time-slicing and mps); a node without the label is never excluded, as with NotIn."""

    @property
    def wants_gpu(self) -> bool:
        return bool(self.resources)

    def count(self, resource: str) -> int:
        return next((n for name, n in self.resources if name == resource), 0)


def gpu_request(pod: JsonObject) -> GpuRequest:
    """The pod's effective GPU requests (its `GpuDemand`, counted as kube-scheduler counts them) and GPU-product and
    sharing constraints."""
    demand = pod_demand(pod)
    spec = spec_of(pod)
    return GpuRequest(
        resources=demand.resources,
        product=_selected_product(spec),
        product_terms=_product_terms(spec),
        problem="; ".join(demand.problems),
        avoid_sharing=_avoided_sharing(spec),
    )


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for name, n in more.items():
        into[name] = into.get(name, 0) + n


def _selected_product(spec: JsonObject) -> str | None:
    value = mapping(spec.get("nodeSelector")).get(PRODUCT_LABEL)
    return str(value) if value is not None else None


def _product_terms(spec: JsonObject) -> tuple[ProductTerm, ...]:
    affinity = mapping(mapping(spec.get("affinity")).get("nodeAffinity"))
    required = mapping(affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    terms = [_product_term(mapping(t)) for t in sequence(required.get("nodeSelectorTerms"))]
    if not terms or any(t is None for t in terms):
        return ()  # a term that does not constrain the product admits every product: so does the OR of them
    return tuple(t for t in terms if t is not None)


def _avoided_sharing(spec: JsonObject) -> frozenset[str]:
    """Sharing strategies every required node-affinity term excludes with NotIn (terms are ORed)."""
    affinity = mapping(mapping(spec.get("affinity")).get("nodeAffinity"))
    terms = sequence(mapping(affinity.get("requiredDuringSchedulingIgnoredDuringExecution")).get("nodeSelectorTerms"))
    avoided: frozenset[str] | None = None
    for term in map(mapping, terms):
        excluded = frozenset(
            str(v)
            for e in map(mapping, sequence(term.get("matchExpressions")))
            if e.get("key") == SHARING_LABEL and e.get("operator") == "NotIn"
            for v in sequence(e.get("values"))
        )
        avoided = excluded if avoided is None else avoided & excluded
    return avoided or frozenset()


def _product_term(term: JsonObject) -> ProductTerm | None:
    allowed: frozenset[str] | None = None
    denied: frozenset[str] = frozenset()
    exists: bool | None = None
    found = False
    for expression in map(mapping, sequence(term.get("matchExpressions"))):
        if expression.get("key") != PRODUCT_LABEL:
            continue
        found = True
        values = frozenset(str(v) for v in sequence(expression.get("values")))
        operator = expression.get("operator")
        if operator == "In":
            allowed = values if allowed is None else allowed & values
        elif operator == "NotIn":
            denied |= values
        elif operator in ("Exists", "DoesNotExist"):
            exists = operator == "Exists"
    return ProductTerm(allowed, denied, exists) if found else None


def sharing_refusal(request: GpuRequest, sharing: str) -> str | None:
    """Why a node with this `nvidia.com/gpu.sharing-strategy` cannot take the pod, or None."""
    if sharing and sharing in request.avoid_sharing:
        return f"node's GPUs are shared ({SHARING_LABEL}={sharing}); the pod needs GPUs of its own"
    return None


def product_refusal(request: GpuRequest, product: str) -> str | None:
    """Why a node with this `nvidia.com/gpu.product` label cannot take the pod, or None."""
    if request.product is not None and request.product != product:
        return f"pod selects {PRODUCT_LABEL}={request.product}, node has {product or 'no such label'}"
    if request.product_terms and not any(term.admits(product) for term in request.product_terms):
        return f"pod's node affinity excludes {PRODUCT_LABEL}={product or '(none)'}"
    return None


# ----------------------------------------------------------------------------------------------------------- MIG model


@dataclass(frozen=True, slots=True)
class MigSlice:
    """One GPU instance on a MIG-enabled GPU: `size` placement units from `start`."""

    profile: str
    start: int
    size: int
    busy: bool = False
    """The node agent saw a process on it; a hint for which instances pods hold."""

    @property
    def mask(self) -> int:
        return ((1 << self.size) - 1) << self.start


@dataclass(frozen=True, slots=True)
class MigGeometry:
    """Where instances may sit on one GPU: the width of its placement grid and every placement as a bit mask."""

    slots: int
    shapes: tuple[int, ...]
    """Each allowed (start, size) as a mask, largest size first."""

    def largest_block(self, held: int) -> int:
        """Units of the largest instance that still fits in the units not in `held` (0 if none)."""
        return next((mask.bit_count() for mask in self.shapes if mask & held == 0), 0)


@cache
def geometry_of(model: GpuModel) -> MigGeometry:
    """The model's placement grid and every placement its profiles allow (the catalog's start slots)."""
    shapes = {(p.size, start) for p in model.profiles for start in p.starts}
    return MigGeometry(model.placement_slots, _masks(shapes))


def observed_geometry(slices: Iterable[MigSlice]) -> MigGeometry:
    """For a GPU the catalog does not describe: its own instances are the only placements known, its grid ends
    where the last of them does. Enough to compare GPUs by what their instances leave free, never to invent one."""
    found = {(s.size, s.start) for s in slices}
    return MigGeometry(max((size + start for size, start in found), default=0), _masks(found))


def _masks(shapes: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(((1 << size) - 1) << start for size, start in sorted(shapes, reverse=True))


@dataclass(frozen=True, slots=True)
class MigGpu:
    """A MIG-enabled GPU, its instances, and the geometry they follow (observed from them when not given)."""

    index: int
    uuid: str = ""
    model: str = ""
    """Catalog model name (`H100-80GB`); "" when the catalog does not describe this GPU's layout."""
    slices: tuple[MigSlice, ...] = ()
    geometry: MigGeometry | None = None

    def __post_init__(self) -> None:
        if self.geometry is None:
            object.__setattr__(self, "geometry", observed_geometry(self.slices))

    @property
    def slots(self) -> int:
        assert self.geometry is not None
        return self.geometry.slots

    def largest_block(self, held: int) -> int:
        assert self.geometry is not None
        return self.geometry.largest_block(held)


def catalog_gpu(model: GpuModel, index: int, uuid: str, slices: Iterable[MigSlice]) -> MigGpu:
    """A GPU of a catalogued model: its instances sorted by start, its geometry the catalog's."""
    return MigGpu(index, uuid, model.name, tuple(sorted(slices, key=lambda s: s.start)), geometry_of(model))


def follows_catalog(model: GpuModel, slices: Iterable[MigSlice]) -> bool:
    """Every instance is a profile of the model, of its size, at one of its start slots (placement units agree)."""
    for piece in slices:
        profile = model.profile(piece.profile)
        if profile is None or piece.size != profile.size or piece.start not in profile.starts:
            return False
    return True


@dataclass(frozen=True, slots=True)
class SliceRef:
    """Where a pod's MIG slice sits: GPU position in `NodeGpuState.mig_gpus` and slice position on that GPU."""

    gpu: int
    slice: int


@dataclass(frozen=True, slots=True)
class MigChoice:
    """The free instance of a profile a new pod would take on this node, and what it leaves behind on its GPU."""

    ref: SliceRef
    slots_left: int
    """Placement units on that GPU not held by any pod afterwards."""
    block_left: int
    """Units of the largest MIG instance the GPU's geometry could still place in those free units."""


MAX_GPUS_PER_NODE = 16
"""No server board holds more GPUs (HGX carries 8, the largest chassis 16). Layout synthesis clamps larger claims (a
broken label or device plugin) to this, so its work stays bounded whatever a Node object says."""


def place_instances(model: GpuModel, counts: Mapping[str, int]) -> tuple[MigSlice, ...] | None:
    """A placement of exactly these instances on one GPU of `model` under its start slots, or None if none exists.

    Depth-first over start slots, largest profiles first: placement is not greedy (on an A100 the all-balanced layout
    fits only with its 3g instance at slot 4, not 0), but one GPU holds at most a handful of instances, so the search
    stays small. Instances of one profile are tried in ascending starts only, which prunes the permutations.
    """
    wanted = [p for p in _largest_first(model) for _ in range(max(0, counts.get(p.name, 0)))]
    if len(wanted) > model.placement_slots or any(counts.get(p.name, 0) > p.max_count for p in model.profiles):
        return None
    found = _search(wanted, 0, 0, -1)
    return None if found is None else tuple(sorted(found, key=lambda s: s.start))


def _largest_first(model: GpuModel) -> list[MigProfile]:
    return sorted(model.profiles, key=lambda p: (-p.size, p.name))


def _search(wanted: list[MigProfile], i: int, used: int, floor: int) -> list[MigSlice] | None:
    if i == len(wanted):
        return []
    profile = wanted[i]
    for start in profile.starts:
        piece = MigSlice(profile.name, start, profile.size)
        if piece.mask & used or start <= floor:
            continue
        same_next = i + 1 < len(wanted) and wanted[i + 1] is profile
        rest = _search(wanted, i + 1, used | piece.mask, start if same_next else -1)
        if rest is not None:
            return [piece, *rest]
    return None


def synthesize_layout(model: GpuModel, counts: Mapping[str, int], *, gpus: int) -> tuple[MigGpu, ...]:
    """A plausible placement of `counts` instances per profile on `gpus` GPUs of `model`, when no agent reports one.

    mig-parted applies one layout to every GPU of a node, so an even split that fits one GPU is tried first. Otherwise
    each GPU in turn takes as many instances as fit, largest profiles first (checked by `place_instances`). Instances
    that fit nowhere go on extra GPUs, so counts are never lost, up to what MAX_GPUS_PER_NODE GPUs could hold.
    """
    known = {p.name: min(max(0, counts.get(p.name, 0)), p.max_count * MAX_GPUS_PER_NODE) for p in model.profiles}
    return _synthesized(model, tuple(sorted((n, c) for n, c in known.items() if c)), min(max(gpus, 0), MAX_GPUS_PER_NODE))


@cache
def _synthesized(model: GpuModel, counts: tuple[tuple[str, int], ...], gpus: int) -> tuple[MigGpu, ...]:
    rows = _even_split(model, dict(counts), gpus) or _fill_in_turn(model, dict(counts))
    rows += [()] * (gpus - len(rows))
    return tuple(catalog_gpu(model, i, "", row) for i, row in enumerate(rows))


def _even_split(model: GpuModel, counts: dict[str, int], gpus: int) -> list[tuple[MigSlice, ...]] | None:
    if gpus < 1 or not counts or any(n % gpus for n in counts.values()):
        return None
    one = place_instances(model, {name: n // gpus for name, n in counts.items()})
    return None if one is None else [one] * gpus


def _fill_in_turn(model: GpuModel, remaining: dict[str, int]) -> list[tuple[MigSlice, ...]]:
    rows: list[tuple[MigSlice, ...]] = []
    while any(remaining.values()) and len(rows) < len(model.profiles) * MAX_GPUS_PER_NODE:
        chosen: dict[str, int] = {}
        row: tuple[MigSlice, ...] = ()
        for profile in _largest_first(model):
            while remaining.get(profile.name, 0) > chosen.get(profile.name, 0):
                trial = place_instances(model, {**chosen, profile.name: chosen.get(profile.name, 0) + 1})
                if trial is None:
                    break
                chosen[profile.name], row = chosen.get(profile.name, 0) + 1, trial
        if not row:
            break
        rows.append(row)
        for name, n in chosen.items():
            remaining[name] -= n
    return rows


# ---------------------------------------------------------------------------------------------------- utilization


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU's utilization: percent busy at unix time `at` (seconds)."""

    uuid: str
    percent: float
    at: float
    mig: bool = False
    """Measured on a MIG-enabled GPU (per-instance engine activity folded into the parent GPU)."""


def mig_gpu_sample(
    uuid: str, instances: Iterable[tuple[float, int]], *, compute_slices: int, at: float
) -> GpuSample | None:
    """A MIG-enabled GPU's utilization from its instances' engine activity (percent, compute slices each).

    Weighted by compute slices over the GPU's `compute_slices` (a 3g instance weighs three 1g ones; instances without
    a sample count as idle); the plain mean when the catalog does not know the GPU (`compute_slices` 0).
    None when no instance has a sample.
    """
    measured = list(instances)
    if not measured:
        return None
    if compute_slices:
        busy = sum(percent * slices for percent, slices in measured) / compute_slices
    else:
        busy = sum(percent for percent, _ in measured) / len(measured)
    return GpuSample(uuid, min(max(busy, 0.0), 100.0), at, mig=True)


@dataclass(frozen=True, slots=True)
class NodeUtilization:
    """A node's GPU utilization samples, with what scoring needs precomputed.

    `whole_means[k - 1]` is the mean of the k idlest non-MIG GPUs, so scoring a request for k GPUs is one lookup when
    every sample is fresh (the common case); `oldest`/`newest` decide freshness without touching each sample, and
    `whole_floor`/`mig_ceiling` let filter skip nodes that cannot be too busy.
    """

    samples: tuple[GpuSample, ...]
    whole: tuple[float, ...] = field(init=False)
    """Non-MIG percentages, ascending."""
    whole_means: tuple[float, ...] = field(init=False)
    whole_levels: tuple[float, ...] = field(init=False)
    """`whole_means` rounded to the PERCENT_STEP scoring compares them in."""
    whole_floor: float = field(init=False)
    """The idlest non-MIG GPU (inf when there is none)."""
    mig_ceiling: float = field(init=False)
    """The busiest MIG GPU (-inf when there is none)."""
    oldest: float = field(init=False)
    newest: float = field(init=False)
    by_uuid: Mapping[str, GpuSample] = field(init=False)

    def __post_init__(self) -> None:
        whole = sorted(s.percent for s in self.samples if not s.mig)
        means, total = [], 0.0
        for k, value in enumerate(whole, start=1):
            total += value
            means.append(total / k)
        times = [s.at for s in self.samples] or [0.0]
        object.__setattr__(self, "whole", tuple(whole))
        object.__setattr__(self, "whole_means", tuple(means))
        object.__setattr__(self, "whole_levels", tuple(PERCENT_STEP * round(m / PERCENT_STEP) for m in means))
        object.__setattr__(self, "whole_floor", whole[0] if whole else float("inf"))
        object.__setattr__(self, "mig_ceiling", max((s.percent for s in self.samples if s.mig), default=-float("inf")))
        object.__setattr__(self, "oldest", min(times))
        object.__setattr__(self, "newest", max(times))
        object.__setattr__(self, "by_uuid", {s.uuid: s for s in self.samples if s.uuid})

    def fresh(self, *, now: float, max_age: float) -> tuple[GpuSample, ...]:
        return tuple(s for s in self.samples if now - s.at <= max_age)


# ---------------------------------------------------------------------------------------------------- the node


@dataclass(frozen=True, slots=True)
class NodeGpuState:
    """One node's GPUs as the scheduler sees them, with its summary precomputed.

    `used` is what bound pods request per resource, or None when the node's pods are unknown (full-Node requests
    with no pod source): MIG instances then count as held when the agent reports them busy, and whole GPUs as free.
    """

    name: str
    product: str = ""
    """The node's `nvidia.com/gpu.product` label ("" if none)."""
    allocatable: Mapping[str, int] = field(default_factory=dict)
    """GPU resources from status.allocatable."""
    used: Mapping[str, int] | None = field(default_factory=dict)
    mig_gpus: tuple[MigGpu, ...] = ()
    whole_gpus: tuple[str, ...] = ()
    """UUIDs of the GPUs without MIG, when the node agent reports them."""
    physical_gpus: int = 0
    """Physical GPU count (GFD's `nvidia.com/gpu.count` under the mixed strategy), 0 when unknown."""
    mig_single: bool = False
    """MIG `single` strategy: `nvidia.com/gpu` counts MIG devices, so utilization comes from MIG GPUs."""
    reported: NodeUtilization | None = None
    """Utilization from the node agent's annotation, used when Prometheus has nothing fresh for this node."""
    held: tuple[tuple[bool, ...], ...] | None = None
    """Which MIG instances pods hold, per GPU and slice; None: derive from `used` and the agent's busy flags."""
    sharing: str = ""
    """The node's `nvidia.com/gpu.sharing-strategy` label (time-slicing, mps, none; "" if absent)."""
    free: Mapping[str, int] = field(init=False)
    mig_binpack: Mapping[str, MigChoice] = field(init=False)
    """Per profile: the free instance packing would take (fewest free slots left on its GPU, then largest block)."""
    mig_spread: Mapping[str, MigChoice] = field(init=False)
    """Per profile: the free instance spreading would take (most free slots left, then largest block)."""
    mig_free_uuids: Mapping[str, tuple[str, ...]] = field(init=False)
    """Per profile: UUIDs of the GPUs with a free instance of it (where a MIG pod could land)."""

    def __post_init__(self) -> None:
        held = self.held if self.held is not None else _derive_held(self)
        object.__setattr__(self, "held", held)
        object.__setattr__(self, "free", _free_counts(self, held))
        binpack, spread = _mig_choices(self.mig_gpus, held)
        object.__setattr__(self, "mig_binpack", binpack)
        object.__setattr__(self, "mig_spread", spread)
        object.__setattr__(self, "mig_free_uuids", _free_uuids(self.mig_gpus, held))

    def free_of(self, resource: str) -> int:
        return self.free.get(resource, 0)

    def mig_uuids_with_free(self, profile: str) -> tuple[str, ...]:
        """UUIDs of the GPUs that have a free instance of the profile (those a MIG pod could land on)."""
        return self.mig_free_uuids.get(profile, ())


def _free_uuids(gpus: tuple[MigGpu, ...], held: tuple[tuple[bool, ...], ...]) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for gpu, flags in zip(gpus, held):
        for profile in dict.fromkeys(s.profile for s, h in zip(gpu.slices, flags) if not h):
            if gpu.uuid:
                found.setdefault(profile, []).append(gpu.uuid)
    return {profile: tuple(uuids) for profile, uuids in found.items()}


def _free_counts(state: NodeGpuState, held: tuple[tuple[bool, ...], ...]) -> dict[str, int]:
    if state.used is not None:
        return {name: max(0, n - state.used.get(name, 0)) for name, n in state.allocatable.items()}
    free = dict(state.allocatable)
    unheld: dict[str, int] = {}
    layout: set[str] = set()
    for gpu, flags in zip(state.mig_gpus, held):
        for s, h in zip(gpu.slices, flags):
            layout.add(s.profile)
            if not h:
                unheld[s.profile] = unheld.get(s.profile, 0) + 1
    for profile in layout:
        resource = mig.mig_resource_name(profile)
        if resource in free:
            free[resource] = min(free[resource], unheld.get(profile, 0))
    return free


def _derive_held(state: NodeGpuState) -> tuple[tuple[bool, ...], ...]:
    """Which instances pods hold: busy ones first, then wherever packing would have put them."""
    held = [[False] * len(g.slices) for g in state.mig_gpus]
    if state.used is None:
        return tuple(tuple(s.busy for s in g.slices) for g in state.mig_gpus)
    profiles = sorted({s.profile for g in state.mig_gpus for s in g.slices}, key=_size_first(state.mig_gpus))
    for profile in profiles:
        for _ in range(state.used.get(mig.mig_resource_name(profile), 0)):
            ref = _pick_for_held(state.mig_gpus, held, profile)
            if ref is None:
                break
            held[ref.gpu][ref.slice] = True
    return tuple(tuple(h) for h in held)


def _size_first(gpus: tuple[MigGpu, ...]) -> Callable[[str], tuple[int, str]]:
    """Sort key: larger profiles first (they have the fewest places to go), then by name."""
    sizes = {s.profile: s.size for g in gpus for s in g.slices}
    return lambda profile: (-sizes[profile], profile)


def _pick_for_held(gpus: tuple[MigGpu, ...], held: list[list[bool]], profile: str) -> SliceRef | None:
    best: tuple[tuple[int, int, int], SliceRef] | None = None
    for g, gpu in enumerate(gpus):
        mask = sum(s.mask for s, h in zip(gpu.slices, held[g]) if h)
        for i, s in enumerate(gpu.slices):
            if s.profile != profile or held[g][i]:
                continue
            left = gpu.slots - (mask | s.mask).bit_count()
            key = (0 if s.busy else 1, left, -gpu.largest_block(mask | s.mask))
            if best is None or key < best[0]:
                best = (key, SliceRef(g, i))
    return best[1] if best else None


def _mig_choices(
    gpus: tuple[MigGpu, ...], held: tuple[tuple[bool, ...], ...]
) -> tuple[dict[str, MigChoice], dict[str, MigChoice]]:
    binpack: dict[str, tuple[tuple[int, int], MigChoice]] = {}
    spread: dict[str, tuple[tuple[int, int], MigChoice]] = {}
    for g, gpu in enumerate(gpus):
        mask = sum(s.mask for s, h in zip(gpu.slices, held[g]) if h)
        for i, s in enumerate(gpu.slices):
            if held[g][i]:
                continue
            after = mask | s.mask
            choice = MigChoice(SliceRef(g, i), gpu.slots - after.bit_count(), gpu.largest_block(after))
            _keep_min(binpack, s.profile, (choice.slots_left, -choice.block_left), choice)
            _keep_min(spread, s.profile, (-choice.slots_left, -choice.block_left), choice)
    return {p: c for p, (_, c) in binpack.items()}, {p: c for p, (_, c) in spread.items()}


def _keep_min(
    best: dict[str, tuple[tuple[int, int], MigChoice]], profile: str, key: tuple[int, int], choice: MigChoice
) -> None:
    if profile not in best or key < best[profile][0]:
        best[profile] = (key, choice)


# ------------------------------------------------------------------------------------------------ bind and release


@dataclass(frozen=True, slots=True)
class Binding:
    """The node after a pod was placed on it, and which MIG instances the pod took."""

    state: NodeGpuState
    slices: tuple[SliceRef, ...] = ()


def bind(state: NodeGpuState, request: GpuRequest, *, spread: bool = False) -> Binding:
    """Place the pod: add its requests to `used` and hold the MIG instances scoring assumed it would take."""
    used = dict(_known_used(state))
    _add(used, dict(request.resources))
    assert state.held is not None
    held = [list(h) for h in state.held]
    taken: list[SliceRef] = []
    for resource, count in request.resources:
        profile = mig.profile_from_resource(resource)
        for _ in range(count if profile else 0):
            choice = _choose(state.mig_gpus, held, profile or "", spread=spread)
            if choice is not None:
                held[choice.gpu][choice.slice] = True
                taken.append(choice)
    new = _replace(state, used=used, held=tuple(tuple(h) for h in held))
    return Binding(new, tuple(taken))


def release(state: NodeGpuState, request: GpuRequest, slices: Iterable[SliceRef] = ()) -> NodeGpuState:
    """Remove the pod: subtract its requests and free the MIG instances it held (given, else one held per profile)."""
    used = dict(_known_used(state))
    for resource, count in request.resources:
        used[resource] = max(0, used.get(resource, 0) - count)
    assert state.held is not None
    held = [list(h) for h in state.held]
    given = list(slices)
    for ref in given:
        held[ref.gpu][ref.slice] = False
    if not given:
        _free_some(state.mig_gpus, held, request)
    return _replace(state, used=used, held=tuple(tuple(h) for h in held))


def _known_used(state: NodeGpuState) -> Mapping[str, int]:
    if state.used is not None:
        return state.used
    return {name: n - state.free.get(name, 0) for name, n in state.allocatable.items()}


def _choose(gpus: tuple[MigGpu, ...], held: list[list[bool]], profile: str, *, spread: bool) -> SliceRef | None:
    choices = _mig_choices(gpus, tuple(tuple(h) for h in held))
    choice = (choices[1] if spread else choices[0]).get(profile)
    return choice.ref if choice else None


def _free_some(gpus: tuple[MigGpu, ...], held: list[list[bool]], request: GpuRequest) -> None:
    """Free held instances of each requested profile, from the GPU with the most free slots (re-forming blocks)."""
    for resource, count in request.resources:
        profile = mig.profile_from_resource(resource)
        for _ in range(count if profile else 0):
            refs = [
                (-(gpu.slots - sum(s.mask for s, h in zip(gpu.slices, held[g]) if h).bit_count()), g, i)
                for g, gpu in enumerate(gpus)
                for i, s in enumerate(gpu.slices)
                if s.profile == profile and held[g][i]
            ]
            if refs:
                _, g, i = min(refs)
                held[g][i] = False


def _replace(state: NodeGpuState, *, used: Mapping[str, int], held: tuple[tuple[bool, ...], ...]) -> NodeGpuState:
    return replace(state, used=used, held=held)


def with_used(state: NodeGpuState, used: Mapping[str, int] | None) -> NodeGpuState:
    """The same node with another set of pod requests (held MIG instances derived afresh)."""
    return replace(state, used=used, held=None)

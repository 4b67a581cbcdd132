"""What GPUs a pod gets, through every channel a container can reach one, counted once.

Every decision reads this one model: validation bounds and judges it, mutation never adds a GPU to a pod that already
gets one, the extender and the simulator take their request from it. The channels:

1. **Extended resources** of every GPU kind (`gpuguard.policy.resources`): whole GPUs, MIG instances, time-sliced or
   MPS replicas, other vendors' GPUs, and the custom types the admin (`gpuResourceTypes`) or the object
   (`serving.kserve.io/gpu-resource-types`) declares. A container's count is its request, else its limit. The pod's
   effective count per resource is kube-scheduler's and kubelet's: the larger of (every app container plus every
   native sidecar, i.e. an init container with `restartPolicy: Always`, which runs beside them since Kubernetes 1.28)
   and the peak of each regular init container plus the sidecars started before it. An explicit 0 is no GPU.
2. **DRA claims**: a container listing `resources.claims` gets whatever devices the pod's `spec.resourceClaims`
   allocate (resource.k8s.io/v1, GA in Kubernetes 1.34). Their count lives in the claim, not the pod.
3. **Other GPU schedulers**: KAI-Scheduler's fractions (pod annotations `gpu-fraction` or `gpu-memory` (MiB), times
   `gpu-fraction-num-devices`, KAI pkg/common/constants; queue label `kai.scheduler/queue`), HAMi's modifiers
   (`nvidia.com/gpumem`, `gpumem-percentage`, `gpucores`), and any pod whose `schedulerName` the policy lists.
4. **Device access without a request**: a privileged container sees every device node of the host; the NVIDIA
   container runtime hands GPUs to a container whose env sets `NVIDIA_VISIBLE_DEVICES` (to `all`, indices or UUIDs;
   by default even unprivileged, `accept-nvidia-visible-devices-envvar-when-unprivileged = true`), or that mounts
   anything under `/var/run/nvidia-container-devices/` (the device plugin's `volume-mounts` strategy, honoured with
   `accept-nvidia-visible-devices-as-volume-mounts`), and a CDI-enabled runtime injects the devices a pod annotation
   `cdi.k8s.io/<name>: nvidia.com/gpu=...` names. A value read from a ConfigMap or Secret cannot be seen here; an
   env var of that name with `valueFrom` counts as access.

Pure: plain JSON in, frozen values out, nothing logged.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from gpuguard.policy import mig
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.podspec import (
    ContainerRef,
    JsonObject,
    annotations_of,
    labels_of,
    mapping,
    sequence,
    spec_of,
)
from gpuguard.policy.quantity import whole_number
from gpuguard.policy.resources import (
    HAMI_MODIFIERS,
    KSERVE_GPU_TYPES_ANNOTATION,
    NVIDIA_KINDS,
    ResourceKind,
    declared_gpu_types,
    resource_kind,
)

VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
NO_DEVICES = frozenset({"", "none", "void"})
"""NVIDIA_VISIBLE_DEVICES values that give no GPU (`none`: driver libraries only)."""
DEVICE_SEGMENT = "nvidia-container-devices"
DEVICE_MOUNT_ROOTS = ("/var/run/" + DEVICE_SEGMENT, "/run/" + DEVICE_SEGMENT)
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
KAI_FRACTION = "gpu-fraction"
KAI_MEMORY = "gpu-memory"
KAI_DEVICES = "gpu-fraction-num-devices"
KAI_QUEUE_LABEL = "kai.scheduler/queue"
KAI_SCHEDULER = "kai-scheduler"
HAMI_SCHEDULER = "hami-scheduler"
DRA = "dra"

AccessKind = Literal["privileged", "visible"]


@dataclass(frozen=True, slots=True)
class DeviceAccess:
    """A container reaching GPUs without asking Kubernetes for them."""

    ref: ContainerRef
    kind: AccessKind
    """privileged: sees the host's device nodes; visible: the runtime hands it GPUs by env or mount."""
    how: str
    """`is privileged`, `sets NVIDIA_VISIBLE_DEVICES=all`, ..."""


@dataclass(frozen=True, slots=True)
class ContainerGpus:
    """The GPU side of one container."""

    ref: ContainerRef
    counts: Mapping[str, int]
    """Every GPU resource it names with a whole count (explicit zeros included): its request, else its limit."""
    unreadable: tuple[str, ...] = ()
    """GPU resources whose request or limit is not a non-negative whole number (validation says why); a readable
    request is still counted, as kube-scheduler would reserve it."""
    claims: tuple[str, ...] = ()
    access: tuple[DeviceAccess, ...] = ()

    @property
    def sidecar(self) -> bool:
        return self.ref.kind == "initContainers" and self.ref.body.get("restartPolicy") == "Always"

    @property
    def positive(self) -> dict[str, int]:
        return {name: n for name, n in self.counts.items() if n > 0}


@dataclass(frozen=True, slots=True)
class KaiShare:
    """A KAI-Scheduler fractional request: a fraction of each device's memory, or MiB of it, on `devices` GPUs."""

    fraction: Fraction | None
    memory_mib: int | None
    devices: int

    @property
    def gpus(self) -> Fraction:
        """GPU-equivalents: the fraction on each device, or a whole device per device when given in MiB."""
        return (self.fraction if self.fraction is not None else Fraction(1)) * self.devices


@dataclass(frozen=True, slots=True)
class GpuDemand:
    """Every GPU a pod gets, by channel."""

    containers: tuple[ContainerGpus, ...]
    resources: tuple[tuple[str, int], ...]
    """The pod's effective count per GPU resource (kube-scheduler's rule), positive only, sorted by name."""
    custom: frozenset[str] = frozenset()
    """The custom GPU types in force for this pod (policy plus the pod's KServe annotation)."""
    kai: KaiShare | None = None
    cdi: tuple[str, ...] = ()
    """Pod annotations through which a CDI-enabled runtime injects GPUs (`cdi.k8s.io/...: nvidia.com/gpu=...`)."""
    owner: str = ""
    """Who hands out this pod's GPUs when gpuguard must step aside: `dra`, `kai-scheduler`, `hami-scheduler` or a
    scheduler the policy lists; "" when gpuguard manages the pod."""
    problems: tuple[str, ...] = field(default=())
    """GPU quantities that could not be counted, as sentences (the extender answers these with an error)."""

    @property
    def claims(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for c in self.containers for name in c.claims))

    @property
    def access(self) -> tuple[DeviceAccess, ...]:
        return tuple(a for c in self.containers for a in c.access)

    @property
    def visible(self) -> bool:
        """Some container gets GPUs from the runtime without a request (env, mount or CDI annotation)."""
        return bool(self.cdi) or any(a.kind == "visible" for a in self.access)

    @property
    def gets_gpu(self) -> bool:
        """The pod gets some GPU through some channel: mutation must never give it another."""
        return bool(self.resources or self.claims or self.kai or self.visible)

    @property
    def kinds(self) -> frozenset[ResourceKind]:
        return frozenset(k for name, _ in self.resources if (k := resource_kind(name, self.custom)) is not None)

    @property
    def nvidia(self) -> bool:
        """Its GPUs are NVIDIA's (so NVIDIA placement applies): a NVIDIA resource, or the NVIDIA runtime's access."""
        return bool(self.kinds & NVIDIA_KINDS) or self.visible

    def count(self, resource: str) -> int:
        return next((n for name, n in self.resources if name == resource), 0)

    def gpus(self, *, product: str | None = None, catalog: MigCatalog = mig.BUILTIN) -> Fraction:
        """GPU-equivalents: whole GPUs, replicas and other devices count 1 each, a MIG instance its compute share of
        its GPU (on `product` when the pod pins one, else the largest share any catalogued model gives the profile),
        a KAI request its fraction times its devices."""
        total = sum((n * device_share(name, product=product, catalog=catalog) for name, n in self.resources),
                    Fraction(0))
        return total + (self.kai.gpus if self.kai else 0)


def device_share(resource: str, *, product: str | None = None, catalog: MigCatalog = mig.BUILTIN) -> Fraction:
    """How much of a GPU one device of this resource is: 1, or a MIG instance's compute slices over its GPU's."""
    profile = mig.profile_from_resource(resource)
    if profile is None or resource.endswith(".shared"):
        return Fraction(1)
    return mig_share(profile, product=product, catalog=catalog)


def mig_share(profile: str, *, product: str | None = None, catalog: MigCatalog = mig.BUILTIN) -> Fraction:
    model = catalog.model_for_product(product) if product else None
    found = model.profile(profile) if model else None
    if model is not None and found is not None:
        return Fraction(found.compute_slices, model.compute_slices)
    shares = [Fraction(p.compute_slices, m.compute_slices) for m in catalog.models_offering(profile)
              if (p := m.profile(profile)) is not None]
    if shares:
        return max(shares)
    compute = whole_number(profile.partition("g.")[0]) if "g." in profile else None
    return min(Fraction(compute, 7), Fraction(1)) if compute else Fraction(1)


# ------------------------------------------------------------------------------------------------------ reading a pod


def pod_demand(
    pod: JsonObject, *, custom: frozenset[str] = frozenset(), schedulers: frozenset[str] = frozenset()
) -> GpuDemand:
    """The pod's GPU demand. `custom`: the policy's extra GPU types; `schedulers`: GPU schedulers gpuguard leaves to.

    Containers with nothing GPU-related (most of them: queue-proxy, storage-initializer, agents) are read once,
    cheaply, and left out of the result; it runs on every admission request.
    """
    spec = spec_of(pod)
    annotations = annotations_of(pod)
    types = custom | declared_gpu_types(annotations.get(KSERVE_GPU_TYPES_ANNOTATION)) if annotations else custom
    found: list[ContainerGpus] = []
    hami = False
    for kind in ("initContainers", "containers"):
        for index, body in enumerate(sequence(spec.get(kind))):
            container, modified = _container(kind, index, mapping(body), types)
            hami = hami or modified
            if container is not None:
                found.append(container)
    containers = tuple(found)
    demand = GpuDemand(
        containers=containers,
        resources=effective_counts(containers),
        custom=types,
        kai=_kai_share(annotations),
        cdi=_cdi_annotations(annotations),
        problems=tuple(_unreadable_sentences(containers)),
    )
    owner = _owner(demand, spec, labels_of(pod), annotations, hami=hami, schedulers=schedulers)
    return demand if not owner else _with_owner(demand, owner)


def _with_owner(demand: GpuDemand, owner: str) -> GpuDemand:
    return GpuDemand(demand.containers, demand.resources, demand.custom, demand.kai, demand.cdi, owner, demand.problems)


def _container(kind: str, index: int, body: JsonObject, custom: frozenset[str]) -> tuple[ContainerGpus | None, bool]:
    """The container's GPU side (None when it has none) and whether it names a HAMi modifier."""
    resources = mapping(body.get("resources"))
    limits, requests = mapping(resources.get("limits")), mapping(resources.get("requests"))
    counts: dict[str, int] = {}
    unreadable: list[str] = []
    hami = False
    for name in (*limits, *requests):
        if "/" not in name or name in counts or name in unreadable:
            continue  # cpu, memory, ephemeral-storage, hugepages-*: never a GPU; or seen in limits already
        if resource_kind(name, custom) is None:
            hami = hami or name in HAMI_MODIFIERS
            continue
        count = whole_number(requests.get(name, limits.get(name)))  # what kube-scheduler reserves
        if count is not None:
            counts[name] = count
        if count is None or (name in limits and whole_number(limits[name]) is None):
            unreadable.append(name)
    listed = resources.get("claims")
    claims = tuple(n for c in sequence(listed) if isinstance(n := mapping(c).get("name"), str) and n) if listed else ()
    screened = _may_access(body)
    if not (counts or unreadable or claims or screened):
        return None, hami
    ref = ContainerRef(kind, index, body)
    return ContainerGpus(ref, counts, tuple(unreadable), claims, tuple(_access(ref)) if screened else ()), hami


def _may_access(body: JsonObject) -> bool:
    """A cheap screen for `_access`: privileged, or an env or mount that could name GPUs (plain loops: this runs
    for every container of every admitted pod)."""
    security = body.get("securityContext")
    if type(security) is dict and security.get("privileged") is True:
        return True
    env = body.get("env")
    if type(env) is list:
        for entry in env:
            if type(entry) is dict and entry.get("name") == VISIBLE_DEVICES_ENV:
                return True
    mounts = body.get("volumeMounts")
    if type(mounts) is list:
        for mount in mounts:
            if type(mount) is dict and DEVICE_SEGMENT in str(mount.get("mountPath", "")):
                return True
    return False


def effective_counts(containers: Iterable[ContainerGpus]) -> tuple[tuple[str, int], ...]:
    """Per resource, the larger of (app containers + sidecars) and each regular init container's peak plus the
    sidecars started before it: what kube-scheduler reserves and kubelet admits."""
    running: dict[str, int] = {}
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for c in containers:
        wanted = c.positive
        if c.ref.kind != "initContainers":
            _add(running, wanted)
        elif c.sidecar:
            _add(sidecars, wanted)
        else:
            for name, n in wanted.items():
                init_peak[name] = max(init_peak.get(name, 0), n + sidecars.get(name, 0))
    _add(running, sidecars)
    for name, n in init_peak.items():
        running[name] = max(running.get(name, 0), n)
    return tuple(sorted((k, v) for k, v in running.items() if v > 0))


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for name, n in more.items():
        into[name] = into.get(name, 0) + n


def _access(ref: ContainerRef) -> Iterator[DeviceAccess]:
    if ref.privileged:
        yield DeviceAccess(ref, "privileged", "is privileged")
    for entry in map(mapping, sequence(ref.body.get("env"))):
        if entry.get("name") != VISIBLE_DEVICES_ENV:
            continue
        value = entry.get("value")
        if entry.get("valueFrom") is not None:
            yield DeviceAccess(ref, "visible", f"sets {VISIBLE_DEVICES_ENV} from a reference (valueFrom)")
        elif str(value if value is not None else "").strip().lower() not in NO_DEVICES:
            yield DeviceAccess(ref, "visible", f"sets {VISIBLE_DEVICES_ENV}={_short(value)}")
    for mount in map(mapping, sequence(ref.body.get("volumeMounts"))):
        path = mount.get("mountPath")
        if isinstance(path, str) and _under_device_root(path):
            yield DeviceAccess(ref, "visible", f"mounts {_short(path)}")


def _under_device_root(path: str) -> bool:
    """Whether a mount destination lies under the runtime's device-request folder, once cleaned as containerd and
    CRI-O clean it (`//`, `.` and `..` resolved); `/run` is the same folder on images where /var/run links to it."""
    normal = "/" + posixpath.normpath(path).lstrip("/")
    return any(normal == root or normal.startswith(root + "/") for root in DEVICE_MOUNT_ROOTS)


def _short(value: object, limit: int = 48) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _cdi_annotations(annotations: JsonObject) -> tuple[str, ...]:
    return tuple(
        key for key, value in annotations.items()
        if key.startswith(CDI_ANNOTATION_PREFIX) and isinstance(value, str) and "nvidia.com/" in value
    )


def _kai_share(annotations: JsonObject) -> KaiShare | None:
    fraction_text, memory_text = annotations.get(KAI_FRACTION), annotations.get(KAI_MEMORY)
    if fraction_text is None and memory_text is None:
        return None
    devices = whole_number(annotations.get(KAI_DEVICES, 1)) or 1
    fraction = _fraction(fraction_text)
    memory = whole_number(memory_text) if memory_text is not None else None
    return KaiShare(fraction, memory, devices)


def _fraction(value: object) -> Fraction | None:
    """A KAI `gpu-fraction` in (0, 1]; anything else reads as a whole device (the larger, safer count)."""
    try:
        parsed = Fraction(str(value).strip()) if value is not None else None
    except (ValueError, ZeroDivisionError):
        return None
    return parsed if parsed is not None and 0 < parsed <= 1 else None


def _owner(
    demand: GpuDemand, spec: JsonObject, labels: JsonObject, annotations: JsonObject, *, hami: bool,
    schedulers: frozenset[str],
) -> str:
    scheduler = spec.get("schedulerName")
    if isinstance(scheduler, str) and scheduler in schedulers:
        return scheduler
    if demand.claims or sequence(spec.get("resourceClaims")):
        return DRA
    if demand.kai is not None or KAI_QUEUE_LABEL in labels:
        return KAI_SCHEDULER
    return HAMI_SCHEDULER if hami else ""


def _unreadable_sentences(containers: Iterable[ContainerGpus]) -> Iterator[str]:
    for c in containers:
        for name in c.unreadable:
            for kind, section in (("request", c.ref.requests), ("limit", c.ref.limits)):
                if name in section and whole_number(section[name]) is None:
                    yield f"{c.ref.where} {kind}s {_short(repr(section[name]))} {name}, not a whole number"

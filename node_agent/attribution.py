"""Which pod and container hold each GPU and MIG device, from the device ids the kubelet reports (pure).

The kubelet's PodResources API lists, per container, the device ids its device plugins allocated (read by
`node_agent.podresources`). This module matches those ids to the GPUs and MIG devices of a snapshot the way
dcgm-exporter does (NVIDIA/dcgm-exporter internal/pkg/transformation/kubernetes.go, `toDeviceToPod` and
`toDeviceToSharingPods`):
- the NVIDIA device plugin advertises a whole GPU by its UUID (`GPU-...`) and a MIG device by its MIG UUID
  (`MIG-...`); drivers before R470 named MIG devices `MIG-GPU-<GPU UUID>/<GPU instance>/<compute instance>`;
- a time-sliced replica is the device id with a `::<n>` suffix, several containers then sharing one device;
- GKE's device plugin names devices `nvidia<index>`, MIG devices `nvidia<index>/gi<GPU instance>`, and its shared
  replicas append `/vgpu<n>`.
Only resources named `nvidia.com/...` are considered (`nvidia.com/gpu`, `nvidia.com/mig-*`, and renamed shared
resources such as `nvidia.com/gpu.shared`, which dcgm-exporter maps only when configured to). A device shared by
several containers is held by each of them, with the replica number as dcgm-exporter's `vgpu` label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node_agent.backend import Snapshot

NVIDIA_PREFIX = "nvidia.com/"
REPLICA_SEPARATOR = "::"
_GKE = re.compile(r"^nvidia([0-9]+)(?:/gi([0-9]+))?(?:/vgpu([0-9]+))?$")
_LEGACY_MIG = re.compile(r"^MIG-(GPU-[^/]+)/([0-9]+)/([0-9]+)$")


@dataclass(frozen=True, slots=True)
class Allocation:
    """One device id that the kubelet assigned to one container."""

    pod: str
    namespace: str
    container: str
    resource: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Holder:
    """A container holding a device; `replica` is the time-sliced replica ("" for a device held alone)."""

    pod: str
    namespace: str
    container: str
    replica: str = ""

    def labels(self) -> dict[str, str]:
        """dcgm-exporter's attribute names (`pod`, `namespace`, `container`, and `vgpu` for a shared device)."""
        labels = {"pod": self.pod, "namespace": self.namespace, "container": self.container}
        if self.replica:
            labels["vgpu"] = self.replica
        return labels


Holders = Mapping[str, tuple[Holder, ...]]
"""GPU UUID or MIG UUID -> the containers holding it."""


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """What a device id names: a GPU by UUID or index, a MIG device by UUID, or a GPU instance of a GPU."""

    uuid: str = ""
    index: int | None = None
    gpu_instance: int | None = None
    replica: str = ""


def parse_device_id(device_id: str) -> DeviceRef:
    base, _, replica = device_id.partition(REPLICA_SEPARATOR)
    gke = _GKE.match(base)
    if gke:
        index, instance, vgpu = gke.groups()
        return DeviceRef(index=int(index), gpu_instance=int(instance) if instance else None,
                         replica=vgpu or replica)
    legacy = _LEGACY_MIG.match(base)
    if legacy:
        return DeviceRef(uuid=legacy.group(1), gpu_instance=int(legacy.group(2)), replica=replica)
    return DeviceRef(uuid=base, replica=replica)


def holders(allocations: Iterable[Allocation], snapshot: Snapshot) -> dict[str, tuple[Holder, ...]]:
    """Per GPU or MIG UUID of the snapshot, its holders in the order the kubelet listed them."""
    resolve = _Resolver(snapshot)
    found: dict[str, list[Holder]] = {}
    for allocation in allocations:
        if not allocation.resource.startswith(NVIDIA_PREFIX):
            continue
        ref = parse_device_id(allocation.device_id)
        target = resolve(ref)
        if target is None:
            continue
        holder = Holder(allocation.pod, allocation.namespace, allocation.container, ref.replica)
        known = found.setdefault(target, [])
        if holder not in known:
            known.append(holder)
    return {uuid: tuple(found_holders) for uuid, found_holders in found.items()}


class _Resolver:
    """Device reference -> the UUID under which the snapshot reports that device (None: not on this node)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._uuids = {g.uuid for g in snapshot.gpus} | {m.uuid for g in snapshot.gpus for m in g.mig_devices}
        self._by_index = {g.index: g.uuid for g in snapshot.gpus}
        self._instances = {(g.uuid, m.gpu_instance_id): m.uuid for g in snapshot.gpus for m in g.mig_devices}

    def __call__(self, ref: DeviceRef) -> str | None:
        uuid = ref.uuid if ref.index is None else self._by_index.get(ref.index, "")
        if ref.gpu_instance is not None:
            return self._instances.get((uuid, ref.gpu_instance))
        return uuid if uuid in self._uuids else None

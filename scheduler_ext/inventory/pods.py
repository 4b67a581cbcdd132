"""From a Pod object to the GPUs it holds on its node. Pure.

A pod holds its GPU requests from the moment it is bound (`spec.nodeName` set) until it terminates (phase Succeeded
or Failed) or is deleted, exactly as kube-scheduler counts it. Only pods with GPU requests are kept, as compact
`PodUsage` values, so a cluster's worth of pods costs little memory and little garbage-collector time. Each carries
the serving group it belongs to, so the extender can place a group's next pod next to the ones already bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpuguard.policy.gpustate import gpu_request
from gpuguard.policy.podspec import mapping, spec_of
from gpuguard.policy.workload import group_of

TERMINATED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class PodUsage:
    key: str
    """namespace/name."""
    node: str
    resources: tuple[tuple[str, int], ...]
    group: str = ""
    """The serving group the pod belongs to (`gpuguard.policy.workload.group_of`), "" when none."""


def pod_key(pod: dict[str, Any]) -> str:
    metadata = mapping(pod.get("metadata"))
    return f"{metadata.get('namespace') or 'default'}/{metadata.get('name') or ''}"


def pod_usage(pod: dict[str, Any]) -> PodUsage | None:
    """The GPUs the pod holds on its node, or None when it holds none (unbound, terminated, or no GPU request)."""
    node = spec_of(pod).get("nodeName")
    if not node or mapping(pod.get("status")).get("phase") in TERMINATED:
        return None
    resources = gpu_request(pod).resources
    return PodUsage(pod_key(pod), str(node), resources, group_of(pod)) if resources else None

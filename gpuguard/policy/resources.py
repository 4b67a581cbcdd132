"""The extended resources that mean "a GPU or part of one", and what kind of GPU each one is.

One table for every decision: validation counts these, mutation never adds a GPU to a pod that names one with a
positive count, the extender models them, the simulator requests them. The names come from the device plugins that
advertise them:
- NVIDIA k8s-device-plugin: `nvidia.com/gpu` (whole GPUs, or MIG devices under the `single` strategy),
  `nvidia.com/mig-<profile>` (the `mixed` strategy, `+` in a profile written `.`), and `<resource>.shared` for
  time-sliced or MPS replicas when `renameByDefault: true` (without it, replicas keep the plain name).
- AMD's k8s-device-plugin `amd.com/gpu`; Intel's device plugins `gpu.intel.com/i915` and `gpu.intel.com/xe` (and the
  `intel.com/gpu` KServe's validation names); Intel Gaudi `habana.ai/gaudi`. KServe's InferenceService validation
  accepts `nvidia.com/gpu`, `amd.com/gpu`, `intel.com/gpu`, `habana.ai/gaudi`, every `nvidia.com/mig*`, and the custom
  types listed cluster-wide (`customGPUResourceTypeList`) or per object (`serving.kserve.io/gpu-resource-types`).
- HAMi's modifiers (`nvidia.com/gpumem`, `nvidia.com/gpumem-percentage`, `nvidia.com/gpucores`, `nvidia.com/priority`)
  are not devices: they shape the `nvidia.com/gpu` request of a HAMi pod, so they mark the pod as HAMi's.
Pure data and pure lookups.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from gpuguard.policy.mig import MIG_RESOURCE_PREFIX

ResourceKind = Literal["whole", "mig", "shared", "vendor", "custom"]
"""whole: NVIDIA whole GPUs; mig: one MIG instance; shared: a time-sliced/MPS replica; vendor: another vendor's GPU;
custom: a type the admin or the object declares a GPU."""

WHOLE_GPU = "nvidia.com/gpu"
SHARED_SUFFIX = ".shared"
SHARED_GPU = WHOLE_GPU + SHARED_SUFFIX
OTHER_VENDOR_GPUS = frozenset(
    {"amd.com/gpu", "intel.com/gpu", "gpu.intel.com/i915", "gpu.intel.com/xe", "habana.ai/gaudi"}
)
HAMI_MODIFIERS = frozenset(
    {"nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores", "nvidia.com/priority"}
)
KSERVE_GPU_TYPES_ANNOTATION = "serving.kserve.io/gpu-resource-types"
NVIDIA_KINDS: frozenset[ResourceKind] = frozenset({"whole", "mig", "shared"})


def resource_kind(name: str, custom: frozenset[str] = frozenset()) -> ResourceKind | None:
    """The kind of GPU an extended resource is, or None when it is not a GPU at all."""
    if name == WHOLE_GPU:
        return "whole"
    if name.startswith(MIG_RESOURCE_PREFIX):
        return "shared" if name.endswith(SHARED_SUFFIX) else "mig"
    if name == SHARED_GPU:
        return "shared"
    if name in OTHER_VENDOR_GPUS:
        return "vendor"
    if name in custom:
        return "custom"
    return None


def is_gpu_resource(name: str) -> bool:
    """Every built-in GPU kind: the resources the extender models and every decision counts."""
    return resource_kind(name) is not None


def declared_gpu_types(annotation: object) -> frozenset[str]:
    """The custom GPU types of `serving.kserve.io/gpu-resource-types`: a JSON list, or (newer KServe) comma-separated.

    Anything else reads as none: the annotation can only add GPU kinds, so ignoring a broken one never hides a GPU
    that the built-in table or the policy's `gpuResourceTypes` already knows.
    """
    if not isinstance(annotation, str) or not annotation.strip():
        return frozenset()
    text = annotation.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return frozenset()
        return _names(parsed if isinstance(parsed, list) else [])
    return _names(text.split(","))


def _names(items: Iterable[object]) -> frozenset[str]:
    return frozenset(s.strip() for s in items if isinstance(s, str) and s.strip())

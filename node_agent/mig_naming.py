"""Name a MIG GPU instance the way the NVIDIA device plugin does (`1g.10gb`, `1g.24gb+gfx`), from NVML's numbers.

NVML does not hand out the profile name; the device plugin and GPU Feature Discovery (through go-nvlib,
pkg/nvlib/device/mig_profile.go) derive it from the instance's compute slices, its memory as a fraction of the GPU's
(rounded up to eighths, whatever the model's slice count), and the GPU's memory in whole GB. Doing the same here
makes the annotation's profile match the `nvidia.com/mig-<profile>` resource on the node for every model. The
catalog's profile names obey the same rule (its schema checks each against its memory share), so a name reported
here is the name the node's model has in the catalog; where a driver sizes instances differently, the extender
keeps the reported placements rather than the catalog's. The suffix comes from the NVML GPU-instance profile enum.
Pure: no NVML, no I/O.
"""

from __future__ import annotations

import math

MEMORY_FRACTION_DENOMINATOR = 8
"""go-nvlib rounds an instance's share of GPU memory up to eighths on every GPU (A30 and RTX PRO quarters are 2/8)."""

# NVML_GPU_INSTANCE_PROFILE_* enum values whose names carry an attribute (pynvml constants of the same names).
PROFILE_SUFFIXES: dict[int, str] = {
    0x7: "+me",  # _1_SLICE_REV1: with media extensions
    0x8: "+me",  # _2_SLICE_REV1
    0xA: "+gfx",  # _1_SLICE_GFX
    0xB: "+gfx",  # _2_SLICE_GFX
    0xC: "+gfx",  # _4_SLICE_GFX
    0xD: "-me",  # _1_SLICE_NO_ME
    0xE: "-me",  # _2_SLICE_NO_ME
    0xF: "+me.all",  # _1_SLICE_ALL_ME
    0x10: "+me.all",  # _2_SLICE_ALL_ME
    0x11: "+gfx",  # _3_SLICE_GFX
}


def memory_gb(instance_mib: int, gpu_mib: int) -> int:
    """The `<M>gb` of a profile: the instance's share of GPU memory, rounded up to eighths, times the GPU's GB."""
    fraction = math.ceil(instance_mib / gpu_mib * MEMORY_FRACTION_DENOMINATOR) / MEMORY_FRACTION_DENOMINATOR
    gpu_gb = math.ceil(gpu_mib / 1024)
    return math.floor(fraction * gpu_gb + 0.5)  # Go's math.Round: halves away from zero (H200: 70.5 -> 71)


def profile_name(*, slices: int, instance_mib: int, gpu_mib: int, profile_enum: int | None = None) -> str:
    """E.g. `profile_name(slices=1, instance_mib=9984, gpu_mib=81559)` == `1g.10gb` (an H100 80GB 1g instance)."""
    suffix = PROFILE_SUFFIXES.get(profile_enum, "") if profile_enum is not None else ""
    return f"{slices}g.{memory_gb(instance_mib, gpu_mib)}gb{suffix}"

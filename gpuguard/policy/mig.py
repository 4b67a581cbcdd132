"""The MIG profile catalog: which slices each MIG-capable GPU model offers, and where they may sit.

Keyed by the value GPU Feature Discovery writes to `nvidia.com/gpu.product` (with the `-SHARED` and `-MIG-<profile>`
suffixes GFD adds stripped), because that label is what both the webhook (through a pod's node selector) and the
extender (through the node) can see. Profile names differ per model (`1g.10gb` on H100-80GB, `1g.12gb` on H100 NVL,
`1g.18gb` on H200), so nothing here is a single global list.

A GPU instance occupies a contiguous, power-of-two-aligned run of memory slices starting at one of the profile's
allowed start slots; a fit check therefore has to model placements, not just count instances. The tables follow the
NVIDIA MIG user guide (reference/domain.md section 3). Pure data and pure lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU-instance profile, e.g. `3g.40gb`: 3 compute slices and 4 memory slices on an 80 GB part."""

    name: str
    compute_slices: int
    memory_slices: int
    """Also the placement size: the number of consecutive memory slots the instance occupies."""
    memory_gb: int
    max_count: int
    starts: tuple[int, ...]
    """Memory-slot indices where an instance of this profile may begin."""

    @property
    def resource_name(self) -> str:
        """The mixed-strategy extended resource: `+` becomes `.` as the NVIDIA device plugin writes it."""
        return mig_resource_name(self.name)

    @property
    def has_media_extensions(self) -> bool:
        return self.name.endswith("+me")


@dataclass(frozen=True, slots=True)
class GpuModel:
    """A MIG-capable GPU model and its profile table."""

    name: str
    products: tuple[str, ...]
    """`nvidia.com/gpu.product` values GFD writes for this model."""
    memory_gb: int
    compute_slices: int
    memory_slices: int
    profiles: tuple[MigProfile, ...]

    def profile(self, name: str) -> MigProfile | None:
        return next((p for p in self.profiles if p.name == name), None)

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)


def mig_resource_name(profile: str) -> str:
    return MIG_RESOURCE_PREFIX + profile.replace("+", ".")


def profile_from_resource(resource: str) -> str | None:
    """`nvidia.com/mig-1g.10gb.me` -> `1g.10gb+me`; None for anything that is not a MIG resource."""
    if not resource.startswith(MIG_RESOURCE_PREFIX):
        return None
    profile = resource[len(MIG_RESOURCE_PREFIX):]
    return profile[: -len(".me")] + "+me" if profile.endswith(".me") else profile


def _eight_slot_family(mem: tuple[int, int, int, int, int, int]) -> tuple[MigProfile, ...]:
    """The GA100/GH100 profile table (7 compute, 8 memory slices), given the memory size of each profile.

    `mem` is (1g, 1g-double-memory, 2g, 3g, 4g, 7g) in GB, as the profile names spell them.
    """
    g1, g1x2, g2, g3, g4, g7 = mem
    every_slot = (0, 1, 2, 3, 4, 5, 6)
    return (
        MigProfile(f"1g.{g1}gb", 1, 1, g1, 7, every_slot),
        MigProfile(f"1g.{g1}gb+me", 1, 1, g1, 1, every_slot),
        MigProfile(f"1g.{g1x2}gb", 1, 2, g1x2, 4, (0, 2, 4, 6)),
        MigProfile(f"2g.{g2}gb", 2, 2, g2, 3, (0, 2, 4)),
        MigProfile(f"3g.{g3}gb", 3, 4, g3, 2, (0, 4)),
        MigProfile(f"4g.{g4}gb", 4, 4, g4, 1, (0,)),
        MigProfile(f"7g.{g7}gb", 7, 8, g7, 1, (0,)),
    )


def _a30_family() -> tuple[MigProfile, ...]:
    """A30: 4 compute and 4 memory slices (placements on the 4-slot grid as the guide's geometry implies)."""
    return (
        MigProfile("1g.6gb", 1, 1, 6, 4, (0, 1, 2, 3)),
        MigProfile("1g.6gb+me", 1, 1, 6, 1, (0, 1, 2, 3)),
        MigProfile("2g.12gb", 2, 2, 12, 2, (0, 2)),
        MigProfile("2g.12gb+me", 2, 2, 12, 1, (0, 2)),
        MigProfile("4g.24gb", 4, 4, 24, 1, (0,)),
    )


CATALOG: tuple[GpuModel, ...] = (
    GpuModel(
        "A100-40GB",
        ("NVIDIA-A100-SXM4-40GB", "A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB", "A100-PCIE-40GB"),
        40, 7, 8, _eight_slot_family((5, 10, 10, 20, 20, 40)),
    ),
    GpuModel(
        "A100-80GB",
        ("NVIDIA-A100-SXM4-80GB", "A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe", "A100-80GB-PCIe"),
        80, 7, 8, _eight_slot_family((10, 20, 20, 40, 40, 80)),
    ),
    GpuModel(
        "H100-80GB",
        ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-SXM5-80GB", "NVIDIA-H800"),
        80, 7, 8, _eight_slot_family((10, 20, 20, 40, 40, 80)),
    ),
    GpuModel(
        "H100-NVL",
        ("NVIDIA-H100-NVL", "NVIDIA-H800-NVL"),
        94, 7, 8, _eight_slot_family((12, 24, 24, 47, 47, 94)),
    ),
    GpuModel(
        "H200-141GB",
        ("NVIDIA-H200", "NVIDIA-H200-NVL", "NVIDIA-H200-141GB-HBM3e"),
        141, 7, 8, _eight_slot_family((18, 35, 35, 71, 71, 141)),
    ),
    GpuModel("A30", ("NVIDIA-A30", "A30"), 24, 4, 4, _a30_family()),
)

_GFD_SUFFIX = re.compile(r"(-MIG-[A-Za-z0-9.+-]+)?(-SHARED)?$")


def base_product(label: str) -> str:
    """Strip the suffixes GFD appends under sharing (`-SHARED`) or the MIG single strategy (`-MIG-1g.10gb`)."""
    return _GFD_SUFFIX.sub("", label)


@cache
def _by_product() -> dict[str, GpuModel]:
    return {product: model for model in CATALOG for product in model.products}


def model_for_product(label: str) -> GpuModel | None:
    """The catalog entry for a `nvidia.com/gpu.product` label value, or None for GPUs without MIG."""
    return _by_product().get(base_product(label))


def model_named(name: str) -> GpuModel | None:
    return next((m for m in CATALOG if m.name == name), None)


def models_offering(profile: str) -> tuple[GpuModel, ...]:
    """Every catalogued model with a profile of this name (names repeat across models with different geometry)."""
    return tuple(m for m in CATALOG if m.profile(profile) is not None)


@cache
def all_profile_names() -> tuple[str, ...]:
    """Every profile any catalogued model offers, sorted and without duplicates."""
    return tuple(sorted({p.name for m in CATALOG for p in m.profiles}, key=_profile_sort_key))


def all_mig_resource_names() -> tuple[str, ...]:
    """Every `nvidia.com/mig-*` resource name: kube-scheduler's managedResources accepts no wildcards."""
    return tuple(mig_resource_name(p) for p in all_profile_names())


def is_known_profile(name: str) -> bool:
    return name in all_profile_names()


def product_label_from_name(nvml_name: str) -> str:
    """The label GFD derives from an NVML device name: drop characters outside [A-Za-z0-9-_. ], join words with `-`."""
    kept = re.sub(r"[^A-Za-z0-9\-_. ]", "", nvml_name)
    return "-".join(kept.split())


def _profile_sort_key(name: str) -> tuple[int, int, str]:
    compute, _, rest = name.partition("g.")
    memory = re.match(r"[0-9]+", rest)
    return (int(compute), int(memory.group()) if memory else 0, name)

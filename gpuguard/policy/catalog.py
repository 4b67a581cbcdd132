"""MIG catalog values: GPU models, their GPU-instance profiles, and a catalog that looks them up per model.

A `MigCatalog` answers the questions every component asks about MIG: which model a node's `nvidia.com/gpu.product`
label stands for, which profiles that model offers and where their instances may sit, which models offer a profile
of a given name. Names collide across models with different geometry (`1g.35gb` is a 1-slot profile on GB300 and a
2-slot one on H200), so every geometric question goes through a model, never through a list of names alone.

The values come from data (`gpuguard/policy/mig-catalog.yaml`, read by `gpuguard.policy.catalog_schema`) and may be
extended by the policy's `migCatalog` key (`MigCatalog.extended`). Resource naming follows the NVIDIA device plugin
and GPU Feature Discovery and needs no catalog. Pure values and lookups; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MIG_RESOURCE_PREFIX = "nvidia.com/mig-"

_PROFILE_BASE = re.compile(r"^([0-9]+)g\.([0-9]+)gb")
_GFD_SUFFIX = re.compile(r"(-MIG-[A-Za-z0-9.+-]+)?(-SHARED)?$")


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU-instance profile of one model, e.g. `3g.40gb` on an 80 GB H100: 3 compute and 4 memory slices."""

    name: str
    compute_slices: int
    memory_slices: int
    """The profile's share of the GPU's memory slices (the MIG user guide's "fraction of memory")."""
    memory_gb: int
    max_count: int
    starts: tuple[int, ...]
    """Placement units where an instance of this profile may begin (what NVML's placements report)."""
    size: int = 0
    """Placement units one instance occupies; 0 means `memory_slices` (true wherever units are memory slices)."""

    def __post_init__(self) -> None:
        if self.size == 0:
            object.__setattr__(self, "size", self.memory_slices)

    @property
    def resource_name(self) -> str:
        """The mixed-strategy extended resource: `+` becomes `.` as the NVIDIA device plugin writes it."""
        return mig_resource_name(self.name)

    @property
    def has_media_extensions(self) -> bool:
        return "+me" in self.name


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
    placement_slots: int = 0
    """Width of the placement grid in NVML's units; 0 means `memory_slices` (an RTX PRO 6000 reports 12 units)."""
    device_ids: tuple[str, ...] = ()
    """PCI device ids (`0x2330`), as the GPU Operator's mig-parted config keys its layouts."""

    def __post_init__(self) -> None:
        if self.placement_slots == 0:
            object.__setattr__(self, "placement_slots", self.memory_slices)

    def profile(self, name: str) -> MigProfile | None:
        return next((p for p in self.profiles if p.name == name), None)

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)


@dataclass(frozen=True)
class MigCatalog:
    """The models gpuguard knows, indexed by product label, name, PCI device id and profile name.

    Build one with `MigCatalog.of(models)`; `extended` gives the catalog a policy makes of it. Equal catalogs compare
    equal, so a reloaded policy with the same additions is recognised as no change.
    """

    models: tuple[GpuModel, ...]
    products: Mapping[str, GpuModel] = field(compare=False, repr=False)
    _by_name: Mapping[str, GpuModel] = field(init=False, compare=False, repr=False)
    _by_profile: Mapping[str, tuple[GpuModel, ...]] = field(init=False, compare=False, repr=False)
    _profile_names: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        offering: dict[str, list[GpuModel]] = {}
        for model in self.models:
            for profile in model.profiles:
                offering.setdefault(profile.name, []).append(model)
        object.__setattr__(self, "_by_name", {m.name: m for m in self.models})
        object.__setattr__(self, "_by_profile", {name: tuple(models) for name, models in offering.items()})
        object.__setattr__(self, "_profile_names", tuple(sorted(offering, key=profile_sort_key)))

    @classmethod
    def of(cls, models: Iterable[GpuModel]) -> MigCatalog:
        models = tuple(models)
        return cls(models, {product: m for m in reversed(models) for product in m.products})

    def extended(self, additions: Iterable[GpuModel]) -> MigCatalog:
        """This catalog with `additions`: one named like a known model replaces it, others are added; the products
        an addition lists are its own, whatever model claimed them before."""
        new = {m.name: m for m in additions}
        if not new:
            return self
        models = (*(new.get(m.name, m) for m in self.models), *(m for m in new.values() if m.name not in self._by_name))
        products = {p: m for p, m in self.products.items() if m.name not in new}
        products.update({p: m for m in new.values() for p in m.products})
        return MigCatalog(models, products)

    def model_for_product(self, label: str) -> GpuModel | None:
        """The model a `nvidia.com/gpu.product` label stands for (GFD's suffixes ignored); None for GPUs without MIG."""
        return self.products.get(base_product(label))

    def model_named(self, name: str) -> GpuModel | None:
        return self._by_name.get(name)

    def model_for_device_id(self, device_id: str) -> GpuModel | None:
        wanted = device_id.lower()
        return next((m for m in self.models if wanted in (d.lower() for d in m.device_ids)), None)

    def models_offering(self, profile: str) -> tuple[GpuModel, ...]:
        """Every model that offers a profile of this name (each with its own geometry)."""
        return self._by_profile.get(profile, ())

    def knows(self, profile: str) -> bool:
        return profile in self._by_profile

    @property
    def profile_names(self) -> tuple[str, ...]:
        """Every profile name some model offers, sorted by size and without duplicates."""
        return self._profile_names

    @property
    def resource_names(self) -> tuple[str, ...]:
        """Every `nvidia.com/mig-*` resource name: kube-scheduler's managedResources accepts no wildcards."""
        return tuple(mig_resource_name(p) for p in self._profile_names)


def mig_resource_name(profile: str) -> str:
    """`1g.10gb+me` -> `nvidia.com/mig-1g.10gb.me`, `1g.24gb+me.all` -> `...mig-1g.24gb.me.all`; `-me` stays as is."""
    return MIG_RESOURCE_PREFIX + profile.replace("+", ".")


def profile_from_resource(resource: str) -> str | None:
    """The inverse of `mig_resource_name`; None for anything that is not a MIG resource.

    The device plugin only ever turns `+` into `.`, and nothing follows `<G>g.<M>gb` but an attribute suffix, so a
    `.` there was a `+` (`.me` -> `+me`, `.me.all` -> `+me.all`, `.gfx` -> `+gfx`) and `-me` is kept.
    """
    if not resource.startswith(MIG_RESOURCE_PREFIX):
        return None
    profile = resource[len(MIG_RESOURCE_PREFIX):]
    base = _PROFILE_BASE.match(profile)
    if base is None:
        return profile
    rest = profile[base.end():]
    return base.group() + ("+" + rest[1:] if rest.startswith(".") else rest)


def profile_size_gb(profile: str) -> tuple[int, int] | None:
    """(compute slices, memory GB) as a profile name spells them: `3g.40gb+me` -> (3, 40); None if not of that form."""
    base = _PROFILE_BASE.match(profile)
    return (int(base.group(1)), int(base.group(2))) if base else None


def base_product(label: str) -> str:
    """Strip the suffixes GFD appends under sharing (`-SHARED`) or the MIG single strategy (`-MIG-1g.10gb`)."""
    return _GFD_SUFFIX.sub("", label)


def product_label_from_name(nvml_name: str) -> str:
    """The label GFD derives from an NVML device name: drop characters outside [A-Za-z0-9-_. ], join words with `-`."""
    kept = re.sub(r"[^A-Za-z0-9\-_. ]", "", nvml_name)
    return "-".join(kept.split())


def profile_sort_key(name: str) -> tuple[int, int, str]:
    size = profile_size_gb(name)
    return (size[0], size[1], name) if size else (0, 0, name)

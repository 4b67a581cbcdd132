"""The schema of MIG catalog entries: the shipped `mig-catalog.yaml` and the policy's `migCatalog` key alike.

One entry per GPU model, camelCase keys, unknown keys refused. A profile gives only what its name cannot: its share of
the memory slices, its most instances, and its allowed start slots; compute slices and GB come from the name
(`3g.40gb` is 3 compute slices and 40 GB). Every entry is checked against the rules MIG geometry obeys, so a typo in a
table is an error with the exact field named, not a wrong placement at scheduling time:

- a profile fits the model (compute slices, memory slices) and its GB is its memory share of the model's GB, rounded
  as go-nvlib names profiles (Go's math.Round: 22.5 GB on a 180 GB B200 is `23gb`);
- an instance occupies `memorySlices x placementSlots / memorySlices(model)` placement units, every start is a
  multiple of that size and the instance ends inside the grid, starts are distinct and ascending, and `maxCount`
  instances fit in the grid;
- names and product labels are unique, and labels are already in the form GFD writes them.

Pure: parsing YAML is the caller's.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from gpuguard.policy.catalog import GpuModel, MigProfile, product_label_from_name, profile_size_gb

ProfileName = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*g\.[0-9]+gb([+-][a-z][a-z0-9]*(\.[a-z0-9]+)*)?$")]
"""`<G>g.<M>gb` with at most one attribute suffix, as go-nvlib spells them: `+me`, `+me.all`, `+gfx`, `-me`."""
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=63)]
DeviceId = Annotated[str, StringConstraints(pattern=r"^0x[0-9A-Fa-f]{4}$")]
Slices = Annotated[int, Field(ge=1, le=64)]


class CatalogModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True
    )


class ProfileSpec(CatalogModel):
    """One GPU-instance profile: `{name: 1g.10gb, memorySlices: 1, maxCount: 7, starts: [0, 1, 2, 3, 4, 5, 6]}`."""

    name: ProfileName
    """`<compute slices>g.<memory GB>gb`, with a suffix such as `+me` for variants (media extensions)."""
    memory_slices: Slices
    """Memory slices the instance takes (the MIG user guide's fraction of memory, times the model's slices)."""
    max_count: Slices
    """Most instances of this profile on one GPU."""
    starts: tuple[Annotated[int, Field(ge=0)], ...] = Field(min_length=1)
    """Placement units where an instance may begin (`nvidia-smi mig -lgipp`)."""


class ModelSpec(CatalogModel):
    """One MIG-capable GPU model and its profile table."""

    name: ModelName
    """The model's name in messages (`A100-80GB`); an entry with a shipped model's name replaces it."""
    products: tuple[str, ...] = Field(min_length=1)
    """The `nvidia.com/gpu.product` labels GFD writes for this model (its NVML names, sanitised)."""
    device_ids: tuple[DeviceId, ...] = ()
    """PCI device ids, as the GPU Operator's mig-parted config keys its layouts (`0x2330`)."""
    memory_gb: Annotated[int, Field(ge=1, le=4096)]
    """GB of the whole-GPU profile (`7g.80gb` -> 80); every profile's GB is its share of this."""
    compute_slices: Slices
    """Compute slices of the whole GPU (7 on A100 and H100)."""
    memory_slices: Slices
    """Memory slices of the whole GPU (8 on A100 and H100)."""
    placement_slots: Slices | None = None
    """Width of NVML's placement grid when it is not `memorySlices` (RTX PRO 6000: 12 units for 4 slices)."""
    source: str = ""
    """Where the table comes from (the shipped catalog names a source for every model)."""
    unconfirmed: str = ""
    """Facts of this entry no upstream source confirms, and how they were derived."""
    profiles: tuple[ProfileSpec, ...] = Field(min_length=1)
    """Every GPU-instance profile the model offers."""

    @model_validator(mode="after")
    def _geometry(self) -> ModelSpec:
        problems = [p for label in self.products if (p := _label_problem(label))]
        seen: set[str] = set()
        for index, profile in enumerate(self.profiles):
            if profile.name in seen:
                problems.append(f"profiles[{index}]: {profile.name} is listed twice")
            seen.add(profile.name)
            problems += [f"profiles[{index}] ({profile.name}): {p}" for p in self._profile_problems(profile)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def grid(self) -> int:
        return self.placement_slots or self.memory_slices

    def _profile_problems(self, profile: ProfileSpec) -> list[str]:
        compute, gb = profile_size_gb(profile.name) or (0, 0)
        problems: list[str] = []
        if compute > self.compute_slices:
            problems.append(f"{compute} compute slices, the GPU has {self.compute_slices}")
        if profile.memory_slices > self.memory_slices:
            problems.append(f"memorySlices {profile.memory_slices}, the GPU has {self.memory_slices}")
            return problems
        expected = _round_half_away(profile.memory_slices * self.memory_gb / self.memory_slices)
        if gb != expected:
            problems.append(
                f"{profile.memory_slices}/{self.memory_slices} of {self.memory_gb} GB is {expected} GB, not {gb}: "
                "fix memorySlices or the name"
            )
        units = profile.memory_slices * self.grid
        if units % self.memory_slices:
            return [*problems, f"{profile.memory_slices} memory slices are no whole number of the {self.grid} units"]
        return problems + _placement_problems(profile, units // self.memory_slices, self.grid)

    def to_model(self) -> GpuModel:
        return GpuModel(
            name=self.name,
            products=self.products,
            memory_gb=self.memory_gb,
            compute_slices=self.compute_slices,
            memory_slices=self.memory_slices,
            profiles=tuple(self._profile(p) for p in self.profiles),
            placement_slots=self.grid,
            device_ids=self.device_ids,
        )

    def _profile(self, spec: ProfileSpec) -> MigProfile:
        compute, gb = profile_size_gb(spec.name) or (0, 0)
        size = spec.memory_slices * self.grid // self.memory_slices
        return MigProfile(spec.name, compute, spec.memory_slices, gb, spec.max_count, spec.starts, size)


class CatalogSpec(CatalogModel):
    """A list of model entries: the policy's `migCatalog`, and the body of the shipped file."""

    models: tuple[ModelSpec, ...] = ()
    """GPU models, each with its profile table."""

    @model_validator(mode="after")
    def _unique(self) -> CatalogSpec:
        problems = _duplicates("model name", [m.name for m in self.models])
        problems += _duplicates("product label", [p for m in self.models for p in m.products])
        problems += _duplicates("PCI device id", [d.lower() for m in self.models for d in m.device_ids])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_models(self) -> tuple[GpuModel, ...]:
        return tuple(m.to_model() for m in self.models)


class CatalogDocument(CatalogSpec):
    """The shipped `mig-catalog.yaml`: a version, the sources its tables cite, and the models."""

    version: Literal[1]
    sources: dict[str, str] = Field(default_factory=dict)
    """Short name -> the document or file (repository, path, commit) a table was read from."""
    shared_starts: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    """Start-slot lists several tables share (the file refers to them as YAML aliases)."""


def _label_problem(label: str) -> str:
    if product_label_from_name(label) != label:
        return f"product {label!r} is not a label GFD writes; GFD would write {product_label_from_name(label)!r}"
    return ""


def _placement_problems(profile: ProfileSpec, size: int, grid: int) -> list[str]:
    problems = []
    if list(profile.starts) != sorted(set(profile.starts)):
        problems.append(f"starts {list(profile.starts)} must be distinct and ascending")
    for start in profile.starts:
        if start % size or start + size > grid:
            problems.append(f"an instance of {size} units cannot start at {start} on a grid of {grid}")
    if profile.max_count * size > grid or profile.max_count > len(profile.starts):
        problems.append(f"maxCount {profile.max_count} instances of {size} units do not fit its starts on {grid}")
    return problems


def _duplicates(what: str, values: list[str]) -> list[str]:
    return [f"{what} {v!r} is listed more than once" for v, n in sorted(Counter(values).items()) if n > 1]


def _round_half_away(value: float) -> int:
    """Go's math.Round for positive numbers (go-nvlib names profiles with it): 70.5 -> 71."""
    return math.floor(value + 0.5)


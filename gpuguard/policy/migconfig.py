"""The MIG manager's named layouts (`nvidia.com/mig.config` values) and what each one makes of a GPU.

NVIDIA's MIG manager reads a mig-parted configuration: names such as `all-1g.10gb` or `all-balanced`, each a list of
entries `{deviceFilter, devices, migDevices}`; a GPU gets the first entry whose filter names its PCI device id (or
that has no filter) and whose `devices` is `all` or lists the GPU's index. The GPU Operator's default configuration ships as data (`gpuguard/policy/mig-parted-config.yaml`, its
source named there); an admin adds or replaces names with the policy's `dynamicMig.migConfigs` (same schema), as
they would in the ConfigMap the MIG manager is given.

`gpu_layouts(name, model, gpus)` answers what the MIG manager would make of a node's GPUs of a catalogued model under
that name: the instances per profile of each GPU, or None when the name does not apply (a GPU no entry selects, a
profile the model lacks, or counts that do not fit its placement grid, where mig-parted would fail). Pure values; the shipped
file is read and checked once, at import, like the MIG catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from gpuguard.policy.catalog import GpuModel
from gpuguard.policy.gpustate import MigSlice, place_instances

CONFIG_FILE = "mig-parted-config.yaml"
ConfigName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", max_length=63)]
"""A label value (`nvidia.com/mig.config` holds it)."""
Layout = Mapping[str, int]
"""Instances per profile on one GPU: `{"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}`."""


class ConfigEntry(BaseModel):
    """One entry of a mig-parted layout: the GPUs it is for, and their instances."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)

    device_filter: tuple[str, ...] = ()
    """mig-parted's `device-filter`: `0x233010DE` (device id, then vendor id); empty: every GPU."""
    devices: Literal["all"] | tuple[Annotated[int, Field(ge=0, le=15)], ...] = "all"
    """mig-parted's `devices`: `all`, or the indices of the GPUs the entry is for."""
    mig_devices: dict[str, Annotated[int, Field(ge=1, le=16)]] = Field(min_length=1)
    """mig-parted's `mig-devices`: instances per profile on each GPU the entry applies to."""

    @field_validator("device_filter", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    def applies_to(self, model: GpuModel, index: int) -> bool:
        if self.devices != "all" and index not in self.devices:
            return False
        if not self.device_filter:
            return True
        ids = {d.lower() for d in model.device_ids}
        return any(f.lower()[:6] in ids for f in self.device_filter)


ConfigSpec = dict[ConfigName, tuple[ConfigEntry, ...]]


class ConfigDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1, le=1)
    source: str
    configs: ConfigSpec


class MigConfigError(ValueError):
    """The shipped configuration file does not follow its schema (a bug in this gpuguard, found at import)."""


def load_configs(text: str) -> dict[str, tuple[ConfigEntry, ...]]:
    try:
        return dict(ConfigDocument.model_validate(yaml.safe_load(text)).configs)
    except (yaml.YAMLError, ValidationError) as error:
        raise MigConfigError(f"{CONFIG_FILE} is invalid: {error}") from None


DEFAULT_CONFIGS: Mapping[str, tuple[ConfigEntry, ...]] = load_configs(
    resources.files("gpuguard.policy").joinpath(CONFIG_FILE).read_text(encoding="utf-8"))


def gpu_layouts(name: str, model: GpuModel, gpus: int,
                configs: Mapping[str, tuple[ConfigEntry, ...]] = DEFAULT_CONFIGS) -> tuple[Layout, ...] | None:
    """What the MIG manager would make of each of a node's `gpus` GPUs of `model` for config `name` (see module)."""
    entries = configs.get(name) or ()
    found: list[Layout] = []
    for index in range(gpus):
        entry = next((e for e in entries if e.applies_to(model, index)), None)
        if entry is None or placed(model, entry.mig_devices) is None:
            return None
        found.append(dict(entry.mig_devices))
    return tuple(found)


def placed(model: GpuModel, counts: Layout) -> tuple[MigSlice, ...] | None:
    """Where the instances sit on the GPU (the catalog's placement), None when they do not fit."""
    return _placed(model, tuple(sorted(counts.items())))


@lru_cache(maxsize=512)
def _placed(model: GpuModel, counts: tuple[tuple[str, int], ...]) -> tuple[MigSlice, ...] | None:
    if any(model.profile(p) is None for p, _ in counts):
        return None
    return place_instances(model, dict(counts))


def merged(extra: Mapping[str, tuple[ConfigEntry, ...]]) -> Mapping[str, tuple[ConfigEntry, ...]]:
    """The default configuration with an admin's names added or replaced."""
    return {**DEFAULT_CONFIGS, **extra} if extra else DEFAULT_CONFIGS

"""The node annotation `gpuguard.io/gpu-inventory`, version 1: what the node agent tells the extender.

JSON: `{"v": 1, "ts": RFC3339, "driver": str, "gpus": [{"index", "uuid", "product", "memoryMiB", "utilPercent",
"memoryUsedMiB", "mig": {"enabled": bool, "devices": [{"profile", "start", "size", "uuid", "busy", "utilPercent"?}]}}]}`.

This is our own format, so unknown fields are errors and a version other than 1 is refused: an extender must never
guess at an annotation written by a newer agent. `utilPercent` is null where NVML cannot measure it (MIG-enabled
GPUs report no utilization per instance), never an invented number; readers treat null as "unknown". A MIG device's
optional `utilPercent` is its GPU instance's engine activity (GPM, Hopper and newer; DCGM's
`DCGM_FI_PROF_GR_ENGINE_ACTIVE` in percent), left out entirely where it is not measured, so an agent without GPM
writes exactly what it wrote before the field existed. Adding it kept version 1: every annotation valid before is
valid now with the same meaning. An extender that predates the field refuses annotations that carry it as invalid
(and scores such nodes as it would without an annotation); the chart upgrades the extender and the agent together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuguard.policy.loading import format_path

ANNOTATION = "gpuguard.io/gpu-inventory"


class InvalidInventory(ValueError):
    """The annotation is missing fields, has unknown ones, or has another version."""


class InventoryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MigDevice(InventoryModel):
    profile: str
    """GPU-instance profile as NVML names it, e.g. `1g.10gb`."""
    start: int = Field(ge=0)
    """First memory slot of the instance's placement."""
    size: int = Field(ge=1)
    """Memory slots the instance occupies."""
    uuid: str
    busy: bool
    """True when a process runs on the device."""
    util_percent: float | None = Field(alias="utilPercent", default=None, ge=0, le=100,
                                       exclude_if=lambda value: value is None)
    """Engine activity of the GPU instance in percent, rounded to 5 by the agent; absent when not measured."""


class MigState(InventoryModel):
    enabled: bool = False
    devices: tuple[MigDevice, ...] = ()


class GpuInventory(InventoryModel):
    index: int = Field(ge=0)
    uuid: str
    product: str
    """`nvidia.com/gpu.product` spelling (GFD's), e.g. `NVIDIA-H100-80GB-HBM3`."""
    memory_mib: int = Field(alias="memoryMiB", ge=0)
    util_percent: float | None = Field(alias="utilPercent", default=None, ge=0, le=100)
    """GPU utilization in percent, rounded to 5 by the agent; null when not measurable (MIG)."""
    memory_used_mib: int | None = Field(alias="memoryUsedMiB", default=None, ge=0)
    mig: MigState = MigState()


class NodeInventory(InventoryModel):
    v: Literal[1] = 1
    ts: datetime
    driver: str = ""
    gpus: tuple[GpuInventory, ...] = ()


def parse_inventory(text: str | bytes) -> NodeInventory:
    """Parse the annotation value; raise `InvalidInventory` naming the wrong fields."""
    try:
        return NodeInventory.model_validate_json(text)
    except ValidationError as error:
        details = error.errors(include_url=False)
        fields = "; ".join(f"{format_path(d['loc']) or 'value'}: {d['msg']}" for d in details[:5])
        raise InvalidInventory(f"invalid {ANNOTATION} annotation ({fields})") from None


def encode_inventory(inventory: NodeInventory) -> str:
    """Compact JSON with the wire field names, as stored in the annotation."""
    return inventory.model_dump_json(by_alias=True)

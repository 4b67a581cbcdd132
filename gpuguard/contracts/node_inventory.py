"""The node annotation `gpuguard.io/gpu-inventory`, version 1: what the node agent tells the extender.

JSON: `{"v": 1, "ts": RFC3339, "driver": str, "gpus": [{"index", "uuid", "product", "memoryMiB", "utilPercent",
"memoryUsedMiB", "mig": {"enabled": bool, "devices": [{"profile", "start", "size", "uuid", "busy"}]}}]}`.

This is our own format, so unknown fields are errors and a version other than 1 is refused: an extender must never
guess at an annotation written by a newer agent. `utilPercent` is null where NVML cannot measure it (MIG-enabled
GPUs report no utilization per instance), never an invented number; readers treat null as "unknown".
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

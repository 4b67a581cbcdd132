"""Turn a backend snapshot into the `gpuguard.io/gpu-inventory` annotation (v1), and decide when to publish it.

Values are rounded before they are compared, so that noise does not cause a patch: utilization to 5 % steps (the
granularity the extender scores at) and memory in use to 256 MiB steps (allocators grow and shrink by a few MiB all
the time). A published value also stays put while the reading is within one step of it, so a GPU hovering around
42.5 % does not flip between 40 and 45 every cycle; the published value is thus never more than one step off.
Utilization stays null where NVML cannot measure it (MIG-enabled GPUs), never an invented number; a MIG device
carries its GPU instance's engine activity (GPM) in percent, in the same 5 % steps, where it was measured. Pure: no
I/O, no clock of its own.
"""

from __future__ import annotations

from datetime import datetime

from gpuguard.contracts.node_inventory import (
    GpuInventory,
    InvalidInventory,
    MigDevice,
    MigState,
    NodeInventory,
    parse_inventory,
)
from gpuguard.policy.mig import product_label_from_name
from node_agent.backend import GpuReading, MigReading, Snapshot

UTIL_STEP_PERCENT = 5
MEMORY_STEP_MIB = 256


def round_to_step(value: float, step: int) -> int:
    """Nearest multiple of `step`, halves rounding up (47.5 -> 50), never negative."""
    return max(int((value + step / 2) // step * step), 0)


def stable_value(reading: float | None, shown: float | None, step: int) -> int | None:
    """What to publish: the value already shown while the reading stays within a step of it, else the rounded one."""
    if reading is None:
        return None
    if shown is not None and abs(reading - shown) < step:
        return int(shown)
    return round_to_step(reading, step)


def build_inventory(snapshot: Snapshot, *, now: datetime, previous: NodeInventory | None = None) -> NodeInventory:
    """The annotation for `snapshot`; `previous` (what the node carries) keeps values from flapping."""
    shown = {g.uuid: g for g in previous.gpus} if previous is not None else {}
    gpus = tuple(gpu_entry(g, shown.get(g.uuid)) for g in snapshot.gpus)
    return NodeInventory(ts=now, driver=snapshot.driver, gpus=gpus)


def gpu_entry(gpu: GpuReading, shown: GpuInventory | None = None) -> GpuInventory:
    util = None if gpu.mig_enabled else stable_value(
        gpu.util_percent, shown.util_percent if shown else None, UTIL_STEP_PERCENT)
    return GpuInventory(
        index=gpu.index, uuid=gpu.uuid, product=product_label_from_name(gpu.name),
        memory_mib=gpu.memory_total_mib or 0,  # 0: NVML could not tell (the extender then ignores memory)
        util_percent=min(util, 100) if util is not None else None,
        memory_used_mib=stable_value(gpu.memory_used_mib, shown.memory_used_mib if shown else None, MEMORY_STEP_MIB),
        mig=MigState(enabled=gpu.mig_enabled, devices=_mig_entries(gpu, shown)),
    )


def _mig_entries(gpu: GpuReading, shown: GpuInventory | None) -> tuple[MigDevice, ...]:
    before = {d.uuid: d for d in shown.mig.devices} if shown is not None else {}
    return tuple(mig_entry(m, before.get(m.uuid)) for m in gpu.mig_devices)


def mig_entry(device: MigReading, shown: MigDevice | None = None) -> MigDevice:
    activity = device.activity.graphics if device.activity is not None else None
    util = stable_value(activity * 100 if activity is not None else None, shown.util_percent if shown else None,
                        UTIL_STEP_PERCENT)
    return MigDevice(profile=device.profile, start=device.start, size=device.size, uuid=device.uuid,
                     busy=device.busy, util_percent=min(util, 100) if util is not None else None)


def same_content(a: NodeInventory | None, b: NodeInventory | None) -> bool:
    """Equal apart from the timestamp."""
    if a is None or b is None:
        return a is b
    return a.model_copy(update={"ts": b.ts}) == b


def published(annotation: str | None) -> NodeInventory | None:
    """The inventory currently on the node, or None if absent or unreadable (it will simply be replaced)."""
    if not annotation:
        return None
    try:
        return parse_inventory(annotation)
    except InvalidInventory:
        return None


def needs_publishing(current: NodeInventory | None, new: NodeInventory, *, refresh_after: float) -> bool:
    """Publish when the content changed, or when the published one is older than `refresh_after` seconds.

    The refresh keeps `ts` fresh so readers that ignore stale data (policy `scheduling.metricsMaxAge`) can tell a
    live agent on an idle node from a dead one. `refresh_after` <= 0 turns it off.
    """
    if current is None or not same_content(current, new):
        return True
    if current.ts.tzinfo is None:
        return True  # not written by an agent (ours are always UTC): replace it
    return refresh_after > 0 and (new.ts - current.ts).total_seconds() >= refresh_after

"""The fake backend: GPUs described in a YAML or JSON file, for the demo, tests and `--fake-gpus`.

The file uses the node-annotation schema (`gpus: [...]` as in `gpuguard.contracts.node_inventory`, optionally with
the annotation's `v`, `ts` and `driver`), so a node's annotation can be replayed as is. Each GPU may add what the
annotation does not carry: the NVML device `name`, `pciBusId`, `temperatureC`, `powerDrawW`, `powerLimitW`,
`smClockMHz`, `memClockMHz`, and GPM activity `engineActivePercent`, `smActivePercent`; each MIG device may add
`gpuInstanceId`, `memoryMiB`, `memoryUsedMiB`, `smActivePercent` (its engine activity is the annotation's own
`utilPercent`). Fields left out are reported as unknown, exactly like a sensor NVML does not support, with two
exceptions that the rest of the file determines: a MIG device's `memoryMiB` is its profile's size in the MIG catalog
(`1g.10gb` on an H100 80GB: 10 GiB), and memory in use on an idle MIG device left without `memoryUsedMiB` is 0, so a
replayed annotation (which carries neither) still yields per-instance framebuffer metrics; a busy one's stays
unknown. A GPU without `pciBusId` gets a stable made-up one from its index. The file is re-read when it changes, so
a demo can make a GPU busy; a broken edit is refused and the last good content kept. This module does no NVML and no
Kubernetes.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuguard.contracts.node_inventory import GpuInventory, MigDevice, MigState
from gpuguard.policy import mig
from gpuguard.policy.loading import format_path
from node_agent.backend import Activity, BackendUnavailable, GpuReading, MigReading, ReadError, Snapshot

log = logging.getLogger(__name__)


class FakeMigDevice(MigDevice):
    gpu_instance_id: int | None = Field(default=None, alias="gpuInstanceId", ge=0)
    """NVML's GPU-instance id (the `GPU_I_ID` label); default: the device's position in the list plus one."""
    memory_mib: int | None = Field(default=None, alias="memoryMiB", ge=0)
    """Default: the profile's memory in the MIG catalog (GiB x 1024) for the GPU's product."""
    memory_used_mib: int | None = Field(default=None, alias="memoryUsedMiB", ge=0)
    """Default: 0 on an idle device, unknown on a busy one."""
    sm_active_percent: float | None = Field(default=None, alias="smActivePercent", ge=0, le=100)


class FakeMigState(MigState):
    devices: tuple[FakeMigDevice, ...] = ()


class FakeGpu(GpuInventory):
    """One GPU: the annotation's entry plus the sensors a real GPU has."""

    name: str | None = None
    """NVML device name, e.g. `NVIDIA A100-SXM4-80GB`; default: the product label with `-` read as spaces."""
    pci_bus_id: str | None = Field(default=None, alias="pciBusId")
    """NVML's bus id, e.g. `00000000:19:00.0`; default: `00000000:<index + 1, hex>:00.0`."""
    engine_active_percent: float | None = Field(default=None, alias="engineActivePercent", ge=0, le=100)
    """GPM graphics engine activity of a GPU without MIG (on a MIG GPU each device's `utilPercent` is its own)."""
    sm_active_percent: float | None = Field(default=None, alias="smActivePercent", ge=0, le=100)
    temperature_c: float | None = Field(default=None, alias="temperatureC")
    power_draw_w: float | None = Field(default=None, alias="powerDrawW", ge=0)
    power_limit_w: float | None = Field(default=None, alias="powerLimitW", ge=0)
    sm_clock_mhz: float | None = Field(default=None, alias="smClockMHz", ge=0)
    mem_clock_mhz: float | None = Field(default=None, alias="memClockMHz", ge=0)
    mig: FakeMigState = FakeMigState()


class FakeGpuFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    v: Literal[1] = 1
    ts: datetime | None = None
    """Accepted so an annotation can be used as is; ignored."""
    driver: str = "fake"
    gpus: tuple[FakeGpu, ...] = ()


def parse_fake_gpus(text: str, *, source: str = "fake GPU file") -> FakeGpuFile:
    """Parse and validate; raise `ValueError` naming each wrong field and where it is."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source} is not valid YAML or JSON: {error}") from None
    try:
        return FakeGpuFile.model_validate(data if data is not None else {})
    except ValidationError as error:
        details = error.errors(include_url=False)
        fields = "; ".join(f"{format_path(d['loc']) or 'file'}: {d['msg']}" for d in details[:5])
        raise ValueError(f"{source} is invalid ({fields})") from None


def gpu_reading(gpu: FakeGpu) -> GpuReading:
    """What NVML would report for this GPU; utilization stays unknown while MIG is enabled, as on real hardware."""
    model = mig.model_for_product(gpu.product)
    migs = tuple(mig_reading(device, position, model) for position, device in enumerate(gpu.mig.devices))
    return GpuReading(
        index=gpu.index, uuid=gpu.uuid, name=gpu.name or gpu.product.replace("-", " "),
        pci_bus_id=gpu.pci_bus_id or f"00000000:{gpu.index + 1:02X}:00.0",
        activity=None if gpu.mig.enabled else activity(gpu.engine_active_percent, gpu.sm_active_percent),
        memory_total_mib=gpu.memory_mib, memory_used_mib=gpu.memory_used_mib,
        util_percent=None if gpu.mig.enabled else gpu.util_percent,
        temperature_c=gpu.temperature_c, power_w=gpu.power_draw_w, power_limit_w=gpu.power_limit_w,
        sm_clock_mhz=gpu.sm_clock_mhz, memory_clock_mhz=gpu.mem_clock_mhz,
        busy=any(m.busy for m in migs) if gpu.mig.enabled else None,
        mig_enabled=gpu.mig.enabled, mig_devices=migs if gpu.mig.enabled else (),
    )


def mig_reading(device: FakeMigDevice, position: int, model: mig.GpuModel | None = None) -> MigReading:
    used = device.memory_used_mib if device.memory_used_mib is not None or device.busy else 0
    return MigReading(
        gpu_instance_id=device.gpu_instance_id if device.gpu_instance_id is not None else position + 1,
        profile=device.profile, start=device.start, size=device.size, uuid=device.uuid, busy=device.busy,
        memory_total_mib=device.memory_mib if device.memory_mib is not None else catalog_mib(model, device.profile),
        memory_used_mib=used, activity=activity(device.util_percent, device.sm_active_percent),
    )


def catalog_mib(model: mig.GpuModel | None, profile: str) -> int | None:
    """A profile's memory as the MIG catalog gives it (whole GiB), None for a model or profile it does not know."""
    entry = model.profile(profile) if model is not None else None
    return entry.memory_gb * 1024 if entry is not None else None


def activity(engine_percent: float | None, sm_percent: float | None) -> Activity | None:
    if engine_percent is None and sm_percent is None:
        return None
    return Activity(graphics=engine_percent / 100 if engine_percent is not None else None,
                    sm=sm_percent / 100 if sm_percent is not None else None)


class FakeBackend:
    """Serves the GPUs of a fake-GPU file, re-reading it when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._snapshot: Snapshot | None = None
        self._problem = ""
        self._reload()
        if self._snapshot is None:
            raise BackendUnavailable(self._problem)

    @property
    def name(self) -> str:
        return "fake"

    def read(self) -> Snapshot:
        self._reload()
        assert self._snapshot is not None
        if not self._problem:
            return self._snapshot
        return Snapshot(self._snapshot.driver, self._snapshot.gpus, (ReadError("readFakeGpuFile", "Invalid"),))

    def close(self) -> None:
        pass

    def _reload(self) -> None:
        """Re-read the file when it changed; a broken version sets `_problem` and keeps the last good content."""
        try:
            info = self.path.stat()
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp == self._seen:
                return
            self._seen = stamp
            content = parse_fake_gpus(self.path.read_text(encoding="utf-8"), source=str(self.path))
        except OSError as error:
            self._refuse(f"cannot read {self.path}: {error.strerror or error}")
        except ValueError as error:
            self._refuse(str(error))
        else:
            self._problem = ""
            self._snapshot = Snapshot(driver=content.driver, gpus=tuple(gpu_reading(g) for g in content.gpus))

    def _refuse(self, problem: str) -> None:
        if problem != self._problem and self._snapshot is not None:
            log.error("fake GPU file update refused, keeping the previous content: %s", problem)
        self._problem = problem

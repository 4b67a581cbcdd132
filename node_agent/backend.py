"""What a GPU backend reports, and the Protocol every backend (NVML, fake, null) implements.

A reading is plain data: one `Snapshot` per read, holding each GPU with the fields that could be measured and
`None` for those that could not (a sensor the GPU lacks, a function the driver does not export, a value that does
not exist, such as NVML utilization on a MIG-enabled GPU). Engine and SM activity come from NVML's GPU Performance
Monitoring (GPM, Hopper and newer), per GPU and per GPU instance; as in DCGM they are ratios of time (0..1) over the
interval between two samples, so the first read after a device appears has none. Nothing here talks to hardware,
Kubernetes or Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class BackendUnavailable(RuntimeError):
    """The backend cannot start (no driver, no library, unreadable fake file); the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class ReadError:
    """One failed call during a read: the field it was for is missing from the snapshot, nothing else."""

    function: str
    """The NVML function (or the fake backend's stand-in), e.g. `nvmlDeviceGetPowerUsage`."""
    error: str
    """The NVML error name without prefix, e.g. `NotSupported`, `FunctionNotFound`, `GpuIsLost`."""
    gpu: int | None = None
    """Index of the GPU it happened on; None for system-wide calls."""


@dataclass(frozen=True, slots=True)
class Activity:
    """GPM activity over the last sampling interval, as ratios 0..1 (DCGM's `DCGM_FI_PROF_*` unit)."""

    graphics: float | None = None
    """Time a graphics or compute context was active (`DCGM_FI_PROF_GR_ENGINE_ACTIVE`)."""
    sm: float | None = None
    """Share of SMs busy (`DCGM_FI_PROF_SM_ACTIVE`)."""


@dataclass(frozen=True, slots=True)
class MigReading:
    """One MIG device (GPU instance). NVML utilization does not exist per instance; GPM activity may."""

    gpu_instance_id: int
    profile: str
    """GPU-instance profile, e.g. `1g.10gb` or `1g.10gb+me`, as the NVIDIA device plugin names it."""
    start: int
    """First memory slot of the placement."""
    size: int
    """Memory slots occupied."""
    uuid: str
    busy: bool
    """A compute process runs on it."""
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    activity: Activity | None = None
    """None where GPM is unsupported or has only one sample so far."""

    @property
    def memory_free_mib(self) -> int | None:
        return _free(self.memory_total_mib, self.memory_used_mib)


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    """NVML device name, e.g. `NVIDIA H100 80GB HBM3` (dcgm-exporter's `modelName`)."""
    pci_bus_id: str = ""
    """NVML's PCI bus id, e.g. `00000000:19:00.0` (dcgm-exporter's `pci_bus_id`); "" when unreadable."""
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    util_percent: float | None = None
    """None when not measurable: always None while MIG is enabled (NVML reports no utilization then)."""
    memory_util_percent: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    energy_mj: float | None = None
    """Energy used since the driver loaded, in millijoules."""
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_aggregate: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    activity: Activity | None = None
    """GPM activity of the whole GPU; never read while MIG is enabled (the instances carry it then)."""
    busy: bool | None = None
    """A compute process runs on the whole GPU; None when unknown."""
    mig_enabled: bool = False
    mig_devices: tuple[MigReading, ...] = ()

    @property
    def memory_free_mib(self) -> int | None:
        return _free(self.memory_total_mib, self.memory_used_mib)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one read produced. A GPU that vanished mid-read is absent, with its error in `errors`."""

    driver: str = ""
    gpus: tuple[GpuReading, ...] = ()
    errors: tuple[ReadError, ...] = field(default=())


class Backend(Protocol):
    """A source of GPU readings. `read` never raises for a per-field or per-GPU failure: it reports it."""

    @property
    def name(self) -> str:
        """`nvml`, `fake` or `null`, for the logs and `gpuguard_agent_backend_info`."""
        ...

    def read(self) -> Snapshot: ...

    def close(self) -> None: ...


def _free(total: int | None, used: int | None) -> int | None:
    return None if total is None or used is None else max(total - used, 0)

"""Prometheus exposition of GPU readings under dcgm-exporter's names and labels, plus the scrape's own health.

A custom collector: every scrape reads the backend once and yields fresh metric families, so nothing stale lingers
after a GPU disappears, and a failing GPU or field only loses its own samples. Names, labels and units follow
dcgm-exporter (its default-counters.csv) wherever a DCGM field exists, so dashboards and the extender's queries
(`DCGM_FI_DEV_GPU_UTIL` by `Hostname`) work against either exporter. The exported fields are the `FIELDS` table
below and nowhere else.

What NVML cannot measure is not exported: no `DCGM_FI_DEV_GPU_UTIL` for a MIG-enabled GPU. Where NVML's GPM says the
GPU supports it (Hopper and newer), `DCGM_FI_PROF_GR_ENGINE_ACTIVE` and `DCGM_FI_PROF_SM_ACTIVE` (ratios 0..1, as
DCGM's profiling module reports them) come per GPU instance on a MIG-enabled GPU and for the whole GPU otherwise.
On a MIG-enabled GPU the framebuffer fields are per instance (labels `GPU_I_PROFILE`, `GPU_I_ID`), so a sum over a
node counts every MiB once.

Every device sample carries `pci_bus_id`, and, when a `PodSource` says which container holds the device (the
kubelet's PodResources API), dcgm-exporter's `pod`, `namespace` and `container`. A device shared by time-slicing
repeats its samples once per holding container, each with the replica as `vgpu` (dcgm-exporter with
`KUBERNETES_VIRTUAL_GPUS`): aggregate shared devices with `max by (UUID)`, not `sum`. The whole-GPU samples of a
MIG-enabled GPU belong to no single pod and carry none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client.core import Metric

from node_agent.attribution import Allocation, Holder, Holders, holders
from node_agent.backend import Activity, Backend, GpuReading, MigReading, Snapshot
from node_agent.metrics import AgentMetrics

Number = float | int | None


@dataclass(frozen=True, slots=True)
class DcgmField:
    name: str
    kind: Literal["gauge", "counter"]
    help: str
    gpu: Callable[[GpuReading], Number]
    mig: Callable[[MigReading], Number] | None = None
    """The value per MIG device; None: the field exists only for the whole GPU."""
    whole_gpu_under_mig: bool = True
    """False: on a MIG-enabled GPU only the per-instance samples are exported (no double counting)."""


def _graphics(activity: Activity | None) -> float | None:
    return activity.graphics if activity is not None else None


def _sm(activity: Activity | None) -> float | None:
    return activity.sm if activity is not None else None


FIELDS: tuple[DcgmField, ...] = (
    DcgmField("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", lambda g: g.sm_clock_mhz),
    DcgmField("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", lambda g: g.memory_clock_mhz),
    DcgmField("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda g: g.temperature_c),
    DcgmField("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda g: g.power_w),
    DcgmField("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "gauge", "Enforced power limit (in W).", lambda g: g.power_limit_w),
    DcgmField("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
              lambda g: g.energy_mj),
    DcgmField("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda g: g.util_percent),
    DcgmField("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", lambda g: g.memory_util_percent),
    DcgmField("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", lambda g: g.memory_free_mib,
              mig=lambda m: m.memory_free_mib, whole_gpu_under_mig=False),
    DcgmField("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", lambda g: g.memory_used_mib,
              mig=lambda m: m.memory_used_mib, whole_gpu_under_mig=False),
    DcgmField("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors.",
              lambda g: g.ecc_corrected_volatile),
    DcgmField("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors.",
              lambda g: g.ecc_uncorrected_volatile),
    DcgmField("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter", "Total number of single-bit persistent ECC errors.",
              lambda g: g.ecc_corrected_aggregate),
    DcgmField("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter", "Total number of double-bit persistent ECC errors.",
              lambda g: g.ecc_uncorrected_aggregate),
    DcgmField("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.",
              lambda g: _graphics(g.activity), mig=lambda m: _graphics(m.activity)),
    DcgmField("DCGM_FI_PROF_SM_ACTIVE", "gauge", "The ratio of cycles an SM has at least 1 warp assigned.",
              lambda g: _sm(g.activity), mig=lambda m: _sm(m.activity)),
)


class PodSource(Protocol):
    """Which container holds which device id (the kubelet's PodResources API); empty when unknown."""

    def allocations(self) -> tuple[Allocation, ...]: ...

# dcgm-exporter declares these counters without the `_total` suffix that prometheus_client would append to a
# counter family; keeping the DCGM name matters more, so they are exposed untyped (rate() works the same).
_EXPOSED_TYPE = {"gauge": "gauge", "counter": "unknown"}


def gpu_labels(gpu: GpuReading, *, hostname: str, driver: str) -> dict[str, str]:
    """In dcgm-exporter's render order: gpu, UUID, pci_bus_id, device, modelName, (MIG), Hostname, driver."""
    return {"gpu": str(gpu.index), "UUID": gpu.uuid, "pci_bus_id": gpu.pci_bus_id, "device": f"nvidia{gpu.index}",
            "modelName": gpu.name, "Hostname": hostname, "DCGM_FI_DRIVER_VERSION": driver}


def mig_labels(gpu_sample_labels: dict[str, str], device: MigReading) -> dict[str, str]:
    """dcgm-exporter's MIG samples keep the parent GPU's `gpu` and `UUID` and add the instance's profile and id."""
    return {**gpu_sample_labels, "GPU_I_PROFILE": device.profile, "GPU_I_ID": str(device.gpu_instance_id)}


def attributed(labels: dict[str, str], holding: tuple[Holder, ...]) -> tuple[dict[str, str], ...]:
    """The label sets of one device's samples: one per holding container, or the device's own when none."""
    if not holding:
        return (labels,)
    return tuple({**labels, **holder.labels()} for holder in holding)


@dataclass(frozen=True, slots=True)
class _Labelled:
    """A GPU with its sample label sets, and each of its MIG devices with theirs (built once per scrape)."""

    gpu: GpuReading
    labels: tuple[dict[str, str], ...]
    migs: tuple[tuple[MigReading, tuple[dict[str, str], ...]], ...]


def _row(gpu: GpuReading, *, hostname: str, driver: str, holding: Holders) -> _Labelled:
    labels = gpu_labels(gpu, hostname=hostname, driver=driver)
    own = () if gpu.mig_enabled else holding.get(gpu.uuid, ())
    migs = tuple((m, attributed(mig_labels(labels, m), holding.get(m.uuid, ()))) for m in gpu.mig_devices)
    return _Labelled(gpu, attributed(labels, own), migs)


def dcgm_families(snapshot: Snapshot, *, hostname: str, holding: Holders | None = None) -> list[Metric]:
    """One family per field that has at least one sample; `holding` attributes devices to containers."""
    rows = [_row(g, hostname=hostname, driver=snapshot.driver, holding=holding or {}) for g in snapshot.gpus]
    families = []
    for field in FIELDS:
        family = Metric(field.name, field.help, _EXPOSED_TYPE[field.kind])
        for row in rows:
            _add_samples(family, field, row)
        if family.samples:
            families.append(family)
    return families


def _add_samples(family: Metric, field: DcgmField, row: _Labelled) -> None:
    value = field.gpu(row.gpu)
    if value is not None and (field.whole_gpu_under_mig or not row.gpu.mig_enabled):
        for labels in row.labels:
            family.add_sample(field.name, labels, float(value))
    if field.mig is None:
        return
    for device, label_sets in row.migs:
        device_value = field.mig(device)
        if device_value is not None:
            for labels in label_sets:
                family.add_sample(field.name, labels, float(device_value))


def health_families(snapshot: Snapshot, *, backend: str, seconds: float) -> list[Metric]:
    duration = Metric("gpuguard_agent_scrape_duration_seconds", "Time this scrape spent reading the GPUs and which pods hold them", "gauge")
    duration.add_sample(duration.name, {}, seconds)
    gpus = Metric("gpuguard_agent_gpus", "GPUs the backend reported in this scrape", "gauge")
    gpus.add_sample(gpus.name, {}, float(len(snapshot.gpus)))
    migs = Metric("gpuguard_agent_mig_devices", "MIG devices the backend reported in this scrape", "gauge")
    migs.add_sample(migs.name, {}, float(sum(len(g.mig_devices) for g in snapshot.gpus)))
    info = Metric("gpuguard_agent_backend", "The GPU backend in use and the driver it reports", "info")
    info.add_sample("gpuguard_agent_backend_info", {"backend": backend, "driver": snapshot.driver}, 1.0)
    return [duration, gpus, migs, info]


class GpuCollector:
    """Registered on the agent's registry; each `collect()` is one backend read."""

    def __init__(
        self, backend: Backend, *, hostname: str, metrics: AgentMetrics, pods: PodSource | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._backend = backend
        self._hostname = hostname
        self._metrics = metrics
        self._pods = pods
        self._clock = clock

    def describe(self) -> list[Metric]:
        """Nothing: registering must not read the GPUs (the names are checked against FIELDS in the tests)."""
        return []

    def collect(self) -> Iterator[Metric]:
        started = self._clock()
        snapshot = self._backend.read()
        holding = holders(self._pods.allocations(), snapshot) if self._pods is not None else {}
        seconds = self._clock() - started
        self._metrics.record_read(snapshot)
        yield from dcgm_families(snapshot, hostname=self._hostname, holding=holding)
        yield from health_families(snapshot, backend=self._backend.name, seconds=seconds)
        yield self._metrics.nvml_errors.family()

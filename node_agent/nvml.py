"""The NVML backend: GPUs and MIG devices read through nvidia-ml-py, the only module in the project importing pynvml.

Every field is read on its own: a call that fails (`NotSupported` on a GPU without that sensor, `FunctionNotFound`
on an older driver) drops that one field, is reported as a `ReadError`, and is not retried for that GPU (the answer
will not change while the driver stays loaded). A GPU that reports `GpuIsLost`, or whose handle or UUID cannot be
read, is left out of the snapshot entirely rather than half-reported. Utilization is never read while MIG is
enabled: NVML has no per-instance utilization, and the whole-GPU number is not meaningful then. GPM activity
(`node_agent.gpm`) is read where NVML says the GPU supports it: per GPU instance on a MIG-enabled GPU, for the whole
GPU otherwise. A MIG device's profile and placement are read once per device (they are fixed until the GPU is
repartitioned, which gives the new devices new UUIDs); its memory and processes are read every time.

This module must not decide anything (rounding, annotations, metric names): it only translates NVML into a
`Snapshot`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynvml

from node_agent.backend import Activity, BackendUnavailable, GpuReading, MigReading, ReadError, Snapshot
from node_agent.gpm import MIN_INTERVAL, GpmError, GpmSampler, supported
from node_agent.mig_naming import profile_name

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_PERMANENT = frozenset({"NotSupported", "FunctionNotFound"})
"""Answers that will not change while the driver stays loaded: the field is not asked for again."""
_GONE = frozenset({"GpuIsLost"})
_EXPECTED_WHILE_PROBING = frozenset({"NotSupported", "InvalidArgument", "NotFound"})
_MAY_BE_ABSENT = frozenset({pynvml.nvmlDeviceGetMigDeviceHandleByIndex})
"""Calls for which NotFound is a normal answer (an empty MIG slot): None, not an error."""


class _Unreadable(Exception):
    """A value the device cannot be reported without (handle, UUID, MIG placement) could not be read."""


class _GpuGone(Exception):
    """The GPU fell off the bus during the read."""


def error_name(error: pynvml.NVMLError) -> str:
    """`NVMLError_NotSupported` -> `NotSupported`; an error code pynvml has no class for -> `Error<code>`."""
    name = type(error).__name__
    return name.removeprefix("NVMLError_") if name != "NVMLError" else f"Error{error.value}"


def unavailable_message(error: pynvml.NVMLError) -> str:
    reason = error_name(error)
    if reason == "LibraryNotFound":
        return ("NVML is not available: libnvidia-ml.so.1 was not found. Install the NVIDIA driver, or run the agent "
                "with the NVIDIA container runtime so the library is mounted; use --backend null or "
                "--fallback-to-null on nodes without GPUs")
    return f"NVML failed to initialise ({reason}: {error}); check that the NVIDIA driver is loaded (nvidia-smi)"


@dataclass(frozen=True, slots=True)
class _Placement:
    gpu_instance_id: int
    profile: str
    start: int
    size: int


def _placement(device: MigReading) -> _Placement:
    return _Placement(device.gpu_instance_id, device.profile, device.start, device.size)


@dataclass(frozen=True, slots=True)
class _MigContext:
    """What every MIG device of one GPU needs during one read."""

    parent: Any
    gpu_mib: int | None
    enums: dict[int, int]
    known: dict[str, _Placement]
    gpm: bool
    """NVML says this GPU supports GPM: read each instance's activity."""


class _Calls:
    """Makes the NVML calls of one read for one GPU, turning failures into `ReadError`s."""

    def __init__(self, backend: NvmlBackend, errors: list[ReadError], gpu: int | None) -> None:
        self._backend = backend
        self._errors = errors
        self.gpu = gpu
        self.uuid = ""

    def required(self, function: Callable[..., Any], *args: Any) -> Any:
        """The call's result; on failure record it and raise (`_GpuGone` if the GPU is lost).

        NotFound from a call in `_MAY_BE_ABSENT` is an answer, not a failure: None.
        """
        try:
            return function(*args)
        except pynvml.NVMLError as error:
            if function in _MAY_BE_ABSENT and isinstance(error, pynvml.NVMLError_NotFound):
                return None
            reason = self._record(function, error)
            raise _GpuGone() if reason in _GONE else _Unreadable() from None

    def optional(self, field: str, function: Callable[..., Any], *args: Any) -> Any:
        """The call's result, or None when it fails; a permanent failure is not retried on later reads."""
        key = (self.uuid, field)
        if key in self._backend.unsupported:
            return None
        try:
            return function(*args)
        except pynvml.NVMLError as error:
            reason = self._record(function, error)
            if reason in _GONE:
                raise _GpuGone() from None
            if reason in _PERMANENT:
                self._backend.unsupported.add(key)
            return None

    def activity(self, field: str, read: Callable[[], Activity | None]) -> Activity | None:
        """A GPM reading, or None when it fails; a permanent failure is not retried on later reads."""
        key = (self.uuid, field)
        if key in self._backend.unsupported:
            return None
        try:
            return read()
        except GpmError as failure:
            self._gpm_failed(key, failure)
            return None

    def gpm_supported(self, handle: Any) -> bool:
        """NVML's answer, asked once per GPU (an answer that cannot change while the driver stays loaded)."""
        known = self._backend.gpm_support.get(self.uuid)
        if known is None:
            try:
                known = supported(handle)
            except GpmError as failure:
                self._gpm_failed(None, failure)
                known = False
            self._backend.gpm_support[self.uuid] = known
        return known

    def _gpm_failed(self, key: tuple[str, str] | None, failure: GpmError) -> None:
        reason = error_name(failure.error)
        self._errors.append(ReadError(failure.function, reason, self.gpu))
        if reason in _GONE:
            raise _GpuGone() from None
        if key is not None and reason in _PERMANENT:
            self._backend.unsupported.add(key)

    def _record(self, function: Callable[..., Any], error: pynvml.NVMLError) -> str:
        reason = error_name(error)
        self._errors.append(ReadError(function.__name__, reason, self.gpu))
        return reason


class NvmlBackend:
    """Reads the node's GPUs through NVML. Construct it once; `close()` shuts NVML down."""

    def __init__(self, *, gpm_min_interval: float = MIN_INTERVAL) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise BackendUnavailable(unavailable_message(error)) from None
        self.unsupported: set[tuple[str, str]] = set()
        """(GPU UUID, field) pairs that answered NotSupported or FunctionNotFound."""
        self.gpm_support: dict[str, bool] = {}
        """Per GPU UUID: whether NVML says it supports GPM."""
        self._gpm = GpmSampler(min_interval=gpm_min_interval)
        self._profile_enums: dict[str, dict[int, int]] = {}
        """Per GPU UUID: GPU-instance profile id -> NVML profile enum (static for a GPU model)."""
        self._placements: dict[str, dict[str, _Placement]] = {}
        """Per GPU UUID: its MIG devices' placements by MIG UUID, as of the last read."""

    @property
    def name(self) -> str:
        return "nvml"

    def read(self) -> Snapshot:
        errors: list[ReadError] = []
        system = _Calls(self, errors, None)
        driver = system.optional("driver", pynvml.nvmlSystemGetDriverVersion) or ""
        count = system.optional("count", pynvml.nvmlDeviceGetCount) or 0
        gpus = tuple(g for g in (self._read_gpu(index, errors) for index in range(count)) if g is not None)
        self._gpm.keep_only(_gpm_keys(gpus))
        return Snapshot(driver=driver, gpus=gpus, errors=tuple(errors))

    def close(self) -> None:
        self._gpm.close()
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            log.debug("nvmlShutdown failed: %s", error_name(error))

    def _read_gpu(self, index: int, errors: list[ReadError]) -> GpuReading | None:
        calls = _Calls(self, errors, index)
        try:
            handle = calls.required(pynvml.nvmlDeviceGetHandleByIndex, index)
            calls.uuid = calls.required(pynvml.nvmlDeviceGetUUID, handle)
            return self._gpu_fields(calls, handle, index)
        except (_Unreadable, _GpuGone):
            return None

    def _gpu_fields(self, calls: _Calls, handle: Any, index: int) -> GpuReading:
        name = calls.optional("name", pynvml.nvmlDeviceGetName, handle) or ""
        memory = calls.optional("memory", pynvml.nvmlDeviceGetMemoryInfo, handle)
        total = memory.total // MIB if memory is not None else None
        mode = calls.optional("mig_mode", pynvml.nvmlDeviceGetMigMode, handle)
        mig_enabled = mode is not None and mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        util = None if mig_enabled else calls.optional("util", pynvml.nvmlDeviceGetUtilizationRates, handle)
        gpm = calls.gpm_supported(handle)
        migs = self._mig_devices(calls, handle, total, gpm=gpm) if mig_enabled else ()
        activity = calls.activity("gpm", lambda: self._gpm.gpu(calls.uuid, handle)) if gpm and not mig_enabled else None
        return GpuReading(
            index=index, uuid=calls.uuid, name=name, pci_bus_id=_bus_id(calls, handle), activity=activity,
            memory_total_mib=total, memory_used_mib=memory.used // MIB if memory is not None else None,
            util_percent=float(util.gpu) if util is not None else None,
            memory_util_percent=float(util.memory) if util is not None else None,
            **_sensors(calls, handle),
            busy=any(m.busy for m in migs) if mig_enabled else _busy(calls, "processes", handle),
            mig_enabled=mig_enabled, mig_devices=migs,
        )

    def _mig_devices(self, calls: _Calls, handle: Any, gpu_mib: int | None, *, gpm: bool) -> tuple[MigReading, ...]:
        slots = calls.optional("mig_slots", pynvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
        context = _MigContext(handle, gpu_mib, self._profile_enum_table(calls.uuid, handle),
                              known=self._placements.get(calls.uuid, {}), gpm=gpm)
        devices = [d for d in (self._mig_device(calls, context, slot) for slot in range(slots)) if d is not None]
        # A new dict, never one another thread is reading: the scrape and the report cycle read concurrently.
        self._placements[calls.uuid] = {d.uuid: _placement(d) for d in devices}
        return tuple(sorted(devices, key=lambda d: (d.start, d.gpu_instance_id)))

    def _mig_device(self, calls: _Calls, context: _MigContext, slot: int) -> MigReading | None:
        try:
            device = calls.required(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, context.parent, slot)
            if device is None:
                return None  # an empty slot: fewer instances than the GPU could hold
            uuid = calls.required(pynvml.nvmlDeviceGetUUID, device)
            placement = context.known.get(uuid) or self._read_placement(calls, context, device)
        except _Unreadable:
            return None
        memory = calls.optional(f"memory/{uuid}", pynvml.nvmlDeviceGetMemoryInfo, device)
        return MigReading(
            gpu_instance_id=placement.gpu_instance_id, profile=placement.profile, start=placement.start,
            size=placement.size, uuid=uuid, busy=bool(_busy(calls, f"processes/{uuid}", device)),
            memory_total_mib=memory.total // MIB if memory is not None else None,
            memory_used_mib=memory.used // MIB if memory is not None else None,
            activity=self._instance_activity(calls, context, placement.gpu_instance_id),
        )

    def _instance_activity(self, calls: _Calls, context: _MigContext, instance_id: int) -> Activity | None:
        if not context.gpm:
            return None
        key = instance_key(calls.uuid, instance_id)
        return calls.activity(f"gpm/{key}", lambda: self._gpm.instance(key, context.parent, instance_id))

    def _read_placement(self, calls: _Calls, context: _MigContext, device: Any) -> _Placement:
        """Profile and placement of a MIG device: fixed for its lifetime (a reconfigured GPU has new UUIDs)."""
        attributes = calls.required(pynvml.nvmlDeviceGetAttributes, device)
        instance_id = calls.required(pynvml.nvmlDeviceGetGpuInstanceId, device)
        instance = calls.required(pynvml.nvmlDeviceGetGpuInstanceById, context.parent, instance_id)
        info = calls.required(pynvml.nvmlGpuInstanceGetInfo, instance)
        if not context.gpu_mib:
            raise _Unreadable()  # the profile name needs the GPU's memory size
        profile = profile_name(slices=attributes.gpuInstanceSliceCount, instance_mib=attributes.memorySizeMB,
                               gpu_mib=context.gpu_mib, profile_enum=context.enums.get(info.profileId))
        return _Placement(instance_id, profile, info.placement.start, info.placement.size)

    def _profile_enum_table(self, uuid: str, handle: Any) -> dict[int, int]:
        """Which NVML profile enum each GPU-instance profile id stands for (it carries the `+me` attribute)."""
        if uuid not in self._profile_enums:
            table: dict[int, int] = {}
            for enum in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
                try:
                    table[pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, enum).id] = enum
                except pynvml.NVMLError as error:
                    if error_name(error) not in _EXPECTED_WHILE_PROBING:
                        log.info("GPU %s: MIG profile %d unreadable (%s)", uuid, enum, error_name(error))
            self._profile_enums[uuid] = table
        return self._profile_enums[uuid]


def instance_key(gpu_uuid: str, instance_id: int) -> str:
    """The GPM sampler's key of a GPU instance (GPM samples GPU instances, not compute instances)."""
    return f"{gpu_uuid}/gi{instance_id}"


def _gpm_keys(gpus: tuple[GpuReading, ...]) -> set[str]:
    keys = {g.uuid for g in gpus}
    keys.update(instance_key(g.uuid, m.gpu_instance_id) for g in gpus for m in g.mig_devices)
    return keys


def _bus_id(calls: _Calls, handle: Any) -> str:
    """`nvmlPciInfo_t.busId` (the 32-byte field, `00000000:19:00.0`), as dcgm-exporter's `pci_bus_id` shows it."""
    info = calls.optional("pci", pynvml.nvmlDeviceGetPciInfo_v3, handle)
    if info is None:
        return ""
    value = info.busId
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _sensors(calls: _Calls, handle: Any) -> dict[str, Any]:
    """Temperature, power, clocks, energy and ECC counters: each on its own, None where unsupported."""
    power = calls.optional("power", pynvml.nvmlDeviceGetPowerUsage, handle)
    limit = calls.optional("power_limit", pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    ecc = {
        f"ecc_{kind}_{counter}": calls.optional(
            f"ecc_{kind}_{counter}", pynvml.nvmlDeviceGetTotalEccErrors, handle, error_type, counter_type)
        for kind, error_type in (("corrected", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                                 ("uncorrected", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED))
        for counter, counter_type in (("volatile", pynvml.NVML_VOLATILE_ECC),
                                      ("aggregate", pynvml.NVML_AGGREGATE_ECC))
    }
    return {
        "temperature_c": calls.optional("temperature", pynvml.nvmlDeviceGetTemperature, handle,
                                        pynvml.NVML_TEMPERATURE_GPU),
        "power_w": power / 1000 if power is not None else None,
        "power_limit_w": limit / 1000 if limit is not None else None,
        "sm_clock_mhz": calls.optional("sm_clock", pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM),
        "memory_clock_mhz": calls.optional("memory_clock", pynvml.nvmlDeviceGetClockInfo, handle,
                                           pynvml.NVML_CLOCK_MEM),
        "energy_mj": calls.optional("energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, handle),
        **ecc,
    }


def _busy(calls: _Calls, field: str, handle: Any) -> bool | None:
    # The _v3 entry point directly: pynvml's unversioned wrapper turns FunctionNotFound into an exception that is
    # not an NVMLError.
    processes = calls.optional(field, pynvml.nvmlDeviceGetComputeRunningProcesses_v3, handle)
    return None if processes is None else len(processes) > 0

"""GPU Performance Monitoring (GPM) through pynvml: engine and SM activity per GPU and per MIG GPU instance.

GPM (Hopper and newer; NVML says so through `nvmlGpmQueryDeviceSupport`) measures activity between two samples:
`nvmlGpmSampleGet` (a whole GPU) or `nvmlGpmMigSampleGet` (one GPU instance, by its id) fills an opaque sample, and
`nvmlGpmMetricsGet` computes the metrics over the interval between two of them. The sampler keeps the last sample
of each device and takes a new one on each read, so a read never sleeps: the first read of a device yields nothing,
every later one the activity since the previous read. Reads closer together than `min_interval` (the scrape and
the report cycle may follow each other within milliseconds) reuse the last result instead of measuring a window too
short to mean anything. NVML binding facts (function names, `c_nvmlGpmMetricsGet_t`, `NVML_GPM_METRICS_GET_VERSION`,
metric ids) are nvidia-ml-py's pynvml.py; which GPM metric stands for which DCGM field, and that DCGM divides GPM
percentages by 100 and samples a GPU instance per NVML instance id, is NVIDIA/DCGM dcgmlib/src/DcgmGpmManager.cpp.

Only reads: the agent never enables GPM streaming or changes any setting. Part of the NVML backend, like
`node_agent.nvml`, which alone calls it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from node_agent.backend import Activity

GRAPHICS = pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL
"""-> DCGM_FI_PROF_GR_ENGINE_ACTIVE: percentage of time any compute/graphics context was active."""
SM = pynvml.NVML_GPM_METRIC_SM_UTIL
"""-> DCGM_FI_PROF_SM_ACTIVE: percentage of SMs that were busy."""
METRICS = (GRAPHICS, SM)

MIN_INTERVAL = 1.0
"""Seconds: the shortest window measured. DCGM's own default GPM update interval is one second."""


class GpmError(Exception):
    """A GPM call failed; `function` and `error` name it as a `ReadError` would."""

    def __init__(self, function: str, error: pynvml.NVMLError) -> None:
        super().__init__(function)
        self.function = function
        self.error = error


@dataclass(slots=True)
class _Device:
    """One sampled device: the last sample, when it was taken, and the activity measured up to it."""

    previous: Any
    spare: Any
    taken_at: float
    last: Activity | None = None
    unsupported: set[int] = field(default_factory=set)
    """Metric ids that answered a permanent error for this device."""


class GpmSampler:
    """Keeps one pair of GPM samples per device key (a GPU UUID, or `<GPU UUID>/gi<id>` for a GPU instance).

    Thread-safe: the scrape and the report cycle read concurrently, and a sample pair must not be used by two
    `nvmlGpmMetricsGet` calls at once.
    """

    def __init__(self, *, min_interval: float = MIN_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self._min_interval = min_interval
        self._clock = clock
        self._devices: dict[str, _Device] = {}
        self._lock = threading.Lock()
        self._request = pynvml.c_nvmlGpmMetricsGet_t()
        """Reused for every computation (it holds room for every metric NVML knows: about 19 kB)."""

    def gpu(self, key: str, handle: Any) -> Activity | None:
        return self._activity(key, lambda sample: pynvml.nvmlGpmSampleGet(handle, sample), "nvmlGpmSampleGet")

    def instance(self, key: str, parent: Any, gpu_instance_id: int) -> Activity | None:
        return self._activity(key, lambda sample: pynvml.nvmlGpmMigSampleGet(parent, gpu_instance_id, sample),
                              "nvmlGpmMigSampleGet")

    def keep_only(self, keys: set[str]) -> None:
        """Free the samples of devices that are gone (a GPU lost, a GPU repartitioned)."""
        with self._lock:
            for key in [k for k in self._devices if k not in keys]:
                self._free(self._devices.pop(key))

    def close(self) -> None:
        self.keep_only(set())

    def _activity(self, key: str, take: Callable[[Any], Any], function: str) -> Activity | None:
        with self._lock:
            now = self._clock()
            device = self._devices.get(key)
            if device is None:
                self._devices[key] = self._first(take, function, now)
                return None
            if now - device.taken_at < self._min_interval:
                return device.last
            return self._measure(device, take, function, now)

    def _first(self, take: Callable[[Any], Any], function: str, now: float) -> _Device:
        samples = [_call("nvmlGpmSampleAlloc", pynvml.nvmlGpmSampleAlloc) for _ in range(2)]
        device = _Device(samples[0], samples[1], now)
        try:
            _call(function, take, device.previous)
        except GpmError:
            self._free(device)
            raise
        return device

    def _measure(self, device: _Device, take: Callable[[Any], Any], function: str, now: float) -> Activity | None:
        try:
            _call(function, take, device.spare)
        except GpmError:
            device.last = None
            raise
        device.previous, device.spare = device.spare, device.previous
        interval_start = device.spare
        device.taken_at = now
        device.last = self._metrics(device, interval_start, device.previous)
        return device.last

    def _metrics(self, device: _Device, first: Any, second: Any) -> Activity | None:
        wanted = [m for m in METRICS if m not in device.unsupported]
        if not wanted:
            return None
        request = self._request
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(wanted)
        request.sample1, request.sample2 = first, second
        for i, metric in enumerate(wanted):
            request.metrics[i].metricId = metric
        _call("nvmlGpmMetricsGet", pynvml.nvmlGpmMetricsGet, request)
        values = {}
        for i, metric in enumerate(wanted):
            result = request.metrics[i]
            if result.nvmlReturn == pynvml.NVML_SUCCESS:
                values[metric] = _ratio(result.value)
            elif result.nvmlReturn in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                device.unsupported.add(metric)
        return Activity(graphics=values.get(GRAPHICS), sm=values.get(SM)) if values else None

    @staticmethod
    def _free(device: _Device) -> None:
        for sample in (device.previous, device.spare):
            try:
                pynvml.nvmlGpmSampleFree(sample)
            except pynvml.NVMLError:
                pass  # nothing more can be done for memory the driver will not take back


def supported(handle: Any) -> bool:
    """Whether NVML says the GPU supports GPM; `GpmError` when it cannot say (older driver: FunctionNotFound)."""
    return bool(_call("nvmlGpmQueryDeviceSupport", pynvml.nvmlGpmQueryDeviceSupport, handle).isSupportedDevice)


def _call(function: str, call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except pynvml.NVMLError as error:
        raise GpmError(function, error) from None


def _ratio(percent: float) -> float | None:
    """GPM answers percent; DCGM's profiling fields are ratios. NaN (no data in the window) is no value."""
    if percent != percent:  # NaN
        return None
    return min(max(percent / 100.0, 0.0), 1.0)
